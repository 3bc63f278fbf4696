"""The PROXY protocol header (versions 1 and 2) that a load balancer such as HAProxy sends before the client's
bytes, naming the real client: a parser over the bytes received so far, and a builder.

Follows HAProxy's specification, doc/proxy-protocol.txt (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):
- v1 is one text line `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\\r\\n`, at most 107 bytes; after
  UNKNOWN the rest of the line is ignored.
- v2 is a 16-byte binary prefix (12-byte signature, version/command, family/transport, a big-endian length)
  and that many bytes of addresses followed by TLVs. LOCAL (a health check from the balancer itself) and
  the UNSPEC family carry no client: the connection's own endpoints stand.

The parser is incremental without state: call `parse` with everything received so far; it returns `NeedMore`
until the header is complete, then a `ProxyHeader` saying how many bytes it took (the rest is the client's).
It decides as early as the bytes allow: a first byte that starts neither version is refused at once.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from .errors import ProxyHeaderError

__all__ = ["Command", "Endpoint", "Family", "NeedMore", "ProxyHeader", "ProxyHeaderError", "build_v1", "build_v2",
           "parse"]

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PREFIX_LENGTH = 16
# A v2 header may carry TLVs (SSL details, unique ids, …) after the addresses. The spec allows a length up to
# 65535; a peer we trust sends a few hundred bytes, so a bound keeps a bad peer from making us buffer 64 KiB.
V2_DEFAULT_MAX_LENGTH = 2048

_V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX: both addresses (and both ports)
_V2_FAMILY_PROTOCOLS = {0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32}  # every other value must be refused
_V1_FAMILIES = (b"TCP4", b"TCP6", b"UNKNOWN")


class Command(enum.Enum):
    PROXY = "proxy"  # relayed for a client: the addresses name it
    LOCAL = "local"  # the balancer's own connection (a health check): use the connection's real endpoints


class Family(enum.Enum):
    TCP4 = "tcp4"
    TCP6 = "tcp6"
    UNKNOWN = "unknown"  # v1 UNKNOWN, v2 UNSPEC, UNIX or datagram: no client address to take


@dataclass(frozen=True)
class Endpoint:
    host: str  # an IP address in its canonical text form
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyHeader:
    version: int  # 1 or 2
    command: Command
    family: Family
    source: Endpoint | None  # the real client; None unless command is PROXY and family TCP4/TCP6
    destination: Endpoint | None  # the address the client connected to
    consumed: int  # header length: the client's own bytes start here

    @property
    def client(self) -> Endpoint | None:
        """The address to account the connection to, or None: keep the connection's own peer address."""
        return self.source if self.command is Command.PROXY else None


@dataclass(frozen=True)
class NeedMore:
    """The header is not complete yet; `at_least` more bytes are needed (more may be)."""

    at_least: int = 1


def parse(data: bytes | bytearray | memoryview, v2_max_length: int = V2_DEFAULT_MAX_LENGTH) -> ProxyHeader | NeedMore:
    """The header at the start of `data` (everything received so far). Raises ProxyHeaderError."""
    view = bytes(data[:max(V1_MAX_LENGTH, V2_PREFIX_LENGTH + v2_max_length)])
    if not view:
        return NeedMore()
    if view[0] == V1_PREFIX[0]:
        return _parse_v1(view)
    if view[0] == V2_SIGNATURE[0]:
        return _parse_v2(view, v2_max_length)
    raise ProxyHeaderError(f"no PROXY protocol header: the connection starts with byte 0x{view[0]:02x}")


def _parse_v1(data: bytes) -> ProxyHeader | NeedMore:
    known = min(len(data), len(V1_PREFIX))
    if data[:known] != V1_PREFIX[:known]:
        raise ProxyHeaderError("not a PROXY v1 header: it does not start with 'PROXY '")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
        if b"\n" in data or b"\x00" in data:
            raise ProxyHeaderError("PROXY v1 header has a line break without CR or a NUL byte")
        return NeedMore()
    line = data[len(V1_PREFIX):end]
    if any(byte in line for byte in b"\r\n\x00"):
        raise ProxyHeaderError("PROXY v1 header has a line break without CR or a NUL byte")
    consumed = end + 2
    family_word, _, rest = line.partition(b" ")
    if family_word == b"UNKNOWN":  # the spec: ignore everything up to the CRLF
        return ProxyHeader(1, Command.PROXY, Family.UNKNOWN, None, None, consumed)
    if family_word not in _V1_FAMILIES:
        raise ProxyHeaderError(f"PROXY v1 header with an unknown protocol {family_word[:8]!r}")
    fields = rest.split(b" ")
    if len(fields) != 4:
        raise ProxyHeaderError("PROXY v1 header must have exactly 4 fields after the protocol, one space apart")
    family = Family.TCP4 if family_word == b"TCP4" else Family.TCP6
    source_ip = _v1_address(fields[0], family)
    destination_ip = _v1_address(fields[1], family)
    source = Endpoint(source_ip, _v1_port(fields[2]))
    destination = Endpoint(destination_ip, _v1_port(fields[3]))
    return ProxyHeader(1, Command.PROXY, family, source, destination, consumed)


