"""The middle-proxy relay connection (protocol/middleproxy.py, protocol/middleproxy_messages.py) against byte
layouts written out by hand from MTProxy's C sources, and against a relay side written here from the same
sources (the server's half of net/net-tcp-rpc-server.c). Addresses are documentation ranges (RFC 5737,
RFC 3849); nothing here touches a network."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.crypto.backend import openssl_cbc
from mtproxy.protocol import middleproxy_messages as messages
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.middleproxy import (
    MiddleProxyError,
    Phase,
    Ready,
    RelayConnection,
    RelayEndpoints,
    derive_keys,
    encode_frame,
    nonce_packet,
)
from mtproxy.protocol.obfs2 import TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED
from mtproxy.protocol.proxyconfig import ProxySecret

SECRET = ProxySecret(bytes(range(1, 33)))  # key selector 01 02 03 04
NOW = 1_700_000_000  # 0x6553f100
OUR_NONCE = bytes(range(0xA0, 0xB0))
RELAY_NONCE = bytes(range(0xC0, 0xD0))
OURS = ipaddress.IPv4Address("192.0.2.10")
RELAY = ipaddress.IPv4Address("198.51.100.7")
ENDPOINTS = RelayEndpoints(OURS, 40000, RELAY, 8888)
V6_ENDPOINTS = RelayEndpoints(ipaddress.IPv6Address("2001:db8::1"), 40000, ipaddress.IPv6Address("2001:db8::2"), 8888)
PID, START = 0x1234, NOW - 100


def crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data))


# --- vectors by hand ------------------------------------------------------------------------------------


def test_a_frame_is_length_seq_payload_crc32() -> None:
    # MTProxy net/net-tcp-rpc-common.c `tcp_rpc_conn_send_init`: Q[0] = payload + 12, Q[1] = packet number,
    # then the CRC32 of those and the payload (common/crc32.c: the IEEE CRC, as zlib's)
    head = bytes.fromhex("10000000" "05000000" "01020304")
    assert encode_frame(5, b"\x01\x02\x03\x04") == head + crc(head)
    assert encode_frame(-1, bytes(4))[4:8] == b"\xff\xff\xff\xff"
    with pytest.raises(ValueError):
        encode_frame(0, b"abc")


def test_the_nonce_packet() -> None:
    # MTProxy net/net-tcp-rpc-client.c `tcp_rpcc_init_crypto` and net/net-tcp-rpc-common.h
    # `struct tcp_rpc_nonce_packet`: RPC_NONCE, key_select = main_secret.key_signature (the secret's first 4
    # bytes), crypto_schema RPC_CRYPTO_AES, crypto_ts = time(0), 16 nonce bytes; sent as packet number -2
    payload = bytes.fromhex("aa87cb7a" "01020304" "01000000" "00f15365") + OUR_NONCE
    assert nonce_packet(SECRET, NOW, OUR_NONCE) == payload
    head = bytes.fromhex("2c000000" "feffffff") + payload
    connection = RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=OUR_NONCE, pid=PID, start_time=START)
    assert connection.start() == head + crc(head)
    assert connection.phase is Phase.NONCE


def material(role: bytes, endpoints: RelayEndpoints) -> bytes:
    """MTProxy net/net-crypto-aes.c `aes_create_keys`, the layout of `str` written out field by field."""
    v6 = endpoints.ours.version == 6
    relay_ip = bytes(4) if v6 else bytes([7, 100, 51, 198])  # host-order 198.51.100.7, stored little-endian
    our_ip = bytes(4) if v6 else bytes([10, 2, 0, 192])
    return (RELAY_NONCE  # str[0:16] nonce_server
            + OUR_NONCE  # [16:32] nonce_client
            + bytes.fromhex("00f15365")  # [32:36] client_timestamp
            + relay_ip  # [36:40] server_ip
            + bytes.fromhex("409c")  # [40:42] client_port 40000
            + role  # [42:48] "CLIENT" (the "SERVER" variant for the other direction)
            + our_ip  # [48:52] client_ip
            + bytes.fromhex("b822")  # [52:54] server_port 8888
            + SECRET.data  # [54:54+n] the proxy-secret
            + RELAY_NONCE  # nonce_server again
            + ((endpoints.ours.packed + endpoints.relay.packed) if v6 else b"")  # client_ipv6, server_ipv6
            + OUR_NONCE)  # nonce_client again


@pytest.mark.parametrize("endpoints", [ENDPOINTS, V6_ENDPOINTS], ids=["ipv4", "ipv6"])
def test_key_derivation(endpoints: RelayEndpoints) -> None:
    # key := SUBSTR(MD5(str+1),0,12).SHA1(str), iv := MD5(str+2) (the comment above `aes_create_keys`);
    # write with "CLIENT", read with "SERVER" (it flips str[42..48])
    keys = derive_keys(SECRET, RELAY_NONCE, OUR_NONCE, NOW, endpoints)
    for role, key, iv in ((b"CLIENT", keys.write_key, keys.write_iv), (b"SERVER", keys.read_key, keys.read_iv)):
        text = material(role, endpoints)
        assert len(text) == 70 + 32 + 16 + (32 if endpoints.ours.version == 6 else 0)
        assert key == hashlib.md5(text[1:]).digest()[:12] + hashlib.sha1(text).digest()
        assert iv == hashlib.md5(text[2:]).digest()
    assert "key" not in repr(keys).replace("CbcKeys", "")


def test_the_fixed_v4_vector() -> None:
    """The layout's fixed part as hex, and the key it gives (pinned: a change to either shows here)."""
    text = material(b"CLIENT", ENDPOINTS)
    assert text[:54].hex() == ("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf" "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
                               "00f15365" "076433c6" "409c" "434c49454e54" "0a0200c0" "b822")
    keys = derive_keys(SECRET, RELAY_NONCE, OUR_NONCE, NOW, ENDPOINTS)
    assert keys.write_key.hex() == "680d8f4349b5216b83271c987368164d0b8ec4ce8f508dbbb158251748ff72d1"
    assert keys.write_iv.hex() == "4d05d27ee19026738f98323b3b3eb6c7"


