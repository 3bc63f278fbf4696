"""`mtproxy doctor` when the engine runs the middle proxy (ad tag): the relay documents as the engine would
have them (its cached copy, else fetched from the settings' relay_config_url) and a real RPC handshake with
every relay they name (testkit/fakerelay.py, written apart from the engine's codec, on loopback)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.config import resolve
from mtproxy.paths import Paths
from mtproxy.testkit.background import BackgroundRelays
from mtproxy.testkit.process import refused_port

from ..integration.test_middle_proxy import ConfigServer
from .test_doctor import DOMAIN, SITE_HOST, Cli, HttpsSite, configure, dc, doctor, finding, site

pytestmark = pytest.mark.netns

RELAY_SECRET = os.urandom(128)
__all__ = ["dc", "site"]  # test_doctor's fixtures (the DC stand-in, the mask site), used here


@pytest.fixture(scope="module")
def relays() -> Iterator[BackgroundRelays]:
    started = BackgroundRelays(RELAY_SECRET, dc_ids=(2, 4)).start()
    yield started
    started.stop()


def cache_of(paths: Paths) -> Path:
    """Where this root's engine keeps the relay documents it fetched (as doctor reads them)."""
    return resolve(["--root", str(paths.root)], environ={}).relay_cache_dir


def test_every_relay_completes_the_handshake(cli: Cli, paths: Paths, site: HttpsSite, dc: int,
                                             relays: BackgroundRelays) -> None:
    configure(cli, paths, site.port, dc, middle_proxy="on")
    relays.write_files(cache_of(paths))  # what the engine keeps after fetching them
    _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    documents = finding(doc, "telegram", "middle proxy configuration")
    assert documents["severity"] == "ok", documents
    assert f"proxy-secret: the engine's cached copy {cache_of(paths) / 'proxy-secret'}" in documents["message"]
    checked = finding(doc, "telegram", "middle proxy relays")
    assert checked["severity"] == "ok" and checked["message"] == "all 2 relays complete the handshake", checked
    assert relays.wait(lambda: sum(len([link for link in relay.links if link.record.ready])
                                   for relay in relays.relays.values()) >= 2)


def test_a_proxy_secret_the_relays_do_not_hold(cli: Cli, paths: Paths, site: HttpsSite, dc: int,
                                               relays: BackgroundRelays) -> None:
    configure(cli, paths, site.port, dc, proxy_tag="ab" * 16)  # auto: on for the global ad tag
    relays.write_files(cache_of(paths))
    (cache_of(paths) / "proxy-secret").write_bytes(os.urandom(128))  # not the relays' key
    result, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    checked = finding(doc, "telegram", "middle proxy relays")
    assert checked["severity"] == "error", checked
    assert checked["message"].startswith("no relay completes the handshake (DC 2 127.0.0.1:")
    assert "served directly, without the sponsored channel" in checked["message"]
    assert "--nat-info" in checked["fix"] and "proxy-secret" in checked["fix"]
    assert result.status == 2


def test_without_a_cached_copy_the_documents_are_fetched_as_the_engine_would(
        cli: Cli, paths: Paths, site: HttpsSite, dc: int, relays: BackgroundRelays, tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "published")
    served = ConfigServer({"getProxySecret": files.secret.read_bytes(), "getProxyConfig": files.config.read_bytes()})
    try:
        configure(cli, paths, site.port, dc, middle_proxy="on", relay_config_url=f"http://127.0.0.1:{served.port}")
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        served.close()
    documents = finding(doc, "telegram", "middle proxy configuration")
    assert f"proxy-multi.conf: fetched from http://127.0.0.1:{served.port}/getProxyConfig" in documents["message"]
    assert finding(doc, "telegram", "middle proxy relays")["severity"] == "ok"


def test_documents_that_cannot_be_had(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    with refused_port() as dead:
        configure(cli, paths, site.port, dc, middle_proxy="on", relay_config_url=f"http://127.0.0.1:{dead}")
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    documents = finding(doc, "telegram", "middle proxy configuration")
    assert documents["severity"] == "error"
    assert documents["message"].startswith(f"no cached proxy-secret and http://127.0.0.1:{dead}/getProxySecret"
                                           " cannot be fetched (connection refused)")
    assert "--aes-pwd FILE" in documents["fix"]


def test_no_middle_proxy_finding_when_nothing_uses_it(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc)  # auto, no ad tag anywhere: the relay path does not run
    _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    assert not [f for f in doc["findings"] if f["name"].startswith("middle proxy")]
