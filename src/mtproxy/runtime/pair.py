"""What a session and a mask relay share: one client socket and one outgoing socket, dialled here, with the
idle check, half-close, backpressure both ways and a bounded close.

The client socket's protocol is the relay itself: a session is the same object that took the client's
handshake (connection.py), a mask relay gets the transport with set_protocol. The outgoing socket's
protocol is a `Leg`: the two callbacks it gets per chunk are the relay's own bound methods, stored in it,
so a chunk costs no call more than it would on the relay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from mtproxy.config import HostPort

from .buffers import WRITE_LIMITS, send, socket_fd
from .context import Context
from .guard import is_fd_exhaustion

log = logging.getLogger("mtproxy.relay")

LINGER = 5.0  # seconds a closed connection may spend flushing to a slow peer


def half_close(transport: asyncio.Transport | None) -> None:
    """Pass an EOF on, never to a transport that is already closing. A shutdown request racing the
    handle's close is the suspected cause of the uvloop "double free" aborts the bench's plain relay hit
    when it propagated half-closes; the engine never reproduced them, this keeps it out of that path."""
    if transport is not None and not transport.is_closing() and transport.can_write_eof():
        transport.write_eof()


class Dialling(Protocol):
    """What a pair holds while its outgoing socket is dialled: a `Dial`, or an upstream's (runtime/upstream.py)."""

    def start(self) -> None: ...

    def cancel(self) -> None: ...


class Dial:
    """Dial the addresses in order, each bounded by the connect timeout, then call `done` with True (the
    factory's protocol is connected), False (none answered) or None (this process is out of descriptors:
    no address is to blame for that).

    No Task and no asyncio.timeout per dial: uvloop's create_connection coroutine is stepped by the
    waiter's done callback, and the timeout is an entry on the loop's timer wheel. A Task and a timeout
    context cost about 16 µs per dial here, a loop timer ~2.2 µs, the wheel's entry ~0.4 µs. `error` says
    why the last address failed."""

    __slots__ = ("_addresses", "_coro", "_ctx", "_done", "_factory", "_index", "_timer", "_waiter", "error")

    def __init__(self, ctx: Context, addresses: tuple[HostPort, ...] | list[HostPort],
                 factory: Callable[[], asyncio.BaseProtocol], done: Callable[[bool | None], None]) -> None:
        self._ctx = ctx
        self._addresses = addresses
        self._factory = factory
        self._done: Callable[[bool | None], None] | None = done
        self._index = 0
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._waiter: object = None
        self._timer = -1  # the connect timeout's tick on the loop's wheel (runtime/wheel.py), -1: none
        self.error = ""

    def start(self) -> None:
        ctx = self._ctx
        while self._index < len(self._addresses):
            address = self._addresses[self._index]
            self._index += 1
            self._coro = ctx.loop.create_connection(self._factory, address.host, address.port)
            self._timer = ctx.wheel.add(self, ctx.limits.connect_timeout)
            if self._step(None) is not False:
                return  # under way, or finished
        self._finish(False)

    def cancel(self) -> None:
        """Stop dialling (the owner closed); `done` is not called, a transport already made is closed."""
        self._done = None
        self._stop()

    def _stop(self) -> None:
        if self._timer >= 0:
            self._ctx.wheel.discard(self, self._timer)
            self._timer = -1
        coro, self._coro = self._coro, None
        waiter, self._waiter = self._waiter, None
        if coro is not None:
            coro.close()  # uvloop closes the transport it was connecting, and fails the waiter with that
            if isinstance(waiter, asyncio.Future):
                waiter.add_done_callback(_consume)

    def _step(self, waiter: object) -> bool | None:
        """Run the coroutine to its next wait: None while under way or when finished, False on a failure."""
        coro = self._coro
        if coro is None or waiter is not self._waiter:
            return None  # stopped meanwhile (timeout, cancel): this is a stale wake-up
        try:
            waiter = coro.send(None)
        except StopIteration:
            self._coro = None
            self._finish(True)
            return None
        except (OSError, asyncio.CancelledError) as exc:
            self._coro = None
            if isinstance(exc, OSError) and is_fd_exhaustion(exc):
                self._finish(None)
                return None
            self.error = str(exc.strerror or exc).lower() if isinstance(exc, OSError) else "cancelled"
            log.debug("connect to %s failed: %s", self._addresses[self._index - 1], exc)
            self._stop()
            return False
        self._waiter = waiter
        cast(asyncio.Future[Any], waiter).add_done_callback(self._wake)
        return None

    def _wake(self, waiter: object) -> None:
        if self._step(waiter) is False:
            self.start()  # the next address

    def expired(self) -> None:
        """The connect timeout (the wheel's)."""
        self._timer = -1
        self.error = f"timed out after {self._ctx.limits.connect_timeout:g} s"
        log.debug("connect to %s failed: timed out", self._addresses[self._index - 1])
        self._stop()
        self.start()

    def _finish(self, result: bool | None) -> None:
        self._stop()
        done, self._done = self._done, None
        if done is not None:
            done(result)


