"""tg:// and https://t.me/proxy links, and an offline guess of the server's public address."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from .protocol.secret import Secret

# Documentation addresses (RFC 5737 / RFC 3849): a UDP connect() to them only asks the kernel which route
# and source address it would use; no packet is sent, and even if one were, nobody owns these addresses.
_PROBE_V4 = "192.0.2.1"
_PROBE_V6 = "2001:db8::1"


class ServerUnknownError(Exception):
    """No address for links: none configured and the routing table gives no usable source address."""


@dataclass(frozen=True)
class ProxyLinks:
    """The two links for one secret; the secret inside them is in the hex form clients accept."""

    server: str
    port: int
    secret_text: str

    @property
    def tg(self) -> str:
        return f"tg://proxy?{self._query()}"

    @property
    def https(self) -> str:
        return f"https://t.me/proxy?{self._query()}"

    def _query(self) -> str:
        return urlencode(
            {"server": self.server, "port": str(self.port), "secret": self.secret_text},
            quote_via=quote,
            safe=":",
        )


def make_links(server: str, port: int, secret: Secret) -> ProxyLinks:
    """Links as Telegram documents them (core.telegram.org/api/links#mtproxy-links)."""
    return ProxyLinks(server=link_host(server), port=port, secret_text=secret.to_hex())


def _route_source(family: socket.AddressFamily, probe: str) -> str | None:
    """The source address the kernel would pick to reach `probe`, without sending anything."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            address = sock.getsockname()[0]
    except OSError:
        return None
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return None
    return str(ip)


@dataclass(frozen=True)
class AddressGuess:
    """What the guess found, and whether it can be trusted as the address clients reach."""

    address: str
    public: bool  # False: a private address, so the host is probably behind NAT

    @property
    def warning(self) -> str | None:
        if self.public:
            return None
        return (
            f"{self.address} is a private address (this host is probably behind NAT); "
            "set the public address or a domain with --server"
        )


def guess_public_address(
    route_source: Callable[[socket.AddressFamily, str], str | None] = _route_source,
) -> AddressGuess:
    """The address of the interface holding the default route (IPv4 first, then IPv6); works offline."""
    for family, probe in ((socket.AF_INET, _PROBE_V4), (socket.AF_INET6, _PROBE_V6)):
        address = route_source(family, probe)
        if address is not None:
            return AddressGuess(address, ipaddress.ip_address(address).is_global)
    raise ServerUnknownError("no default route to guess the server address from")


def link_host(address: str) -> str:
    """How an address is written in a link's server= field: names as given, IPs in canonical form.

    IPv6 stays bare (no brackets): TDLib passes server= straight to its host:port resolver, which takes it so.
    """
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.strip().lower()
