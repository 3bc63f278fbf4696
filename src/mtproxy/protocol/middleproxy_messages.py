"""The RPC messages a proxy and a Telegram middle-proxy relay exchange once their connection is up, as bytes
(the payload of one TCP-RPC frame; `middleproxy` frames and encrypts them).

Sources: MTProxy mtproto/mtproto-common.h (the constants and struct layouts), mtproto/mtproto-proxy.c
`forward_tcp_query` (RPC_PROXY_REQ), `process_client_packet` and `rpcc_execute` (what comes back),
common/rpc-const.h and net/net-tcp-rpc-common.c (RPC_PING/RPC_PONG). All integers little-endian."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from .obfs2 import TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED

RPC_PROXY_REQ = 0x36CEF1EE
RPC_PROXY_ANS = 0x4403DA0D
RPC_CLOSE_CONN = 0x1FCF425D
RPC_CLOSE_EXT = 0x5EB634A2
RPC_SIMPLE_ACK = 0x3BAC409B
RPC_PING = 0x5730A2DF
RPC_PONG = 0x8430EAA7
TL_PROXY_TAG = 0xDB1E26AE  # mtproto-proxy.c: the ad tag's entry in RPC_PROXY_REQ's extra section

# RPC_PROXY_REQ flags, as mtproto-proxy.c `forward_tcp_query` and net/net-tcp-rpc-common.h name them
FLAG_NOT_ENCRYPTED = 0x2  # the client's packet has auth_key_id 0 (the DH exchange): `forward_mtproto_packet`
FLAG_HAS_AD_TAG = 0x8  # `proxy_tag_set`
FLAG_MAGIC = 0x1000  # the query came from a client (ct_tcp_rpc_ext_server_mtfront), not over HTTP
FLAG_EXTMODE2 = 0x20000  # RPC_F_EXTMODE2: an obfuscated2 client
FLAG_INTERMEDIATE = 0x20000000  # RPC_F_MEDIUM: intermediate or padded intermediate
FLAG_ABRIDGED = 0x40000000  # RPC_F_COMPACT
FLAG_QUICKACK = 0x80000000  # RPC_F_QUICKACK: the client asked for a quick ack of this packet

# The official proxy keeps only QUICKACK | DROPPED | COMPACT | MEDIUM | EXTMODE3 of the client's connection
# flags (`ext_rpcs_execute`), so a padded client's RPC_F_PAD never reaches the relay: dd looks like ee.
TRANSPORT_FLAGS = {
    TAG_ABRIDGED: FLAG_ABRIDGED | FLAG_EXTMODE2,
    TAG_INTERMEDIATE: FLAG_INTERMEDIATE | FLAG_EXTMODE2,
    TAG_PADDED: FLAG_INTERMEDIATE | FLAG_EXTMODE2,
}

# RPC_PROXY_ANS flags (mtproto-common.h `struct rpc_proxy_ans`)
ANSWER_FLUSH = 0x8  # flush to the client at once
ANSWER_SMALL_ERROR = 0x10  # the data is a 4-byte error code

AD_TAG_SIZE = 16
MIN_CLIENT_PACKET = 28  # forward_mtproto_packet: auth_key_id, msg_id, length, and a function id at least
# the unencrypted functions a client may send before it has a key (mtproto-common.h CODE_*)
UNENCRYPTED_FUNCTIONS = frozenset({0x60469778, 0xBE7E8EF1, 0xD712E4BE, 0xF5045F1F})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """An address as RPC_PROXY_REQ carries it: 16 bytes of IPv6 (an IPv4 address v4-mapped, ::ffff:a.b.c.d)
    and the port as a 32-bit integer."""
    ip, port = endpoint
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    packed = ip.packed if ip.version == 6 else b"\x00" * 10 + b"\xff\xff" + ip.packed
    return packed + struct.pack("<i", port)


def request_flags(transport_tag: bytes, data: bytes, *, ad_tag: bool, quick_ack: bool) -> int:
    """The flags the official proxy sets for a packet from a client on `transport_tag`."""
    flags = TRANSPORT_FLAGS.get(transport_tag)
    if flags is None:
        raise ValueError("unknown transport tag")
    flags |= FLAG_MAGIC
    if data[:8] == bytes(8):
        flags |= FLAG_NOT_ENCRYPTED
    if ad_tag:
        flags |= FLAG_HAS_AD_TAG
    if quick_ack:
        flags |= FLAG_QUICKACK
    return flags


def forwardable(data: bytes) -> bool:
    """Whether the official proxy forwards this client packet at all (`forward_mtproto_packet`): a multiple
    of 4 bytes, at least 28, and, without a key yet, one of the key-exchange functions with a sane length."""
    if len(data) < MIN_CLIENT_PACKET or len(data) % 4:
        return False
    if data[:8] != bytes(8):
        return True
    inner_length, function = struct.unpack_from("<iI", data, 16)
    return 20 <= inner_length <= len(data) - 20 and function in UNENCRYPTED_FUNCTIONS


def encode_proxy_request(conn_id: int, client: Endpoint, ours: Endpoint, transport_tag: bytes, data: bytes,
                         *, ad_tag: bytes | None = None, quick_ack: bool = False) -> bytes:
    """RPC_PROXY_REQ: one client packet for the relay. `conn_id` names the client's session on this relay
    connection (ours to choose, 64 bits); `client` is the client's address, `ours` the address and port the
    client connected to (public, as the client saw them); `data` the client's MTProto packet without its
    transport framing (a padded transport's frame cut to a multiple of 4, as the official proxy does)."""
    if len(data) % 4:
        raise ValueError("a client packet for the relay is a multiple of 4 bytes")
    if ad_tag is not None and len(ad_tag) != AD_TAG_SIZE:
        raise ValueError(f"an ad tag is {AD_TAG_SIZE} bytes")
    flags = request_flags(transport_tag, data, ad_tag=ad_tag is not None, quick_ack=quick_ack)
    head = struct.pack("<IIQ", RPC_PROXY_REQ, flags, conn_id & 0xFFFFFFFFFFFFFFFF)
    extra = b""
    if ad_tag is not None:
        # a TL string of 16 bytes: length byte, bytes, padding to 4 (1 + 16 + 3)
        extra = struct.pack("<I", TL_PROXY_TAG) + bytes([AD_TAG_SIZE]) + ad_tag + b"\x00" * 3
        extra = struct.pack("<i", len(extra)) + extra
    return head + endpoint_bytes(client) + endpoint_bytes(ours) + extra + data


def encode_close_conn(conn_id: int) -> bytes:
    """RPC_CLOSE_CONN: our client of `conn_id` went away, or the relay spoke of a `conn_id` we do not know
    (both MTProxy mtproto-proxy.c `_notify_remote_closed`)."""
    return struct.pack("<IQ", RPC_CLOSE_CONN, conn_id & 0xFFFFFFFFFFFFFFFF)


def encode_ping(ping_id: int) -> bytes:
    return struct.pack("<IQ", RPC_PING, ping_id & 0xFFFFFFFFFFFFFFFF)


def encode_pong(ping_id: int) -> bytes:
    return struct.pack("<IQ", RPC_PONG, ping_id & 0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class ProxyAnswer:
    """RPC_PROXY_ANS: `data` goes to the client of `conn_id`, framed in its transport."""

    conn_id: int
    flags: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class SimpleAck:
    """RPC_SIMPLE_ACK: the quick ack the client of `conn_id` asked for. `confirm` is the 4 bytes as they
    came; the official proxy sends them to an intermediate client as they are and byte-reversed to an
    abridged one (`push_rpc_confirmation`)."""

    conn_id: int
    confirm: bytes


@dataclass(frozen=True)
class CloseExt:
    """RPC_CLOSE_EXT: the relay closed the session of `conn_id`; close that client."""

    conn_id: int


@dataclass(frozen=True)
class Pinged:
    """The relay sent RPC_PING; the connection has already queued the RPC_PONG."""

    ping_id: int


@dataclass(frozen=True)
class Pong:
    """RPC_PONG: the answer to one of our pings."""

    ping_id: int


@dataclass(frozen=True)
class Ignored:
    """A message the official proxy ignores too: an unknown type, or a known one of the wrong size."""

    message_type: int
    size: int
    reason: str


Message = ProxyAnswer | SimpleAck | CloseExt | Pinged | Pong | Ignored


def decode_message(payload: bytes) -> Message:
    """One frame's payload from the relay (at least 4 bytes: the framing guarantees it). Sizes as
    `process_client_packet` checks them; what it would ignore becomes Ignored, never an exception."""
    size = len(payload)
    (message_type,) = struct.unpack_from("<I", payload)
    if message_type == RPC_PROXY_ANS:
        if size < 16:
            return Ignored(message_type, size, "RPC_PROXY_ANS shorter than 16 bytes")
        flags, conn_id = struct.unpack_from("<IQ", payload, 4)
        return ProxyAnswer(conn_id, flags, payload[16:])
    if message_type == RPC_SIMPLE_ACK:
        if size != 16:
            return Ignored(message_type, size, "RPC_SIMPLE_ACK not 16 bytes")
        (conn_id,) = struct.unpack_from("<Q", payload, 4)
        return SimpleAck(conn_id, payload[12:16])
    if message_type == RPC_CLOSE_EXT:
        if size != 12:
            return Ignored(message_type, size, "RPC_CLOSE_EXT not 12 bytes")
        return CloseExt(struct.unpack_from("<Q", payload, 4)[0])
    if message_type in (RPC_PING, RPC_PONG):
        name = "RPC_PING" if message_type == RPC_PING else "RPC_PONG"
        if size != 12:
            return Ignored(message_type, size, f"{name} not 12 bytes")
        (ping_id,) = struct.unpack_from("<Q", payload, 4)
        return Pinged(ping_id) if message_type == RPC_PING else Pong(ping_id)
    return Ignored(message_type, size, f"unknown message type {message_type:#010x}")
