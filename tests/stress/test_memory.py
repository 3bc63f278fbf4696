"""Memory under peers that stop reading, and after bursts: every session holds at most --buffer-size per
direction (plus a small per-session floor), whatever the read size and the mode, and RSS comes back down."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from mtproxy.protocol.secret import Secret
from mtproxy.runtime.memory import INTERVAL
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import ProxyClient, open_client, secret_for_mode

from .conftest import SIZES, ProxyFactory, gather_bounded, open_fds, report, rss, run, settled_rss, stat, wait_for

BUFFER_SIZE = 256 * 1024
READ_SIZE = 1024 * 1024  # the default: four times the buffer size, so a read's residue above the bound would show
# Per-session floor: objects, cipher states, transports (an idle session: ~6.5 KB), and the RSS noise of a
# small run (1 MB over 24 sessions is 42 KB each). Measured at 2026-12-05: a stalled transport-path session
# 256.5 KiB with --buffer-size 256 KiB, i.e. under 1 KB above the bound.
FLOOR = 64 * 1024
# A session whose peer stopped reading holds at most --buffer-size in that direction, whatever the read size
# and the mode: the bound, N x (2 x buffer-size + floor), with one direction stalled. Before the reads
# were bounded by what the peer's socket takes (buffers.Buffers.offer), the unsent part of the one read in
# flight came on top: 548-574 KB per session on the transport path, up to --read-size.
STALLED = BUFFER_SIZE


@pytest.fixture
def source_dc(peers: BackgroundPeers) -> Iterator[BackgroundPeers]:
    """The DC sends far more than any buffer holds, as a download would."""
    peers.dc.mode, peers.dc.source_bytes = "source", 64 << 20
    yield peers
    peers.dc.mode, peers.dc.source_bytes = "echo", 0


@pytest.fixture
def stalled_dc(peers: BackgroundPeers) -> Iterator[BackgroundPeers]:
    with peers.stalled_dc() as stalled:
        yield stalled


def _stalled_cost(proxy_pid: int, stats_port: int, open_all: Coroutine[Any, Any, list[ProxyClient]],
                  moving_key: str) -> tuple[int, int, int]:
    """RSS before and after the stalled sessions have filled whatever they may hold, and the sessions then
    open. The clients live on one loop from their start to their end, so they are aborted (their sockets
    closed) on the loop they use."""
    base = settled_rss(proxy_pid)

    async def stalled() -> tuple[int, int]:
        clients = await asyncio.wait_for(open_all, 120)
        try:
            # filled: the byte counter stops moving
            last = [-1]

            def still() -> bool:
                now = stat(stats_port, moving_key)
                done = now == last[0]
                last[0] = now
                return done

            await asyncio.to_thread(wait_for, still, 30, 0.5)
            after = await asyncio.to_thread(settled_rss, proxy_pid)
            return after, await asyncio.to_thread(stat, stats_port, "active_connections")
        finally:
            for client in clients:
                client.writer.transport.abort()

    return base, *run(stalled(), timeout=180)


@pytest.mark.parametrize("mode,fast", [("classic", True), ("dd", True), ("ee", True), ("ee", False),
                                        ("classic", False)])
def test_clients_that_stop_reading_hold_at_most_the_buffer_size(start_proxy: ProxyFactory, source_dc: BackgroundPeers,
                                                               secret: Secret, mode: str, fast: bool) -> None:
    flags = ["-S", secret.to_hex(), "--allow-classic", "--buffer-size", str(BUFFER_SIZE),
             "--read-size", str(READ_SIZE), "--drain-timeout", "1"] + ([] if fast else ["--no-fast-mode"])
    proxy = start_proxy(*flags)
    n = SIZES.stalled_sessions

    async def downloader() -> ProxyClient:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode), rcvbuf=4096, timeout=20)
        await client.send(b"GET")  # a fake-TLS client's obfuscated2 header travels with its first record
        client.writer.transport.pause_reading()  # and never reads again
        return client

    async def open_all() -> list[ProxyClient]:
        results = await gather_bounded([downloader() for _ in range(n)], 50)
        clients = [c for c in results if isinstance(c, ProxyClient)]
        assert len(clients) == n, [r for r in results if not isinstance(r, ProxyClient)][:3]
        return clients  # they never read again

    # the fake DC shares the test's process: when that is swamped, a DC leg may time out, and its session is
    # then rightly released by the half-close timeout; the figure is per session still open
    base, after, live = _stalled_cost(proxy.proc.pid, proxy.stats_port, open_all(), "bytes_dc_to_client")
    assert live >= n * 9 // 10
    per_session = (after - base) / live
    relayed = stat(proxy.stats_port, "bytes_dc_to_client") / n
    report(f"stalled clients {mode}{'' if fast else ' no-fast'}", sessions=n,
           rss_base_mb=round(base / 2**20, 1), rss_stalled_mb=round(after / 2**20, 1),
           kb_per_session=round(per_session / 1024, 1), mb_relayed_per_session=round(relayed / 2**20, 1))
    assert per_session <= STALLED + FLOOR
    assert after - base <= live * (2 * BUFFER_SIZE + FLOOR)  # the formula


def test_dcs_that_stop_reading_hold_at_most_the_buffer_size(start_proxy: ProxyFactory, stalled_dc: BackgroundPeers,
                                                           secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--buffer-size", str(BUFFER_SIZE), "--read-size", str(READ_SIZE),
                        "--drain-timeout", "1")
    n = SIZES.stalled_sessions
    chunk = os.urandom(1 << 20)

    async def uploader() -> ProxyClient:
        client = await open_client("127.0.0.1", proxy.port, secret, timeout=20)
        client.writer.transport.set_write_buffer_limits(high=8 << 20)
        for _ in range(8):  # 8 MiB queued client-side: the proxy takes what it may and stops reading
            client.writer.write(client.conn.encrypt(chunk))
        return client

    async def open_all() -> list[ProxyClient]:
        results = await gather_bounded([uploader() for _ in range(n)], 50)
        clients = [c for c in results if isinstance(c, ProxyClient)]
        assert len(clients) == n, [r for r in results if not isinstance(r, ProxyClient)][:3]
        return clients

    base, after, _live = _stalled_cost(proxy.proc.pid, proxy.stats_port, open_all(), "bytes_client_to_dc")
    per_session = (after - base) / n
    relayed = stat(proxy.stats_port, "bytes_client_to_dc") / n
    report("stalled DCs ee", sessions=n, rss_base_mb=round(base / 2**20, 1), rss_stalled_mb=round(after / 2**20, 1),
           kb_per_session=round(per_session / 1024, 1), mb_relayed_per_session=round(relayed / 2**20, 1))
    assert after - base <= n * (STALLED + FLOOR), per_session


def test_memory_comes_back_after_a_burst_of_slow_connections(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Slow connections (a partial handshake each, then nothing) in a burst, all closed: RSS returns to within
    10 % + 10 MB of what it was before."""
    proxy = start_proxy("-S", secret.to_hex(), "--max-unauthenticated", str(SIZES.burst + 100),
                        "--max-unauthenticated-per-ip", "0", stats=False)

    async def warm_up() -> None:  # one real session first: buffers, ciphers
        client = await open_client("127.0.0.1", proxy.port, secret)
        await client.close()

    run(warm_up())
    base = settled_rss(proxy.proc.pid)
    base_fds = open_fds(proxy.proc.pid)
    peak = base
    for _round in range(2):
        socks = []
        try:
            for _ in range(SIZES.burst):
                sock = socket.create_connection(("127.0.0.1", proxy.port))
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200))  # a hello, cut short
                socks.append(sock)
            # counted by descriptors, not /stats: each stats request runs on a thread of its own, whose
            # stack and malloc arena glibc keeps, which would blur what the burst itself costs
            wait_for(lambda: open_fds(proxy.proc.pid) >= base_fds + SIZES.burst, 20)
            peak = max(peak, rss(proxy.proc.pid))
        finally:
            for sock in socks:
                sock.close()
        assert wait_for(lambda: open_fds(proxy.proc.pid) <= base_fds, 30)
    time.sleep(3 * INTERVAL)  # the engine looks at its connection count once per INTERVAL
    after = settled_rss(proxy.proc.pid, timeout=15)
    report("burst", connections=SIZES.burst, rounds=2, rss_base_mb=round(base / 2**20, 1),
           rss_peak_mb=round(peak / 2**20, 1), rss_after_mb=round(after / 2**20, 1))
    assert after <= base * 1.1 + 10 * 2**20
