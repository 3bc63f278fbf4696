"""`mtproxy doctor` with the settings' `upstream`: the upstream's own health, and the DCs checked through it
(Debian's dante as the upstream, a loopback listener standing in for the DCs)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.paths import Paths
from mtproxy.testkit.process import free_port, refused_port
from mtproxy.testkit.socks import Dante

from .test_doctor import DOMAIN, SITE_HOST, Cli, HttpsSite, configure, doctor, finding

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not Dante.available(), reason="needs dante-server (scripts/install-test-deps)")]


@pytest.fixture
def site() -> Iterator[HttpsSite]:
    served = HttpsSite(SITE_HOST)
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def dc_listener() -> Iterator[socket.socket]:
    """Stands in for every DC; the test accepts afterwards to see where the check's connection came from."""
    with socket.create_server(("127.0.0.7", 0)) as listener:
        listener.settimeout(5)
        yield listener


def test_dcs_are_checked_through_dante(cli: Cli, paths: Paths, site: HttpsSite, dc_listener: socket.socket,
                                       tmp_path: Path) -> None:
    dante = Dante(tmp_path, free_port()).start()
    try:
        configure(cli, paths, site.port, dc_listener.getsockname()[1], upstream=f"socks5://127.0.0.1:{dante.port}")
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        dante.stop()
    upstream = finding(doc, "telegram", f"upstream 127.0.0.1:{dante.port}")
    assert upstream["severity"] == "ok", upstream
    dcs = finding(doc, "telegram", "DCs")
    assert dcs["severity"] == "ok", dcs
    assert dcs["message"] == f"all 1 DCs accept TCP through the SOCKS5 upstream 127.0.0.1:{dante.port}"
    conn, peer = dc_listener.accept()
    conn.close()
    assert peer[0] == "127.0.0.2"  # dante's external address: the check went through it


def test_an_upstream_that_is_down(cli: Cli, paths: Paths, site: HttpsSite, dc_listener: socket.socket) -> None:
    with refused_port() as dead:
        configure(cli, paths, site.port, dc_listener.getsockname()[1], upstream=f"socks5://127.0.0.1:{dead}")
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    upstream = finding(doc, "telegram", f"upstream 127.0.0.1:{dead}")
    assert upstream["severity"] == "error"
    assert upstream["message"] == f"the SOCKS5 upstream 127.0.0.1:{dead} fails: connection refused"
    assert "start the upstream" in upstream["fix"]
    dcs = finding(doc, "telegram", "DCs")
    assert dcs["severity"] == "error" and "through the SOCKS5 upstream" in dcs["message"], dcs
    assert "see the upstream's own finding" in dcs["fix"]
    assert doc["exit_status"] == 2


def test_a_login_the_upstream_refuses(cli: Cli, paths: Paths, site: HttpsSite, dc_listener: socket.socket,
                                      tmp_path: Path) -> None:
    dante = Dante(tmp_path, free_port(), username=True).start()
    try:
        configure(cli, paths, site.port, dc_listener.getsockname()[1],
                  upstream=f"socks5://mtproxy-nosuchuser:hunter2@127.0.0.1:{dante.port}")
        result, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        dante.stop()
    upstream = finding(doc, "telegram", f"upstream 127.0.0.1:{dante.port}")
    assert upstream["severity"] == "error"
    assert upstream["message"].endswith("fails: the SOCKS5 server rejected the username/password")
    assert "socks5://USER:PASS@HOST:PORT" in upstream["fix"]
    assert "hunter2" not in result.out
