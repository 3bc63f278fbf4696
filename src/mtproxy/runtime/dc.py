"""Telegram DC address table for direct mode: ids to addresses, overrides, safe fallback for unknown ids;
and the SOCKS5 upstream DC legs may go through, with its per-DC health (the dial itself: upstream.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mtproxy.config import HostPort, Upstream
from mtproxy.dc_addresses import DC_PORT, IPV4, IPV6, TEST_IPV4, TEST_IPV6
from mtproxy.protocol.socks5 import Credentials
from mtproxy.stats.counters import Counters

from .logs import Notice

log = logging.getLogger("mtproxy.upstream")

NOTICE_INTERVAL = 10.0  # seconds between two warnings about a failing upstream

DEFAULT_DC = 2  # where an unknown or invalid id goes; DC 2 is the one every client can bootstrap from
TEST_DC_OFFSET = 10000


@dataclass(frozen=True)
class DcTarget:
    """Where to dial for one client-requested DC id; `dc` is the normalised id actually used."""

    dc: int
    addresses: tuple[HostPort, ...]


class DcTable:
    """Maps a client's (signed, possibly bogus) DC id to addresses to try, in preference order."""

    def __init__(self, overrides: dict[int | None, HostPort], prefer_ipv6: bool,
                 upstream: Upstream | None = None) -> None:
        self._overrides = dict(overrides)
        self._prefer_ipv6 = prefer_ipv6
        self.upstream = upstream  # the SOCKS5 proxy every DC dial goes through (runtime/upstream.py)

    def lookup(self, requested: int) -> DcTarget:
        """Never raises: unknown ids map to DEFAULT_DC."""
        if requested in self._overrides:
            return DcTarget(requested, (self._overrides[requested],))
        if None in self._overrides:
            return DcTarget(requested, (self._overrides[None],))
        test = abs(requested) > TEST_DC_OFFSET
        dc = abs(requested) - TEST_DC_OFFSET if test else abs(requested)
        v4 = (TEST_IPV4 if test else IPV4).get(dc)
        v6 = (TEST_IPV6 if test else IPV6).get(dc)
        if v4 is None and v6 is None:  # unknown: the default DC of the same world (test or production)
            dc = DEFAULT_DC
            v4 = (TEST_IPV4 if test else IPV4)[DEFAULT_DC]
            v6 = (TEST_IPV6 if test else IPV6)[DEFAULT_DC]
        # an override of the normalised id (e.g. media -2 -> 2) also applies
        if dc in self._overrides:
            return DcTarget(dc, (self._overrides[dc],))
        options = [HostPort(a, DC_PORT) for a in (v6, v4) if a is not None]
        if not self._prefer_ipv6:
            options.reverse()
        return DcTarget(dc + (TEST_DC_OFFSET if test else 0), tuple(options))


_KNOWN = frozenset(IPV4) | frozenset(IPV6) | {TEST_DC_OFFSET + dc for dc in (*TEST_IPV4, *TEST_IPV6)}


def health_key(dc: int) -> str:
    """The per-DC counters' key: a DC of Telegram's table, else "other". An override (`*`) passes the
    client's own id on, and a client may send any: the counters must not grow with what clients send."""
    dc = abs(dc)
    return str(dc) if dc in _KNOWN else "other"


class Via:
    """One per loop: the upstream, its per-DC counts, and the warning when the upstream itself fails (one
    line per interval, with how many dials it failed meanwhile, so a dead upstream does not flood the log)."""

    __slots__ = ("_counters", "_notice", "_reason", "address", "credentials")

    def __init__(self, upstream: Upstream, counters: Counters) -> None:
        self.address: HostPort = upstream.address
        self.credentials: Credentials | None = upstream.credentials
        self._counters = counters
        counters.upstream = str(upstream)  # HOST:PORT, never the password
        self._reason = ""
        self._notice = Notice(NOTICE_INTERVAL, self._report)

    def dialled(self, dc: int, ok: bool) -> None:
        self._counters.via_upstream_dial(health_key(dc), ok)

    def down(self, reason: str) -> None:
        self._reason = reason
        self._notice.hit()

    def _report(self, count: int) -> None:
        log.warning("SOCKS5 upstream %s failed: %s (%d DC dial%s failed through it)", self.address, self._reason,
                    count, "" if count == 1 else "s")

    def close(self) -> None:
        self._notice.close()
