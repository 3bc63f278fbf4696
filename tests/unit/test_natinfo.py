"""--nat-info parsing and the choice of our address toward a middle-proxy relay (protocol/natinfo.py)."""

from __future__ import annotations

import ipaddress

import pytest

from mtproxy.protocol.natinfo import (
    MAX_NAT_RULES,
    NatInfoError,
    NatRule,
    parse_nat_info,
    parse_nat_rules,
    relay_address,
    translate,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
# global by ipaddress's rules (a retired anycast prefix, RFC 7526), not a Telegram address; only compared
RELAY = V4("192.88.99.1")


def test_parse_splits_at_the_last_colon() -> None:
    assert parse_nat_info("10.0.0.5:203.0.113.7") == NatRule(V4("10.0.0.5"), V4("203.0.113.7"))


@pytest.mark.parametrize("text", ["10.0.0.5", "10.0.0.5:", ":203.0.113.7", "10.0.0.5:example.com",
                                  "::1:203.0.113.7", "10.0.0.256:203.0.113.7"])
def test_bad_values_name_the_value(text: str) -> None:
    with pytest.raises(NatInfoError, match="--nat-info"):
        parse_nat_info(text)


def test_at_most_sixteen_rules() -> None:
    rules = [f"10.0.0.{i}:203.0.113.{i}" for i in range(1, MAX_NAT_RULES + 1)]
    assert len(parse_nat_rules(rules)) == MAX_NAT_RULES
    with pytest.raises(NatInfoError, match="at most 16"):
        parse_nat_rules([*rules, "10.0.1.1:203.0.113.99"])


def test_translate_first_match_exact_and_ipv4_only() -> None:
    rules = parse_nat_rules(["10.0.0.5:203.0.113.7", "10.0.0.5:198.51.100.1", "10.0.0.6:198.51.100.2"])
    assert translate(V4("10.0.0.5"), rules) == V4("203.0.113.7")
    assert translate(V4("10.0.0.7"), rules) == V4("10.0.0.7")
    assert translate(V6("::ffff:10.0.0.6"), rules) == V4("198.51.100.2")
    assert translate(V6("fd00::5"), rules) == V6("fd00::5")


def test_a_rule_wins_over_the_socket_address() -> None:
    rules = parse_nat_rules(["10.0.0.5:203.0.113.7"])
    assert relay_address(V4("10.0.0.5"), RELAY, rules).ip == V4("203.0.113.7")
    assert relay_address(V4("10.0.0.5"), RELAY, rules).warning is None


def test_a_public_socket_address_is_used_as_is() -> None:
    chosen = relay_address(V4("8.8.4.4"), RELAY, ())
    assert (chosen.ip, chosen.warning) == (V4("8.8.4.4"), None)
    assert relay_address(V6("::ffff:8.8.4.4"), RELAY, ()).ip == V4("8.8.4.4")


def test_a_private_address_toward_a_public_relay_warns_with_the_fix() -> None:
    chosen = relay_address(V4("192.168.1.10"), RELAY, ())
    assert chosen.ip == V4("192.168.1.10")
    assert chosen.warning is not None and "--nat-info 192.168.1.10:<public-address>" in chosen.warning


def test_no_warning_when_the_relay_is_on_the_same_private_network() -> None:
    assert relay_address(V4("127.0.0.1"), V4("127.0.0.2"), ()).warning is None
    assert relay_address(V4("10.0.0.5"), V4("10.0.0.9"), ()).warning is None
