"""Limits against hostile peers: half-closed connections are released by --halfclose-timeout, unauthenticated
connections have their own caps, and running out of descriptors is reported as such, never blamed on the DC."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import PEER_AES, open_client, secret_for_mode

from .conftest import ProxyFactory, run
from .test_lifecycle import stats_of


def wait_stat(port: int, key: str, want: int, timeout: float) -> dict[str, str]:
    """Poll /stats until `key` reaches `want` (or the time is up); returns the last figures."""
    deadline = time.monotonic() + timeout
    while True:
        stats = stats_of(port)
        if int(stats.get(key, "0")) == want or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def set_soft_fd_limit(pid: int, soft: int) -> None:
    """Only the soft limit: raising a lowered hard limit again needs a privilege tests may not have."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def closing_mask(peers: BackgroundPeers) -> Iterator[BackgroundPeers]:
    """The mask site answers one request and closes, like a site with `Connection: close`."""
    peers.mask.close_after_banner = True
    yield peers
    peers.mask.close_after_banner = False


@pytest.fixture
def stalled_dc(peers: BackgroundPeers) -> Iterator[BackgroundPeers]:
    with peers.stalled_dc() as stalled:
        yield stalled


def test_masked_probe_that_ignores_our_fin_is_released(start_proxy: ProxyFactory, closing_mask: BackgroundPeers,
                                                       secret: Secret) -> None:
    """The mask site closes, the proxy half-closes towards the probe, the probe never closes: the slot and both
    descriptors come back after --halfclose-timeout, not after the idle timeout, and are counted."""
    proxy = start_proxy("-S", secret.to_hex(), "--halfclose-timeout", "1", "--idle-timeout", "300")
    probes = 20
    base_fds = open_fds(proxy.proc.pid)

    async def scenario() -> list[asyncio.StreamWriter]:
        held = []
        for _ in range(probes):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")  # up to our FIN
            held.append(writer)  # never closed: the probe ignores the FIN
        return held

    async def close(held: list[asyncio.StreamWriter]) -> None:
        for writer in held:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in held), return_exceptions=True)

    loop = asyncio.new_event_loop()  # one loop for the whole test: the probes stay open between its steps
    held: list[asyncio.StreamWriter] = []
    try:
        held = loop.run_until_complete(asyncio.wait_for(scenario(), 30))
        assert int(stats_of(proxy.stats_port)["masked_connections"]) == probes
        stats = wait_stat(proxy.stats_port, "active_connections", 0, 5)
        assert stats["active_connections"] == "0"
        assert stats["halfclose_released"] == str(probes)
        assert open_fds(proxy.proc.pid) <= base_fds + 2
    finally:
        loop.run_until_complete(asyncio.wait_for(close(held), 10))
        loop.close()


def test_relayed_session_half_closed_by_the_client_is_released(start_proxy: ProxyFactory, stalled_dc: BackgroundPeers,
                                                                secret: Secret) -> None:
    """The client sends its EOF, the DC never answers nor closes: released after --halfclose-timeout."""
    proxy = start_proxy("-S", secret.to_hex(), "--halfclose-timeout", "1", "--idle-timeout", "300")

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        await client.send(b"request")
        client.writer.write_eof()
        # closed after the half-close timeout (1 s): the idle timeout (300 s) would outlast this wait
        assert await asyncio.wait_for(client.reader.read(), 10) == b""
        await client.close()

    run(scenario())
    stats = wait_stat(proxy.stats_port, "active_connections", 0, 5)
    assert stats["halfclose_released"] == "1"