def _v1_address(text: bytes, family: Family) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 header has an invalid address {text[:48]!r}") from None
    if (address.version == 4) != (family is Family.TCP4):
        raise ProxyHeaderError(f"PROXY v1 header: {address} is not a {family.name} address")
    return str(address)


def _v1_port(text: bytes) -> int:
    # Decimal, 0..65535; a leading zero is refused as the spec's examples and HAProxy's own parser do.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header has an invalid port {text[:8]!r}")
    return int(text)


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | NeedMore:
    known = min(len(data), len(V2_SIGNATURE))
    if data[:known] != V2_SIGNATURE[:known]:
        raise ProxyHeaderError("not a PROXY v2 header: the signature does not match")
    if len(data) < V2_PREFIX_LENGTH:
        return NeedMore(V2_PREFIX_LENGTH - len(data))
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version_command >> 4}, not 2")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise ProxyHeaderError(f"PROXY v2 header with an unknown command 0x{command:x}")
    if family_protocol not in _V2_FAMILY_PROTOCOLS:
        raise ProxyHeaderError(f"PROXY v2 header with an unknown family/transport byte 0x{family_protocol:02x}")
    if length > max_length:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes after the prefix, more than the "
                               f"{max_length} accepted")
    address_size = _V2_ADDRESS_SIZES.get(family_protocol >> 4, 0)
    if length < address_size:
        raise ProxyHeaderError(f"PROXY v2 header length {length} is too short for its address family "
                               f"({address_size} bytes)")
    consumed = V2_PREFIX_LENGTH + length
    if len(data) < consumed:
        return NeedMore(consumed - len(data))
    body = data[V2_PREFIX_LENGTH:consumed]
    if command == 0x0 or family_protocol == 0x00:  # the spec: ignore everything after the prefix
        return ProxyHeader(2, Command.PROXY if command else Command.LOCAL, Family.UNKNOWN, None, None, consumed)
    _check_tlvs(body[address_size:])
    if family_protocol == 0x11:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(2, Command.PROXY, Family.TCP4, Endpoint(str(ipaddress.IPv4Address(src)), sport),
                           Endpoint(str(ipaddress.IPv4Address(dst)), dport), consumed)
    if family_protocol == 0x21:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(2, Command.PROXY, Family.TCP6, Endpoint(str(ipaddress.IPv6Address(src)), sport),
                           Endpoint(str(ipaddress.IPv6Address(dst)), dport), consumed)
    return ProxyHeader(2, Command.PROXY, Family.UNKNOWN, None, None, consumed)


def _check_tlvs(block: bytes) -> None:
    """TLVs are skipped, but each must fit: a TLV running past the header is a malformed header."""
    offset = 0
    while offset < len(block):
        if len(block) - offset < 3:
            raise ProxyHeaderError("PROXY v2 header ends inside a TLV's type and length")
        (size,) = struct.unpack_from("!H", block, offset + 1)
        offset += 3 + size
        if offset > len(block):
            raise ProxyHeaderError("PROXY v2 header has a TLV longer than the header")


def build_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """A v1 line; UNKNOWN when either address is missing or the two are of different families."""
    family = _family_of(source, destination)
    if source is None or destination is None or family is Family.UNKNOWN:
        return b"PROXY UNKNOWN\r\n"
    return (f"PROXY {family.name} {source.host} {destination.host} {source.port} {destination.port}\r\n"
            .encode("ascii"))


def build_v2(source: Endpoint | None, destination: Endpoint | None, command: Command = Command.PROXY) -> bytes:
    """A v2 header for a TCP stream; LOCAL, or UNSPEC when the addresses are missing or of mixed families."""
    family = _family_of(source, destination)
    if command is Command.LOCAL:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    if source is None or destination is None or family is Family.UNKNOWN:
        return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 0)
    src, dst = ipaddress.ip_address(source.host).packed, ipaddress.ip_address(destination.host).packed
    body = src + dst + struct.pack("!HH", source.port, destination.port)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11 if family is Family.TCP4 else 0x21, len(body)) + body


def _family_of(source: Endpoint | None, destination: Endpoint | None) -> Family:
    if source is None or destination is None:
        return Family.UNKNOWN
    for endpoint in (source, destination):
        if not 0 <= endpoint.port <= 65535:
            raise ValueError(f"port {endpoint.port} out of range")
    versions = {ipaddress.ip_address(source.host).version, ipaddress.ip_address(destination.host).version}
    if versions == {4}:
        return Family.TCP4
    if versions == {6}:
        return Family.TCP6
    return Family.UNKNOWN
