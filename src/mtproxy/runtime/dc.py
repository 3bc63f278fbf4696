"""Telegram DC address table for direct mode: ids to addresses, overrides, safe fallback for unknown ids."""

from __future__ import annotations

from dataclasses import dataclass

from mtproxy.config import HostPort
from mtproxy.dc_addresses import DC_PORT, IPV4, IPV6, TEST_IPV4, TEST_IPV6

DEFAULT_DC = 2  # where an unknown or invalid id goes; DC 2 is the one every client can bootstrap from
TEST_DC_OFFSET = 10000


@dataclass(frozen=True)
class DcTarget:
    """Where to dial for one client-requested DC id; `dc` is the normalised id actually used."""

    dc: int
    addresses: tuple[HostPort, ...]


class DcTable:
    """Maps a client's (signed, possibly bogus) DC id to addresses to try, in preference order."""

    def __init__(self, overrides: dict[int | None, HostPort], prefer_ipv6: bool) -> None:
        self._overrides = dict(overrides)
        self._prefer_ipv6 = prefer_ipv6

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
