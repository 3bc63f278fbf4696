"""DC legs through a SOCKS5 upstream (--upstream): Debian's dante-server between the engine and the fake DC,
and the testkit's RFC 1929 server for a username/password that is accepted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.protocol.secret import Secret
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import ProxyClientError, open_client, send_raw
from mtproxy.testkit.process import ProxyProcess, free_port, refused_port
from mtproxy.testkit.servers import MASK_BANNER
from mtproxy.testkit.socks import Dante, SocksServer

from .conftest import ProxyFactory, run

pytestmark = pytest.mark.skipif(not Dante.available(), reason="needs dante-server (scripts/install-test-deps)")


def stats_json(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5).read())
    return doc


def dial_counts(port: int) -> dict[tuple[str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    promtool = shutil.which("promtool")
    if promtool is not None:  # the new family passes Prometheus's own linter
        checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    families = {f.name: f for f in text_string_to_metric_families(body)}
    return {(s.labels["dc"], s.labels["result"]): s.value for s in families["mtproxy_upstream_dc_dials"].samples
            if s.name.endswith("_total")}


@pytest.fixture
def dante(tmp_path: Path) -> Iterator[Dante]:
    server = Dante(tmp_path, free_port()).start()
    yield server
    server.stop()


async def echo(proxy: ProxyProcess, secret: Secret, payload: bytes, dc_id: int = 2) -> bytes:
    client = await open_client("127.0.0.1", proxy.port, secret, dc_id=dc_id)
    try:
        await client.send(payload)
        return await client.recv_exactly(len(payload))
    finally:
        await client.close()


def test_sessions_go_through_dante(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                   dante: Dante) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--upstream", f"socks5://127.0.0.1:{dante.port}")
    before = len(peers.dc.peers)
    payload = os.urandom(200_000)
    assert run(echo(proxy, secret, payload)) == payload  # both ways, through dante
    assert run(echo(proxy, secret, b"media", dc_id=-4)) == b"media"
    # the fake DC saw both connections come from dante's external address, not from the engine's
    assert peers.dc.peers[before:] == ["127.0.0.2", "127.0.0.2"]

    doc = stats_json(proxy.stats_port)
    assert doc["upstream"] == f"127.0.0.1:{dante.port}"
    assert doc["via_upstream"] == {"2": {"ok": 1, "failed": 0}, "4": {"ok": 1, "failed": 0}}
    assert dial_counts(proxy.stats_port) == {("2", "ok"): 1, ("2", "failed"): 0, ("4", "ok"): 1, ("4", "failed"): 0}
    # the mask leg does not go through the upstream: with dante stopped, a probe still gets the mask site
    dante.stop()
    answer = run(send_raw("127.0.0.1", proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert answer.startswith(MASK_BANNER)


def test_upstream_down_closes_the_session_with_one_warning(start_proxy: ProxyFactory, secret: Secret) -> None:
    # a free_port once went to something the test started next, which answered no SOCKS5
    with refused_port() as dead:
        proxy = start_proxy("-S", secret.to_hex(), "--upstream", f"socks5://127.0.0.1:{dead}")
        for _ in range(3):
            with pytest.raises((ProxyClientError, ConnectionError, EOFError, OSError)):
                run(echo(proxy, secret, b"hello"))
        log = proxy.wait_log("SOCKS5 upstream")
    line = f"warning: SOCKS5 upstream 127.0.0.1:{dead} failed: connection refused (1 DC dial failed through it)"
    assert line in log
    assert log.count("SOCKS5 upstream") == 1  # the next two are counted for the next line, not logged each
    assert "DC 2 unreachable" not in log
    doc = stats_json(proxy.stats_port)
    assert doc["upstream_failed"] == 3
    assert doc["via_upstream"] == {"2": {"ok": 0, "failed": 3}}


def test_target_refused_by_dante_is_the_dcs_fault(start_proxy: ProxyFactory, secret: Secret, dante: Dante) -> None:
    with refused_port() as closed:
        proxy = start_proxy("-S", secret.to_hex(), "--upstream", f"socks5://127.0.0.1:{dante.port}",
                            "--dc-override", f"3=127.0.0.1:{closed}")
        with pytest.raises((ProxyClientError, ConnectionError, EOFError, OSError)):
            run(echo(proxy, secret, b"hello", dc_id=3))
    log = proxy.wait_log("DC 3 unreachable")
    assert (f"DC 3 unreachable through the SOCKS5 upstream 127.0.0.1:{dante.port}: 127.0.0.1:{closed}: the SOCKS5"
            " server answered: connection refused by the target") in log
    assert "SOCKS5 upstream 127.0.0.1" not in log.replace("through the SOCKS5 upstream", "")
    assert stats_json(proxy.stats_port)["via_upstream"] == {"3": {"ok": 0, "failed": 1}}
    assert run(echo(proxy, secret, b"dc 2 still works")) == b"dc 2 still works"


def test_dante_rejects_the_login(start_proxy: ProxyFactory, secret: Secret, tmp_path: Path) -> None:
    dante = Dante(tmp_path, free_port(), username=True).start()
    try:
        proxy = start_proxy("-S", secret.to_hex(), "--upstream",
                            f"socks5://mtproxy-nosuchuser:hunter2@127.0.0.1:{dante.port}")
        with pytest.raises((ProxyClientError, ConnectionError, EOFError, OSError)):
            run(echo(proxy, secret, b"hello"))
        log = proxy.wait_log("SOCKS5 upstream")
        assert (f"SOCKS5 upstream 127.0.0.1:{dante.port} failed: the SOCKS5 server rejected the username/password"
                in log)
        body = urllib.request.urlopen(f"http://127.0.0.1:{proxy.stats_port}/stats.json", timeout=5).read()
        assert b"hunter2" not in body and "hunter2" not in log
    finally:
        dante.stop()


def test_username_and_password_accepted(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret) -> None:
    socks = SocksServer(b"proxy-user", b"s3cret:pass")
    port = peers.call(socks.start())
    try:
        proxy = start_proxy("-S", secret.to_hex(), "--upstream", f"socks5://proxy-user:s3cret%3Apass@127.0.0.1:{port}")
        assert run(echo(proxy, secret, b"x" * 5000)) == b"x" * 5000
        assert socks.connects == 1 and socks.rejected == 0
        assert peers.dc.peers[-1] == "127.0.0.3"
        stats = urllib.request.urlopen(f"http://127.0.0.1:{proxy.stats_port}/stats", timeout=5).read().decode()
        assert "upstream_dc_2_ok\t1" in stats
        assert "s3cret" not in stats and "s3cret" not in proxy.log
    finally:
        peers.call(socks.close())


def test_upstream_from_the_settings_file(start_proxy: ProxyFactory, secret: Secret, dante: Dante,
                                         tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"version": 1, "upstream": f"socks5://127.0.0.1:{dante.port}"}))
    proxy = start_proxy("-S", secret.to_hex(), "--config", str(settings))
    assert run(echo(proxy, secret, b"via the file")) == b"via the file"
    assert stats_json(proxy.stats_port)["via_upstream"]["2"]["ok"] == 1
