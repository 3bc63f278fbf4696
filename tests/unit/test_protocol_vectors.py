"""The protocol core against vectors computed by an independent implementation (tests/data/make_vectors.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.client import ClientConnection, build_client_hello, verify_server_flight
from mtproxy.protocol.handshake import SecretTable
from mtproxy.protocol.secret import Secret, SecretKind

from .vectors import VECTORS, stream


def _fixed(data: bytes):  # a random source that yields exactly these bytes, once
    def take(n: int) -> bytes:
        assert n == len(data)
        return data

    return take


@pytest.mark.parametrize("vector", VECTORS["obfs2"], ids=lambda v: v["name"])
def test_obfs2_key_derivation_and_streams(aes: Backend, vector: dict[str, Any]) -> None:
    secret = bytes.fromhex(vector["secret"]) if vector["secret"] else None
    wire = bytes.fromhex(vector["wire"])
    forward, backward = obfs2.derive_keys(wire, secret, aes)
    assert forward.key.hex() == vector["c2s_key"] and forward.iv.hex() == vector["c2s_iv"]
    assert backward.key.hex() == vector["s2c_key"] and backward.iv.hex() == vector["s2c_iv"]

    decoded = obfs2.decode_init(wire, secret, aes)
    assert decoded is not None
    assert decoded.tag.hex() == vector["tag"] and decoded.dc_id == vector["dc_id"]
    assert decoded.from_initiator.update(bytes.fromhex(vector["payload_encrypted"])).hex() == vector["payload"]
    assert decoded.to_initiator.new_cipher().update(bytes.fromhex(vector["reply"])).hex() == vector["reply_encrypted"]

    built = obfs2.build_init(
        _fixed(bytes.fromhex(vector["init_plain"])), bytes.fromhex(vector["tag"]), vector["dc_id"], secret, aes
    )
    assert built.wire.hex() == vector["wire"]
    assert built.to_acceptor.update(bytes.fromhex(vector["payload"])).hex() == vector["payload_encrypted"]


def test_obfs2_wrong_secret_does_not_decode(aes: Backend) -> None:
    vector = VECTORS["obfs2"][0]
    assert obfs2.decode_init(bytes.fromhex(vector["wire"]), bytes(16), aes) is None


@pytest.mark.parametrize("vector", VECTORS["fast_mode"])
def test_fast_mode_dc_header(aes: Backend, vector: dict[str, Any]) -> None:
    keys = obfs2.StreamKeys(bytes.fromhex(vector["client_s2c_key"]), bytes.fromhex(vector["client_s2c_iv"]), aes)
    link = obfs2.dc_link(
        keys, bytes.fromhex(vector["tag"]), vector["dc_id"], stream(bytes.fromhex(vector["header_seed"])), fast=True
    )
    assert link.header.hex() == vector["header"]
    assert link.from_dc is None and link.to_client is None
    # What the DC derives from the header is exactly the client's reply stream.
    dc_view = obfs2.decode_init(link.header, None, aes)
    assert dc_view is not None
    assert dc_view.to_initiator == keys


@pytest.mark.parametrize("vector", VECTORS["faketls"])
def test_faketls_hello_check_and_server_flight(aes: Backend, vector: dict[str, Any]) -> None:
    """On every backend: the native library's hello check and flight where it has them, Python's elsewhere."""
    secret = bytes.fromhex(vector["secret"])
    record = bytes.fromhex(vector["hello"])
    hello = faketls.check_hello(aes, record)[0]
    assert hello == faketls.parse_client_hello(record)
    assert hello.sni == vector["domain"]
    assert faketls.client_timestamp(faketls.keyed_hmac(secret), hello) == vector["timestamp"]
    assert faketls.client_timestamp(faketls.keyed_hmac(bytes(16)), hello) is None
    table = SecretTable([("wrong", Secret(bytes(16), SecretKind.FAKE_TLS, "a.example")),
                         ("right", Secret(secret, SecretKind.FAKE_TLS, "a.example"))], aes)
    drawn = stream(bytes.fromhex(vector["server_seed"]))(faketls.FLIGHT_RANDOM)
    assert table.accept_hello(hello, 0, drawn, vector["cert_size"]) is None
    accepted = table.accept_hello(hello, 1, drawn, vector["cert_size"])
    assert accepted is not None
    timestamp, flight = accepted
    assert timestamp == vector["timestamp"]
    assert flight.hex() == vector["server_flight"]
    assert table.check_hello(record, 1, drawn, vector["cert_size"]) == (hello, accepted)
    assert table.check_hello(record, 0, drawn, vector["cert_size"]) == (hello, None)
    assert verify_server_flight(secret, hello.random, flight)


def test_our_client_hello_verifies_under_the_independent_check() -> None:
    vector = VECTORS["faketls"][0]
    secret = bytes.fromhex(vector["secret"])
    record = build_client_hello(secret, "www.example.com", stream(b"c"), 1_790_000_123)
    hello = faketls.parse_client_hello(record)
    assert 1700 <= len(record) <= 1900 and hello.sni == "www.example.com"
    assert b"\x11\xec\x04\xc0" in record  # an X25519MLKEM768 key share, as current clients send
    assert faketls.client_timestamp(faketls.keyed_hmac(secret), hello) == 1_790_000_123


def test_client_connection_classic_matches_independent_stream(aes: Backend) -> None:
    vector = VECTORS["obfs2"][1]
    secret = Secret(bytes.fromhex(vector["secret"]), SecretKind.CLASSIC)
    client = ClientConnection(
        secret, _fixed(bytes.fromhex(vector["init_plain"])), 0.0, aes=aes,
        tag=bytes.fromhex(vector["tag"]), dc_id=vector["dc_id"],
    )
    assert client.first_bytes().hex() == vector["wire"]
    assert client.encrypt(bytes.fromhex(vector["payload"])).hex() == vector["payload_encrypted"]
    assert client.decrypt(bytes.fromhex(vector["reply_encrypted"])).hex() == vector["reply"]