def test_endpoints_must_be_usable_for_the_derivation() -> None:
    with pytest.raises(ValueError, match="one family"):
        RelayEndpoints(OURS, 1, ipaddress.IPv6Address("2001:db8::2"), 1)
    with pytest.raises(ValueError, match=r"0\.0\.0\.0"):
        RelayEndpoints(ipaddress.IPv4Address("0.0.0.0"), 1, RELAY, 1)
    with pytest.raises(ValueError, match="out of range"):
        RelayEndpoints(OURS, 0, RELAY, 1)


CLIENT = (ipaddress.IPv4Address("203.0.113.5"), 51000)
PUBLIC = (ipaddress.IPv4Address("192.0.2.10"), 443)
MTPROTO = bytes(8) + bytes(range(8, 40))  # 40 bytes, auth_key_id 0: the DH exchange
ENCRYPTED = b"\x11" * 8 + bytes(range(8, 40))


def test_proxy_request_without_ad_tag() -> None:
    # MTProxy mtproto/mtproto-proxy.c `forward_tcp_query`: RPC_PROXY_REQ, flags, out_conn_id, the client's
    # address as 16 bytes (IPv4: long 0, int -0x10000, htonl(ip)) and int port, then ours, then the packet.
    # Flags: an obfuscated2 intermediate client is RPC_F_MEDIUM | RPC_F_EXTMODE2 (net/net-tcp-rpc-ext-server.c),
    # | 0x1000 from `forward_tcp_query`, | 2 when auth_key_id is 0 (`forward_mtproto_packet`)
    expected = (bytes.fromhex("eef1ce36")  # RPC_PROXY_REQ
                + struct.pack("<I", 0x20000000 | 0x20000 | 0x1000 | 0x2)
                + bytes.fromhex("efcdab8967452301")  # out_conn_id 0x0123456789abcdef
                + bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5]) + bytes.fromhex("38c70000")  # 51000
                + bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 10]) + bytes.fromhex("bb010000")  # 443
                + MTPROTO)
    assert messages.encode_proxy_request(0x0123456789ABCDEF, CLIENT, PUBLIC, TAG_INTERMEDIATE, MTPROTO) == expected


