"""DC legs through a SOCKS5 upstream (--upstream, e.g. Xray's SOCKS inbound): dial the upstream, run the
SOCKS5 exchange (protocol/socks5.py) on the new socket, then hand the socket to the session exactly as a
direct `Dial` would, so the DC header and the client's first bytes go out only after the upstream said
CONNECTED. Only DC legs: the mask site is reached directly, as a browser would reach it.

Like `Dial`, no Task per dial: the exchange is driven by the socket's callbacks and bounded by one timer
(the connect timeout again, for the exchange alone). Sessions without an upstream never come here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from mtproxy.config import HostPort
from mtproxy.protocol.socks5 import Socks5Client, Socks5Error

from .context import Context
from .dc import Via
from .pair import Dial

log = logging.getLogger("mtproxy.upstream")


class SocksDial:
    """Reach `addresses` (one DC's, in order) through the upstream, then call `done` as `Dial` does: True
    (the factory's protocol is connected to the DC), False (failed: `error` says why, `upstream_down`
    whether the upstream itself failed) or None (out of descriptors). An address the upstream cannot reach
    (it blames the target) gives way to the next; an upstream that is down, refuses us or speaks nonsense
    ends the dial: the next address would meet the same upstream."""

    __slots__ = ("_addresses", "_client", "_ctx", "_dc", "_dial", "_done", "_factory", "_index", "_timer",
                 "_transport", "_via", "error", "upstream_down")

    def __init__(self, ctx: Context, via: Via, dc: int, addresses: tuple[HostPort, ...],
                 factory: Callable[[], asyncio.BaseProtocol], done: Callable[[bool | None], None]) -> None:
        self._ctx = ctx
        self._via = via
        self._dc = dc
        self._addresses = addresses
        self._factory = factory
        self._done: Callable[[bool | None], None] | None = done
        self._index = 0
        self._dial: Dial | None = None
        self._client: Socks5Client | None = None
        self._transport: asyncio.Transport | None = None
        self._timer = -1  # the exchange's timeout: its tick on the loop's wheel (runtime/wheel.py), -1: none
        self.error = ""
        self.upstream_down = False

    def start(self) -> None:
        while self._index < len(self._addresses):
            address = self._addresses[self._index]
            self._index += 1
            try:
                self._client = Socks5Client(address.host, address.port, self._via.credentials)
            except ValueError as exc:  # an override SOCKS5 cannot carry (a name over 255 bytes)
                self.error = f"{address}: {exc}"
                continue
            self._dial = Dial(self._ctx, (self._via.address,), self._exchange_protocol, self._upstream_dialled)
            self._dial.start()
            return
        self._finish(False)

    def cancel(self) -> None:
        """The owner closed: stop; `done` is not called."""
        self._done = None
        dial, self._dial = self._dial, None
        if dial is not None:
            dial.cancel()
        self._abandon()

    # ----------------------------------------------------------------- the exchange

    def _exchange_protocol(self) -> asyncio.BaseProtocol:
        return _Exchange(self)

    def _upstream_dialled(self, dialled: bool | None) -> None:
        dial, self._dial = self._dial, None
        if dialled is None:
            self._finish(None)
            return
        transport, client = self._transport, self._client
        if not dialled or transport is None or client is None:
            self._upstream_failed(dial.error if dial is not None and dial.error else "unreachable")
            return
        self._timer = self._ctx.wheel.add(self, self._ctx.limits.connect_timeout)
        transport.write(client.greeting())

    def _made(self, transport: asyncio.Transport) -> None:
        if self._done is None:  # cancelled while connecting
            transport.abort()
            return
        self._transport = transport

    def _received(self, transport: asyncio.Transport, data: bytes) -> None:
        client = self._client
        if client is None or transport is not self._transport:
            return
        try:
            reply = client.receive(data)
        except Socks5Error as exc:
            self._abandon()
            if exc.target:  # the upstream works but cannot reach this address: the next may do
                self.error = f"{self._addresses[self._index - 1]}: {exc}"
                log.debug("through %s: %s", self._via.address, self.error)
                self.start()
            else:
                self._upstream_failed(str(exc))
            return
        if reply:
            self._transport.write(reply)
        if not client.connected:
            return
        if client.surplus:  # a DC never speaks first: these bytes are not the DC's
            self._upstream_failed("it sent bytes after its CONNECT reply before the DC was sent any")
            return
        self._stop_timer()
        self._transport = self._client = None
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self._finish(True)

    def _closed(self, transport: asyncio.Transport | None, during: str) -> None:
        if transport is not None and transport is self._transport:
            self._upstream_failed(f"it {during} during the SOCKS5 exchange")

    def expired(self) -> None:
        """The exchange's timeout (the wheel's)."""
        self._timer = -1
        self._upstream_failed(f"no SOCKS5 answer within {self._ctx.limits.connect_timeout:g} s")

    # ----------------------------------------------------------------- endings

    def _upstream_failed(self, reason: str) -> None:
        self._abandon()
        self.upstream_down = True
        self.error = reason
        if self._done is not None:
            self._via.down(reason)
        self._finish(False)

    def _stop_timer(self) -> None:
        tick, self._timer = self._timer, -1
        if tick >= 0:
            self._ctx.wheel.discard(self, tick)

    def _abandon(self) -> None:
        """Drop the socket of the exchange under way, if any."""
        self._stop_timer()
        transport, self._transport = self._transport, None
        self._client = None
        if transport is not None:
            transport.abort()

    def _finish(self, result: bool | None) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        if result is not None:
            self._via.dialled(self._dc, result)
        done(result)


class _Exchange(asyncio.Protocol):
    """The upstream socket's protocol while the SOCKS5 exchange runs; the session's `Leg` replaces it."""

    __slots__ = ("_dial", "_transport")

    def __init__(self, dial: SocksDial) -> None:
        self._dial = dial
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transport class is not a subclass
        self._dial._made(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._dial._received(self._transport, data)

    def eof_received(self) -> bool:
        self._dial._closed(self._transport, "closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._dial._closed(self._transport, "dropped the connection")
