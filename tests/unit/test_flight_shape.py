"""The mask site's flight read from its bytes (`protocol.flight`), and the fake flight built in its shape
(`faketls.HelloShape`): what each client is answered, what TDLib's reading of a flight still accepts, and the
same bytes from every backend."""

from __future__ import annotations

import ctypes
import json
import os

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import client, faketls, x25519
from mtproxy.protocol.errors import ProtocolError, TlsFormatError
from mtproxy.protocol.faketls import DEFAULT_SHAPE, X25519, X25519MLKEM768, HelloShape
from mtproxy.protocol.flight import FlightReader, SiteFlight, follows_client_order
from mtproxy.protocol.handshake import Handshake, HandshakeSettings, NeedMore, SecretTable
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind

from .conftest import BACKENDS, available, make_backend, walks_chosen_again
from .vectors import DATA, stream

CAPTURES = DATA / "tdlib_hellos"
INDEX = json.loads((CAPTURES / "index.json").read_text())
KEY = bytes.fromhex(INDEX["key"])
TDLIB_HELLOS = [(CAPTURES / c["file"]).read_bytes()[: 5 + c["record_length"]]
                for c in INDEX["captures"] if c["name"] in ("ee", "ee_full")]
DRAWN = bytes(range(7, 7 + faketls.FLIGHT_RANDOM))
# what a site on a current OpenSSL or BoringSSL answers a Telegram client: AES-256, the hybrid group,
# supported_versions first
HYBRID = HelloShape(0x1302, (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE), X25519MLKEM768)


def flight_of(data: bytes) -> SiteFlight:
    reader = FlightReader()
    reader.feed(data)
    return reader.flight()


def test_tdlib_offers_the_hybrid_group_and_every_tls13_suite() -> None:
    for record in TDLIB_HELLOS:
        offers = faketls.client_offers(record)
        assert offers.suites == {0x1301, 0x1302, 0x1303}
        assert {X25519MLKEM768, X25519} <= offers.groups


@pytest.mark.parametrize("record", TDLIB_HELLOS[:2] + TDLIB_HELLOS[-1:])
def test_shaped_flight_to_tdlib(aes: Backend, record: bytes) -> None:
    """TDLib offers all the shape asks for: it gets the site's cipher, order and a 1120-byte hybrid share, in a
    flight its reading accepts (ServerHello skipped by length, ChangeCipherSpec, one record, the HMAC)."""
    hello, accepted = faketls.check_hello(aes, record, KEY, DRAWN, 3000, shape=HYBRID)
    assert accepted is not None
    flight = accepted[1]
    seen = flight_of(flight)
    assert (seen.cipher, seen.extensions, seen.group, seen.share_size) == (0x1302, HYBRID.extensions,
                                                                            X25519MLKEM768, 1120)
    # handshake header, version, random, session id, suite, compression, extensions: versions, key share
    assert seen.ccs and seen.records == (3000,) and seen.hello_size == 4 + 2 + 32 + 33 + 2 + 1 + 2 + 6 + 8 + 1120
    assert client.server_flight_length(flight) == len(flight)
    assert client.verify_server_flight(KEY, hello.random, flight)
    # the hybrid share ends with the x25519 share drawn; its ML-KEM part follows the certificate's keystream
    share = flight[5 + seen.hello_size - 1120 : 5 + seen.hello_size]
    cert = flight[-3000:]
    assert share[-32:] == x25519.server_share(DRAWN[:32])
    stream_bytes = faketls.cert_stand_in(aes.encrypt_block, DRAWN[32:], 3000 + 1088)
    assert cert == stream_bytes[:3000] and share[:1088] == stream_bytes[3000:]
    assert faketls.accept_hello(aes, hello, KEY, DRAWN, 3000, shape=HYBRID) == accepted


