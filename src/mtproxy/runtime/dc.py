"""Telegram DC address table for direct mode: ids to addresses, overrides, safe fallback for unknown ids."""

from __future__ import annotations

from dataclasses import dataclass

from mtproxy.config import HostPort

DC_PORT = 443
DEFAULT_DC = 2  # where an unknown or invalid id goes; DC 2 is the one every client can bootstrap from
CDN_DC = 203
TEST_DC_OFFSET = 10000

# Source: Telegram Desktop's built-in lists kBuiltInDcs, kBuiltInDcsIPv6, kBuiltInDcsTest and kBuiltInDcsIPv6Test in
# https://github.com/telegramdesktop/tdesktop/blob/dev/Telegram/SourceFiles/mtproto/mtproto_dc_options.cpp;
# the CDN DC 203 from Telegram's proxy-multi.conf (https://core.telegram.org/getProxyConfig).
_IPV4 = {
    1: "149.154.175.50",
    2: "149.154.167.51",
    3: "149.154.175.100",
    4: "149.154.167.91",
    5: "149.154.171.5",
    CDN_DC: "91.105.192.100",
}
_IPV6 = {
    1: "2001:b28:f23d:f001::a",
    2: "2001:67c:4e8:f002::a",
    3: "2001:b28:f23d:f003::a",
    4: "2001:67c:4e8:f004::a",
    5: "2001:b28:f23f:f005::a",
}
# Test DCs (id + 10000): Telegram's test servers; same layout as production in TDLib.
_TEST_IPV4 = {1: "149.154.175.10", 2: "149.154.167.40", 3: "149.154.175.117"}
_TEST_IPV6 = {1: "2001:b28:f23d:f001::e", 2: "2001:67c:4e8:f002::e", 3: "2001:b28:f23d:f003::e"}


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
        v4 = (_TEST_IPV4 if test else _IPV4).get(dc)
        v6 = (_TEST_IPV6 if test else _IPV6).get(dc)
        if v4 is None and v6 is None:  # unknown: the default DC of the same world (test or production)
            dc = DEFAULT_DC
            v4 = (_TEST_IPV4 if test else _IPV4)[DEFAULT_DC]
            v6 = (_TEST_IPV6 if test else _IPV6)[DEFAULT_DC]
        # an override of the normalised id (e.g. media -2 -> 2) also applies
        if dc in self._overrides:
            return DcTarget(dc, (self._overrides[dc],))
        options = [HostPort(a, DC_PORT) for a in (v6, v4) if a is not None]
        if not self._prefer_ipv6:
            options.reverse()
        return DcTarget(dc + (TEST_DC_OFFSET if test else 0), tuple(options))