def test_proxy_request_with_ad_tag() -> None:
    # `forward_tcp_query` with proxy_tag_set: flags | 8, and after the addresses an extra section: its size,
    # then TL_PROXY_TAG and the 16-byte tag as a TL string (length byte, bytes, 3 bytes to align)
    tag = bytes(range(0xE0, 0xF0))
    expected = (bytes.fromhex("eef1ce36")
                + struct.pack("<I", 0x40000000 | 0x20000 | 0x1000 | 0x8 | 0x80000000)  # abridged, quick ack
                + struct.pack("<Q", 7)
                + bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5]) + struct.pack("<i", 51000)
                + bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 10]) + struct.pack("<i", 443)
                + struct.pack("<i", 24) + bytes.fromhex("ae261edb") + b"\x10" + tag + bytes(3)
                + ENCRYPTED)
    got = messages.encode_proxy_request(7, CLIENT, PUBLIC, TAG_ABRIDGED, ENCRYPTED, ad_tag=tag, quick_ack=True)
    assert got == expected


def test_proxy_request_flags_and_addresses() -> None:
    # a padded client's RPC_F_PAD is masked out by `ext_rpcs_execute`: its flags are the intermediate ones
    padded = messages.encode_proxy_request(1, CLIENT, PUBLIC, TAG_PADDED, ENCRYPTED)
    assert struct.unpack_from("<I", padded, 4)[0] == 0x20000000 | 0x20000 | 0x1000
    v6 = messages.encode_proxy_request(1, (ipaddress.IPv6Address("2001:db8::5"), 1), PUBLIC, TAG_PADDED, ENCRYPTED)
    assert v6[16:36] == ipaddress.IPv6Address("2001:db8::5").packed + b"\x01\x00\x00\x00"
    for bad in (lambda: messages.encode_proxy_request(1, CLIENT, PUBLIC, TAG_PADDED, b"abc"),
                lambda: messages.encode_proxy_request(1, CLIENT, PUBLIC, TAG_PADDED, ENCRYPTED, ad_tag=b"x"),
                lambda: messages.encode_proxy_request(1, CLIENT, PUBLIC, b"\x16\x03\x01\x02", ENCRYPTED),
                lambda: messages.encode_proxy_request(1, (CLIENT[0], 70000), PUBLIC, TAG_PADDED, ENCRYPTED)):
        with pytest.raises(ValueError):
            bad()


def test_which_client_packets_the_official_proxy_forwards() -> None:
    # `forward_mtproto_packet`: >= 28 bytes, a multiple of 4; without a key, req_pq / req_pq_multi /
    # req_DH_params / set_client_DH_params with an inner length that fits
    req_pq_multi = bytes(8) + bytes(8) + struct.pack("<iI", 20, 0xBE7E8EF1) + bytes(16)
    assert messages.forwardable(req_pq_multi)
    assert messages.forwardable(ENCRYPTED)
    assert not messages.forwardable(ENCRYPTED[:24])
    assert not messages.forwardable(ENCRYPTED + b"\x00")
    assert not messages.forwardable(req_pq_multi[:20] + struct.pack("<I", 0x12345678) + req_pq_multi[24:])
    assert not messages.forwardable(req_pq_multi[:16] + struct.pack("<i", 400) + req_pq_multi[20:])


