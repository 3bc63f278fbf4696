"""Telegram's DC addresses for direct mode: one table for the engine's dialer (runtime/dc.py) and for the
checks that dial them (operations/doctor.py). Data only: importing it does nothing."""

from __future__ import annotations

DC_PORT = 443
CDN_DC = 203

# Source: Telegram Desktop's built-in lists kBuiltInDcs, kBuiltInDcsIPv6, kBuiltInDcsTest and kBuiltInDcsIPv6Test in
# https://github.com/telegramdesktop/tdesktop/blob/dev/Telegram/SourceFiles/mtproto/mtproto_dc_options.cpp;
# the CDN DC 203 from Telegram's proxy-multi.conf (https://core.telegram.org/getProxyConfig).
IPV4 = {
    1: "149.154.175.50",
    2: "149.154.167.51",
    3: "149.154.175.100",
    4: "149.154.167.91",
    5: "149.154.171.5",
    CDN_DC: "91.105.192.100",
}
IPV6 = {
    1: "2001:b28:f23d:f001::a",
    2: "2001:67c:4e8:f002::a",
    3: "2001:b28:f23d:f003::a",
    4: "2001:67c:4e8:f004::a",
    5: "2001:b28:f23f:f005::a",
}
# Test DCs (id + 10000): Telegram's test servers; same layout as production in TDLib.
TEST_IPV4 = {1: "149.154.175.10", 2: "149.154.167.40", 3: "149.154.175.117"}
TEST_IPV6 = {1: "2001:b28:f23d:f001::e", 2: "2001:67c:4e8:f002::e", 3: "2001:b28:f23d:f003::e"}
