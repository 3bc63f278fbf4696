"""The fake relay's codec against byte vectors laid out by hand from the official MTProxy C sources' rules
(each vector names the function it follows), so the fake relay is a fixed point the proxy's client is tested
against, not a mirror of it."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from pathlib import Path

import pytest

from mtproxy.testkit import rpcwire as w
from mtproxy.testkit.relayconfig import proxy_multi_conf, write_relay_files

SECRET = bytes.fromhex("01020304") + b"\xaa" * 28  # 32 bytes, MIN_PWD_LEN; key selector 0x04030201
SERVER_NONCE = bytes(range(0x20, 0x30))
CLIENT_NONCE = bytes(range(0x40, 0x50))
TS = 1700000000  # 0x6553f100


def bitwise_crc32(data: bytes) -> int:
    """MTProxy common/crc32.c: reflected polynomial 0xedb88320, start ~0, result inverted; one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc_is_the_c_sources_crc32() -> None:
    assert bitwise_crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    for sample in (b"", b"\x00" * 7, bytes(range(256))):
        assert w.crc32(sample) == bitwise_crc32(sample)


# MTProxy net/net-tcp-rpc-client.c tcp_rpcc_init_crypto builds struct tcp_rpc_nonce_packet (type, key_select,
# crypto_schema, crypto_ts, crypto_nonce[16]); net/net-tcp-rpc-common.c tcp_rpc_conn_send_data_init frames it
# as packet number -2 (tcp_rpcs_init_accepted starts both counters at -2): len=44, num, payload, crc32.
NONCE_FRAME = bytes.fromhex(
    "2c000000"  # total length: 32 + 12
    "feffffff"  # packet number -2
    "aa87cb7a"  # RPC_NONCE 0x7acb87aa
    "01020304"  # key_select: the secret's first 4 bytes (aes_secret_t union)
    "01000000"  # RPC_CRYPTO_AES
    "00f15365"  # crypto_ts 1700000000
    "101112131415161718191a1b1c1d1e1f"  # crypto_nonce
    "65eac8d7"  # crc32 of the 40 bytes before it
)


def test_nonce_packet_vector() -> None:
    assert bitwise_crc32(NONCE_FRAME[:-4]) == int.from_bytes(NONCE_FRAME[-4:], "little")
    assert w.key_signature(SECRET) == 0x04030201
    nonce = w.Nonce(w.key_signature(SECRET), w.RPC_CRYPTO_AES, TS, bytes(range(0x10, 0x20)))
    assert w.encode_frame(w.SEQ_NONCE, nonce.encode()) == NONCE_FRAME
    buf = bytearray(NONCE_FRAME)
    frame = w.take_frame(buf)
    assert frame is not None and not buf
    assert frame.seq == -2
    assert w.parse_nonce(frame.payload) == nonce


def test_nonce_refusals() -> None:
    good = w.Nonce(1, w.RPC_CRYPTO_AES, TS, bytes(16)).encode()
    with pytest.raises(w.RpcWireError, match="schema"):
        w.parse_nonce(good[:8] + struct.pack("<I", w.RPC_CRYPTO_AES_DH) + good[12:])
    with pytest.raises(w.RpcWireError, match="schema"):
        w.parse_nonce(good + bytes(4))
    with pytest.raises(w.RpcWireError, match="RPC_NONCE"):
        w.parse_nonce(b"\x00" * 4 + good[4:])


