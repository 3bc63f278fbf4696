"""The proxy's side of one connection to a Telegram middle-proxy relay, as a state machine over bytes: the
TCP-RPC framing, the nonce exchange, the AES-256-CBC keys, the handshake, then the RPC messages of
`middleproxy_messages` both ways.

Wire facts, all from MTProxy's sources (integers little-endian):
- A frame is: length (the whole frame, 4-byte aligned, >= 16), sequence number, payload, CRC32 (IEEE, of
  everything before it). Sequence numbers count from -2 each way: the nonce packet is -2, the handshake -1,
  then 0, 1, ... (net/net-tcp-rpc-common.c `tcp_rpc_conn_send_init`, net/net-tcp-rpc-client.c
  `tcp_rpcc_parse_execute`). A length of exactly 4 is a padding word, skipped.
- First, in clear, each side sends RPC_NONCE: key selector (the proxy-secret's first 4 bytes), crypto schema
  1 (AES), its unix time, 16 random bytes (`tcp_rpcc_init_crypto`). The relay's time must be within 30 s of
  ours (`tcp_rpcc_process_nonce_packet`).
- Then both switch to AES-256-CBC, one continuous chain per direction; the writer pads each flush to a
  whole block with padding words (`tcp_rpc_flush`). Keys: net/net-crypto-aes.c `aes_create_keys`.
- Then each side sends RPC_HANDSHAKE: flags, its own process id, the peer's as it knows it; the answer must
  name us as its peer (`tcp_rpcc_process_handshake_packet`). We ask for no CRC32C (flags 0), so every frame
  keeps CRC32; a relay that answers with the CRC32C flag anyway is refused, as the official proxy refuses it
  when not configured for it.

No IO: time, randomness (the nonce), addresses and the CBC implementation come from the caller."""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from . import middleproxy_messages as messages
from .cipher import CbcFactory, CbcStream
from .errors import MiddleProxyError
from .proxyconfig import IPAddress, ProxySecret

__all__ = ["CbcKeys", "Event", "MiddleProxyError", "Phase", "Ready", "Received", "RelayConnection", "RelayEndpoints",
           "derive_keys", "encode_frame", "nonce_packet", "process_id"]

RPC_NONCE = 0x7ACB87AA
RPC_HANDSHAKE = 0x7682EEF5
RPC_HANDSHAKE_ERROR = 0x6A27BEDA
CRYPTO_NONE, CRYPTO_AES, CRYPTO_AES_EXT, CRYPTO_AES_DH = range(4)
MAX_EXTRA_KEYS = 8  # net-tcp-rpc-common.h RPC_MAX_EXTRA_KEYS
FLAG_CRC32C = 0x800  # RPCF_USE_CRC32C
MAX_CLOCK_SKEW = 30  # seconds between the two nonces' times
NONCE_SIZE = 16
BLOCK = 16
PADDING_WORD = struct.pack("<i", 4)
SEQ_NONCE, SEQ_HANDSHAKE = -2, -1
MAX_FRAME = (16 << 20) + 64  # what we buffer at most: a 16 MiB client packet and the RPC headers
HANDSHAKE_SIZE = 32  # type, flags, two process ids of 12 bytes
HANDSHAKE_ERROR_SIZE = 20  # type, error code, the sender's process id


@dataclass(frozen=True)
class RelayEndpoints:
    """Both ends of the relay connection as the relay sees them: our public address (after any NAT) and
    local port, the relay's address and port. Both of one family: they enter the key derivation."""

    ours: IPAddress
    our_port: int
    relay: IPAddress
    relay_port: int

    def __post_init__(self) -> None:
        if self.ours.version != self.relay.version:
            raise ValueError("our address and the relay's must be of one family")
        if self.ours.version == 4 and (int(self.ours) == 0 or int(self.relay) == 0):
            raise ValueError("an IPv4 relay connection needs both addresses (0.0.0.0 means IPv6 to MTProxy)")
        for port in (self.our_port, self.relay_port):
            if not 0 < port <= 0xFFFF:
                raise ValueError(f"port {port} is out of range")


@dataclass(frozen=True)
class CbcKeys:
    """One connection's keys as the client (the proxy) uses them: write = what we encrypt with."""

    write_key: bytes = field(repr=False)
    write_iv: bytes = field(repr=False)
    read_key: bytes = field(repr=False)
    read_iv: bytes = field(repr=False)


def _ipv4_word(ip: IPAddress) -> bytes:
    # MTProxy keeps IPv4 addresses as host-order integers and copies them into buffers as such (little-endian
    # on its targets): the octets reversed. An IPv6 connection has 0 here.
    return ip.packed[::-1] if ip.version == 4 else bytes(4)


