"""The middle-proxy relay's side of Telegram's TCP-RPC protocol, as bytes: frames, nonce, handshake, keys,
RPC_PROXY_* bodies. Written from the official MTProxy C sources (cited per function), independently of the
proxy's own client code, so that the two check each other. No IO; test support only."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

# MTProxy net/net-tcp-rpc-common.h
RPC_NONCE = 0x7ACB87AA
RPC_HANDSHAKE = 0x7682EEF5
RPC_HANDSHAKE_ERROR = 0x6A27BEDA
RPC_CRYPTO_NONE = 0
RPC_CRYPTO_AES = 1
RPC_CRYPTO_AES_EXT = 2
RPC_CRYPTO_AES_DH = 3
RPCF_USE_CRC32C = 2048
# MTProxy common/rpc-const.h
RPC_PING = 0x5730A2DF
RPC_PONG = 0x8430EAA7
# MTProxy mtproto/mtproto-common.h
RPC_PROXY_REQ = 0x36CEF1EE
RPC_PROXY_ANS = 0x4403DA0D
RPC_CLOSE_CONN = 0x1FCF425D
RPC_CLOSE_EXT = 0x5EB634A2
RPC_SIMPLE_ACK = 0x3BAC409B
# MTProxy mtproto/mtproto-proxy.c
TL_PROXY_TAG = 0xDB1E26AE
# RPC_PROXY_REQ flags set by forward_tcp_query and the ext server (MTProxy net/net-tcp-rpc-common.h RPC_F_*)
FLAG_NOT_ENCRYPTED = 0x2  # auth_key_id 0: a key-exchange message
FLAG_HAS_AD_TAG = 0x8
FLAG_EXT_SERVER = 0x1000  # the message came from an MTProto client connection
FLAG_PAD = 0x8000000
FLAG_MEDIUM = 0x20000000
FLAG_COMPACT = 0x40000000
FLAG_QUICKACK = 0x80000000

SEQ_NONCE = -2  # MTProxy net/net-tcp-rpc-server.c tcp_rpcs_init_accepted: both packet numbers start at -2
SEQ_HANDSHAKE = -1
NONCE_SIZE = 32  # struct tcp_rpc_nonce_packet
HANDSHAKE_SIZE = 32  # struct tcp_rpc_handshake_packet: type, flags, two struct process_id of 12 bytes
MIN_SECRET = 32  # MTProxy net/net-crypto-aes.h MIN_PWD_LEN / MAX_PWD_LEN
MAX_SECRET = 256
TIMESTAMP_WINDOW = 30  # MTProxy net/net-tcp-rpc-server.c tcp_rpcs_process_nonce_packet
MAX_FRAME = 1 << 24
PAD_WORD = b"\x04\x00\x00\x00"  # MTProxy net/net-tcp-rpc-common.c tcp_rpc_flush: a 4-byte frame, skipped
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class RpcWireError(Exception):
    """The peer sent bytes the relay's parser rejects (MTProxy would fail_connection here)."""


def crc32(data: bytes) -> int:
    # MTProxy common/crc32.c: the reflected 0xEDB88320 polynomial, the same CRC-32 as zlib's
    return zlib.crc32(data) & 0xFFFFFFFF


def key_signature(secret: bytes) -> int:
    """The key selector: the secret's first 4 bytes as a little-endian int (net/net-crypto-aes.h, the union
    of `secret` and `key_signature` in aes_secret_t)."""
    return int.from_bytes(secret[:4], "little")


def encode_frame(seq: int, payload: bytes, *, corrupt_crc: bool = False) -> bytes:
    """MTProxy net/net-tcp-rpc-common.c tcp_rpc_conn_send_init / tcp_rpc_write_packet: total length (payload
    + 12), packet number, payload, CRC32 over everything before it; all little-endian."""
    if len(payload) % 4:
        raise ValueError("an RPC payload is a whole number of 4-byte words")
    head = struct.pack("<ii", len(payload) + 12, seq) + payload
    crc = crc32(head) ^ (0xFFFFFFFF if corrupt_crc else 0)
    return head + struct.pack("<I", crc)


