"""One TCP connection to one Telegram middle-proxy relay: dials with a bounded timeout, drives the sans-IO
`RelayConnection` over an asyncio Protocol, pings on an interval and closes itself, with a reason, on any
protocol error, on the relay closing, or when nothing has come from the relay for `stall_after` seconds.
What the messages mean for clients is the owner's (runtime/relays.py): the link hands every event up."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from mtproxy.protocol.cipher import CbcFactory
from mtproxy.protocol.errors import MiddleProxyError
from mtproxy.protocol.middleproxy import Event, Ready, RelayConnection, RelayEndpoints
from mtproxy.protocol.proxyconfig import IPAddress, ProxySecret, Relay

from .backoff import backoff_delay

OurAddress = Callable[[IPAddress, IPAddress], IPAddress]  # (local, relay) -> our address as the relay sees it


@dataclass(frozen=True)
class RelayTimings:
    """Every bound of the relay side, in seconds. A stalled link is found at most `stall_after` +
    `ping_interval` after its last byte: the check runs with each ping."""

    connect_timeout: float = 5.0
    ping_interval: float = 5.0
    stall_after: float = 15.0  # no byte from the relay (pongs included) for this long: stalled
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    backoff_jitter: float = 0.5  # each delay is cut by up to this fraction, at random

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.ping_interval, self.stall_after, self.backoff_first) <= 0:
            raise ValueError("relay timings are positive")
        if self.stall_after <= self.ping_interval:
            raise ValueError("stall_after must exceed ping_interval, or an idle healthy link looks stalled")
        if self.backoff_max < self.backoff_first or not 0 <= self.backoff_jitter < 1:
            raise ValueError("backoff_max >= backoff_first and 0 <= backoff_jitter < 1")


class Backoff:
    """Reconnect delays: backoff_first doubling up to backoff_max, each cut by a random fraction up to
    backoff_jitter (so links of many workers do not reconnect in step); `reset` once a link is up."""

    __slots__ = ("_attempt", "_random", "_timings")

    def __init__(self, timings: RelayTimings, random: Callable[[], float]) -> None:
        self._timings = timings
        self._random = random
        self._attempt = 0

    def next_delay(self) -> float:
        timings = self._timings
        self._attempt += 1
        return backoff_delay(timings.backoff_first, timings.backoff_max, self._attempt - 1, timings.backoff_jitter,
                             self._random)

    def reset(self) -> None:
        self._attempt = 0


class LinkOwner(Protocol):
    """What a link tells its pool."""

    def link_ready(self, link: RelayLink) -> None: ...
    def link_event(self, link: RelayLink, event: Event) -> None: ...
    def link_closed(self, link: RelayLink, reason: str, stalled: bool) -> None: ...
    def link_paused(self, link: RelayLink, paused: bool) -> None: ...


@dataclass(frozen=True)
class LinkIdentity:
    """What the key derivation and handshake need besides the addresses: passed in, never read here."""

    secret: ProxySecret
    cbc: CbcFactory
    pid: int
    start_time: int
    wall: Callable[[], float] = time.time
    random_bytes: Callable[[int], bytes] = os.urandom


def _ip(host: str) -> IPAddress:
    return ipaddress.ip_address(host.split("%", 1)[0])


class RelayLink(asyncio.Protocol):
    """States: connecting (dialling or handshaking), ready, closed. `close(reason)` is idempotent and the
    owner hears `link_closed` exactly once, whatever ended the link."""

    def __init__(self, owner: LinkOwner, relay: Relay, number: int, identity: LinkIdentity,
                 timings: RelayTimings, our_address: OurAddress | None, clock: Callable[[], float]) -> None:
        self.owner = owner
        self.relay = relay
        self.number = number
        self.state = "connecting"
        self.reason = ""
        self.paused = False
        self.was_ready = False  # reached ready at some point (the codec forgets once it fails)
        self.clients: set[int] = set()  # conn ids the pool placed here
        self.codec: RelayConnection | None = None
        self._identity = identity
        self._timings = timings
        self._our_address = our_address
        self._clock = clock
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dial: asyncio.Task[None] | None = None
        self._last_rx = clock()
        self._ping_id = 0

    def __repr__(self) -> str:
        return f"<RelayLink {self.number} {self.relay} {self.state}>"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def dial(self) -> None:
        """Connect in the background; the stall check runs from now, so a handshake is bounded too."""
        self._last_rx = self._clock()
        self._arm()
        self._dial = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, str(self.relay.ip), self.relay.port),
                                   self._timings.connect_timeout)
        except TimeoutError:
            self.close(f"connect timed out after {self._timings.connect_timeout:g} s")
        except OSError as exc:
            self.close(f"connect failed: {exc.strerror or exc!r}")

    def write(self, data: bytes) -> None:
        if self._transport is not None and self.state != "closed":
            self._transport.write(data)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        if self.state == "closed":  # closed while the dial was in flight
            transport.abort()
            return
        self._transport = transport
        self._last_rx = self._clock()
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        try:
            local_ip = _ip(local[0])
            ours = self._our_address(local_ip, self.relay.ip) if self._our_address is not None else local_ip
            endpoints = RelayEndpoints(ours, int(local[1]), _ip(peer[0]), int(peer[1]))
            ident = self._identity
            self.codec = RelayConnection(ident.secret, endpoints, ident.cbc, now=int(ident.wall()),
                                         nonce=ident.random_bytes(16), pid=ident.pid, start_time=ident.start_time)
        except ValueError as exc:
            self.close(f"cannot set up the keys: {exc}")
            return
        transport.write(self.codec.start())

    def data_received(self, data: bytes) -> None:
        codec = self.codec
        if codec is None or self.state == "closed":
            return
        self._last_rx = self._clock()
        try:
            received = codec.receive(data)
        except MiddleProxyError as exc:
            self.close(f"{exc.reason}: {exc}")
            return
        if received.send:
            self.write(received.send)
        for event in received.events:
            if self.state == "closed":
                return
            if isinstance(event, Ready):
                self.state = "ready"
                self.was_ready = True
                self.owner.link_ready(self)
            else:
                self.owner.link_event(self, event)

    def eof_received(self) -> bool:
        self.close("the relay closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("the relay closed the connection" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        self.paused = True
        self.owner.link_paused(self, True)

    def resume_writing(self) -> None:
        self.paused = False
        if self.state != "closed":
            self.owner.link_paused(self, False)

    # -- health
    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._timings.ping_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.state == "closed":
            return
        quiet = self._clock() - self._last_rx
        if quiet >= self._timings.stall_after:
            what = "no handshake" if self.state == "connecting" else "no bytes, no pong"
            self.close(f"stalled: {what} from the relay for {quiet:.1f} s", stalled=True)
            return
        if self.ready and self.codec is not None:
            self._ping_id += 1
            self.write(self.codec.ping(self._ping_id))
        self._arm()

    def close(self, reason: str, *, stalled: bool = False) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dial is not None and not self._dial.done() and self._dial is not asyncio.current_task():
            self._dial.cancel()
        self._dial = None
        if self._transport is not None:
            self._transport.abort()  # never wait on a relay that stopped reading
        self.owner.link_closed(self, reason, stalled)