def test_shape_is_taken_only_as_far_as_the_client_offers(aes: Backend) -> None:
    """A client without the hybrid share or the site's cipher gets x25519 and its own first suite: a real
    server never answers a group or a suite the client did not offer."""
    record = TDLIB_HELLOS[0]
    narrowed = record.replace(b"\x11\xec\x04\xc0", b"\x7a\x7a\x04\xc0").replace(b"\x13\x02", b"\xc0\x99", 1)
    hello = faketls.parse_client_hello(narrowed)
    fitted = faketls.fit_shape(HYBRID, hello)
    assert fitted == HelloShape(0x1301, HYBRID.extensions, X25519)
    cert = faketls.cert_stand_in(aes.encrypt_block, DRAWN[32:], 500)
    seen = flight_of(faketls.build_server_flight(KEY, hello, DRAWN[:32], cert, fitted))
    assert (seen.cipher, seen.extensions, seen.group, seen.share_size) == (0x1301, HYBRID.extensions, X25519, 32)
    assert faketls.fit_shape(HYBRID, faketls.parse_client_hello(record)) == HYBRID


def test_default_shape_is_todays_flight(aes: Backend) -> None:
    """The default shape is the flight the native library builds: key_share first, x25519, the client's
    first suite; a shape equal to it in all but name is built the same."""
    hello, accepted = faketls.check_hello(aes, TDLIB_HELLOS[0], KEY, DRAWN, 2000)
    assert accepted is not None
    seen = flight_of(accepted[1])
    assert (seen.cipher, seen.extensions, seen.group, seen.share_size) == (0x1301, (0x33, 0x2B), X25519, 32)
    spelled_out = HelloShape(0x1301, (0x33, 0x2B), X25519)
    assert faketls.accept_hello(aes, hello, KEY, DRAWN, 2000, shape=spelled_out) == accepted


def test_every_backend_builds_the_same_shaped_flight(libcrypto: ctypes.CDLL | None) -> None:
    """The native library builds every shape itself: the same bytes as the Python reference the OpenSSL
    backends run."""
    shapes = (DEFAULT_SHAPE, HYBRID, HelloShape(0x1303, (0x2B, 0x33), X25519))
    answers: dict[tuple[int, int], set[object]] = {}
    try:
        for name in available(BACKENDS):
            each = make_backend(name, libcrypto)  # a native walk stays chosen until the next one's
            for i, record in enumerate(TDLIB_HELLOS):
                for j, shape in enumerate(shapes):
                    answers.setdefault((i, j), set()).add(faketls.check_hello(each, record, KEY, DRAWN, 4000,
                                                                              shape=shape))
    finally:
        walks_chosen_again()
    assert all(len(found) == 1 for found in answers.values()), answers.keys()


def test_handshake_answers_in_the_settings_shape(aes: Backend) -> None:
    secret = Secret(KEY, SecretKind.FAKE_TLS, "www.example.com")
    table = SecretTable([("s0", secret)], aes)
    settings = HandshakeSettings(cert_size=2222, hello_shape=HYBRID)
    hello = client.build_client_hello(KEY, "www.example.com", stream(b"c"), 1_790_000_000.0)
    for hint in (False, True):  # accepted in the parsing call (a hinted secret), or after it
        handshake = Handshake(table, settings, ReplayFilter.in_process(64), os.urandom, aes=aes,
                              hint=0 if hint else None)
        step = handshake.feed(hello, 1_790_000_000.0)
        assert isinstance(step, NeedMore)
        seen = flight_of(step.send)
        assert (seen.cipher, seen.group, seen.share_size, seen.records) == (0x1302, X25519MLKEM768, 1120, (2222,))


def test_site_flight_read_in_any_pieces() -> None:
    flight = faketls.build_server_flight(KEY, faketls.parse_client_hello(TDLIB_HELLOS[0]), DRAWN[:32], b"x" * 700)
    extra = faketls.record_header(300) + b"y" * 300
    whole = flight_of(flight + extra)
    assert whole.records == (700, 300) and whole.cert_size() == 1005
    reader = FlightReader()
    for i in range(0, len(flight + extra), 7):
        reader.feed((flight + extra)[i : i + 7])
    assert reader.flight() == whole and reader.encrypted == 2


def test_a_site_that_follows_the_client_order_answers_each_client_its_first() -> None:
    assert follows_client_order({0x1301: 0x1301, 0x1302: 0x1302})
    assert not follows_client_order({0x1301: 0x1302, 0x1302: 0x1302})  # its own preference
    assert not follows_client_order({0x1301: 0x1301})  # one hello cannot tell
    site = SiteFlight(0x1301, (0x2B, 0x33), X25519, 32, True, (2000,), 122, client_order=True)
    assert site.hello_shape() == HelloShape(0, (0x2B, 0x33), X25519, 0x1301)
    assert "cipher the client's first" in site.describe()
    apple = faketls.parse_client_hello(client.build_client_hello(KEY, "example.com", os.urandom, 1.7e9,
                                                                 tls13_suites=client.DARWIN_SUITES))
    assert apple.suite == 0x1302 and faketls.fit_shape(site.hello_shape(), apple).cipher in (0, 0x1302)
    own = SiteFlight(0x1302, (0x2B, 0x33), X25519, 32, True, (2000,), 122)
    assert faketls.fit_shape(own.hello_shape(), faketls.parse_client_hello(TDLIB_HELLOS[0])).cipher == 0x1302