def derive_keys(secret: ProxySecret, relay_nonce: bytes, our_nonce: bytes, our_time: int,
                endpoints: RelayEndpoints) -> CbcKeys:
    """net/net-crypto-aes.c `aes_create_keys` with am_client = 1, no DH. The material is
    relay nonce | our nonce | our time | relay IPv4 | our port | "CLIENT" | our IPv4 | relay port | secret |
    relay nonce | (IPv6 only: our IPv6 | relay IPv6) | our nonce; key = MD5(material[1:])[:12] +
    SHA1(material), IV = MD5(material[2:]). The read direction uses "SERVER" in place of "CLIENT"."""
    if len(relay_nonce) != NONCE_SIZE or len(our_nonce) != NONCE_SIZE:
        raise ValueError("nonces are 16 bytes")
    v6 = endpoints.ours.version == 6
    head = (relay_nonce + our_nonce + struct.pack("<i", _signed32(our_time)) + _ipv4_word(endpoints.relay)
            + struct.pack("<H", endpoints.our_port))
    tail = (_ipv4_word(endpoints.ours) + struct.pack("<H", endpoints.relay_port) + secret.data + relay_nonce
            + (endpoints.ours.packed + endpoints.relay.packed if v6 else b"") + our_nonce)

    def key_iv(role: bytes) -> tuple[bytes, bytes]:
        material = head + role + tail
        key = hashlib.md5(material[1:]).digest()[:12] + hashlib.sha1(material).digest()
        return key, hashlib.md5(material[2:]).digest()

    write_key, write_iv = key_iv(b"CLIENT")
    read_key, read_iv = key_iv(b"SERVER")
    return CbcKeys(write_key, write_iv, read_key, read_iv)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def encode_frame(seq: int, payload: bytes) -> bytes:
    """One TCP-RPC frame: length, sequence number, payload (4-byte aligned), CRC32 of all that."""
    if len(payload) % 4:
        raise ValueError("a TCP-RPC payload is a multiple of 4 bytes")
    head = struct.pack("<ii", len(payload) + 12, _signed32(seq)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


def nonce_packet(secret: ProxySecret, now: int, nonce: bytes) -> bytes:
    """RPC_NONCE's payload as the client sends it (net-tcp-rpc-client.c `tcp_rpcc_init_crypto`)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a nonce is 16 bytes")
    return struct.pack("<I4sii", RPC_NONCE, secret.key_select, CRYPTO_AES, _signed32(now)) + nonce


def process_id(ip: IPAddress | None, port: int, pid: int, utime: int) -> bytes:
    """common/pid.h `struct process_id`: IPv4 (a host-order integer; 0 for none or IPv6), port, pid, start
    time."""
    return (_ipv4_word(ip) if ip is not None else bytes(4)) + struct.pack("<HHi", port & 0xFFFF, pid & 0xFFFF,
                                                                          _signed32(utime))


class Phase(enum.Enum):
    NONCE = "nonce"  # our nonce sent, waiting for the relay's
    HANDSHAKE = "handshake"  # keys derived, our handshake sent, waiting for the relay's
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Ready:
    """The relay accepted us: RPC messages may flow. `relay_pid` is the relay's process id as it sent it."""

    relay_pid: bytes


Event = Ready | messages.Message


@dataclass(frozen=True)
class Received:
    """What some bytes from the relay meant, and the bytes to send back (our handshake, pongs)."""

    events: tuple[Event, ...]
    send: bytes = b""


class RelayConnection:
    """One relay connection, client side. `start()` gives the first bytes to send; every byte from the relay
    goes to `receive`; the `proxy_request`, `close_conn` and `ping` methods give bytes to send
    once `ready`. Any protocol violation raises MiddleProxyError and leaves the connection FAILED; messages
    the official proxy ignores come out as `Ignored` events and count in `ignored`."""

    def __init__(self, secret: ProxySecret, endpoints: RelayEndpoints, cbc: CbcFactory, *, now: int,
                 nonce: bytes, pid: int, start_time: int) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError("a nonce is 16 bytes")
        self._secret = secret
        self._endpoints = endpoints
        self._cbc = cbc
        self._time = now
        self._nonce = nonce
        # our process id: the official client puts its IPv4 address and pid in, port 0 (common/pid.c)
        self._our_pid = process_id(endpoints.ours if endpoints.ours.version == 4 else None, 0, pid, start_time)
        self.phase = Phase.NONCE
        self.ignored = 0
        self._in_seq = SEQ_NONCE
        self._out_seq = SEQ_NONCE
        self._raw = bytearray()  # as received: clear in NONCE, then ciphertext
        self._plain = bytearray()  # decrypted, not yet parsed
        self._encrypt: CbcStream | None = None
        self._decrypt: CbcStream | None = None
        self._started = False

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def start(self) -> bytes:
        """The nonce frame, in clear: the first bytes on the connection."""
        if self._started:
            raise RuntimeError("start() gives the nonce once")
        self._started = True
        return self._frame(nonce_packet(self._secret, self._time, self._nonce))

    def receive(self, data: bytes) -> Received:
        if self.phase is Phase.FAILED:
            raise MiddleProxyError("failed", "the relay connection has already failed")
        if not self._started:
            raise RuntimeError("start() first: the relay speaks only after our nonce")
        try:
            return self._receive(data)
        except MiddleProxyError:
            self.phase = Phase.FAILED
            self._raw.clear()
            self._plain.clear()
            raise

    def proxy_request(self, conn_id: int, client: messages.Endpoint, ours: messages.Endpoint,
                      transport_tag: bytes, data: bytes, *, ad_tag: bytes | None = None,
                      quick_ack: bool = False) -> bytes:
        """RPC_PROXY_REQ (`middleproxy_messages.encode_proxy_request`), framed and encrypted."""
        return self.send(messages.encode_proxy_request(conn_id, client, ours, transport_tag, data,
                                                       ad_tag=ad_tag, quick_ack=quick_ack))

    def close_conn(self, conn_id: int) -> bytes:
        return self.send(messages.encode_close_conn(conn_id))

    def ping(self, ping_id: int) -> bytes:
        return self.send(messages.encode_ping(ping_id))

    def send(self, *payloads: bytes) -> bytes:
        """Any RPC payloads, framed, padded to a block and encrypted as one flush."""
        if self.phase is not Phase.READY:
            raise RuntimeError(f"the relay connection is not ready ({self.phase.value})")
        return self._flush(payloads)

    def _frame(self, payload: bytes) -> bytes:
        frame = encode_frame(self._out_seq, payload)
        self._out_seq = _signed32(self._out_seq + 1)
        return frame

    def _flush(self, payloads: tuple[bytes, ...]) -> bytes:
        out = b"".join(self._frame(payload) for payload in payloads)
        out += PADDING_WORD * ((-len(out) % BLOCK) // 4)
        if self._encrypt is None:
            raise RuntimeError("no keys before the relay's nonce")
        return self._encrypt.update(out)

    def _receive(self, data: bytes) -> Received:
        events: list[Event] = []
        replies: list[bytes] = []
        self._raw += data
        if self.phase is Phase.NONCE:
            payload = self._next_frame(self._raw)
            if payload is None:
                return Received(())
            self._accept_nonce(payload)
            self.phase = Phase.HANDSHAKE
            handshake = struct.pack("<Ii", RPC_HANDSHAKE, 0) + self._our_pid + self._relay_pid()
            send = self._flush((handshake,))
        else:
            send = b""
        if self._decrypt is None:
            raise RuntimeError("no keys before the relay's nonce")
        whole = len(self._raw) - len(self._raw) % BLOCK
        if whole:
            self._plain += self._decrypt.update(bytes(self._raw[:whole]))
            del self._raw[:whole]
        while (payload := self._next_frame(self._plain)) is not None:
            if self.phase is Phase.HANDSHAKE:
                events.append(self._accept_handshake(payload))
                self.phase = Phase.READY
                continue
            message = messages.decode_message(payload)
            if isinstance(message, messages.Pinged):
                replies.append(messages.encode_pong(message.ping_id))
            elif isinstance(message, messages.Ignored):
                self.ignored += 1
            events.append(message)
        if replies:
            send += self._flush(tuple(replies))
        return Received(tuple(events), send)

    def _next_frame(self, buffer: bytearray) -> bytes | None:
        """The next frame's payload from `buffer` (checked and consumed), None until one is complete."""
        while True:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("<i", buffer)
            if length == 4:  # a padding word
                del buffer[:4]
                continue
            if length < 16 or length % 4 or length > MAX_FRAME:
                raise MiddleProxyError("bad-length", f"relay frame length {length} is not valid "
                                       "(4 for padding, else a multiple of 4 from 16)")
            if len(buffer) < length:
                return None
            frame = bytes(buffer[:length])
            del buffer[:length]
            (crc,) = struct.unpack_from("<I", frame, length - 4)
            if zlib.crc32(memoryview(frame)[: length - 4]) != crc:
                raise MiddleProxyError("bad-crc", f"relay frame {self._in_seq} fails its CRC32")
            (seq,) = struct.unpack_from("<i", frame, 4)
            if seq != self._in_seq:
                raise MiddleProxyError("bad-seq", f"relay frame numbered {seq}, expected {self._in_seq}")
            self._in_seq = _signed32(self._in_seq + 1)
            return frame[8 : length - 4]

    def _relay_pid(self) -> bytes:
        # what we know of the relay (net-tcp-rpc-client.c `tcp_rpcc_send_handshake_packet`): its IPv4
        # address (0 for loopback, as there) and port
        relay = self._endpoints.relay
        known = relay if relay.version == 4 and int(relay) != 0x7F000001 else None
        return process_id(known, self._endpoints.relay_port, 0, 0)

    def _accept_nonce(self, payload: bytes) -> None:
        """The relay's RPC_NONCE (`tcp_rpcc_process_nonce_packet`); derives the keys and starts CBC."""
        if len(payload) < 32 or struct.unpack_from("<I", payload)[0] != RPC_NONCE:
            raise MiddleProxyError("bad-nonce", "the relay's first frame is not an RPC_NONCE")
        key_select, schema, relay_time = struct.unpack_from("<4sii", payload, 4)
        selectors = [key_select]
        if schema == CRYPTO_AES_EXT:
            count = struct.unpack_from("<i", payload, 32)[0] if len(payload) >= 36 else -1
            if not 0 <= count <= MAX_EXTRA_KEYS or len(payload) != 36 + 4 * count:
                raise MiddleProxyError("bad-nonce", "the relay's RPC_NONCE has a malformed key list")
            selectors += [payload[36 + 4 * i : 40 + 4 * i] for i in range(count)]
        elif schema == CRYPTO_AES:
            if len(payload) != 32:
                raise MiddleProxyError("bad-nonce", f"the relay's RPC_NONCE is {len(payload)} bytes, not 32")
        else:
            raise MiddleProxyError("bad-nonce", f"the relay asks for crypto schema {schema}; we speak only AES (1)")
        # `select_best_key_signature`: our selector, never 0, named first or (schema 2) among the extra ones
        if self._secret.key_select == bytes(4) or self._secret.key_select not in selectors:
            raise MiddleProxyError("wrong-secret", "the relay does not know our proxy-secret "
                                   "(key selector mismatch): fetch a fresh one")
        if abs(relay_time - _signed32(self._time)) > MAX_CLOCK_SKEW:
            raise MiddleProxyError("clock-skew", f"the relay's clock is {relay_time - self._time:+d} s from ours "
                                   f"(at most {MAX_CLOCK_SKEW} s)")
        keys = derive_keys(self._secret, payload[16:32], self._nonce, self._time, self._endpoints)
        self._encrypt = self._cbc(keys.write_key, keys.write_iv, True)
        self._decrypt = self._cbc(keys.read_key, keys.read_iv, False)

    def _accept_handshake(self, payload: bytes) -> Ready:
        """The relay's RPC_HANDSHAKE (`tcp_rpcc_process_handshake_packet`; the official proxy sets
        TCP_RPC_IGNORE_PID, so the relay's own id is not checked, but the peer id must be ours)."""
        (message_type,) = struct.unpack_from("<I", payload)
        if message_type == RPC_HANDSHAKE_ERROR and len(payload) == HANDSHAKE_ERROR_SIZE:
            code = struct.unpack_from("<i", payload, 4)[0]
            raise MiddleProxyError("handshake-refused", f"the relay refused our handshake (error {code})")
        if message_type != RPC_HANDSHAKE or len(payload) != HANDSHAKE_SIZE:
            raise MiddleProxyError("bad-handshake", "the relay's second frame is not a 32-byte RPC_HANDSHAKE")
        (flags,) = struct.unpack_from("<i", payload, 4)
        if flags & 0xFF:
            raise MiddleProxyError("bad-handshake", f"the relay's handshake has unknown flags {flags:#x}")
        if flags & FLAG_CRC32C:
            raise MiddleProxyError("bad-handshake", "the relay switched to CRC32C, which we did not offer")
        if not _matches(self._our_pid, payload[20:32]):
            raise MiddleProxyError("bad-handshake", "the relay's handshake names another peer than us")
        return Ready(payload[8:20])


def _matches(ours: bytes, named: bytes) -> bool:
    """common/pid.c `matches_pid(ours, named)`: every field `named` gives (non-zero) equals ours."""
    for start, end in ((0, 4), (4, 6), (6, 8), (8, 12)):
        if any(named[start:end]) and named[start:end] != ours[start:end]:
            return False
    return True
