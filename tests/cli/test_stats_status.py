"""stats and status against the engine's real stats server (loopback), including missing keys and no proxy."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.paths import Paths
from mtproxy.stats.counters import Counters
from mtproxy.stats.digest import secrets_digest
from mtproxy.stats.http import StatsServer
from mtproxy.store import read_store

from .conftest import Result

Cli = Callable[..., Result]


@pytest.fixture
def counters() -> Counters:
    c = Counters(started_at=time.time() - 3 * 3600 - 125)
    c.active, c.total, c.handshakes_ok = 3, 1234, 1200
    c.bytes_in, c.bytes_out = 5 * 1024 * 1024, 3 * 1024**3
    c.masked, c.secrets_loaded, c.reloads_ok = 17, 2, 4
    c.rejects["tls-bad-hmac"] = 9
    c.modes["ee"] = 1100
    return c


@pytest.fixture
def stats_server(counters: Counters, paths: Paths) -> Iterator[StatsServer]:
    """An engine run by hand for this root: it says it reads the root's store."""
    server = StatsServer("127.0.0.1", 0, counters.snapshot, allow_remote=False, store=str(paths.secrets_file))
    server.start()
    yield server
    server.close()


@pytest.fixture
def proxy_port() -> Iterator[int]:
    """A listener standing where the proxy's public port is (status only checks that it accepts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _settings(paths: Paths, **values: object) -> None:
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, **values}))


def test_stats_human_and_json(cli: Cli, paths: Paths, stats_server: StatsServer, counters: Counters) -> None:
    cli("add-secret", "--label", "phones")
    sid = json.loads(paths.secrets_file.read_text())["secrets"][0]["id"]
    counters.for_secret(sid).total = 42
    _settings(paths, stats_port=stats_server.port)
    text = cli("stats")
    assert text.status == ExitStatus.OK, text.err
    assert "3 active, 1,234 total" in text.out
    assert "DC→client 3.0 GiB" in text.out and "client→DC 5.0 MiB" in text.out
    assert "up 3h 2m" in text.out
    assert "tls-bad-hmac 9" in text.out
    assert "phones" in text.out  # per-secret rows show the label, not the id
    data = cli("stats", "--json").json()
    assert data["kind"] == "stats" and data["version"] == 1
    assert data["stats"]["active_connections"] == 3
    assert data["stats"]["bytes_dc_to_client"] == 3 * 1024**3
    shown = data["secrets"][sid]
    assert {k: shown[k] for k in ("label", "active", "total", "bytes_in", "bytes_out")} == {
        "label": "phones", "active": 0, "total": 42, "bytes_in": 0, "bytes_out": 0}
    assert shown["state"] == "active" and shown["limits"]["quota"] is None
    assert shown["usage"]["source"] == "engine" and shown["usage"]["connections_total"] == 42


def test_stats_show_usage_against_limits(cli: Cli, paths: Paths, stats_server: StatsServer,
                                        counters: Counters) -> None:
    """The ledger the engine keeps beside the store (usage.json) against the quota set with set-limits."""
    cli("add-secret", "--label", "phones")
    sid = json.loads(paths.secrets_file.read_text())["secrets"][0]["id"]
    counters.for_secret(sid).active = 2
    _settings(paths, stats_port=stats_server.port)
    assert cli("set-limits", "phones", "--quota", "1G", "--quota-period", "month").status == ExitStatus.OK
    paths.usage_file.write_text(json.dumps({"version": 1, "secrets": {sid: {
        "bytes_in": 2**29, "bytes_out": 2**29 + 1, "connections_total": 7, "period_start": "2026-01-01T00:00:00Z",
        "period_bytes": 2**30 + 1}}}))
    shown = cli("stats", "--json").json()["secrets"][sid]
    assert shown["usage"]["connections_active"] == 2  # live, from the engine
    assert shown["usage"]["bytes_total"] == 2**30 + 1 and shown["usage"]["source"] == "ledger"
    assert shown["state"] == "over quota" and shown["limits"]["quota"]["limit_bytes"] == 2**30
    assert "1.0 GiB of 1G, 2 conn" in cli("stats").out
    table = cli("list-secrets").out
    assert "1.0 GiB of 1G" in table and "over quota" in table and "1G/month" in table


def test_stats_live_redraws(cli: Cli, paths: Paths, stats_server: StatsServer) -> None:
    _settings(paths, stats_port=stats_server.port)
    result = cli("stats", "--live", "--interval", "0.2", "--count", "3")
    assert result.status == ExitStatus.OK
    assert result.out.count("mtproxy stats") == 3


def test_stats_without_a_proxy(cli: Cli, paths: Paths) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    _settings(paths, stats_port=port)
    result = cli("stats")
    assert result.status == ExitStatus.UNAVAILABLE
    assert result.err == (f"mtproxy: no proxy answers on http://127.0.0.1:{port}/stats — start the proxy, "
                          "or see `mtproxy status` for what is wrong\n")


class _OldEngine(BaseHTTPRequestHandler):
    """An engine of another version: fewer keys, one garbled value, an unknown key."""

    def do_GET(self) -> None:
        body = b"uptime\t61\nactive_connections\tlots\nnew_key_from_the_future\t7\nsecret_ab_c_total\t5\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_stats_tolerates_missing_and_unknown_keys(cli: Cli, paths: Paths) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _settings(paths, stats_port=server.server_address[1])
        text = cli("stats")
        assert text.status == ExitStatus.OK, text.err
        assert "up 1m 1s" in text.out and "- active" in text.out
        data = cli("stats", "--json").json()
        assert data["stats"]["active_connections"] == "lots"
        assert data["stats"]["new_key_from_the_future"] == 7
        assert data["secrets"]["ab_c"]["total"] == 5
    finally:
        server.shutdown()
        server.server_close()


def serve_store(counters: Counters, paths: Paths) -> None:
    """The engine loaded what the store holds now."""
    counters.secrets_digest = secrets_digest(read_store(paths.secrets_file).active_secrets())
    counters.secrets_loaded = len(read_store(paths.secrets_file).active_records())


def test_status_healthy(cli: Cli, paths: Paths, stats_server: StatsServer, proxy_port: int,
                        counters: Counters) -> None:
    _settings(paths, stats_port=stats_server.port, port=proxy_port)
    cli("add-secret")
    serve_store(counters, paths)
    result = cli("status")
    assert result.status == ExitStatus.OK, result.out
    assert "MTProxy: healthy" in result.out
    assert "✓ stats" in result.out and "✓ port" in result.out and "✓ secrets: 1 active" in result.out
    assert "connections: 3 active, 1,234 total" in result.out and "uptime:      3h 2m" in result.out
    data = cli("status", "--json").json()
    assert data["healthy"] is True and data["port"] == proxy_port
    assert data["connections"] == {"active": 3, "total": 1234}
    assert {c["name"] for c in data["checks"]} >= {"service", "stats", "port", "secrets"}


def test_status_unhealthy_without_proxy_and_with_broken_store(cli: Cli, paths: Paths) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _settings(paths, stats_port=port, port=port + 1 if port < 65535 else port - 1)
    paths.secrets_file.write_text("{oops")
    result = cli("status")
    assert result.status == ExitStatus.UNHEALTHY
    assert "MTProxy: NOT healthy" in result.out
    assert "✗ stats" in result.out and "✗ port" in result.out
    assert f"✗ secrets: {paths.secrets_file}: not valid JSON" in result.out and "fix:" in result.out
    data = cli("status", "--json").json()
    assert data["healthy"] is False and data["connections"] == {"active": None, "total": None}


def test_status_store_with_no_active_secret_is_unhealthy(
    cli: Cli, paths: Paths, stats_server: StatsServer, proxy_port: int
) -> None:
    _settings(paths, stats_port=stats_server.port, port=proxy_port)
    result = cli("status")
    assert result.status == ExitStatus.UNHEALTHY
    assert "add-secret" in result.out


def test_status_colours_only_when_asked_or_on_a_terminal(cli: Cli, paths: Paths) -> None:
    plain = cli("status")
    assert "\x1b[" not in plain.out
    coloured = cli("status", colour=True)
    assert "\x1b[" in coloured.out
