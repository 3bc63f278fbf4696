"""The middle-proxy path of one worker: the relay configuration obtained and refreshed (relayconfig.py), one
relay pool per DC id of proxy-multi.conf (relays.py), and which client goes through them.

A client goes through the relays when the mode says so (`on`, or the official command line's proxy-secret
and proxy-multi.conf) or, in `auto`, when it has an ad tag (its secret's own or the global -P). It goes
direct instead, counted and logged once per interval, whenever its DC's relays cannot take it: before the
configuration is first obtained, while every relay of the DC is down or stalled, when the pool is full. A
refreshed configuration that changes anything builds new pools; the old ones keep their clients and close
once empty (or after DRAIN_MAX)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtproxy.protocol.cipher import CbcFactory
from mtproxy.protocol.natinfo import NatRule, relay_address, translate
from mtproxy.protocol.proxyconfig import IPAddress

from .logs import Notice
from .relayconfig import Document, RelayConfigError, RelayConfigSource, RelayMaterial, RelaySources
from .relaylink import LinkIdentity, RelayTimings
from .relays import DEFAULT_TIMINGS, RelayClient, RelayCounters, RelayPool, RelaySink, RelayUnavailable, pools_for

log = logging.getLogger("mtproxy.middle")

MODES = ("off", "auto", "on")
DRAIN_CHECK = 10.0  # seconds between looks at the pools a refresh replaced
DRAIN_MAX = 3600.0  # a replaced pool still carrying clients after this long is closed (its clients told)


@dataclass(frozen=True)
class MiddleSettings:
    """What the engine's configuration says about the relay path (config.EngineConfig)."""

    mode: str  # off | auto | on
    sources: RelaySources
    nat_rules: tuple[NatRule, ...] = ()
    everyone: bool = False  # EngineConfig.relays_for_everyone: not only clients with an ad tag
    timings: RelayTimings = DEFAULT_TIMINGS


class Middle:
    """Start with `start()` (returns at once; the configuration is obtained in the background), close with
    `close()`. `open()` is the sessions' entry: a relay handle, or None for direct mode."""

    def __init__(self, settings: MiddleSettings, cbc: CbcFactory, ad_tag_for: Callable[[str], bytes | None],
                 *, given: Mapping[Document, bytes] | None = None) -> None:
        """`given`: the operator's files as read at start-up (relayconfig.read_given)."""
        self.settings = settings
        self.counters = RelayCounters()
        self._cbc = cbc
        self._ad_tag_for = ad_tag_for
        self._source = RelayConfigSource(settings.sources, given=given)
        self._started = int(time.time())
        self.material: RelayMaterial | None = None
        self._pools: dict[int, RelayPool] = {}
        self._default_dc = 0
        self._draining: list[tuple[float, RelayPool]] = []
        self._task: asyncio.Task[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._direct = Notice(60.0, lambda n: log.info("%d client(s) went direct: no relay could take them", n))
        self._nat_warned: set[IPAddress] = set()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            material = await self._source.load()
        except RelayConfigError as exc:
            log.error("middle proxy: %s; clients go direct until it is obtained (retrying with backoff)", exc)
        else:
            self.install(material)
        await self._source.run(self.install)

    def install(self, material: RelayMaterial) -> None:
        """A configuration obtained (at start or by a refresh): new pools unless nothing changed."""
        old = self.material
        self.material = material
        if old is not None and old.secret == material.secret and old.config == material.config:
            return
        config = material.config
        identity = LinkIdentity(material.secret, self._cbc, pid=os.getpid() & 0xFFFF, start_time=self._started)
        pools = pools_for(config, config.relays, identity, counters=self.counters, timings=self.settings.timings,
                          our_address=self._our_address)
        now = asyncio.get_running_loop().time()
        self._draining += [(now, pool) for pool in self._pools.values()]
        self._pools, self._default_dc = pools, config.default_dc
        for pool in pools.values():
            pool.start()
        relays = sum(len(found) for found in config.relays.values())
        log.info("middle proxy: %d relays for %d DC ids (%s)%s", relays, len(pools),
                 ", ".join(f"{doc.value} {origin.value}" for doc, origin in material.origins.items()),
                 f"; {len(self._draining)} replaced pool(s) drain" if self._draining else "")
        if self._draining and self._drain_timer is None:
            self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_CHECK, self._drain)

    def _drain(self) -> None:
        self._drain_timer = None
        now = asyncio.get_running_loop().time()
        keep: list[tuple[float, RelayPool]] = []
        for since, pool in self._draining:
            if pool.client_count and now - since < DRAIN_MAX:
                keep.append((since, pool))
            else:
                asyncio.get_running_loop().create_task(pool.close("replaced by a refreshed relay configuration"))
        self._draining = keep
        if keep:
            self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_CHECK, self._drain)

    async def close(self) -> None:
        """Shutdown: stop refreshing, end every pool (their clients are told)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for pool in [*self._pools.values(), *(pool for _, pool in self._draining)]:
            await pool.close("shutting down")
        self._pools, self._draining = {}, []
        self._direct.close()

    # ----------------------------------------------------------------- sessions

    def open(self, sink: RelaySink, secret_id: str, dc_id: int, tag: bytes, client: tuple[str, int],
             ours: tuple[str, int]) -> RelayClient | None:
        """A relay handle for an authenticated client, or None: direct mode for it (not its business, or
        its DC's relays cannot take it now)."""
        ad_tag = self._ad_tag_for(secret_id)
        if ad_tag is None and not self.settings.everyone:
            return None
        pool = self._pools.get(dc_id)
        if pool is None:
            pool = self._pools.get(self._default_dc)
        try:
            if pool is None or not pool.available:
                raise RelayUnavailable(f"DC {dc_id}: no relay is up")
            their = (ipaddress.ip_address(client[0].split("%", 1)[0]), client[1])
            ip = ipaddress.ip_address(ours[0].split("%", 1)[0])
            mine = (translate(ip, self.settings.nat_rules), ours[1])
            return pool.open(sink, their, mine, tag, ad_tag)
        except (RelayUnavailable, ValueError):  # ValueError: an address the relay could not be told
            self.counters.relay_fallback_direct += 1
            self._direct.hit()
            return None

    def _our_address(self, local: IPAddress, relay: IPAddress) -> IPAddress:
        found = relay_address(local, relay, self.settings.nat_rules)
        if found.warning is not None and local not in self._nat_warned:
            self._nat_warned.add(local)
            log.warning("middle proxy: %s", found.warning)
        return found.ip

    # ----------------------------------------------------------------- stats

    def snapshot(self) -> dict[str, Any]:
        """The counters and each relay's state, for /stats and /metrics (stats/counters.py)."""
        relays = [{"dc": dc, "relay": address, "state": state, "reason": reason, "ready_links": ready,
                   "links": links}
                  for dc, pool in sorted(self._pools.items())
                  for address, state, reason, _since, ready, links in pool.health()]
        down = sorted(dc for dc, pool in self._pools.items() if pool.up is False)
        return {"mode": self.settings.mode, "configured": self.material is not None,
                "counters": self.counters.snapshot(), "relays": relays, "dcs_down": down}

