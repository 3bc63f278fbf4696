"""upstream.SocksDial against real sockets and Debian's dante: the next address when the upstream blames the
target, not when the upstream itself fails (down, closing, silent), and a cancel mid-exchange."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import uvloop

from mtproxy.config import HostPort, Limits, Upstream
from mtproxy.runtime.context import Context
from mtproxy.runtime.dc import DcTable, Via
from mtproxy.runtime.guard import Guard
from mtproxy.runtime.upstream import SocksDial
from mtproxy.stats.counters import Counters
from mtproxy.testkit.process import free_port
from mtproxy.testkit.socks import Dante

from .test_dial import Recorder, closed_port


def context(loop: asyncio.AbstractEventLoop, upstream: Upstream, connect_timeout: float = 5.0) -> Context:
    limits = replace(Limits(), connect_timeout=connect_timeout)
    counters = Counters(started_at=0.0)
    ctx = Context(limits, counters, fast_mode=True, dc_table=DcTable({}, False, upstream),
                  guard=Guard(limits, counters), clock=loop.time, random_bytes=bytes)
    ctx.start(loop)
    return ctx


async def socks_dial(ctx: Context, addresses: list[HostPort], protocol: asyncio.BaseProtocol,
                     dc: int = 2) -> tuple[bool | None, SocksDial]:
    assert ctx.via is not None
    result: asyncio.Future[bool | None] = ctx.loop.create_future()
    dialler = SocksDial(ctx, ctx.via, dc, tuple(addresses), lambda: protocol, result.set_result)
    dialler.start()
    return await asyncio.wait_for(result, 10), dialler


class Echo(asyncio.Protocol):
    """The target: echoes; `open` holds the live ones, so a test can close them before its loop ends."""

    open: ClassVar[set[Echo]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Echo.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        Echo.open.discard(self)


async def close_targets() -> None:
    """Close every target connection and wait (bounded) until the loop has seen each one go."""
    for echo in list(Echo.open):
        echo.transport.close()
    for _ in range(500):
        if not Echo.open:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(Echo.open)} target connections did not close")


class Reader(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.got: asyncio.Event = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


@pytest.mark.skipif(not Dante.available(), reason="needs dante-server (scripts/install-test-deps)")
def test_the_next_address_after_the_upstream_blames_the_target(tmp_path: Path) -> None:
    dante = Dante(tmp_path, free_port()).start()

    async def scenario() -> tuple[bool | None, bytes, dict[str, list[int]], str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        good = HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
        ctx = context(loop, Upstream("127.0.0.1", dante.port))
        protocol = Reader()
        got, dialler = await socks_dial(ctx, [closed_port(), good], protocol)
        protocol.made[0].write(b"first bytes after the reply")  # type: ignore[attr-defined]
        await asyncio.wait_for(protocol.got.wait(), 5)
        for transport in protocol.made:
            transport.close()
        server.close()
        await close_targets()
        return got, protocol.data, ctx.counters.via_upstream, dialler.error

    try:
        got, data, counts, error = uvloop.run(scenario())
    finally:
        dante.stop()
    assert got is True
    assert data == b"first bytes after the reply"
    assert counts == {"2": [1, 0]}
    assert error.endswith("the SOCKS5 server answered: connection refused by the target")  # the first address's


class Counting(asyncio.Protocol):
    """An upstream that is not one: counts connections; closes at once, or says nothing."""

    accepted = 0

    def __init__(self, close: bool) -> None:
        self._close = close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.accepted += 1
        if self._close:
            transport.close()


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("closes", "it closed the connection during the SOCKS5 exchange"),
    ("silent", "no SOCKS5 answer within 0.3 s"),
    ("down", "connection refused"),
])
def test_a_failing_upstream_ends_the_dial(behaviour: str, reason: str) -> None:
    async def scenario() -> tuple[bool | None, SocksDial, int, dict[str, list[int]]]:
        loop = asyncio.get_running_loop()
        Counting.accepted = 0
        server = await loop.create_server(lambda: Counting(behaviour == "closes"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1] if behaviour != "down" else closed_port().port
        ctx = context(loop, Upstream("127.0.0.1", port), connect_timeout=0.3)
        protocol = Recorder()
        got, dialler = await socks_dial(ctx, [HostPort("192.0.2.1", 443), HostPort("192.0.2.2", 443)], protocol)
        await asyncio.sleep(0.05)
        server.close()
        return got, dialler, len(protocol.made), ctx.counters.via_upstream

    got, dialler, made, counts = uvloop.run(scenario())
    assert got is False and made == 0
    assert dialler.upstream_down and dialler.error == reason
    assert Counting.accepted == (0 if behaviour == "down" else 1)  # the second address was not tried
    assert counts == {"2": [0, 1]}


def test_cancel_mid_exchange_never_reports() -> None:
    async def scenario() -> tuple[list[bool | None], int, int]:
        loop = asyncio.get_running_loop()
        Counting.accepted = 0
        server = await loop.create_server(lambda: Counting(False), "127.0.0.1", 0)
        ctx = context(loop, Upstream("127.0.0.1", server.sockets[0].getsockname()[1]), connect_timeout=0.2)
        assert ctx.via is not None
        reports: list[bool | None] = []
        protocol = Recorder()
        dialler = SocksDial(ctx, ctx.via, 2, (HostPort("192.0.2.1", 443),), lambda: protocol, reports.append)
        dialler.start()
        for _ in range(100):  # until the upstream has the connection (bounded)
            if Counting.accepted:
                break
            await asyncio.sleep(0.01)
        dialler.cancel()
        await asyncio.sleep(0.4)  # past the exchange's timeout: a timer left running would report
        server.close()
        return reports, len(protocol.made), Counting.accepted

    assert uvloop.run(scenario()) == ([], 0, 1)


def test_via_counts_only_known_dcs() -> None:
    counters = Counters(started_at=0.0)
    via = Via(Upstream("127.0.0.1", 1080, "u", "secret"), counters)
    for dc in (2, -2, 10003, 203, 77, -12345):
        via.dialled(dc, True)
    assert counters.via_upstream == {"2": [2, 0], "10003": [1, 0], "203": [1, 0], "other": [2, 0]}
    assert counters.upstream == "127.0.0.1:1080"
