"""Our address as a middle-proxy relay sees it: the official `--nat-info <local>:<global>` rules and the
decision of which address goes into the relay handshake's key derivation and each RPC_PROXY_REQ.

The official MTProxy (net/net-connections.c `net_add_nat_info`, `nat_translate_ip`): each rule maps one
local IPv4 address to a public one, exactly (no networks), at most 16 rules (MAX_NAT_INFO_RULES), the first
matching rule wins and an address no rule names is used as it is. Both ends' IPv4 addresses pass through it
in the key derivation (net/net-tcp-rpc-client.c `aes_create_keys` call), and so does our address in
RPC_PROXY_REQ (mtproto/mtproto-proxy.c `forward_tcp_query`); IPv6 addresses are never translated. It does no
detection: behind NAT without a rule it derives keys from its private address, the relay derives them from
the public one it saw, and the encrypted handshake fails. Nothing the relay says before that handshake names
the address it saw, so we cannot learn it either: `relay_address` says so in a warning instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import NatInfoError

__all__ = ["MAX_NAT_RULES", "NatInfoError", "NatRule", "RelayAddress", "parse_nat_info", "parse_nat_rules",
           "relay_address", "translate"]

MAX_NAT_RULES = 16  # net/net-connections.h MAX_NAT_INFO_RULES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NatRule:
    local: ipaddress.IPv4Address
    public: ipaddress.IPv4Address


def parse_nat_info(text: str) -> NatRule:
    """One `--nat-info` value, `<local-addr>:<global-addr>`, both IPv4 literals (the official splits at the
    last ':' and takes each side with inet_pton AF_INET)."""
    local, sep, public = text.strip().rpartition(":")
    if not sep:
        raise NatInfoError(f"--nat-info {text!r}: expected <local-addr>:<global-addr>, e.g. 10.0.0.5:203.0.113.7")
    try:
        return NatRule(ipaddress.IPv4Address(local), ipaddress.IPv4Address(public))
    except ValueError:
        raise NatInfoError(f"--nat-info {text!r}: both sides must be IPv4 addresses"
                           " (<local-addr>:<global-addr>)") from None


def parse_nat_rules(texts: Iterable[str]) -> tuple[NatRule, ...]:
    rules = tuple(parse_nat_info(text) for text in texts)
    if len(rules) > MAX_NAT_RULES:
        raise NatInfoError(f"--nat-info: at most {MAX_NAT_RULES} rules, got {len(rules)}")
    return rules


def _unmapped(ip: IPAddress) -> IPAddress:
    # A dual-stack socket reports IPv4 as ::ffff:a.b.c.d; the official unwraps it too (net-connections.c).
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def translate(ip: IPAddress, rules: Sequence[NatRule]) -> IPAddress:
    """`nat_translate_ip`: the first rule whose local address is `ip`, else `ip` (IPv6 is never translated)."""
    ip = _unmapped(ip)
    for rule in rules:
        if rule.local == ip:
            return rule.public
    return ip


@dataclass(frozen=True)
class RelayAddress:
    """The address to put in the handshake and the requests, and, when it is probably not what the relay
    sees, why (for one warning per relay connection's local address)."""

    ip: IPAddress
    warning: str | None = None


def relay_address(local_ip: IPAddress, relay_ip: IPAddress, rules: Sequence[NatRule]) -> RelayAddress:
    """Our address for a relay connection whose socket's local address is `local_ip`: a rule's public
    address when one names it; the local address itself when it is public, or when the relay is not public
    either (same network, no NAT between); otherwise the local address with a warning, since a relay across
    NAT sees another one and the handshake will fail."""
    ip = _unmapped(local_ip)
    if any(rule.local == ip for rule in rules):
        return RelayAddress(translate(ip, rules))
    if ip.is_global or not _unmapped(relay_ip).is_global:
        return RelayAddress(ip)
    return RelayAddress(ip, f"our address toward the relay is {ip}, which is not public: behind NAT the relay"
                            " sees another one and the handshake fails; give"
                            f" --nat-info {ip}:<public-address>")