def test_messages_from_the_relay_decode() -> None:
    # mtproto/mtproto-common.h structs and `process_client_packet`'s size checks
    answer = struct.pack("<IIQ", messages.RPC_PROXY_ANS, 8, 7) + b"data"
    assert messages.decode_message(answer) == messages.ProxyAnswer(7, 8, b"data")
    ack = struct.pack("<IQ", messages.RPC_SIMPLE_ACK, 7) + b"\x01\x02\x03\x84"
    assert messages.decode_message(ack) == messages.SimpleAck(7, b"\x01\x02\x03\x84")
    assert messages.decode_message(struct.pack("<IQ", messages.RPC_CLOSE_EXT, 7)) == messages.CloseExt(7)
    assert messages.decode_message(messages.encode_ping(9)) == messages.Pinged(9)
    assert messages.decode_message(messages.encode_pong(9)) == messages.Pong(9)
    assert messages.encode_close_conn(7) == bytes.fromhex("5d42cf1f") + struct.pack("<Q", 7)
    assert messages.encode_ping(1) == bytes.fromhex("dfa23057") + struct.pack("<Q", 1)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (struct.pack("<I", 0x12345678) + bytes(8), "unknown message type 0x12345678"),
        (struct.pack("<IQ", messages.RPC_PROXY_ANS, 1), "RPC_PROXY_ANS shorter than 16 bytes"),
        (struct.pack("<IQ", messages.RPC_SIMPLE_ACK, 1), "RPC_SIMPLE_ACK not 16 bytes"),
        (struct.pack("<IQI", messages.RPC_CLOSE_EXT, 1, 0), "RPC_CLOSE_EXT not 12 bytes"),
        (struct.pack("<I", messages.RPC_PING), "RPC_PING not 12 bytes"),
    ],
)
def test_what_the_official_proxy_ignores_is_a_named_event(payload: bytes, reason: str) -> None:
    message = messages.decode_message(payload)
    assert isinstance(message, messages.Ignored)
    assert (message.message_type, message.size, message.reason) == (struct.unpack_from("<I", payload)[0],
                                                                      len(payload), reason)


# --- a relay written from the server's half of the sources ---------------------------------------------


