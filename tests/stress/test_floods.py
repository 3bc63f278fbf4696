"""Floods of hostile connections: slowloris, probes that ignore our FIN, garbage with real users measured
during, thousands of secrets tried by unknown keys, reload under load, and running out of descriptors."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import PEER_AES, ProxyClient, open_client

from .conftest import FULL, SIZES, ProxyFactory, open_fds, report, run, stat, stats, wait_for

PER_ADDRESS = 50  # connections per source address: under the default per-IP cap of unauthenticated ones


def sources(n: int) -> Iterator[str]:
    """127.0.0.2, 127.0.0.3, ...: the whole of 127/8 is loopback; each address carries PER_ADDRESS."""
    for i in range(n):
        k = 2 + i // PER_ADDRESS
        yield f"127.0.{k // 250}.{2 + k % 250}"


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def echo(port: int, secret: Secret, payload: bytes = b"are you there?", timeout: float = 10) -> float:
    """One session, one round trip; its duration in seconds."""
    started = time.monotonic()
    client = await open_client("127.0.0.1", port, secret, timeout=timeout)
    try:
        await client.send(payload)
        assert await client.recv_exactly(len(payload)) == payload
    finally:
        await client.close()
    return time.monotonic() - started


@pytest.fixture
def closing_mask(peers: BackgroundPeers) -> Iterator[BackgroundPeers]:
    peers.mask.close_after_banner = True
    yield peers
    peers.mask.close_after_banner = False


def test_slowloris_and_fin_ignoring_probes_are_released(start_proxy: ProxyFactory, closing_mask: BackgroundPeers,
                                                        secret: Secret) -> None:
    """Connections trickling a hello are handed to the mask at the handshake timeout; the mask answers and
    closes; the probes ignore our FIN. Every slot and descriptor comes back within handshake timeout +
    half-close timeout, a user is served meanwhile, and all of it is counted."""
    proxy = start_proxy("-S", secret.to_hex(), "--handshake-timeout", "2", "--halfclose-timeout", "2",
                        "--max-unauthenticated", str(SIZES.slowloris + 100))
    pid = proxy.proc.pid
    base_fds = open_fds(pid)
    n = SIZES.slowloris
    socks = [connect_from(source, proxy.port) for source in sources(n)]
    try:
        for sock in socks:
            sock.sendall(b"\x16\x03\x01")  # a record header, a byte at a time
        started = time.monotonic()
        latency = run(echo(proxy.port, secret))
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.send(b"\x02")
            except OSError:
                pass
        released = wait_for(lambda: stat(proxy.stats_port, "active_connections") == 0, 2 + 2 + 15)
        took = time.monotonic() - started
        figures = stats(proxy.stats_port)
        fds = open_fds(pid)
    finally:
        for sock in socks:
            sock.close()
    report("slowloris + FIN-ignoring", connections=n, released_s=round(took, 1), user_echo_s=round(latency, 3),
           halfclose_released=figures["halfclose_released"],
           handshake_timeouts=figures["handshake_failures_handshake-timeout"])
    assert int(figures["handshake_failures_handshake-timeout"]) == n
    assert released, figures["active_connections"]
    assert fds <= base_fds + 2
    assert int(figures["halfclose_released"]) >= n * 9 // 10
    assert latency < 2.0


def test_garbage_flood_does_not_delay_real_users(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Clients from many addresses connect, send garbage and leave, as fast as they can; a user doing round
    trips meanwhile sees every one answered, none slower than a second."""
    proxy = start_proxy("-S", secret.to_hex())
    seconds = SIZES.flood_seconds

    async def flood(source: str, stop: float) -> int:
        sent = 0
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((source, 0))
            try:
                await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
                await loop.sock_sendall(sock, os.urandom(300))
                sent += 1
            except OSError:
                pass
            finally:
                sock.close()
        return sent

    async def user(stop: float) -> list[float]:
        client = await open_client("127.0.0.1", proxy.port, secret, timeout=10)
        latencies = []
        try:
            while time.monotonic() < stop:
                started = time.monotonic()
                await client.send(b"x" * 1000)
                assert await client.recv_exactly(1000) == b"x" * 1000
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.02)
        finally:
            await client.close()
        return latencies

    async def scenario() -> tuple[int, list[float]]:
        stop = time.monotonic() + seconds
        results = await asyncio.gather(user(stop), *(flood(f"127.0.1.{i + 2}", stop) for i in range(8)))
        return sum(results[1:]), results[0]  # type: ignore[arg-type]

    flooded, latencies = run(scenario(), timeout=seconds + 60)
    latencies.sort()
    report("garbage flood", seconds=seconds, garbage_connections=flooded, user_round_trips=len(latencies),
           p50_ms=round(latencies[len(latencies) // 2] * 1000, 1), max_ms=round(latencies[-1] * 1000, 1))
    assert flooded > 0 and latencies
    assert latencies[-1] < 1.0


def test_unknown_keys_against_thousands_of_secrets(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """No address hint helps: every fake-TLS hello with an unknown key is checked against every secret. The
    flood is refused (masked), the engine keeps its caps, and a real user's handshake still gets through once
    the hellos queued before it are checked (that wait is CPU: the report gives the cost per hello)."""
    secrets = [Secret(os.urandom(16), SecretKind.FAKE_TLS, "example.com") for _ in range(SIZES.secrets)]
    store = tmp_path / "secrets.json"
    write_store(store, StoreData(tuple(SecretRecord.from_secret(f"s{i}", s) for i, s in enumerate(secrets))))
    proxy = start_proxy("--secrets-file", str(store), "--max-unauthenticated", str(SIZES.unhinted + 100))
    hellos = [core.ClientConnection(Secret(os.urandom(16), SecretKind.FAKE_TLS, "example.com"), os.urandom,
                                    time.time(), aes=PEER_AES).first_bytes() for _ in range(SIZES.unhinted)]

    async def unknown(source: str, hello: bytes) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source, 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
            await loop.sock_sendall(sock, hello)
            await asyncio.wait_for(loop.sock_recv(sock, 1), 30)
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()

    bound = 90.0 if FULL else 10.0

    async def scenario() -> float:
        flood = [asyncio.create_task(unknown(src, h)) for src, h in zip(sources(len(hellos)), hellos, strict=True)]
        await asyncio.sleep(0.2)
        latency = await echo(proxy.port, secrets[-1], timeout=bound)
        await asyncio.gather(*flood)
        return latency

    cpu_before, started = cpu_seconds(proxy.proc.pid), time.monotonic()
    latency = run(scenario(), timeout=2 * bound + 30)
    took = time.monotonic() - started
    cpu = cpu_seconds(proxy.proc.pid) - cpu_before
    figures = stats(proxy.stats_port)
    report("unhinted flood", secrets=SIZES.secrets, unknown_hellos=SIZES.unhinted, flood_s=round(took, 1),
           engine_cpu_s=round(cpu, 1), cpu_ms_per_hello=round(cpu / SIZES.unhinted * 1000, 1),
           user_echo_s=round(latency, 2), masked=figures["masked_connections"])
    assert int(figures["masked_connections"]) >= SIZES.unhinted * 9 // 10
    assert latency < bound


def test_reload_under_load_drops_no_session(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """Sessions keep echoing through two reloads that add secrets: none is dropped."""
    kept = Secret(os.urandom(16), SecretKind.FAKE_TLS, "example.com")
    store = tmp_path / "secrets.json"

    def write(extra: int) -> None:
        records = [SecretRecord.from_secret("kept", kept)]
        records += [SecretRecord.from_secret(f"x{i}", Secret(os.urandom(16), SecretKind.FAKE_TLS, "example.com"))
                    for i in range(extra)]
        write_store(store, StoreData(tuple(records)))

    write(0)
    # users behind one address: a fake-TLS session counts as unauthenticated until its first record
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "3600", "--max-unauthenticated-per-ip", "0")
    n = 300 if FULL else 40

    async def scenario() -> tuple[int, int]:
        clients: list[ProxyClient] = [await open_client("127.0.0.1", proxy.port, kept) for _ in range(n)]
        rounds = 0
        try:
            for step in range(6):
                if step in (2, 4):
                    write(step * 10)
                    proxy.signal(signal.SIGHUP)
                for client in clients:
                    await client.send(b"ping")
                for client in clients:
                    assert await client.recv_exactly(4) == b"ping"
                rounds += 1
                await asyncio.sleep(0.3)
        finally:
            for client in clients:
                await client.close()
        return rounds, len(clients)

    rounds, sessions = run(scenario(), timeout=120)
    figures = stats(proxy.stats_port)
    report("reload under load", sessions=sessions, reloads=figures["reloads_ok"], rounds=rounds)
    assert rounds == 6
    assert figures["reloads_ok"] == "2" and figures["reloads_failed"] == "0"


def test_descriptor_exhaustion_pauses_accepting_without_spinning(start_proxy: ProxyFactory, secret: Secret) -> None:
    """The engine's soft descriptor limit is lowered under it; a flood then finds no descriptors: the engine
    stops accepting (the flood waits in the listen backlog, almost none is refused), logs once per interval,
    burns no CPU spinning, blames no DC, and once the flood's first connections close it accepts the ones
    that waited, and a user, again."""
    proxy = start_proxy("-S", secret.to_hex(), "--max-unauthenticated-per-ip", "0", "--handshake-timeout", "30")
    pid = proxy.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    limit = open_fds(pid) + 64
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    flood_size = 400 if FULL else 150  # within the listen backlog (1024): every one is queued, none dropped
    socks = []
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    try:
        for _ in range(flood_size):
            socks.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=2))
        time.sleep(2.0)  # everything held: a spinning accept loop would burn this whole time
        cpu = cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - started
        figures = stats(proxy.stats_port)
        admitted, refused = int(figures["active_connections"]), int(figures["refused_out_of_fds"])
        # free the descriptors of the admitted ones (the first to arrive): the rest are accepted in turn
        for sock in socks[: admitted + refused + 8]:
            sock.close()
        assert wait_for(lambda: stat(proxy.stats_port, "active_connections") >= 20, 10)
        resumed = time.monotonic()
        time.sleep(0.5)
        closed_by_engine = 0
        for sock in socks[admitted + refused + 8 :]:
            sock.setblocking(False)
            try:
                closed_by_engine += sock.recv(1) == b""
            except BlockingIOError:
                pass
        # once resumed it may pause again (more wait than fit): each pause refuses the one in hand
        refused_later = stat(proxy.stats_port, "refused_out_of_fds") - refused
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: stat(proxy.stats_port, "active_connections") == 0, 15)
    latency = run(echo(proxy.port, secret))
    log = proxy.log
    report("descriptor exhaustion", limit=limit, flood=flood_size, admitted=admitted, refused=refused,
           cpu_s=round(cpu, 2), wall_s=round(wall, 1), resumed_s=round(resumed - started - wall, 2),
           user_echo_s=round(latency, 3), refused_after_resume=refused_later)
    assert 0 < admitted < 64
    assert refused <= 2  # the connection in hand when accepting paused, not the flood
    assert closed_by_engine <= refused_later <= 4  # those that waited were not refused (those read EOF at once)
    assert f"out of file descriptors (limit {limit})" in log
    assert log.count("out of file descriptors") <= 4  # the refusal's line and the pause's, once per interval
    assert cpu < 0.5 * wall
    assert "unreachable" not in log and stat(proxy.stats_port, "upstream_failed") == 0
    assert "internal error" not in log  # pausing is quiet inside uvloop