def hand_material(role: bytes, server: tuple[bytes, int, bytes], client: tuple[bytes, int, bytes]) -> bytes:
    """MTProxy net/net-crypto-aes.c aes_create_keys, offset by offset. IPv4 addresses are host-order ints
    stored little-endian, so their bytes come reversed; ports are 2-byte little-endian."""
    (server_ip, server_port, server_v6), (client_ip, client_port, client_v6) = server, client
    text = SERVER_NONCE  # 0: nonce_server
    text += CLIENT_NONCE  # 16: nonce_client
    text += struct.pack("<i", TS)  # 32: client_timestamp
    text += server_ip[::-1]  # 36: server_ip
    text += struct.pack("<H", client_port)  # 40: client_port
    text += role  # 42: "SERVER" or "CLIENT"
    text += client_ip[::-1]  # 48: client_ip
    text += struct.pack("<H", server_port)  # 52: server_port
    text += SECRET  # 54: the proxy secret
    text += SERVER_NONCE  # 54 + len: nonce_server again
    if server_ip == bytes(4):
        text += client_v6 + server_v6  # only when the connection is IPv6
    return text + CLIENT_NONCE


def hand_keys(text: bytes) -> tuple[bytes, bytes]:
    """key := SUBSTR(MD5(str+1),0,12).SHA1(str), iv := MD5(str+2)."""
    return hashlib.md5(text[1:]).digest()[:12] + hashlib.sha1(text).digest(), hashlib.md5(text[2:]).digest()


@pytest.mark.parametrize(("server", "client", "pinned"), [
    (("192.0.2.10", 8888), ("198.51.100.7", 40001),
     ("537cb006102de8c9668e86ad1412624acf2f4d824ee94276be67ae93b2c1608f", "341e7c10cc6cf0a97c669a89e9fa7b63",
      "840a145c6bcd51cf792119801b78b94b2801065f8a7fa66ef320b2b6152cf1b4", "e5147768952cb7243866f528638f3149")),
    (("2001:db8::10", 8888), ("2001:db8::7", 40001),
     ("d7c249f06bea49bd77895d13b165006d462fbfea87d4ef7db0e3df606038f1df", "5134a697a3160b7e92b947c0a8b6d13b",
      "7976043c8b4095b6cb9bdb5777f8facd2380db9944705d79949e0a44e89e3fcb", "9976927211837c7b5b836f0a4aaec9c0")),
])
def test_key_derivation_vectors(server: tuple[str, int], client: tuple[str, int],
                                pinned: tuple[str, str, str, str]) -> None:
    def end(host: str, port: int) -> tuple[bytes, int, bytes]:
        address = ipaddress.ip_address(host)
        return (address.packed, port, bytes(16)) if address.version == 4 else (bytes(4), port, address.packed)

    s, c = end(*server), end(*client)
    # the relay (am_client=0) writes with "SERVER" and reads with "CLIENT" (tcp_rpcs_init_crypto)
    write_key, write_iv = hand_keys(hand_material(b"SERVER", s, c))
    read_key, read_iv = hand_keys(hand_material(b"CLIENT", s, c))
    relay = w.derive_keys(am_client=False, server_nonce=SERVER_NONCE, client_nonce=CLIENT_NONCE,
                          client_timestamp=TS, server=w.Endpoint.of(*server), client=w.Endpoint.of(*client),
                          secret=SECRET)
    assert (relay.write_key, relay.write_iv, relay.read_key, relay.read_iv) == (write_key, write_iv, read_key, read_iv)
    assert (write_key.hex(), write_iv.hex(), read_key.hex(), read_iv.hex()) == pinned
    # the client (tcp_rpcc_start_crypto, am_client=1) gets the same two pairs the other way round
    proxy = w.derive_keys(am_client=True, server_nonce=SERVER_NONCE, client_nonce=CLIENT_NONCE,
                          client_timestamp=TS, server=w.Endpoint.of(*server), client=w.Endpoint.of(*client),
                          secret=SECRET)
    assert (proxy.write_key, proxy.write_iv) == (relay.read_key, relay.read_iv)
    assert (proxy.read_key, proxy.read_iv) == (relay.write_key, relay.write_iv)


def test_v4_mapped_peer_is_ipv4() -> None:
    assert w.Endpoint.of("::ffff:127.0.0.1", 1) == w.Endpoint.of("127.0.0.1", 1)
    assert w.Endpoint.of("127.0.0.1", 443) == w.Endpoint(0x7F000001, bytes(16), 443)