def pad_to_block(stream_length: int) -> bytes:
    """The 4-byte no-op frames that bring the encrypted stream to a 16-byte boundary (tcp_rpc_flush)."""
    return PAD_WORD * ((-stream_length % 16) // 4)


@dataclass(frozen=True)
class Frame:
    seq: int
    payload: bytes

    @property
    def op(self) -> int:
        return int.from_bytes(self.payload[:4], "little")


def take_frame(buf: bytearray) -> Frame | None:
    """Remove and return the next frame of `buf`, None if it is not complete yet. Length and CRC checks follow
    MTProxy net/net-tcp-rpc-server.c tcp_rpcs_parse_execute; the packet number is the caller's to check."""
    while True:
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("<i", buf)
        if length <= 0 or length & 0xC0000003 or length > MAX_FRAME:
            raise RpcWireError(f"bad packet length {length}")
        if length == 4:
            del buf[:4]
            continue
        if length < 16:
            raise RpcWireError(f"bad packet length {length}")
        if len(buf) < length:
            return None
        (got_crc,) = struct.unpack_from("<I", buf, length - 4)
        want = crc32(bytes(buf[: length - 4]))
        if got_crc != want:
            raise RpcWireError(f"crc32 {got_crc:08x} != {want:08x}")
        (seq,) = struct.unpack_from("<i", buf, 4)
        frame = Frame(seq, bytes(buf[8 : length - 4]))
        del buf[:length]
        return frame


@dataclass(frozen=True)
class Nonce:
    """struct tcp_rpc_nonce_packet (MTProxy net/net-tcp-rpc-common.h)."""

    key_select: int
    schema: int
    timestamp: int
    nonce: bytes

    def encode(self) -> bytes:
        return struct.pack("<IIIi", RPC_NONCE, self.key_select, self.schema, self.timestamp) + self.nonce


def parse_nonce(payload: bytes) -> Nonce:
    """Only the plain AES schema, the one mtproto-proxy's client sends (tcp_rpcc_init_crypto without
    RPCF_REQ_DH and with no extra keys); the relay's own check order is tcp_rpcs_process_nonce_packet's."""
    if len(payload) < NONCE_SIZE:
        raise RpcWireError(f"nonce packet of {len(payload)} bytes")
    op, key_select, schema, timestamp = struct.unpack_from("<IIIi", payload)
    if op != RPC_NONCE:
        raise RpcWireError(f"expected RPC_NONCE, got {op:08x}")
    if schema != RPC_CRYPTO_AES or len(payload) != NONCE_SIZE:
        raise RpcWireError(f"crypto schema {schema} with {len(payload)} bytes is not supported")
    return Nonce(key_select, schema, timestamp, payload[16:32])


@dataclass(frozen=True)
class ProcessId:
    """struct process_id (MTProxy common/pid.h): ip as a host-order int, port, pid, start time."""

    ip: int
    port: int
    pid: int
    utime: int

    def encode(self) -> bytes:
        return struct.pack("<IhHi", self.ip, _signed16(self.port), self.pid, self.utime)

    @classmethod
    def decode(cls, raw: bytes) -> ProcessId:
        ip, port, pid, utime = struct.unpack("<IhHi", raw)
        return cls(ip, port & 0xFFFF, pid, utime)

    def matched_by(self, pattern: ProcessId) -> bool:
        """MTProxy common/pid.c matches_pid(self, pattern): each zero field of the pattern matches anything."""
        return all(not want or want == have for have, want in (
            (self.ip, pattern.ip), (self.port, pattern.port), (self.pid, pattern.pid), (self.utime, pattern.utime)))


def _signed16(value: int) -> int:
    return value - 0x10000 if value >= 0x8000 else value


@dataclass(frozen=True)
class Handshake:
    flags: int
    sender: ProcessId
    peer: ProcessId

    def encode(self) -> bytes:
        return struct.pack("<Ii", RPC_HANDSHAKE, self.flags) + self.sender.encode() + self.peer.encode()


def parse_handshake(payload: bytes) -> Handshake:
    if len(payload) != HANDSHAKE_SIZE:
        raise RpcWireError(f"handshake packet of {len(payload)} bytes")
    op, flags = struct.unpack_from("<Ii", payload)
    if op != RPC_HANDSHAKE:
        raise RpcWireError(f"expected RPC_HANDSHAKE, got {op:08x}")
    return Handshake(flags, ProcessId.decode(payload[8:20]), ProcessId.decode(payload[20:32]))


def handshake_error(code: int, sender: ProcessId) -> bytes:
    """struct tcp_rpc_handshake_error_packet: type, error code, sender pid."""
    return struct.pack("<Ii", RPC_HANDSHAKE_ERROR, code) + sender.encode()


@dataclass(frozen=True)
class Endpoint:
    """One end of a TCP connection as the key derivation takes it: IPv4 as a host-order int (0 for IPv6),
    the IPv6 address bytes (zero for IPv4), the port."""

    ipv4: int
    ipv6: bytes
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> Endpoint:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # the C server keeps a v4-mapped peer as IPv4
        if isinstance(address, ipaddress.IPv4Address):
            return cls(int(address), bytes(16), port)
        return cls(0, address.packed, port)


@dataclass(frozen=True)
class CbcKeys:
    read_key: bytes
    read_iv: bytes
    write_key: bytes
    write_iv: bytes


def derive_keys(*, am_client: bool, server_nonce: bytes, client_nonce: bytes, client_timestamp: int,
                server: Endpoint, client: Endpoint, secret: bytes) -> CbcKeys:
    """MTProxy net/net-crypto-aes.c aes_create_keys, without the DH temp key (schema AES):
    str = nonce_srv | nonce_cli | client_ts | server_ip | client_port | "SERVER"/"CLIENT" | client_ip |
          server_port | secret | nonce_srv | [client_ipv6 | server_ipv6] | nonce_cli
    key = MD5(str[1:])[:12] + SHA1(str), iv = MD5(str[2:]); the write side takes the caller's role name,
    the read side the other one. The relay calls it with am_client=0 and its accepted socket's addresses."""
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise ValueError(f"the proxy secret is {MIN_SECRET}..{MAX_SECRET} bytes, not {len(secret)}")
    if (server.ipv4 == 0) != (client.ipv4 == 0):
        raise ValueError("both ends are IPv4 or both IPv6")

    def material(role: bytes) -> bytes:
        parts = [server_nonce, client_nonce, struct.pack("<iIH", client_timestamp, server.ipv4, client.port),
                 role, struct.pack("<IH", client.ipv4, server.port), secret, server_nonce]
        if server.ipv4 == 0:
            parts += [client.ipv6, server.ipv6]
        parts.append(client_nonce)
        return b"".join(parts)

    def key_iv(text: bytes) -> tuple[bytes, bytes]:
        key = hashlib.md5(text[1:]).digest()[:12] + hashlib.sha1(text).digest()
        return key, hashlib.md5(text[2:]).digest()

    mine, theirs = (b"CLIENT", b"SERVER") if am_client else (b"SERVER", b"CLIENT")
    write_key, write_iv = key_iv(material(mine))
    read_key, read_iv = key_iv(material(theirs))
    return CbcKeys(read_key, read_iv, write_key, write_iv)


def cbc_pair(keys: CbcKeys) -> tuple[CipherContext, CipherContext]:
    """(decryptor of what we read, encryptor of what we write): AES-256-CBC chained over the whole stream
    (MTProxy net/net-crypto-aes.c aes_crypto_init)."""
    decrypt = Cipher(algorithms.AES(keys.read_key), modes.CBC(keys.read_iv)).decryptor()
    encrypt = Cipher(algorithms.AES(keys.write_key), modes.CBC(keys.write_iv)).encryptor()
    return decrypt, encrypt


def encode_address(host: str, port: int) -> bytes:
    """20 bytes of RPC_PROXY_REQ: IPv6 (IPv4 as ::ffff:a.b.c.d, stored as long 0, int -0x10000, int htonl(ip))
    and the port as an int (MTProxy mtproto/mtproto-proxy.c forward_tcp_query)."""
    address = ipaddress.ip_address(host)
    packed = _V4_MAPPED + address.packed if isinstance(address, ipaddress.IPv4Address) else address.packed
    return packed + struct.pack("<i", port)


def decode_address(raw: bytes) -> tuple[str, int]:
    address = ipaddress.IPv6Address(raw[:16])
    (port,) = struct.unpack_from("<i", raw, 16)
    host = str(address.ipv4_mapped) if address.ipv4_mapped is not None else str(address)
    return host, port


def tl_string(data: bytes) -> bytes:
    """A TL string (length byte or 0xfe + 3 bytes, then padding to 4), as tl_store_string writes it."""
    head = bytes([len(data)]) if len(data) < 254 else b"\xfe" + len(data).to_bytes(3, "little")
    body = head + data
    return body + bytes(-len(body) % 4)


def read_tl_string(raw: bytes, offset: int) -> tuple[bytes, int]:
    if offset >= len(raw):
        raise RpcWireError("TL string past the end")
    if raw[offset] < 254:
        size, start = raw[offset], offset + 1
    else:
        if offset + 4 > len(raw):
            raise RpcWireError("TL string header past the end")
        size, start = int.from_bytes(raw[offset + 1 : offset + 4], "little"), offset + 4
    end = start + size
    if end > len(raw):
        raise RpcWireError("TL string past the end")
    return raw[start:end], end + (-(end - offset) % 4)


@dataclass(frozen=True)
class ProxyRequest:
    """RPC_PROXY_REQ: flags, the proxy's connection id, the client's and the proxy's addresses as the proxy
    reports them, the ad tag when flag 8 is set, and one MTProto transport packet (the client's frame
    without its abridged/intermediate length: net/net-tcp-rpc-ext-server.c hands execute one packet)."""

    flags: int
    conn_id: int
    remote: tuple[str, int]
    local: tuple[str, int]
    ad_tag: bytes | None
    extra: bytes
    data: bytes

    def encode(self) -> bytes:
        head = struct.pack("<IIq", RPC_PROXY_REQ, self.flags, self.conn_id)
        head += encode_address(*self.remote) + encode_address(*self.local)
        if self.flags & 12:
            head += struct.pack("<i", len(self.extra)) + self.extra
        return head + self.data


def ad_tag_extra(tag: bytes) -> bytes:
    """The extra block forward_tcp_query writes for flag 8: TL_PROXY_TAG, then the tag as a TL string."""
    return struct.pack("<I", TL_PROXY_TAG) + tl_string(tag)


def parse_proxy_request(payload: bytes) -> ProxyRequest:
    if len(payload) < 56:
        raise RpcWireError(f"RPC_PROXY_REQ of {len(payload)} bytes")
    op, flags, conn_id = struct.unpack_from("<IIq", payload)
    if op != RPC_PROXY_REQ:
        raise RpcWireError(f"expected RPC_PROXY_REQ, got {op:08x}")
    remote, local = decode_address(payload[16:36]), decode_address(payload[36:56])
    offset, extra, ad_tag = 56, b"", None
    if flags & 12:
        if len(payload) < 60:
            raise RpcWireError("RPC_PROXY_REQ extra size missing")
        (size,) = struct.unpack_from("<i", payload, 56)
        if size < 0 or size % 4 or 60 + size > len(payload) or size > 16384:  # MAX_PROXY_EXTRA_BYTES
            raise RpcWireError(f"RPC_PROXY_REQ extra of {size} bytes")
        extra, offset = payload[60 : 60 + size], 60 + size
        if flags & 8:
            if size < 4 or int.from_bytes(extra[:4], "little") != TL_PROXY_TAG:
                raise RpcWireError("flag 8 without TL_PROXY_TAG")
            ad_tag, _ = read_tl_string(extra, 4)
    return ProxyRequest(flags, conn_id, remote, local, ad_tag, extra, payload[offset:])


def proxy_answer(conn_id: int, data: bytes, flags: int = 0) -> bytes:
    """struct rpc_proxy_ans: type, flags, ext_conn_id, data (MTProxy mtproto/mtproto-common.h)."""
    return struct.pack("<IIq", RPC_PROXY_ANS, flags, conn_id) + data


def simple_ack(conn_id: int, confirm: int) -> bytes:
    """struct rpc_simple_ack: type, ext_conn_id, confirm_key."""
    return struct.pack("<IqI", RPC_SIMPLE_ACK, conn_id, confirm)


def close_ext(conn_id: int) -> bytes:
    """struct rpc_close_ext: type, ext_conn_id."""
    return struct.pack("<Iq", RPC_CLOSE_EXT, conn_id)


def parse_conn_id(payload: bytes, op: int) -> int:
    """The id of RPC_CLOSE_CONN / RPC_CLOSE_EXT (12 bytes, as process_client_packet checks)."""
    if len(payload) != 12 or int.from_bytes(payload[:4], "little") != op:
        raise RpcWireError(f"expected a 12-byte {op:08x} packet")
    return int(struct.unpack_from("<q", payload, 4)[0])


def pong(ping: bytes) -> bytes | None:
    """MTProxy net/net-tcp-rpc-server.c tcp_rpcs_default_execute: a 12-byte RPC_PING comes back as RPC_PONG
    with the same id; any other size is ignored."""
    if len(ping) != 12:
        return None
    return struct.pack("<I", RPC_PONG) + ping[4:]
