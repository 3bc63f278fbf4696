"""--proxy-protocol: the real engine behind Debian's HAProxy (send-proxy-v2 and send-proxy), clients from other
loopback addresses; the header's source is the client everywhere (caps, reject lines, the mask's header);
what is not a trusted header is refused, never masked; health checks are no clients; fronting loops are
refused at start-up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.accounts.limits import Limits
from mtproxy.protocol.proxyheader import Command, Endpoint, Family, ProxyHeader, build_v1, build_v2, parse
from mtproxy.protocol.secret import Secret
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import ProxyClientError, open_client
from mtproxy.testkit.haproxy import HaproxyProcess
from mtproxy.testkit.process import ProxyProcess, free_port
from mtproxy.testkit.servers import MASK_BANNER

from .conftest import ProxyFactory, run
from .test_lifecycle import stats_of
from .test_stats import dummy_address

HAPROXY = shutil.which("haproxy")
WAIT = 10.0  # every wait on a socket or a process is bounded by this
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="Debian's haproxy is not installed")


class Haproxy(HaproxyProcess):
    """HAProxy in front of the engine: `bind` on a public port, one server line to the engine."""

    def __init__(self, tmp_path: Path, engine_port: int, server_options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend public
    bind 127.0.0.1:{self.port}
    default_backend mtproxy
backend mtproxy
    server mtproxy 127.0.0.1:{engine_port} {server_options}
""")
        super().__init__(config, WAIT)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[list[Haproxy]]:
    started: list[Haproxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def raw_exchange(port: int, data: bytes, source: str = "127.0.0.1", half_close: bool = True) -> bytes:
    """Send `data` from `source` like a prober, half-close, and read until the other side closes (bounded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            reply += chunk
        return reply


def lines(log: str, verb: str) -> list[tuple[str, str]]:
    """(address, reason) of each `verb` line (`rejected handshake` / `rejected connection`)."""
    return re.findall(rf"mtproxy\[\d+\]: {verb} from (\S+) port \d+ on \S+: reason=([a-z-]+)", log)


async def echo(port: int, secret: Secret, source: str, size: int = 3000) -> None:
    client = await open_client("127.0.0.1", port, secret, source=source)
    try:
        payload = os.urandom(size)
        await client.send(payload)
        assert await client.recv_exactly(size) == payload
    finally:
        await client.close()


def proxied_engine(start_proxy: ProxyFactory, secret: Secret, *flags: str) -> ProxyProcess:
    return start_proxy("-S", secret.to_hex(), "--proxy-protocol", *flags)


# ---------------------------------------------------------------- behind a real HAProxy


@needs_haproxy
@pytest.mark.parametrize("server_options", ["send-proxy-v2", "send-proxy"])
def test_clients_behind_haproxy_are_served_and_named(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                     haproxy: list[Haproxy], secret: Secret, tmp_path: Path,
                                                     server_options: str) -> None:
    proxy = proxied_engine(start_proxy, secret, "--max-connections-per-ip", "1")
    front = Haproxy(tmp_path, proxy.port, server_options)
    haproxy.append(front)

    async def scenario() -> None:
        # One connection per client address: HAProxy's own address (127.0.0.1 for all) is not what is capped.
        held = await open_client("127.0.0.1", front.port, secret, source="127.0.0.2")
        try:
            await held.send(b"held")
            assert await held.recv_exactly(4) == b"held"
            await echo(front.port, secret, "127.0.0.3")
            with pytest.raises(ProxyClientError):  # refused: closed before the handshake
                await open_client("127.0.0.1", front.port, secret, source="127.0.0.2", timeout=3)
        finally:
            await held.close()
        deadline = time.monotonic() + WAIT  # its slot comes back once the engine has seen it close
        while True:
            try:
                await echo(front.port, secret, "127.0.0.2")
                return
            except ProxyClientError:
                assert time.monotonic() < deadline, "127.0.0.2 was never admitted again"
                await asyncio.sleep(0.1)

    run(scenario(), timeout=60)
    masked = len(peers.mask.received)
    garbage = os.urandom(200)
    reply = raw_exchange(front.port, garbage, source="127.0.0.4")
    assert reply.startswith(MASK_BANNER)
    assert peers.wait_mask_connections(masked + 1)[masked] == garbage  # no header to the mask unless asked
    log = proxy.wait_log("rejected handshake")
    assert lines(log, "rejected handshake") == [("127.0.0.4", "unknown-secret")]
    assert lines(log, "rejected connection") == []
    stats = stats_of(proxy.stats_port)
    assert stats["handshakes_ok"] == "3"
    assert stats["handshake_failures_unknown-secret"] == "1"
    assert int(stats["refused_by_limit"]) >= 1, stats  # more when a retry came before the close was seen


@needs_haproxy
def test_a_secrets_unique_addresses_are_the_clients(start_proxy: ProxyFactory, haproxy: list[Haproxy],
                                                     secret: Secret, tmp_path: Path) -> None:
    """max_unique_ips counts the addresses the headers name: HAProxy's single address would let everyone in."""
    store = tmp_path / "secrets.json"
    write_store(store, StoreData((SecretRecord.from_secret("a", secret, limits=Limits(max_unique_ips=2)),)))
    proxy = start_proxy("--secrets-file", str(store), "--proxy-protocol")
    front = Haproxy(tmp_path, proxy.port, "send-proxy-v2")
    haproxy.append(front)

    async def scenario() -> None:
        for source in ("127.0.0.2", "127.0.0.3"):
            await echo(front.port, secret, source)
        with pytest.raises(ProxyClientError):  # the third address: authenticated, then refused a session
            await echo(front.port, secret, "127.0.0.4")
        await echo(front.port, secret, "127.0.0.2")  # a known address still may

    run(scenario(), timeout=60)
    log = proxy.wait_log("refused session from 127.0.0.4 port")
    assert "reason=max-unique-ips id=a" in log and "refused session from 127.0.0.1" not in log


@needs_haproxy
def test_the_mask_gets_the_real_client_in_a_header(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                    haproxy: list[Haproxy], secret: Secret, tmp_path: Path) -> None:
    proxy = proxied_engine(start_proxy, secret, "--mask-proxy-protocol", "v2")
    front = Haproxy(tmp_path, proxy.port, "send-proxy-v2")
    haproxy.append(front)
    masked = len(peers.mask.received)
    garbage = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the client's port, to compare
        sock.settimeout(WAIT)
        sock.bind(("127.0.0.2", 0))
        client = Endpoint(*sock.getsockname()[:2])
        sock.connect(("127.0.0.1", front.port))
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    received = peers.wait_mask_connections(masked + 1)[masked]
    header = parse(received)
    assert isinstance(header, ProxyHeader)
    assert (header.version, header.command, header.family) == (2, Command.PROXY, Family.TCP4)
    assert header.source == client
    assert header.destination == Endpoint("127.0.0.1", front.port)  # where the client connected: HAProxy
    assert received[header.consumed:] == garbage
    assert lines(proxy.wait_log("rejected handshake"), "rejected handshake") == [("127.0.0.2", "unknown-secret")]


@needs_haproxy
def test_a_mask_that_comes_back_through_haproxy_is_cut(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                       haproxy: list[Haproxy], secret: Secret,
                                                       tmp_path: Path) -> None:
    """A mask whose name leads to the balancer (not knowable at start-up without DNS): the first connection
    that comes back with one of our mask connections as its client is not masked again: the loop ends."""
    engine_port, public = free_port(), free_port()
    front = Haproxy(tmp_path, engine_port, "send-proxy-v2", port=public)
    haproxy.append(front)
    proxy = start_proxy("-S", secret.to_hex(), "--proxy-protocol", "--listen", f"127.0.0.1:{engine_port}",
                        "--mask", f"127.0.0.1:{public}", "--cert-size", "2345",
                        "--dc-override", f"*=127.0.0.1:{peers.dc_port}", port=engine_port, base=False)
    masked = len(peers.mask.received)
    assert raw_exchange(public, os.urandom(100), source="127.0.0.2") == b""
    log = proxy.wait_log("leads back to this proxy through the load balancer")
    # the client, then our own mask connection come back once: there the loop was cut
    assert lines(log, "rejected handshake") == [("127.0.0.2", "unknown-secret"), ("127.0.0.1", "unknown-secret")]
    assert stats_of(proxy.stats_port)["mask_failed"] == "1"
    assert len(peers.mask.received) == masked


def test_mask_header_v1_without_a_balancer(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                           secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--mask-proxy-protocol", "v1")
    masked = len(peers.mask.received)
    raw_exchange(proxy.port, b"\x00" * 80, source="127.0.0.3")
    received = peers.wait_mask_connections(masked + 1)[masked]
    header = parse(received)
    assert isinstance(header, ProxyHeader) and header.version == 1
    assert header.source is not None and header.source.host == "127.0.0.3"
    assert header.destination == Endpoint("127.0.0.1", proxy.port)
    assert received[header.consumed:] == b"\x00" * 80


# ---------------------------------------------------------------- what is refused, and what is no client


def test_a_connection_without_a_header_is_refused_not_masked(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                             secret: Secret) -> None:
    proxy = proxied_engine(start_proxy, secret)
    masked = len(peers.mask.received)
    with pytest.raises(Exception):  # noqa: B017 - the proxy closes: the client cannot authenticate
        run(echo(proxy.port, secret, "127.0.0.2"))
    assert raw_exchange(proxy.port, b"PROXY TCP4 1.2.3.4 nonsense\r\n" + os.urandom(50)) == b""
    oversized = build_v2(Endpoint("127.0.0.9", 1), Endpoint("127.0.0.1", 2))[:14] + b"\xff\xff"
    assert raw_exchange(proxy.port, oversized + os.urandom(50)) == b""
    log = proxy.wait_log("rejected connection", 3)
    assert lines(log, "rejected connection") == [("127.0.0.2", "proxy-header-missing"),
                                                 ("127.0.0.1", "proxy-header-malformed"),
                                                 ("127.0.0.1", "proxy-header-malformed")]
    assert "more than the 2048 accepted" in log
    assert lines(log, "rejected handshake") == []  # nothing fail2ban would count
    time.sleep(0.5)
    assert len(peers.mask.received) == masked
    stats = stats_of(proxy.stats_port)
    assert stats["handshake_failures_proxy-header-missing"] == "1"
    assert stats["handshake_failures_proxy-header-malformed"] == "2"
    assert stats["total_connections"] == "3"


def test_an_untrusted_source_is_refused(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = proxied_engine(start_proxy, secret, "--trusted-proxy", "192.0.2.0/24", "--trusted-proxy", "::1")
    header = build_v2(Endpoint("127.0.0.5", 40000), Endpoint("127.0.0.1", proxy.port))
    assert raw_exchange(proxy.port, header + os.urandom(64), source="127.0.0.2") == b""
    log = proxy.wait_log("rejected connection")
    assert lines(log, "rejected connection") == [("127.0.0.2", "proxy-untrusted")]
    assert stats_of(proxy.stats_port)["handshake_failures_proxy-untrusted"] == "1"


def test_a_late_header_times_out(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = proxied_engine(start_proxy, secret, "--handshake-timeout", "1")
    assert raw_exchange(proxy.port, b"PROXY TCP4 ", half_close=False) == b""
    log = proxy.wait_log("rejected connection")
    assert lines(log, "rejected connection") == [("127.0.0.1", "proxy-header-timeout")]


def test_health_checks_are_no_clients(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = proxied_engine(start_proxy, secret)
    local = build_v2(None, None, Command.LOCAL)
    for data in (local, b""):  # HAProxy's check-send-proxy, and a plain TCP check
        assert raw_exchange(proxy.port, data) == b""
    # a real client after them, through a v1 header written by hand, split over two writes
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        line = build_v1(Endpoint("127.0.0.7", 5555), Endpoint("127.0.0.1", proxy.port))
        writer.write(line[:9])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(line[9:] + os.urandom(90))
        writer.write_eof()
        await asyncio.wait_for(reader.read(), WAIT)
        writer.close()

    run(scenario())
    log = proxy.wait_log("rejected handshake")
    assert lines(log, "rejected handshake") == [("127.0.0.7", "unknown-secret")]
    stats = stats_of(proxy.stats_port)
    assert stats["total_connections"] == "1"
    assert lines(log, "rejected connection") == []


# ---------------------------------------------------------------- fronting loops, refused at start-up


def _run_engine(tmp_path: Path, settings: dict[str, object], *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(settings))
    return subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "run", "--config", str(config), "-S",
                           "ee" + "ab" * 16 + b"example.com".hex(), "-p", "0", *flags],
                          capture_output=True, text=True, timeout=WAIT * 3,
                          env={**os.environ, "MTPROXY_ROOT": str(tmp_path / "root")})


@pytest.mark.parametrize("mask", ["127.0.0.1:{public}", "localhost:{public}", "proxy.example.net:{public}",
                                  "127.0.0.1:{listen}"])
def test_a_mask_that_leads_back_is_refused(tmp_path: Path, mask: str) -> None:
    public, listen = free_port(), free_port()
    settings = {"port": public, "listen": [f"127.0.0.1:{listen}"], "proxy_protocol": True,
                "server": "proxy.example.net", "mask": mask.format(public=public, listen=listen)}
    result = _run_engine(tmp_path, settings)
    assert result.returncode == 2, result
    assert "points at this proxy's own" in result.stderr or "routes the fake-TLS domain back" in result.stderr


def test_a_local_address_mask_is_refused(tmp_path: Path) -> None:
    """An address of this host that is not loopback: found by binding to it, no packet sent."""
    port, public, listen = free_port(), free_port(), free_port()
    with dummy_address() as address:
        wildcard = _run_engine(tmp_path, {}, "--listen", f"0.0.0.0:{port}", "--mask", f"{address}:{port}")
        behind = _run_engine(tmp_path, {"port": public, "listen": [f"127.0.0.1:{listen}"], "proxy_protocol": True,
                                        "mask": f"{address}:{public}"})
    assert wildcard.returncode == 2 and "is an address of this host" in wildcard.stderr, wildcard
    assert behind.returncode == 2 and "routes the fake-TLS domain back" in behind.stderr, behind