def test_key_derivation_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match=r"32\.\.256"):
        w.derive_keys(am_client=False, server_nonce=SERVER_NONCE, client_nonce=CLIENT_NONCE,
                      client_timestamp=TS, server=w.Endpoint.of("127.0.0.1", 1),
                      client=w.Endpoint.of("127.0.0.1", 2), secret=bytes(31))


# MTProxy net/net-tcp-rpc-server.c tcp_rpcs_default_execute answers this RPC_PING (12 bytes) with RPC_PONG;
# as packet 0 it is 24 bytes, and tcp_rpc_flush pads the encrypted stream to 16 with 4-byte frames of len 4.
PING_FRAME = bytes.fromhex("18000000" "00000000" "dfa23057" "8877665544332211" "cecf27f3")


def test_framed_packet_length_seq_crc_and_padding() -> None:
    ping = struct.pack("<Iq", w.RPC_PING, 0x1122334455667788)
    assert w.encode_frame(0, ping) == PING_FRAME
    assert bitwise_crc32(PING_FRAME[:-4]) == int.from_bytes(PING_FRAME[-4:], "little")
    assert w.pad_to_block(24) == bytes.fromhex("04000000" "04000000")
    assert w.pad_to_block(32) == b""
    assert w.pad_to_block(44) == bytes.fromhex("04000000")
    # the reader skips the padding words and takes the frame after them
    buf = bytearray(w.pad_to_block(24) + PING_FRAME + PING_FRAME[:5])
    frame = w.take_frame(buf)
    assert frame == w.Frame(0, ping)
    assert bytes(buf) == PING_FRAME[:5] and w.take_frame(buf) is None
    assert w.pong(ping) == struct.pack("<Iq", w.RPC_PONG, 0x1122334455667788)
    assert w.pong(ping + bytes(4)) is None


@pytest.mark.parametrize(("raw", "why"), [
    (bytes.fromhex("0c000000") + bytes(8), "length 12"),  # under 16 (tcp_rpcs_parse_execute)
    (bytes.fromhex("19000000") + bytes(21), "length 25"),  # not a multiple of 4
    (bytes.fromhex("00000000"), "length 0"),
    (PING_FRAME[:-1] + bytes([PING_FRAME[-1] ^ 1]), "crc32"),
])
def test_frame_refusals(raw: bytes, why: str) -> None:
    with pytest.raises(w.RpcWireError, match=why):
        w.take_frame(bytearray(raw))


# MTProxy mtproto/mtproto-proxy.c forward_tcp_query: RPC_PROXY_REQ, flags, ext_conn_id, the client's address,
# the proxy's address (IPv4 as long 0, int -0x10000, int htonl(ip), then the port as an int), with flag 8 an
# extra block (its size, TL_PROXY_TAG, the tag as a TL string), then the client's packet.
REQUEST = bytes.fromhex(
    "eef1ce36"  # RPC_PROXY_REQ 0x36cef1ee
    "08100020"  # flags 0x20001008: intermediate client (RPC_F_MEDIUM), ext server 0x1000, ad tag 8
    "0807060504030201"  # ext_conn_id 0x0102030405060708
    "0000000000000000" "0000ffff" "0a000001" "409c0000"  # client ::ffff:10.0.0.1, port 40000
    "0000000000000000" "0000ffff" "c0000201" "bb010000"  # proxy ::ffff:192.0.2.1, port 443
    "18000000"  # extra size 24
    "ae261edb"  # TL_PROXY_TAG 0xdb1e26ae
    "10" "00112233445566778899aabbccddeeff" "000000"  # TL string of 16 bytes, padded to 20
    "0000000000000000" "0123456789abcdef"  # the packet: auth_key_id 0, message id ...
)
AD_TAG = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_proxy_request_with_ad_tag_vector() -> None:
    request = w.parse_proxy_request(REQUEST)
    assert request.flags == 0x20001008
    assert request.conn_id == 0x0102030405060708
    assert request.remote == ("10.0.0.1", 40000)
    assert request.local == ("192.0.2.1", 443)
    assert request.ad_tag == AD_TAG
    assert request.extra == w.ad_tag_extra(AD_TAG)
    assert request.data == bytes.fromhex("0000000000000000" "0123456789abcdef")
    assert request.encode() == REQUEST


