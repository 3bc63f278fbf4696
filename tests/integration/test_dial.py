"""pair.Dial, the task-free dialler, against real loopback sockets: the next address after a refusal or a
timeout, False when none answers, a cancel that closes what it was connecting."""

from __future__ import annotations

import asyncio
import gc
import socket
from dataclasses import replace

import uvloop

from mtproxy.config import HostPort, Limits
from mtproxy.runtime.context import Context
from mtproxy.runtime.dc import DcTable
from mtproxy.runtime.guard import Guard
from mtproxy.runtime.pair import Dial
from mtproxy.stats.counters import Counters


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.made: list[asyncio.BaseTransport] = []
        self.lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1


def context(loop: asyncio.AbstractEventLoop, connect_timeout: float = 5.0) -> Context:
    limits = replace(Limits(), connect_timeout=connect_timeout)
    counters = Counters(started_at=0.0)
    ctx = Context(limits, counters, fast_mode=True, dc_table=DcTable({}, False), guard=Guard(limits, counters),
                  clock=loop.time, random_bytes=bytes)
    ctx.start(loop)
    return ctx


def closed_port() -> HostPort:
    """A loopback port nobody listens on: a connect there is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return HostPort("127.0.0.1", probe.getsockname()[1])


async def dial(ctx: Context, addresses: list[HostPort], protocol: Recorder) -> bool | None:
    result: asyncio.Future[bool | None] = ctx.loop.create_future()
    Dial(ctx, addresses, lambda: protocol, result.set_result).start()
    return await asyncio.wait_for(result, 10)


def test_the_next_address_answers_after_a_refusal() -> None:
    async def scenario() -> tuple[bool | None, int, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        protocol = Recorder()
        got = await dial(context(loop), [closed_port(), HostPort("127.0.0.1", port)], protocol)
        peer = protocol.made[0].get_extra_info("peername")[1] if protocol.made else 0
        for transport in protocol.made:
            transport.close()
        server.close()
        return got, len(protocol.made), peer

    got, made, peer = uvloop.run(scenario())
    assert got is True and made == 1 and peer > 0


def test_false_when_no_address_answers() -> None:
    async def scenario() -> tuple[bool | None, int]:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        got = await dial(context(loop), [closed_port(), closed_port()], protocol)
        return got, len(protocol.made)

    assert uvloop.run(scenario()) == (False, 0)


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full and never drained: the next SYN is dropped, a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    return listener, fillers


def test_a_timed_out_address_gives_way_to_the_next() -> None:
    async def scenario() -> tuple[bool | None, int, float]:
        loop = asyncio.get_running_loop()
        listener, fillers = full_listener()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        good = HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
        hanging = HostPort("127.0.0.1", listener.getsockname()[1])
        protocol = Recorder()
        started = loop.time()
        got = await dial(context(loop, connect_timeout=0.3), [hanging, good], protocol)
        took = loop.time() - started
        made = [t.get_extra_info("peername")[1] for t in protocol.made]
        for transport in protocol.made:
            transport.close()
        server.close()
        for s in [listener, *fillers]:
            s.close()
        return got, made.count(good.port), took

    got, made, took = uvloop.run(scenario())
    assert got is True and made == 1
    # The first address was given its whole timeout, not skipped; uvloop's timers tick in whole
    # milliseconds, so the measured wait may come out a hair under the 0.3 s asked for.
    assert took >= 0.29


def test_cancel_stops_dialling_and_never_reports() -> None:
    """Nor is the failed connect reported to the loop as an error nobody retrieved."""
    async def scenario() -> tuple[list[bool | None], int, list[str]]:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(str(context.get("message"))))
        listener, fillers = full_listener()
        reports: list[bool | None] = []
        protocol = Recorder()
        dialler = Dial(context(loop, connect_timeout=0.2), [HostPort("127.0.0.1", listener.getsockname()[1])],
                       lambda: protocol, reports.append)
        dialler.start()
        await asyncio.sleep(0.05)
        dialler.cancel()
        await asyncio.sleep(0.4)  # past the timeout: a timer left running would dial on or report
        gc.collect()  # an unretrieved failure is reported when its future goes
        await asyncio.sleep(0.01)
        for s in [listener, *fillers]:
            s.close()
        return reports, len(protocol.made), errors

    assert uvloop.run(scenario()) == ([], 0, [])