@pytest.mark.parametrize(("measured", "first", "size"), [
    (0x1301, client.TDLIB_SUITES, 3000), (0x1301, client.DARWIN_SUITES, 3016),  # SHA-384's Finished: 16 more
    (0x1302, client.TDLIB_SUITES, 2984), (0x1302, client.DARWIN_SUITES, 3000), (0, client.DARWIN_SUITES, 3000),
])
def test_certificate_size_follows_the_answered_suite(aes: Backend, measured: int, first: tuple[int, ...],
                                                     size: int) -> None:
    """A site that follows the client's order answers each suite with its hash's Finished: the size measured
    on one suite moves by the difference for a client answered the other (TLS 1.3: nothing else changes)."""
    shape = HelloShape(0, (0x2B, 0x33), X25519, measured)
    record = client.build_client_hello(KEY, "example.com", os.urandom, 1.7e9, tls13_suites=first)
    accepted = faketls.check_hello(aes, record, KEY, DRAWN, 3000, shape=shape)[1]
    assert accepted is not None and flight_of(accepted[1]).records == (size,)
    assert flight_of(accepted[1]).cipher == first[0]


def test_what_cannot_be_imitated_falls_back() -> None:
    p256 = SiteFlight(0x1301, (0x2B, 0x33), 0x0017, 65, True, (40, 2000, 100, 53), 155)
    assert p256.hello_shape() == HelloShape(0x1301, (0x2B, 0x33), X25519, 0x1301)  # random is not on the curve
    odd = SiteFlight(0x1301, (0x33, 0x2B, 0x29), X25519, 32, True, (2000,), 130)
    assert odd.hello_shape().extensions == DEFAULT_SHAPE.extensions
    assert SiteFlight(0x1301, (0x2B, 0x33), X25519, 32, True, (53,), 122).cert_size() is None
    assert SiteFlight(0x1301, (0x2B, 0x33), X25519, 32, True, (16000, 2000), 122).cert_size() == 16384


def server_hello(version_ext: bytes, random: bytes = bytes(32)) -> bytes:
    body = b"\x03\x03" + random + b"\x00" + b"\x13\x01\x00" + len(version_ext).to_bytes(2, "big") + version_ext
    message = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(message).to_bytes(2, "big") + message


@pytest.mark.parametrize(("data", "why"), [
    (b"\x15\x03\x03\x00\x02\x02\x28", "alert"),
    (server_hello(b"\xff\x01\x00\x01\x00"), "does not speak TLS 1.3"),
    (server_hello(b"\x00\x2b\x00\x02\x03\x04", bytes.fromhex(
        "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")), "HelloRetryRequest"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not TLS records"),
    (b"\x17\x03\x03\x00\x01\x00", "not a ServerHello"),
    (server_hello(b"\x00\x2b\x00\x02\x03\x04") + b"\x16\x03\x03\x00\x01\x00", "type 22"),
])
def test_not_a_tls13_flight(data: bytes, why: str) -> None:
    with pytest.raises(TlsFormatError, match=why):
        flight_of(data)


def test_probe_hello_mlkem_share_passes_the_modulus_check() -> None:
    share = client.mlkem768_share(os.urandom)
    assert len(share) == 1216
    key = share[:1152]
    for i in range(0, len(key), 3):
        packed = int.from_bytes(key[i : i + 3], "little")
        assert packed & 0xFFF < 3329 and packed >> 12 < 3329
    hello = client.build_client_hello(KEY, "example.com", os.urandom, 1_790_000_000.0, share)
    assert share in hello and X25519MLKEM768 in faketls.client_offers(hello).groups
    with pytest.raises(ProtocolError):
        client.build_client_hello(KEY, "example.com", os.urandom, 1_790_000_000.0, share[:-1])
