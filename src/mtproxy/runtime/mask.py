"""The mask site: where a client that fails the handshake is handed (everything it sent, then a verbatim
relay both ways, as if it had reached the site itself), and where the fake flight's shape and size are
learned: the site's answer to a Telegram client's ClientHello (protocol.flight)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import cast

from mtproxy.config import HostPort
from mtproxy.protocol.client import DARWIN_SUITES, TDLIB_SUITES, build_client_hello, mlkem768_share
from mtproxy.protocol.errors import TlsFormatError
from mtproxy.protocol.flight import FlightReader, SiteFlight, follows_client_order
from mtproxy.protocol.proxyheader import Endpoint, build_v1, build_v2

from .buffers import send
from .context import Context
from .pair import Dial, Leg, Pair, Phase

log = logging.getLogger("mtproxy.mask")


Handed = Callable[[asyncio.Transport | None, bytes, bool], None]


class EarlyMask(asyncio.Protocol):
    """The mask, dialled while a client's handshake is undecided after its first bytes (a truncated hello, one
    sent in pieces): should the client be refused, the site has been counting its own timeouts since about
    when the client connected, as it would had the client reached it directly, instead of from our handshake
    timeout on. Nothing is sent on it. Should the site end it (or speak) first, `on_end` is called: its
    client would see that now. A MaskRelay takes it (`hand_to`); cancelled when the handshake ends any other
    way."""

    __slots__ = ("_ctx", "_dial", "_mask", "_on_end", "_then", "ended", "pending", "transport")

    def __init__(self, ctx: Context, mask: HostPort, on_end: Callable[[], None]) -> None:
        self._ctx = ctx
        self._mask = mask
        self._on_end: Callable[[], None] | None = on_end
        self.transport: asyncio.Transport | None = None
        self.pending = b""  # what the site sent unasked (web sites do not): for the client
        self.ended = False  # the site closed its side
        self._dial: Dial | None = None
        self._then: Handed | None = None

    def start(self) -> None:
        self._dial = Dial(self._ctx, [self._mask], lambda: self, self._dialled)
        self._dial.start()

    def hand_to(self, then: Handed) -> None:
        """`then(leg, pending, ended)` once the dial is over: the leg (None when the dial failed or the site
        closed it), what the site sent on it, and whether the site closed its side."""
        self._on_end = None
        if self._dial is not None:
            self._then = then
            return
        self._give(then)

    def cancel(self) -> None:
        self._then = self._on_end = None
        if self._dial is not None:
            self._dial.cancel()
            self._dial = None
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()

    def _dialled(self, dialled: bool | None) -> None:
        self._dial = None
        then, self._then = self._then, None
        if then is not None:
            self._give(then)

    def _give(self, then: Handed) -> None:
        transport, self.transport = self.transport, None
        then(transport if transport is not None and not transport.is_closing() else None, self.pending, self.ended)

    def _site_acted(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            self._ctx.loop.call_soon(on_end)  # not inside this transport's own callback

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.pending += data
        if self.transport is not None:
            self.transport.pause_reading()  # the rest waits in the socket for the relay
        self._site_acted()

    def eof_received(self) -> bool:
        self.ended = True
        self._site_acted()
        return True  # the relay that takes the leg may still send on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.ended = True
        self._site_acted()


class MaskRelay(Pair):
    """A client the proxy refused, relayed to the mask site byte for byte (its transport paused until then)."""

    __slots__ = ("_leg_address",)

    def open(self, mask: HostPort, received: bytes, local: HostPort, early: EarlyMask | None = None) -> None:
        """Dial the mask, or take the leg dialled `early`, and give it `received`, all the client sent so far;
        `local` is the address the client connected to (the listener, or behind a balancer the PROXY
        header's destination)."""
        ctx = self.ctx
        if ctx.mask_legs and self.peer in ctx.mask_legs:
            if early is not None:
                early.cancel()
            # behind a balancer: this "client" is one of our own mask connections, routed back to us (the
            # mask's name leads to the balancer, which start-up cannot know without DNS). Its bytes are
            # only ever here once the first relay has dialled, so the check cannot come too early.
            log.error("the mask %s leads back to this proxy through the load balancer (our mask connection from"
                      " %s came back); refusing to loop — point --mask at the real site", mask,
                      Endpoint(*self.peer))
            ctx.counters.mask_failed += 1
            self.close()
            return
        if ctx.mask_header:
            received = self._proxy_header(local) + received
        if early is not None:
            self._dial = early  # cancelled if the client goes meanwhile
            early.hand_to(partial(self._early_leg, mask, received))
            return
        self._dial_mask(mask, received)

    def _dial_mask(self, mask: HostPort, received: bytes) -> None:
        self._dial = Dial(self.ctx, [mask], self._leg, partial(self._dialled, mask, received))
        self._dial.start()

    def _early_leg(self, mask: HostPort, received: bytes, up: asyncio.Transport | None, pending: bytes,
                   ended: bool) -> None:
        self._dial = None
        if up is None and not ended:  # the early dial failed: dial as usual
            self._dial_mask(mask, received)
            return
        if pending:
            send(self.transport, self.fd, memoryview(pending))
        if up is None:  # the site closed the leg: its client would see the close now
            self.close()
            return
        up.set_protocol(self._leg())
        self._up_made(up)
        self._dialled(mask, received, True)
        if ended:  # seen by the early leg: the relay passes it on as if it came now
            self._up_eof()
        elif pending:
            up.resume_reading()  # paused by the early leg at the site's first bytes

    def _leg(self) -> Leg:
        return Leg(self)

    def _dialled(self, mask: HostPort, received: bytes, dialled: bool | None) -> None:
        ctx = self.ctx
        self._dial = None
        if dialled is None:
            ctx.guard.out_of_fds()
            self.close()
            return
        if self.phase == Phase.CLOSED:
            return
        up = self.up
        if not dialled or up is None:
            ctx.counters.mask_failed += 1
            log.warning("mask %s unreachable; closing the unauthenticated connection", mask)
            self.close()
            return
        if up.get_extra_info("peername")[:2] == self.transport.get_extra_info("sockname")[:2]:
            log.error("the mask %s is this proxy itself; refusing to loop", mask)
            ctx.counters.mask_failed += 1
            up.abort()
            self.close()
            return
        if ctx.trusted:  # behind a balancer: where this leg comes from, should it come back (proxied.py)
            local = up.get_extra_info("sockname")
            if local:
                self._leg_address = (str(local[0]), int(local[1]))
                ctx.mask_legs.add(self._leg_address)
        if received:
            up.write(received)
        self._relaying()

    def _ended(self) -> None:
        address = getattr(self, "_leg_address", None)
        if address is not None:
            self.ctx.mask_legs.discard(address)

    def _proxy_header(self, local: HostPort) -> bytes:
        """--mask-proxy-protocol: the header naming the real client, so the site logs and limits it, not us."""
        if local.host in ("0.0.0.0", "::"):  # a wildcard listener: the address this socket was accepted on
            sockname = self.transport.get_extra_info("sockname")
            local = HostPort(str(sockname[0]), int(sockname[1])) if sockname else local
        try:
            source, destination = Endpoint(self.peer[0], self.peer[1]), Endpoint(local.host, local.port)
            build = build_v1 if self.ctx.mask_header == 1 else build_v2
            return build(source, destination)
        except ValueError:  # not addresses (a test's "?"): the header says UNKNOWN rather than nothing
            return build_v1(None, None) if self.ctx.mask_header == 1 else build_v2(None, None)

    def get_buffer(self, sizehint: int) -> memoryview:
        up = self.up
        if up is None:
            return self._buffers.recv_in
        # no more than the mask can take
        return self._buffers.offer(up.get_write_buffer_size(), self.up_fd, self.activity)

    def buffer_updated(self, nbytes: int) -> None:
        self.activity += nbytes
        up = self.up
        assert up is not None
        send(up, self.up_fd, memoryview(self._buffers.recv)[:nbytes])


# ----------------------------------------------------------------- the site's first flight

PROBE_TIMEOUT = 5.0
# A server sends its whole first flight at once, then waits for the client's Finished, which the probe never
# sends (it cannot: it keeps no key): this long a silence after an encrypted record ends the flight. Long
# enough for a retransmitted segment's first timeout (200 ms in Linux), short beside PROBE_TIMEOUT.
FLIGHT_QUIET = 1.0
# Encrypted EncryptedExtensions+Certificate+CertificateVerify+Finished of common sites with RSA-2048 /
# ECDSA chains fall in this range; a fallback picked from it looks like some real site.
FALLBACK_RANGE = (2400, 4800)


def fallback_size(rng: random.Random) -> int:
    return rng.randint(*FALLBACK_RANGE)


async def probe_flight(target: HostPort, sni: str, timeout: float = PROBE_TIMEOUT,
                       quiet: float = FLIGHT_QUIET) -> SiteFlight | None:
    """The site's first flight to a ClientHello with a Telegram client's offers (`build_client_hello`: its
    cipher suites, its X25519MLKEM768 and x25519 shares), so the site chooses what it chooses for the
    clients the proxy answers. None when the target does not speak TLS 1.3 or cannot be reached in time."""
    try:
        found = await asyncio.wait_for(_probe(target, sni, quiet), timeout)
    except (OSError, TimeoutError, TlsFormatError, ValueError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__)
        log.info("could not learn the certificate size from %s: %s — a typical size is used until it answers;"
                 " check --mask, or fix the size with --cert-size", target, reason.lower())
        return None
    if found.cert_size() is None:
        log.info("could not learn the certificate size from %s: its TLS 1.3 flight has no encrypted certificate"
                 " — a typical size is used", target)
        return None
    return found


async def _probe(target: HostPort, sni: str, quiet: float) -> SiteFlight:
    """The site's whole flight to TDLib's suite order, then its ServerHello to the Apple clients' order (AES-256
    first): whether it follows the client's preference or its own decides what each client is answered."""
    flight = await _answer(target, sni, TDLIB_SUITES, quiet)
    other = await _answer(target, sni, DARWIN_SUITES, None)
    choices = {TDLIB_SUITES[0]: flight.cipher, DARWIN_SUITES[0]: other.cipher}
    return replace(flight, client_order=follows_client_order(choices))


async def _answer(target: HostPort, sni: str, suites: tuple[int, ...], quiet: float | None) -> SiteFlight:
    """The site's answer to one ClientHello: its whole flight, up to `quiet` seconds of silence after an
    encrypted record, or (`quiet` None) its ServerHello alone."""
    # the key only makes the hello's random an HMAC, as a client's is; the site checks nothing of it
    hello = build_client_hello(os.urandom(16), sni, os.urandom, time.time(), mlkem768_share(os.urandom), suites)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(hello)
        await writer.drain()
        flight = FlightReader()
        while quiet is not None or flight.cipher is None:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), quiet if flight.encrypted else None)
            except TimeoutError:
                break  # all it sends before our Finished
            if not chunk:
                if not flight.encrypted:
                    raise ValueError("the mask site closed during the TLS handshake")
                break
            flight.feed(chunk)
        return flight.flight()
    finally:
        writer.close()


async def refresh_flight(target: Callable[[], tuple[HostPort, str] | None],
                         current: Callable[[], SiteFlight | None], learned: Callable[[SiteFlight], None],
                         interval: float) -> None:
    """Every `interval` seconds, probe the mask (`target`: where, and the name to ask for); a flight that
    differs from `current()` goes to `learned`."""
    while True:
        found = target()
        flight = await probe_flight(*found) if found is not None else None
        if found is not None and flight is not None and flight != current():
            log.info("fake certificate size learned from %s: %d bytes (its flight: %s)", found[0],
                     flight.cert_size(), flight.describe())
            learned(flight)
        await asyncio.sleep(interval)