class Relay:
    """The relay's side: net/net-tcp-rpc-server.c `tcp_rpcs_parse_execute`, `tcp_rpcs_init_crypto`,
    `tcp_rpcs_send_handshake_packet`, with keys from `aes_create_keys(am_client = 0)`."""

    def __init__(self, endpoints: RelayEndpoints = ENDPOINTS, relay_time: int = NOW + 3) -> None:
        self.endpoints = endpoints
        self.relay_time = relay_time
        self.out_seq = -2
        self.in_seq = -2
        self.clear = True
        self.plain = b""
        self.encrypt = self.decrypt = None  # type: ignore[var-annotated]

    def frame(self, payload: bytes, seq: int | None = None) -> bytes:
        body = struct.pack("<ii", len(payload) + 12, self.out_seq if seq is None else seq) + payload
        self.out_seq += 1
        return body + crc(body)

    def sealed(self, data: bytes) -> bytes:
        data += struct.pack("<i", 4) * ((-len(data) % 16) // 4)  # `tcp_rpc_flush`
        return self.encrypt.update(data)  # type: ignore[attr-defined, no-any-return]

    def frames(self, data: bytes) -> list[tuple[int, bytes]]:
        if not self.clear:
            data = self.decrypt.update(data)  # type: ignore[attr-defined]
        self.plain += data
        out = []
        while len(self.plain) >= 4:
            length = struct.unpack_from("<i", self.plain)[0]
            if length == 4:
                self.plain = self.plain[4:]
                continue
            assert length >= 16 and len(self.plain) >= length
            frame, self.plain = self.plain[:length], self.plain[length:]
            assert crc(frame[:-4]) == frame[-4:]
            seq = struct.unpack_from("<i", frame, 4)[0]
            assert seq == self.in_seq
            self.in_seq += 1
            out.append((seq, frame[8:-4]))
        return out

    def answer_nonce(self, nonce_frame: bytes, *, key_select: bytes = b"\x01\x02\x03\x04") -> bytes:
        ((seq, payload),) = self.frames(nonce_frame)
        assert seq == -2 and len(payload) == 32
        client_nonce, client_time = payload[16:32], struct.unpack_from("<i", payload, 12)[0]
        text = material(b"SERVER", self.endpoints)  # the server's write direction
        assert text[16:32] == client_nonce and struct.unpack_from("<i", text, 32)[0] == client_time
        keys = {}
        for role in (b"SERVER", b"CLIENT"):
            text = material(role, self.endpoints)
            keys[role] = (hashlib.md5(text[1:]).digest()[:12] + hashlib.sha1(text).digest(),
                          hashlib.md5(text[2:]).digest())
        self.encrypt = Cipher(algorithms.AES(keys[b"SERVER"][0]), modes.CBC(keys[b"SERVER"][1])).encryptor()
        self.decrypt = Cipher(algorithms.AES(keys[b"CLIENT"][0]), modes.CBC(keys[b"CLIENT"][1])).decryptor()
        self.clear = False
        return self.frame(struct.pack("<I4sii", 0x7ACB87AA, key_select, 1, self.relay_time) + RELAY_NONCE)

    def answer_handshake(self, data: bytes, *, flags: int = 0, peer: bytes | None = None) -> bytes:
        ((seq, payload),) = self.frames(data)
        assert seq == -1 and len(payload) == 32
        message_type, their_flags = struct.unpack_from("<Ii", payload)
        assert (message_type, their_flags) == (0x7682EEF5, 0)
        sender = payload[8:20]
        relay_pid = bytes([7, 100, 51, 198]) + struct.pack("<HHi", 8888, 77, NOW - 5000)
        return self.sealed(self.frame(struct.pack("<Ii", 0x7682EEF5, flags) + relay_pid
                                      + (sender if peer is None else peer)))


def connect(relay: Relay, endpoints: RelayEndpoints = ENDPOINTS, now: int = NOW) -> RelayConnection:
    connection = RelayConnection(SECRET, endpoints, openssl_cbc, now=now, nonce=OUR_NONCE, pid=PID,
                                 start_time=START)
    first = relay.answer_nonce(connection.start())
    step = connection.receive(first)
    assert step.events == () and connection.phase is Phase.HANDSHAKE
    step = connection.receive(relay.answer_handshake(step.send))
    assert len(step.events) == 1 and isinstance(step.events[0], Ready) and connection.ready
    assert step.events[0].relay_pid[4:6] == struct.pack("<H", 8888)
    return connection


@pytest.mark.parametrize("endpoints", [ENDPOINTS, V6_ENDPOINTS], ids=["ipv4", "ipv6"])
def test_handshake_and_messages_both_ways(endpoints: RelayEndpoints) -> None:
    relay = Relay(endpoints)
    connection = connect(relay, endpoints)
    sent = connection.proxy_request(7, CLIENT, PUBLIC, TAG_INTERMEDIATE, ENCRYPTED, ad_tag=bytes(16))
    assert len(sent) % 16 == 0
    ((seq, payload),) = relay.frames(sent)
    assert seq == 0 and payload == messages.encode_proxy_request(7, CLIENT, PUBLIC, TAG_INTERMEDIATE, ENCRYPTED,
                                                                 ad_tag=bytes(16))
    incoming = relay.sealed(
        relay.frame(struct.pack("<IIQ", messages.RPC_PROXY_ANS, 0, 7) + b"answer!!")
        + relay.frame(struct.pack("<IQ", messages.RPC_SIMPLE_ACK, 7) + b"\x00\x00\x00\x80")
        + relay.frame(messages.encode_ping(0x55))
        + relay.frame(struct.pack("<IQ", 0x0BADBEEF, 1))
        + relay.frame(struct.pack("<IQ", messages.RPC_CLOSE_EXT, 7)))
    step = connection.receive(incoming)
    assert step.events == (messages.ProxyAnswer(7, 0, b"answer!!"), messages.SimpleAck(7, b"\x00\x00\x00\x80"),
                           messages.Pinged(0x55), messages.Ignored(0x0BADBEEF, 12, "unknown message type 0x0badbeef"),
                           messages.CloseExt(7))
    assert connection.ignored == 1
    assert relay.frames(step.send) == [(1, messages.encode_pong(0x55))]
    assert relay.frames(connection.close_conn(8) + connection.ping(3)) == [
        (2, messages.encode_close_conn(8)), (3, messages.encode_ping(3))]


def test_every_split_of_the_relays_bytes_gives_the_same_events() -> None:
    relay = Relay()
    connection = RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=OUR_NONCE, pid=PID, start_time=START)
    nonce = relay.answer_nonce(connection.start())
    # the relay's handshake is sealed before we know it: build it from what our connection will send
    mirror = RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=OUR_NONCE, pid=PID, start_time=START)
    mirror.start()
    handshake = relay.answer_handshake(mirror.receive(nonce).send)
    rest = relay.sealed(relay.frame(struct.pack("<IIQ", messages.RPC_PROXY_ANS, 8, 1) + bytes(40))
                        + relay.frame(messages.encode_pong(2)))
    stream = nonce + handshake + rest
    splits = [[stream[:cut], stream[cut:]] for cut in range(1, len(stream))]
    splits.append([stream[i : i + 1] for i in range(len(stream))])
    for pieces in splits:
        connection = fresh()
        events = [event for piece in pieces for event in connection.receive(piece).events]
        assert [type(event) for event in events] == [Ready, messages.ProxyAnswer, messages.Pong]
        assert events[1] == messages.ProxyAnswer(1, 8, bytes(40))