def _consume(waiter: asyncio.Future[Any]) -> None:
    """A stopped dial's waiter: its failure is expected, not an error to report."""
    if not waiter.cancelled():
        waiter.exception()


class Phase:
    """Where a pair is. Plain ints, not an enum: the relay checks its phase per read, and an enum member's
    lookup costs ~80 ns against ~20 here."""

    HANDSHAKE = 0  # a client connection before its handshake is over (connection.py)
    CONNECTING = 1
    RELAY = 2
    CLOSED = 3
    MIDDLE = 4  # a session relayed through Telegram's middle proxies (session.py): no outgoing socket of its own


class Pair(asyncio.BufferedProtocol):
    """The client socket's protocol once the handshake is over; `up` is the outgoing socket's transport."""

    # slots: tens of thousands of these live at once; no per-object dict
    __slots__ = ("_buffers", "_dial", "_eof_in", "_eof_out", "_quiet_since", "_seen_activity", "activity",
                 "admitted", "ctx", "fd", "peer", "phase", "transport", "unauthenticated", "up", "up_fd")

    def __init__(self, ctx: Context, transport: asyncio.Transport, fd: int, peer: tuple[str, int],
                 eof_in: bool) -> None:
        self.ctx = ctx
        self.transport = transport
        self.fd = fd  # the client socket, written directly while its transport holds nothing (buffers.send)
        self.peer = peer
        self.admitted = True  # the registry's: Context.hand_over moved the admission here
        self.unauthenticated = False
        self._buffers = ctx.buffers
        self._begin(eof_in)

    def _begin(self, eof_in: bool) -> None:
        """The outgoing leg is about to be dialled. `_seen_activity` and `_quiet_since` are set once it is
        up (`_relaying`): only a relay has idle checks."""
        self.phase = Phase.CONNECTING
        self.up: asyncio.Transport | None = None
        self.up_fd = -1
        self.activity = 0  # bytes moved either way; the idle check compares it between sweeps
        self._dial: Dialling | None = None  # while the outgoing socket is dialled
        self._eof_in = eof_in  # client sent EOF
        self._eof_out = False  # upstream sent EOF

    # ----------------------------------------------------------------- lifecycle

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self.admitted:
            self.admitted = False
            self.ctx.release(self)

    def close(self) -> None:
        """Close both sockets; pending writes are flushed by the transports."""
        if self.phase == Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        if self._dial is not None:
            self._dial.cancel()
            self._dial = None
        self._stop_raw()  # first: a raw relay hands what it still holds to the client transport
        self.transport.close()
        up = self.up
        if up is not None:
            # keep reading (and dropping) so a peer blocked on writing to us can take our last bytes
            up.resume_reading()
            up.close()
        self._ended()
        # close() flushes; a peer that never reads would keep the socket forever, so bound the linger
        if self.transport.get_write_buffer_size() or (up is not None and up.get_write_buffer_size()):
            self.ctx.loop.call_later(LINGER, self._hard_close)

    def _hard_close(self) -> None:
        self.transport.abort()
        if self.up is not None:
            self.up.abort()

    def abort(self) -> None:
        """Drop without flushing (removed secret, shutdown deadline)."""
        self._hard_close()
        self.close()

    def _stop_raw(self) -> None:
        """Only a session has a raw relay."""

    def _ended(self) -> None:
        """A session tells the registry; a mask relay was never registered as one."""

    # ----------------------------------------------------------------- client socket

    def eof_received(self) -> bool:
        self._eof_in = True
        if self.phase == Phase.CONNECTING:  # passed on behind what the leg is dialled for (_relaying)
            return True
        if self._eof_out or self.phase == Phase.CLOSED:
            self.close()  # both sides are done: the close's FIN is the EOF, no shutdown() before it
            return False
        half_close(self.up)
        self._half_closed()
        return True

    # the client's transport is full: stop reading the other side
    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.phase != Phase.CLOSED:
            self.up.resume_reading()

    # ----------------------------------------------------------------- outgoing socket (through a Leg)

    def _up_made(self, transport: asyncio.Transport) -> None:
        if self.phase == Phase.CLOSED:  # closed while dialling
            transport.abort()
            return
        self.up = transport
        self.up_fd = socket_fd(transport)
        transport.set_write_buffer_limits(**WRITE_LIMITS)

    def _up_lost(self) -> None:
        self._stop_raw()
        self.close()

    def _up_eof(self) -> None:
        self._eof_out = True
        if self._eof_in:
            self.close()  # as in eof_received
            return
        half_close(self.transport)
        self._half_closed()

    def _up_get_buffer(self, sizehint: int) -> memoryview:
        # no more than the client can take
        return self._buffers.offer(self.transport.get_write_buffer_size(), self.fd, self.activity)

    def _up_buffer_updated(self, nbytes: int) -> None:
        """Verbatim to the client (the mask relay; a session frames and ciphers)."""
        client = self.transport
        if client.is_closing():
            return
        self.activity += nbytes
        send(client, self.fd, memoryview(self._buffers.recv)[:nbytes])

    # the outgoing transport is full: stop reading the client
    def _up_full(self) -> None:
        self.transport.pause_reading()

    def _up_drained(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _relaying(self, paused: bool = True) -> None:
        """The outgoing leg is up: let the client's bytes (or its EOF) through; from now on idle checks count.
        `paused`: the client's reading waits for this."""
        self.phase = Phase.RELAY
        if self._eof_in:
            half_close(self.up)
        elif paused:
            self.transport.resume_reading()
        self._seen_activity = self.activity
        self._quiet_since = self.ctx.loop.time()

    # ----------------------------------------------------------------- idle

    def idle_check(self, now: float) -> None:
        """The server's sweep (Server._sweep_idle, every half the shorter of the two timeouts, one timer per
        loop instead of one per relay): close a relay that moved nothing for the idle timeout, or, once
        either side has said it is done, for the half-close timeout. As with a timer re-armed per
        timeout, a relay goes after between one and two timeouts without a byte."""
        if self.phase != Phase.RELAY and self.phase != Phase.MIDDLE:
            return
        if self.activity != self._seen_activity:
            self._seen_activity = self.activity
            self._quiet_since = now
            return
        limits = self.ctx.limits
        half_closed = self._eof_in or self._eof_out
        if now - self._quiet_since < (limits.halfclose_timeout if half_closed else limits.idle_timeout):
            return
        if half_closed:
            self.ctx.counters.halfclose_released += 1
            log.debug("closing half-closed connection from %s", self.peer[0])
        else:
            log.debug("closing idle connection from %s", self.peer[0])
        self.close()

    def _half_closed(self) -> None:
        """The half-close timeout counts from now (while a leg is dialled, from when it is up)."""
        if self.phase == Phase.RELAY or self.phase == Phase.MIDDLE:
            self._seen_activity = self.activity
            self._quiet_since = self.ctx.loop.time()


class Leg(asyncio.BufferedProtocol):
    """The outgoing socket's protocol: every callback goes to the pair that owns it."""

    __slots__ = ("buffer_updated", "get_buffer", "pair")

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        # bound methods of the pair: the transports call these per chunk
        self.get_buffer = pair._up_get_buffer  # type: ignore[method-assign]
        self.buffer_updated = pair._up_buffer_updated  # type: ignore[method-assign]

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        self.pair._up_made(cast(asyncio.Transport, base))  # uvloop's transport class is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair._up_lost()

    def eof_received(self) -> bool:
        self.pair._up_eof()
        return True

    def pause_writing(self) -> None:
        self.pair._up_full()

    def resume_writing(self) -> None:
        self.pair._up_drained()
