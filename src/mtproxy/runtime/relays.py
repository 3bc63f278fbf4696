"""The middle-proxy relays of one DC as a pool: a bounded number of relay links (runtime/relaylink.py) per
relay, many client sessions multiplexed over them by 64-bit conn ids, answers routed back, backpressure
passed to the clients of a full link, per-relay health and the DC's "all relays down" / "back up"
transitions, reconnects with bounded backoff, and the counters /stats and /metrics show.

Every client handle ends exactly once with a reason (`RelaySink.relay_closed`), whether it closed itself
(RPC_CLOSE_CONN to the relay), the relay sent RPC_CLOSE_EXT, or its link died: no client is left waiting on
a dead relay connection."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from mtproxy.protocol import middleproxy_messages as messages
from mtproxy.protocol.middleproxy import Event
from mtproxy.protocol.proxyconfig import ProxyConfig, Relay

from .logs import Notice
from .relaylink import Backoff, LinkIdentity, OurAddress, RelayLink, RelayTimings

log = logging.getLogger("mtproxy.relays")

CLIENTS_PER_LINK = 1024  # a relay link is added (up to max_links) once every ready one carries this many
MAX_CLIENTS = 1 << 20  # conn ids open in one pool at once: the table is bounded
DEFAULT_TIMINGS = RelayTimings()


class RelaySink(Protocol):
    """What a client session hears from the pool. `relay_closed` comes once, last; nothing follows it."""

    def relay_answer(self, data: bytes, flags: int) -> None: ...
    def relay_quick_ack(self, confirm: bytes) -> None: ...
    def relay_closed(self, reason: str) -> None: ...
    def relay_pause_writing(self) -> None: ...
    def relay_resume_writing(self) -> None: ...


class RelayUnavailable(Exception):
    """No ready relay link for the DC now: the caller uses direct mode for this client."""


@dataclass
class RelayCounters:
    """One worker's relay figures. The first group keeps the names MTProxy's /stats uses for the same
    meaning (mtproto/mtproto-proxy.c `mtfront_prepare_stats`); the rest are ours."""

    tot_forwarded_queries: int = 0  # RPC_PROXY_REQ sent
    dropped_queries: int = 0  # client packets not sent: the handle was closed or its link gone
    tot_forwarded_responses: int = 0  # RPC_PROXY_ANS handed to a client
    dropped_responses: int = 0  # answers for a conn id we no longer know
    tot_forwarded_simple_acks: int = 0
    dropped_simple_acks: int = 0
    ext_connections: int = 0  # client sessions open over relays (a gauge)
    ext_connections_created: int = 0
    total_ready_targets: int = 0  # relays with at least one ready link (a gauge)
    total_declared_targets: int = 0  # relays the pools were given (a gauge)
    relay_links_open: int = 0  # gauge: connecting or ready
    relay_links_ready: int = 0  # gauge
    relay_connects: int = 0  # dials started
    relay_connect_failed: int = 0  # links that ended before their handshake completed
    relay_link_failures: int = 0  # ready links that ended for any reason but our own close
    relay_stalls: int = 0  # links closed for silence
    relay_clients_closed_by_relay: int = 0  # RPC_CLOSE_EXT
    relay_clients_dropped: int = 0  # clients told their link died
    relay_pauses: int = 0  # a full link paused its clients
    relay_ignored: int = 0  # relay messages the official proxy ignores too
    relay_dcs_down: int = 0  # gauge: DCs whose relays are all down
    client_packets_refused: int = 0  # client packets the official proxy would not forward either (forwardable)
    relay_fallback_direct: int = 0  # clients meant for the relays that went direct (no relay could take them)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class RelayClient:
    """One client session over the pool: `send` its packets, `close` it. Made by `RelayPool.open`."""

    __slots__ = ("_link", "_pool", "ad_tag", "client", "conn_id", "ours", "sink", "transport_tag")

    def __init__(self, pool: RelayPool, link: RelayLink, conn_id: int, sink: RelaySink,
                 client: messages.Endpoint, ours: messages.Endpoint, transport_tag: bytes,
                 ad_tag: bytes | None) -> None:
        self._pool = pool
        self._link: RelayLink | None = link
        self.conn_id = conn_id
        self.sink = sink
        self.client = client
        self.ours = ours
        self.transport_tag = transport_tag
        self.ad_tag = ad_tag

    @property
    def open(self) -> bool:
        return self._link is not None

    def send(self, packet: bytes, quick_ack: bool = False) -> bool:
        """One client packet (its transport framing removed, a multiple of 4 bytes) as RPC_PROXY_REQ.
        False when the handle has ended (the packet is dropped and counted)."""
        link = self._link
        if link is None or link.codec is None:
            self._pool.counters.dropped_queries += 1
            return False
        link.write(link.codec.proxy_request(self.conn_id, self.client, self.ours, self.transport_tag, packet,
                                            ad_tag=self.ad_tag, quick_ack=quick_ack))
        self._pool.counters.tot_forwarded_queries += 1
        return True

    def refused_packet(self) -> None:
        """A client packet that is not forwarded (messages.forwardable): counted, as the official drops it."""
        self._pool.counters.client_packets_refused += 1

    def close(self) -> None:
        """Our client went away: RPC_CLOSE_CONN toward the relay (MTProxy mtproto-proxy.c
        `_notify_remote_closed`; RPC_CLOSE_EXT is the relay's to send); the sink hears nothing more."""
        link = self._link
        if link is None:
            return
        if link.ready and link.codec is not None:
            link.write(link.codec.close_conn(self.conn_id))
        self._pool.forget(self, link)

    def detach(self) -> RelayLink | None:
        link, self._link = self._link, None
        return link


@dataclass
class RelayHealth:
    """One relay's state: connecting, ready, stalled or down, why, and since when (the pool's clock)."""

    relay: Relay
    state: str = "connecting"
    reason: str = "starting"
    since: float = 0.0
    links: list[RelayLink] = field(default_factory=list)
    backoff: Backoff | None = None
    retry: asyncio.TimerHandle | None = None

    @property
    def ready_links(self) -> int:
        return sum(1 for link in self.links if link.ready)


DcChange = Callable[[int, bool, str], None]  # (dc id, up, reason)


class RelayPool:
    """The relays of one DC. `start()` dials `min_links` per relay; `open()` places a client on the least
    loaded ready link; `close()` ends everything. `on_dc_change(dc, up, reason)` hears when the DC's relays
    are all down (False) and when one is back (True); `up` is None until the first of those."""

    def __init__(self, dc_id: int, relays: Iterable[Relay], identity: LinkIdentity, *,
                 timings: RelayTimings = DEFAULT_TIMINGS, min_links: int = 1, max_links: int = 4,
                 clients_per_link: int = CLIENTS_PER_LINK, our_address: OurAddress | None = None,
                 on_dc_change: DcChange | None = None, counters: RelayCounters | None = None,
                 clock: Callable[[], float] = time.monotonic, jitter: Callable[[], float] = random.random,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if not 1 <= min_links <= max_links:
            raise ValueError("1 <= min_links <= max_links")
        self.dc_id = dc_id
        self.counters = counters if counters is not None else RelayCounters()
        self.up: bool | None = None
        self._identity = identity
        self._timings = timings
        self._min_links = min_links
        self._max_links = max_links
        self._clients_per_link = clients_per_link
        self._our_address = our_address
        self._on_dc_change = on_dc_change
        self._clock = clock
        self._random_bytes = random_bytes
        self._health = [RelayHealth(relay, since=clock(), backoff=Backoff(timings, jitter)) for relay in relays]
        if not self._health:
            raise ValueError(f"DC {dc_id} has no relays")
        self._clients: dict[int, RelayClient] = {}
        self._link_numbers = 0
        self._closing = False
        self._started = False
        self._told = Notice(10.0, lambda n: log.warning("DC %d: %d client(s) closed: their relay link ended",
                                                        dc_id, n))
        self._unknown = Notice(10.0, lambda n: log.info("DC %d: %d relay message(s) for unknown conn ids",
                                                        dc_id, n))

    # -- the caller's side
    def start(self) -> None:
        if self._started:
            raise RuntimeError("a relay pool starts once")
        self._started = True
        self.counters.total_declared_targets += len(self._health)
        for health in self._health:
            for _ in range(self._min_links):
                self._dial(health)

    @property
    def available(self) -> bool:
        return any(health.state == "ready" for health in self._health)

    def health(self) -> list[tuple[str, str, str, float, int, int]]:
        """Per relay: address, state, reason, since (the pool's clock), links ready, links open."""
        return [(str(h.relay), h.state, h.reason, h.since, h.ready_links, len(h.links)) for h in self._health]

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def link_count(self) -> int:
        return sum(len(health.links) for health in self._health)

    def open(self, sink: RelaySink, client: messages.Endpoint, ours: messages.Endpoint, transport_tag: bytes,
             ad_tag: bytes | None = None) -> RelayClient:
        """A client session on the least loaded ready link (unpaused ones first). Raises RelayUnavailable
        when no link is ready (or the pool is full), ValueError for a bad transport tag or ad tag."""
        if transport_tag not in messages.TRANSPORT_FLAGS:
            raise ValueError("unknown transport tag")
        if ad_tag is not None and len(ad_tag) != messages.AD_TAG_SIZE:
            raise ValueError(f"an ad tag is {messages.AD_TAG_SIZE} bytes")
        ready = [link for health in self._health for link in health.links if link.ready]
        if not ready or len(self._clients) >= MAX_CLIENTS or self._closing:
            raise RelayUnavailable(f"DC {self.dc_id}: no relay link is ready")
        link = min(ready, key=lambda one: (one.paused, len(one.clients)))
        handle = RelayClient(self, link, self._fresh_conn_id(), sink, client, ours, transport_tag, ad_tag)
        self._clients[handle.conn_id] = handle
        link.clients.add(handle.conn_id)
        self.counters.ext_connections += 1
        self.counters.ext_connections_created += 1
        if len(link.clients) >= self._clients_per_link:
            self._grow()
        if link.paused:
            sink.relay_pause_writing()
        return handle

    async def close(self, reason: str = "the relay pool is closing") -> None:
        """Close every link; every open client hears `reason`."""
        self._closing = True
        for health in self._health:
            if health.retry is not None:
                health.retry.cancel()
                health.retry = None
            for link in list(health.links):
                link.close(reason)
            if health.state == "ready":
                self.counters.total_ready_targets -= 1
            health.state, health.reason, health.since = "down", reason, self._clock()
        if self.up is False:
            self.counters.relay_dcs_down -= 1
        self.up = None
        if self._started:
            self.counters.total_declared_targets -= len(self._health)
            self._started = False
        self._told.close()
        self._unknown.close()
        await asyncio.sleep(0)  # let aborted transports deliver connection_lost

    # -- the handles' side
    def forget(self, handle: RelayClient, link: RelayLink) -> None:
        handle.detach()
        if self._clients.get(handle.conn_id) is handle:
            del self._clients[handle.conn_id]
            self.counters.ext_connections -= 1
        link.clients.discard(handle.conn_id)
        health = self._health_of(link)
        if not link.clients and health is not None and len(health.links) > self._min_links and link.ready:
            link.close("idle: more links than the minimum")

    # -- LinkOwner
    def link_ready(self, link: RelayLink) -> None:
        health = self._health_of(link)
        self.counters.relay_links_ready += 1
        if health is None:
            return
        if health.backoff is not None:
            health.backoff.reset()
        self._set_state(health, "ready", f"link {link.number} up")

    def link_event(self, link: RelayLink, event: Event) -> None:
        if isinstance(event, messages.ProxyAnswer):
            handle = self._client_on(link, event.conn_id)
            if handle is None:
                self.counters.dropped_responses += 1
                self._unknown.hit()
                if link.codec is not None:
                    link.write(link.codec.close_conn(event.conn_id))
                return
            self.counters.tot_forwarded_responses += 1
            handle.sink.relay_answer(event.data, event.flags)
        elif isinstance(event, messages.SimpleAck):
            handle = self._client_on(link, event.conn_id)
            if handle is None:
                self.counters.dropped_simple_acks += 1
                return
            self.counters.tot_forwarded_simple_acks += 1
            handle.sink.relay_quick_ack(event.confirm)
        elif isinstance(event, messages.CloseExt):
            handle = self._client_on(link, event.conn_id)
            if handle is not None:
                self.counters.relay_clients_closed_by_relay += 1
                self.forget(handle, link)
                handle.sink.relay_closed("the relay closed the session (RPC_CLOSE_EXT)")
        elif isinstance(event, messages.Ignored):
            self.counters.relay_ignored += 1

    def link_paused(self, link: RelayLink, paused: bool) -> None:
        if paused:
            self.counters.relay_pauses += 1
        for conn_id in list(link.clients):
            handle = self._clients.get(conn_id)
            if handle is not None:
                if paused:
                    handle.sink.relay_pause_writing()
                else:
                    handle.sink.relay_resume_writing()

    def link_closed(self, link: RelayLink, reason: str, stalled: bool) -> None:
        health = self._health_of(link)
        was_ready = link.was_ready
        self.counters.relay_links_open -= 1
        if was_ready:
            self.counters.relay_links_ready -= 1
        if stalled:
            self.counters.relay_stalls += 1
        ours = self._closing or reason.startswith("idle")
        if not ours:
            if was_ready:
                self.counters.relay_link_failures += 1
            else:
                self.counters.relay_connect_failed += 1
        if health is not None and link in health.links:
            health.links.remove(link)
        told = [self._clients[conn_id] for conn_id in list(link.clients) if conn_id in self._clients]
        for handle in told:
            self.forget(handle, link)
        link.clients.clear()
        if told and not self._closing:
            self.counters.relay_clients_dropped += len(told)
            for _ in told:
                self._told.hit()
        for handle in told:
            handle.sink.relay_closed(f"relay {link.relay} link ended: {reason}")
        if health is None or self._closing:
            return
        if not ours:
            if health.ready_links == 0:
                self._set_state(health, "stalled" if stalled else "down", reason)
            self._schedule_refill(health)

    # -- inside
    def _client_on(self, link: RelayLink, conn_id: int) -> RelayClient | None:
        handle = self._clients.get(conn_id)
        return handle if handle is not None and conn_id in link.clients else None

    def _fresh_conn_id(self) -> int:
        # random, so a conn id never names an older session to a relay that still remembers one
        while True:
            conn_id = int.from_bytes(self._random_bytes(8), "little")
            if conn_id and conn_id not in self._clients:
                return conn_id

    def _health_of(self, link: RelayLink) -> RelayHealth | None:
        for health in self._health:
            if health.relay == link.relay:
                return health
        return None

    def _dial(self, health: RelayHealth) -> None:
        self._link_numbers += 1
        link = RelayLink(self, health.relay, self._link_numbers, self._identity, self._timings,
                         self._our_address, self._clock)
        health.links.append(link)
        self.counters.relay_links_open += 1
        self.counters.relay_connects += 1
        link.dial()

    def _grow(self) -> None:
        """Every ready link is at `clients_per_link`: one more link on the relay with the fewest."""
        candidates = [h for h in self._health if h.state == "ready" and len(h.links) < self._max_links]
        if candidates and all(len(link.clients) >= self._clients_per_link
                              for h in self._health for link in h.links if link.ready):
            self._dial(min(candidates, key=lambda h: len(h.links)))

    def _schedule_refill(self, health: RelayHealth) -> None:
        if health.retry is not None or len(health.links) >= self._min_links or health.backoff is None:
            return
        delay = health.backoff.next_delay()
        log.info("relay %s (DC %d): reconnecting in %.2f s", health.relay, self.dc_id, delay)
        health.retry = asyncio.get_running_loop().call_later(delay, self._refill, health)

    def _refill(self, health: RelayHealth) -> None:
        health.retry = None
        if self._closing:
            return
        while len(health.links) < self._min_links:
            self._dial(health)

    def _set_state(self, health: RelayHealth, state: str, reason: str) -> None:
        if health.state != state:
            was = health.state
            health.state, health.reason, health.since = state, reason, self._clock()
            if state == "ready":
                self.counters.total_ready_targets += 1
                log.info("relay %s (DC %d): %s -> ready (%s)", health.relay, self.dc_id, was, reason)
            else:
                if was == "ready":
                    self.counters.total_ready_targets -= 1
                log.warning("relay %s (DC %d): %s -> %s: %s", health.relay, self.dc_id, was, state, reason)
        else:
            health.reason = reason
        self._update_dc(reason)

    def _update_dc(self, reason: str) -> None:
        if self.available:
            up: bool | None = True
        elif all(health.state in ("down", "stalled") for health in self._health):
            up = False
        else:
            return
        if up == self.up:
            return
        if up:
            if self.up is False:
                self.counters.relay_dcs_down -= 1
                log.info("DC %d: relays back up (%s)", self.dc_id, reason)
            else:
                log.info("DC %d: relays up (%s)", self.dc_id, reason)
        else:
            self.counters.relay_dcs_down += 1
            log.warning("DC %d: all relays down (last: %s); direct mode for this DC", self.dc_id, reason)
        self.up = up
        if self._on_dc_change is not None:
            self._on_dc_change(self.dc_id, bool(up), reason)


def pools_for(config: ProxyConfig, dc_ids: Iterable[int], identity: LinkIdentity, *,
              counters: RelayCounters, timings: RelayTimings = DEFAULT_TIMINGS,
              our_address: OurAddress | None = None, on_dc_change: DcChange | None = None) -> dict[int, RelayPool]:
    """One pool per DC id over its relays (or the default DC's), with the link bounds the config sets and
    one shared `counters`. Not started."""
    return {dc_id: RelayPool(dc_id, config.relays_for(dc_id), identity, timings=timings,
                             min_links=config.min_connections, max_links=config.max_connections,
                             our_address=our_address, on_dc_change=on_dc_change, counters=counters)
            for dc_id in dc_ids if config.relays_for(dc_id)}