# --- every way the relay can break the protocol ---------------------------------------------------------


def failing(connection: RelayConnection, data: bytes, reason: str, match: str) -> None:
    with pytest.raises(MiddleProxyError, match=match) as caught:
        connection.receive(data)
    assert caught.value.reason == reason and isinstance(caught.value, ProtocolError)
    assert connection.phase is Phase.FAILED
    with pytest.raises(MiddleProxyError, match="already failed"):
        connection.receive(b"")


def fresh() -> RelayConnection:
    connection = RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=OUR_NONCE, pid=PID, start_time=START)
    connection.start()
    return connection


def clear_nonce(key_select: bytes = b"\x01\x02\x03\x04", schema: int = 1, relay_time: int = NOW,
                extra: bytes = b"") -> bytes:
    return Relay().frame(struct.pack("<I4sii", 0x7ACB87AA, key_select, schema, relay_time) + RELAY_NONCE + extra)


def test_bad_crc() -> None:
    frame = bytearray(clear_nonce())
    frame[-1] ^= 1
    failing(fresh(), bytes(frame), "bad-crc", "fails its CRC32")


def test_bad_seq() -> None:
    failing(fresh(), Relay().frame(nonce_packet(SECRET, NOW, RELAY_NONCE), seq=0), "bad-seq",
            "numbered 0, expected -2")


def test_bad_seq_after_the_handshake() -> None:
    relay = Relay()
    connection = connect(relay)
    failing(connection, relay.sealed(relay.frame(messages.encode_pong(1), seq=5)), "bad-seq", "numbered 5, expected 0")


@pytest.mark.parametrize("length", [0, -16, 13, 8, 12, 1 << 30], ids=["zero", "negative", "unaligned",
                                                                     "padding-8", "padding-12", "huge"])