def test_proxy_request_without_tag_and_ipv6() -> None:
    request = w.ProxyRequest(w.FLAG_EXT_SERVER, -5, ("2001:db8::1", 5), ("2001:db8::2", 443), None, b"", b"abcd")
    raw = request.encode()
    assert len(raw) == 56 + 4  # no extra block without flags 4 or 8
    assert raw[16:36] == bytes.fromhex("20010db8000000000000000000000001" "05000000")
    assert w.parse_proxy_request(raw) == request


@pytest.mark.parametrize("cut", [10, 55, 58])
def test_proxy_request_truncated(cut: int) -> None:
    with pytest.raises(w.RpcWireError):
        w.parse_proxy_request(REQUEST[:cut])


def test_answer_ack_close_layouts() -> None:
    # struct rpc_proxy_ans / rpc_simple_ack / rpc_close_ext, MTProxy mtproto/mtproto-common.h (pack 4)
    assert w.proxy_answer(7, b"wxyz") == bytes.fromhex("0dda0344" "00000000" "0700000000000000") + b"wxyz"
    assert w.simple_ack(7, 0x80000001) == bytes.fromhex("9b40ac3b" "0700000000000000" "01000080")
    assert w.close_ext(-1) == bytes.fromhex("a234b65e" "ffffffffffffffff")
    assert w.parse_conn_id(bytes.fromhex("5d42cf1f" "0900000000000000"), w.RPC_CLOSE_CONN) == 9


def test_handshake_layout() -> None:
    # struct tcp_rpc_handshake_packet: type, flags, sender_pid, peer_pid (struct process_id: unsigned ip,
    # short port, unsigned short pid, int utime), MTProxy net/net-tcp-rpc-common.h and common/pid.h
    hello = w.Handshake(0, w.ProcessId(0x7F000001, 443, 0x1234, TS), w.ProcessId(0, 8888, 0, 0))
    raw = hello.encode()
    assert raw == bytes.fromhex("f5ee8276" "00000000" "0100007f" "bb01" "3412" "00f15365"
                                "00000000" "b822" "0000" "00000000")
    assert w.parse_handshake(raw) == hello
    # common/pid.c matches_pid: zero fields of the pattern match anything
    assert hello.sender.matched_by(w.ProcessId(0, 443, 0, 0))
    assert not hello.sender.matched_by(w.ProcessId(0, 444, 0, 0))


def test_proxy_multi_conf_text(tmp_path: Path) -> None:
    text = proxy_multi_conf({2: [("127.0.0.1", 8888), ("127.0.0.2", 8889)], -2: [("::1", 8890)]}, default_dc=2)
    assert text.splitlines()[1:] == ["default 2;", "proxy_for 2 127.0.0.1:8888;", "proxy_for 2 127.0.0.2:8889;",
                                     "proxy_for -2 [::1]:8890;"]
    files = write_relay_files(tmp_path, SECRET, {1: [("127.0.0.1", 1)]}, {1: [("::1", 2)]})
    assert files.secret.read_bytes() == SECRET and files.secret.stat().st_mode & 0o777 == 0o600
    assert files.config.read_text().endswith("proxy_for 1 127.0.0.1:1;\n")
    assert files.config_v6 is not None and "proxy_for 1 [::1]:2;" in files.config_v6.read_text()
    for bad in ({40000: [("127.0.0.1", 1)]}, {1: [("127.0.0.1", 0)]}, {1: []}):
        with pytest.raises(ValueError):
            proxy_multi_conf(bad)
    with pytest.raises(ValueError):
        write_relay_files(tmp_path, bytes(16), {1: [("127.0.0.1", 1)]})