def test_unauthenticated_connections_have_their_own_caps(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Probes from one address hit the per-IP cap, probes from several hit the total cap; each refusal is
    counted and logged, and an authenticated user beside them is unaffected."""
    proxy = start_proxy("-S", secret.to_hex(), "--max-unauthenticated", "8", "--max-unauthenticated-per-ip", "5")

    def probe(source: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", proxy.port))
        return sock

    def refused(sock: socket.socket) -> bool:
        """Refused connections are closed at once; admitted ones wait for a handshake."""
        sock.settimeout(1)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    async def scenario() -> list[socket.socket]:
        user = await open_client("127.0.0.1", proxy.port, secret)  # authenticated before the probes arrive
        await user.send(b"ping")
        assert await user.recv_exactly(4) == b"ping"
        held = [probe("127.0.0.2") for _ in range(5)]
        await asyncio.sleep(0.3)
        extra = probe("127.0.0.2")
        assert refused(extra), "the sixth connection from one address should be closed at once"
        held += [probe(f"127.0.0.{3 + i}") for i in range(3)]  # 8 in all: the total cap
        await asyncio.sleep(0.3)
        over = probe("127.0.0.9")
        assert refused(over)
        assert not refused(held[0])
        await user.send(b"pong")  # the authenticated user is served beside the probes
        assert await user.recv_exactly(4) == b"pong"
        await user.close()
        return [*held, extra, over]

    socks = run(scenario())
    stats = stats_of(proxy.stats_port)
    assert stats["refused_unauthenticated_per_ip"] == "1"
    assert stats["refused_unauthenticated"] == "1"
    assert stats["unauthenticated_connections"] == "8"
    assert "unauthenticated connections at their cap (8 per worker, 5 per IP)" in proxy.wait_log("at their cap")
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{proxy.stats_port}/metrics", timeout=5).read().decode()
    assert 'mtproxy_refused_unauthenticated_total{cap="per_ip"} 1.0' in metrics
    for sock in socks:
        sock.close()
    assert wait_stat(proxy.stats_port, "unauthenticated_connections", 0, 5)["unauthenticated_connections"] == "0"

    assert run(_echo(proxy.port, secret)) == b"back"  # under the caps again: a new user gets in


def test_out_of_descriptors_is_reported_and_not_blamed_on_the_dc(start_proxy: ProxyFactory, secret: Secret) -> None:
    """With its descriptor limit lowered under it, the engine refuses new connections with one log line per
    interval and a count, fails the DC dials it cannot make without calling the DC unreachable, and serves
    again once descriptors are free."""
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    pid = proxy.proc.pid
    classic = secret_for_mode(secret, "classic")

    # 1. sessions accepted but unable to dial: the limit drops between the accept and the handshake
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(10)]
    # all ten must be accepted before the limit drops, or the later ones are refused at accept instead
    deadline = time.monotonic() + 10
    while int(stats_of(proxy.stats_port)["active_connections"]) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    set_soft_fd_limit(pid, open_fds(pid) + 2)
    for sock in socks:
        sock.sendall(core.ClientConnection(classic, os.urandom, time.time(), dc_id=2, aes=PEER_AES).first_bytes())
    log = proxy.wait_log("out of file descriptors (limit")
    # the stats server needs a descriptor too: read it once the sessions (and their dials) are gone
    for sock in socks:
        sock.close()
    # two descriptors spare: a dial made takes one, a dial refused closes its session and frees one, so of
    # the ten at most six are made and at least four refused (more when refusals close after later dials)
    deadline = time.monotonic() + 5
    while int(stats_of(proxy.stats_port)["refused_out_of_fds"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = stats_of(proxy.stats_port)
    assert int(stats["refused_out_of_fds"]) >= 4
    assert stats["upstream_failed"] == "0"
    assert "unreachable" not in proxy.log
    time.sleep(0.5)

    # 2. new connections refused while the limit is reached, then served again
    set_soft_fd_limit(pid, open_fds(pid) + 20)
    flood = []
    for _ in range(40):
        try:
            flood.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=2))
        except OSError:
            break
    time.sleep(0.5)
    before = int(stats_of(proxy.stats_port)["refused_out_of_fds"])
    assert before > int(stats["refused_out_of_fds"])
    for sock in flood:
        sock.close()
    time.sleep(0.5)

    assert run(_echo(proxy.port, secret)) == b"back"
    assert proxy.proc.poll() is None
    log = proxy.log
    assert log.count("out of file descriptors (limit") <= 3  # once per interval, not once per connection
    assert "unreachable" not in log


async def _echo(port: int, secret: Secret) -> bytes:
    """A user's round trip through the proxy: what comes back."""
    client = await open_client("127.0.0.1", port, secret)
    try:
        await client.send(b"back")
        return await client.recv_exactly(4)
    finally:
        await client.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_pauses_out_of_descriptors_and_resumes(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Out of descriptors, the engine stops accepting instead of accepting and closing: the connections beyond
    the limit wait in the listen backlog (none of them is closed), a user arriving meanwhile waits too, no CPU
    is spent while paused, one log line says so, and once descriptors are free the waiting connections and
    the user are served. Only the connection in hand when accepting pauses is refused."""
    proxy = start_proxy("-S", secret.to_hex(), "--handshake-timeout", "30", "--max-unauthenticated-per-ip", "0")
    pid = proxy.proc.pid
    limit = open_fds(pid) + 48
    set_soft_fd_limit(pid, limit)
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=2) for _ in range(60)]  # silent, 1 fd each
    deadline = time.monotonic() + 5
    while int(stats_of(proxy.stats_port)["refused_out_of_fds"]) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    cpu_before, started = _cpu_seconds(pid), time.monotonic()

    async def scenario() -> tuple[bool, dict[str, str], float, bytes]:
        async def echo() -> bytes:
            client = await open_client("127.0.0.1", proxy.port, secret, timeout=20)
            try:
                await client.send(b"back")
                return await client.recv_exactly(4)
            finally:
                await client.close()

        user = asyncio.ensure_future(echo())
        await asyncio.sleep(1.5)
        waited = not user.done()  # in the backlog, not refused
        paused = await asyncio.to_thread(stats_of, proxy.stats_port)
        cpu = _cpu_seconds(pid) - cpu_before
        for sock in held[:40]:  # the first ones were accepted (the refused one among them): free descriptors
            sock.close()
        return waited, paused, cpu, await asyncio.wait_for(user, 15)

    waited, paused, cpu, answer = run(scenario(), timeout=40)
    wall = time.monotonic() - started
    assert waited
    assert answer == b"back"
    admitted = int(paused["active_connections"])
    refused = int(paused["refused_out_of_fds"])
    assert 20 <= admitted < 40  # accepted up to the reserve below the limit, then paused
    assert refused <= 2  # the connection in hand at each pause, not the ones that arrived later
    assert cpu < 0.25 * wall  # paused, not spinning
    # the connections that waited were accepted after the resume, none closed by the engine
    assert wait_stat(proxy.stats_port, "active_connections", 20, 10)["active_connections"] == "20"
    for sock in held[40:]:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.close()
    log = proxy.log
    assert f"out of file descriptors (limit {limit})" in log
    assert log.count("accepting on") <= 3  # paused, once per interval (plus the resume line)
    assert "resumed" in log
    assert "unreachable" not in log
    assert "Traceback" not in log and "internal error" not in log  # the pause is quiet inside uvloop


def test_a_paused_listener_shuts_down_cleanly(start_proxy: ProxyFactory, secret: Secret) -> None:
    """SIGTERM while accepting is paused: the engine stops (the kept listening socket and the waiting
    connections closed), exits 0 within its drain deadline, with no internal error."""
    proxy = start_proxy("-S", secret.to_hex(), "--handshake-timeout", "30", "--max-unauthenticated-per-ip", "0",
                        "--drain-timeout", "1")
    pid = proxy.proc.pid
    set_soft_fd_limit(pid, open_fds(pid) + 40)
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=2) for _ in range(50)]
    proxy.wait_log("accepting on")
    code = proxy.stop(timeout=10)  # 0 only if it exited by itself: stop kills it after 10 s
    assert code == 0, proxy.log
    assert "internal error" not in proxy.log and "Traceback" not in proxy.log
    for sock in held:
        sock.close()
    with pytest.raises(OSError):  # the port is closed with the engine: nothing left listening
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