def test_bad_length_and_bad_padding(length: int) -> None:
    # a length of 4 is the only padding word (`tcp_rpc_flush` pads with ints of value 4); anything else
    # under 16, unaligned, or beyond what we buffer fails (`tcp_rpcc_parse_execute`)
    failing(fresh(), struct.pack("<i", length) + bytes(12), "bad-length", f"length {length} is not valid")


def test_padding_words_are_skipped_in_clear_too() -> None:
    connection = fresh()
    assert connection.receive(struct.pack("<i", 4) * 3).events == ()
    assert connection.receive(clear_nonce()).send  # the handshake goes out


def test_a_short_frame_waits_for_the_rest() -> None:
    connection = fresh()
    frame = clear_nonce()
    assert connection.receive(frame[:20]).events == () and connection.phase is Phase.NONCE
    assert connection.receive(frame[20:]).send and connection.phase is Phase.HANDSHAKE


@pytest.mark.parametrize(
    ("frame", "reason", "match"),
    [
        (Relay().frame(struct.pack("<IQ", messages.RPC_PING, 1)), "bad-nonce", "not an RPC_NONCE"),
        (clear_nonce(extra=bytes(4)), "bad-nonce", "36 bytes, not 32"),
        (clear_nonce(schema=0), "bad-nonce", "crypto schema 0"),
        (clear_nonce(schema=3), "bad-nonce", "crypto schema 3"),
        (clear_nonce(schema=2, extra=struct.pack("<i", 9)), "bad-nonce", "malformed key list"),
        (clear_nonce(key_select=b"\x09\x09\x09\x09"), "wrong-secret", "key selector mismatch"),
        (clear_nonce(relay_time=NOW + 31), "clock-skew", r"\+31 s from ours"),
        (clear_nonce(relay_time=NOW - 31), "clock-skew", "-31 s from ours"),
    ],
)
def test_bad_nonce_answers(frame: bytes, reason: str, match: str) -> None:
    failing(fresh(), frame, reason, match)


def test_an_extended_nonce_naming_our_key_among_others_is_accepted() -> None:
    # RPC_CRYPTO_AES_EXT: `select_best_key_signature` accepts our key among the extra ones
    frame = clear_nonce(key_select=b"\x09\x09\x09\x09", schema=2, extra=struct.pack("<i", 2) + b"\x08" * 4
                        + b"\x01\x02\x03\x04")
    connection = fresh()
    assert connection.receive(frame).send and connection.phase is Phase.HANDSHAKE


def test_the_clock_skew_limit_is_inclusive() -> None:
    # `tcp_rpcc_process_nonce_packet`: abs (crypto_ts - nonce_time) > 30 fails
    assert fresh().receive(clear_nonce(relay_time=NOW + 30)).send
    assert fresh().receive(clear_nonce(relay_time=NOW - 30)).send


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flags": 0x800}, "CRC32C"),
        ({"flags": 0x1}, "unknown flags 0x1"),
        ({"peer": bytes([1, 1, 1, 1]) + bytes(8)}, "another peer"),
        ({"peer": bytes(6) + struct.pack("<H", 999) + bytes(4)}, "another peer"),
    ],
)
def test_bad_handshake_answers(kwargs: dict[str, object], match: str) -> None:
    relay = Relay()
    connection = fresh()
    # the fresh connection already sent its nonce; the relay answers it
    relay.answer_nonce(encode_frame(-2, nonce_packet(SECRET, NOW, OUR_NONCE)))
    step = connection.receive(clear_nonce(relay_time=NOW + 3))
    failing(connection, relay.answer_handshake(step.send, **kwargs), "bad-handshake", match)  # type: ignore[arg-type]


def test_a_wildcard_peer_id_matches() -> None:
    relay = Relay()
    connection = fresh()
    relay.answer_nonce(encode_frame(-2, nonce_packet(SECRET, NOW, OUR_NONCE)))
    step = connection.receive(clear_nonce(relay_time=NOW + 3))
    assert isinstance(connection.receive(relay.answer_handshake(step.send, peer=bytes(12))).events[0], Ready)


def test_handshake_error_and_wrong_message() -> None:
    for payload, reason, match in (
        (struct.pack("<Ii", 0x6A27BEDA, -4) + bytes(12), "handshake-refused", "error -4"),
        (messages.encode_ping(1), "bad-handshake", "not a 32-byte RPC_HANDSHAKE"),
    ):
        relay = Relay()
        connection = fresh()
        relay.answer_nonce(encode_frame(-2, nonce_packet(SECRET, NOW, OUR_NONCE)))
        relay.frames(connection.receive(clear_nonce(relay_time=NOW + 3)).send)
        failing(connection, relay.sealed(relay.frame(payload)), reason, match)


def test_misuse_is_not_a_protocol_error() -> None:
    connection = RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=OUR_NONCE, pid=PID, start_time=START)
    with pytest.raises(RuntimeError, match="start"):
        connection.receive(b"")
    connection.start()
    with pytest.raises(RuntimeError, match="once"):
        connection.start()
    with pytest.raises(RuntimeError, match="not ready"):
        connection.ping(1)
    with pytest.raises(ValueError, match="16 bytes"):
        RelayConnection(SECRET, ENDPOINTS, openssl_cbc, now=NOW, nonce=b"short", pid=PID, start_time=START)


# --- properties -----------------------------------------------------------------------------------------


def outcome(pieces: list[bytes]) -> tuple[list[object] | None, str | None]:
    """The events of a ready connection fed `pieces`, or the reason it failed: the only two outcomes any
    bytes may have. (Events decoded in the same call as a failure are not returned: the connection and
    every session on it are over.)"""
    relay = Relay()
    connection = connect(relay)
    events: list[object] = []
    try:
        for piece in pieces:
            events += connection.receive(piece).events
    except MiddleProxyError as failure:
        return None, failure.reason
    return events, None


def sealed_after_handshake(plain: bytes) -> bytes:
    relay = Relay()
    connect(relay)
    return relay.sealed(plain)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=12))
def test_any_decrypted_bytes_give_events_or_a_protocol_error_whatever_the_split(plain: bytes,
                                                                                 cuts: list[int]) -> None:
    stream = sealed_after_handshake(plain)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(stream[pos : pos + cut])
        pos += cut
    pieces.append(stream[pos:])
    assert outcome(pieces) == outcome([stream])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_before_the_keys_give_a_protocol_error_or_wait(data: bytes) -> None:
    connection = fresh()
    try:
        step = connection.receive(data)
    except MiddleProxyError:
        return
    assert step.events == ()


message_strategy = st.one_of(
    st.builds(lambda c, f, d: struct.pack("<IIQ", messages.RPC_PROXY_ANS, f, c) + d,
              st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
              st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4])),
    st.builds(lambda c, k: struct.pack("<IQ", messages.RPC_SIMPLE_ACK, c) + k, st.integers(0, 2**64 - 1),
              st.binary(min_size=4, max_size=4)),
    st.builds(lambda c: struct.pack("<IQ", messages.RPC_CLOSE_EXT, c), st.integers(0, 2**64 - 1)),
    st.builds(messages.encode_ping, st.integers(0, 2**64 - 1)),
    st.builds(messages.encode_pong, st.integers(0, 2**64 - 1)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(message_strategy, max_size=8), st.integers(1, 50))
def test_relay_messages_round_trip_under_any_split(payloads: list[bytes], step: int) -> None:
    relay = Relay()
    connection = connect(relay)
    stream = relay.sealed(b"".join(relay.frame(payload) for payload in payloads))
    pieces = [stream[pos : pos + step] for pos in range(0, len(stream), step)]
    events = [event for piece in pieces for event in connection.receive(piece).events]
    assert events == [messages.decode_message(payload) for payload in payloads]
    assert connection.ignored == 0
