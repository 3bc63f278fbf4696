"""The native fake-TLS handshake (`mtp_tls_hello`, `mtp_tls_accept`) against the Python references in
`protocol.faketls`: the same hellos, clocks and refusals on real TDLib hellos and on truncated and mutated
ones, and the same flights byte for byte for the same random bytes."""

from __future__ import annotations

import ctypes
import gc
import hashlib
import hmac
import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.crypto import aesblock, backend, native
from mtproxy.protocol import client, faketls, x25519
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.faketls import ClientHello, TlsFormatError
from mtproxy.protocol.flight import FlightReader

from .vectors import DATA

CAPTURES = DATA / "tdlib_hellos"
INDEX = json.loads((CAPTURES / "index.json").read_text())
KEY = bytes.fromhex(INDEX["key"])
OTHER_KEY = bytes.fromhex(INDEX["other_key"])
TDLIB_HELLOS = [
    (CAPTURES / c["file"]).read_bytes()[: 5 + c["record_length"]]
    for c in INDEX["captures"] if c["name"] in ("ee", "ee_full", "ee_other_key")
]


@pytest.fixture(scope="module")
def backends(lib: ctypes.CDLL) -> tuple[backend.Backend, backend.Backend]:
    """(the native backend, the same with the fake-TLS work left to Python)."""
    built = backend.native_library(lib, aesblock.block_encryptor(aesblock.open_libcrypto()))
    return built, replace(built, tls_hello=None, tls_accept=None)


DRAWN = bytes(range(7, 7 + faketls.FLIGHT_RANDOM))
PLAIN = backend.openssl_ctr()  # the Python references' AES
VERSIONS_FIRST = (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE)
# the default, a site's cipher that may not be offered with the other order, the hybrid group; sizes measured
# on a SHA-384 and on a SHA-256 suite
SHAPES = (faketls.DEFAULT_SHAPE, faketls.HelloShape(0x1303, VERSIONS_FIRST, faketls.X25519, 0x1302),
          faketls.HelloShape(0x1302, VERSIONS_FIRST, faketls.X25519MLKEM768),
          faketls.HelloShape(0, faketls.DEFAULT_SHAPE.extensions, faketls.X25519MLKEM768, 0x1301))


def outcome(parse: object, record: bytes) -> ClientHello | str:
    try:
        return parse(record)  # type: ignore[operator, no-any-return]
    except TlsFormatError:
        return "malformed"


def assert_same(lib: ctypes.CDLL, record: bytes) -> None:
    """Python and the library agree on `record`: both refuse it, or both parse it to the same hello and,
    under each key, find the same clock and build the same flight (or both find no match)."""
    reference = outcome(faketls.parse_client_hello, record)
    assert outcome(lambda r: parse(lib, r), record) == reference
    if isinstance(reference, ClientHello):
        for key in (KEY, OTHER_KEY):
            expected = faketls.client_timestamp(faketls.keyed_hmac(key), reference) if reference.suite else None
            hello, accepted = native.check_hello(lib, record, key, DRAWN, 700)
            assert hello == reference and (accepted and accepted[0]) == expected
            if reference.suite:
                assert native.accept_hello(lib, reference, key, DRAWN, 700) == accepted
            if accepted is not None:
                cert = faketls.cert_stand_in(aesblock.cryptography_encrypt_block, DRAWN[32:], 700)
                assert accepted[1] == faketls.build_server_flight(key, reference, x25519.server_share(DRAWN[:32]), cert)
            for shape in SHAPES[1:]:
                expected_flight = (faketls.accept_hello(PLAIN, reference, key, DRAWN, 700, shape=shape)
                                   if reference.suite else None)
                assert native.check_hello(lib, record, key, DRAWN, 700, shape) == (reference, expected_flight)
                if reference.suite:
                    assert native.accept_hello(lib, reference, key, DRAWN, 700, shape) == expected_flight


def parse(lib: ctypes.CDLL, record: bytes) -> ClientHello:
    return native.check_hello(lib, record)[0]


def test_tdlib_hellos_parse_and_verify_the_same(lib: ctypes.CDLL) -> None:
    for record in TDLIB_HELLOS:
        hello = parse(lib, record)
        assert hello.sni == INDEX["domain"] and len(hello.session_id) == 32 and hello.suite == 0x1301
        assert_same(lib, record)
    # the captures under the configured key verify, those under the other key do not
    accepted = {native.accept_hello(lib, parse(lib, record), KEY, DRAWN, 100) is not None
                for record in TDLIB_HELLOS}
    assert accepted == {True, False}


def test_every_truncation_of_a_tdlib_hello_is_refused_alike(lib: ctypes.CDLL) -> None:
    record = TDLIB_HELLOS[0]
    for cut in range(len(record)):
        assert outcome(lambda r: parse(lib, r), record[:cut]) == "malformed"
        assert_same(lib, record[:cut])
    assert_same(lib, record + b"\x00")


def test_mutated_tdlib_hellos_give_the_same_outcome(lib: ctypes.CDLL) -> None:
    """Every length field and then random bytes changed: the parsers agree on each (a fuzz run in miniature,
    the atheris target `tls_hello` runs the same comparison)."""
    rng = random.Random(14)
    record = TDLIB_HELLOS[0]
    for at in range(len(record)):
        for value in (0x00, 0x01, 0x7F, 0xFF, record[at] ^ 0x01):
            mutated = bytearray(record)
            mutated[at] = value
            assert_same(lib, bytes(mutated))
    for _ in range(3000):
        mutated = bytearray(record)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        assert_same(lib, bytes(mutated))


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=400))
def test_arbitrary_records_give_the_same_outcome(lib: ctypes.CDLL, body: bytes) -> None:
    assert_same(lib, faketls.HELLO_PREFIX + len(body).to_bytes(2, "big") + body)


def extension(ext_type: int, body: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def hello_with(session_id: bytes, suites: bytes, extensions: bytes | None) -> bytes:
    """A ClientHello record around these fields; a padding extension first keeps it over the 64-byte minimum."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + len(suites).to_bytes(2, "big") + suites
    body += b"\x01\x00"
    if extensions is not None:
        extensions = extension(0x15, bytes(20)) + extensions
        body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return faketls.HELLO_PREFIX + len(handshake).to_bytes(2, "big") + handshake


NAME = extension(0, b"\x00\x0e\x00\x00\x0bExample.COM")
MALFORMED = None


@pytest.mark.parametrize(("record", "expected"), [
    (hello_with(b"", b"\x13\x02", NAME), ("example.com", 0x1302, 0)),  # no session id
    (hello_with(bytes(range(32)), b"\xc0\x2b\x13\x03\x13\x01", NAME), ("example.com", 0x1303, 32)),
    (hello_with(b"\x01", b"\xc0\x2b", NAME), ("example.com", 0, 1)),  # no TLS 1.3 suite
    (hello_with(b"", b"\x13\x01\x00", NAME), MALFORMED),  # an odd suite list
    (hello_with(b"", b"\x13\x01", NAME) + b"\x00", MALFORMED),  # a byte past the record's length
    (hello_with(b"", b"\x13\x01", extension(0x17, b"")), (None, 0x1301, 0)),  # no server name
    (hello_with(b"", b"\x13\x01", NAME + extension(0, b"\x00\x05\x01\x00\x02ab")), (None, 0x1301, 0)),
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x0b\x01\x00\x02ab\x00\x00\x03XyZ")), ("xyz", 0x1301, 0)),
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x06\x00\x00\x03\xe9ab")), MALFORMED),  # not ASCII
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x09\x00\x00\x03abc")), ("abc", 0x1301, 0)),  # list > data
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00")), MALFORMED),  # no room for the list length
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x05\x00\x00\x09abc")), MALFORMED),  # a name past its list
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x00")), (None, 0x1301, 0)),  # an empty list
    (hello_with(b"", b"\x13\x01", extension(0, b"\x00\x03\x00\x00\x00")), ("", 0x1301, 0)),  # an empty name
    (hello_with(b"", b"\x13\x01", NAME + b"\x00"), MALFORMED),  # a truncated extension header
    (hello_with(b"\x01" * 255, b"\x13\x01", NAME), ("example.com", 0x1301, 255)),  # the longest session id
])
def test_crafted_hellos_give_the_same_outcome(lib: ctypes.CDLL, record: bytes,
                                              expected: tuple[str | None, int, int] | None) -> None:
    assert_same(lib, record)
    hello = outcome(faketls.parse_client_hello, record)
    if expected is MALFORMED:
        assert hello == "malformed"
    else:
        assert isinstance(hello, ClientHello) and (hello.sni, hello.suite, len(hello.session_id)) == expected


def key_shares(*shares: tuple[int, int]) -> bytes:
    """A key_share extension's list: (group, share length) each, the share zero bytes."""
    listed = b"".join(g.to_bytes(2, "big") + n.to_bytes(2, "big") + bytes(n) for g, n in shares)
    return len(listed).to_bytes(2, "big") + listed


HYBRID = 0x11EC


@pytest.mark.parametrize(("extensions", "hybrid"), [
    (extension(0x33, key_shares((0x0A0A, 1), (HYBRID, 1216), (0x1D, 32))), True),  # TDLib's
    (extension(0x33, key_shares((0x1D, 32))), False),
    (extension(0x33, key_shares((0x1D, 32))) + extension(0x33, key_shares((HYBRID, 4))), True),  # two lists
    (extension(0x33, key_shares((0x1D, 40))[:-8]), False),  # a share past the list: the walk ends there
    (extension(0x33, b"\x00\x40" + key_shares((HYBRID, 2))[2:]), True),  # a list length past the extension
    (extension(0x33, b"\x00\x00" + key_shares((HYBRID, 2))[2:]), False),  # a share after the listed ones
    (extension(0x33, b"\x00"), False),  # no room for the list length
    (extension(0x33, key_shares((0x1D, 0xFFF0))[:8]), False),  # a share's length past everything
    (extension(0x28, key_shares((HYBRID, 4))), False),  # another extension's bytes
])
def test_key_shares_are_read_alike(lib: ctypes.CDLL, extensions: bytes, hybrid: bool) -> None:
    """Where a hello lists its key shares decides the hybrid answer: the library reads them as
    `faketls.client_offers` does, however they are malformed (the hello itself is well-formed)."""
    key = bytes(range(16))
    record = bytearray(hello_with(bytes(32), b"\x13\x01\x13\x02", NAME + extensions))
    record[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32] = signed_random(key, bytes(record), 1_000_000_000)
    hello = faketls.parse_client_hello(bytes(record))
    assert (HYBRID in faketls.client_offers(hello.record).groups) is hybrid
    for shape in SHAPES:
        expected = faketls.accept_hello(PLAIN, hello, key, DRAWN, 900, shape=shape)
        assert expected is not None
        assert native.check_hello(lib, hello.record, key, DRAWN, 900, shape) == (hello, expected)
        assert native.accept_hello(lib, hello, key, DRAWN, 900, shape) == expected
        reader = FlightReader()
        reader.feed(expected[1])
        assert reader.flight().group == (HYBRID if hybrid and shape.group == HYBRID else 0x1D)


def signed_random(key: bytes, record: bytes, now: int) -> bytes:
    """The random a client puts in `record` (its random zeroed) under `key` at `now` (protocol.md)."""
    digest = hmac.new(key, record, hashlib.sha256).digest()
    return digest[:28] + bytes(a ^ b for a, b in zip(digest[28:], now.to_bytes(4, "little"), strict=True))


@pytest.mark.parametrize("cert_size", [1, 1000, 2500, 16384])
@pytest.mark.parametrize("session_id", [b"", bytes(range(32)), b"\x07" * 255])
def test_flights_are_byte_identical(backends: tuple[backend.Backend, backend.Backend], cert_size: int,
                                    session_id: bytes) -> None:
    rng = random.Random(cert_size + len(session_id))
    for suite in faketls.TLS13_SUITES:
        key = rng.randbytes(16)
        record = bytearray(hello_with(session_id, suite.to_bytes(2, "big"), NAME))
        record[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32] = signed_random(key, bytes(record), 1_000_000_000)
        hello = faketls.parse_client_hello(bytes(record))
        assert (hello.suite, hello.session_id) == (suite, session_id)
        drawn = rng.randbytes(faketls.FLIGHT_RANDOM)
        accepted = [faketls.accept_hello(each, hello, key, drawn, cert_size) for each in backends]
        assert accepted[0] is not None and accepted[0] == accepted[1]
        clock, flight = accepted[0]
        assert clock == 1_000_000_000
        assert client.verify_server_flight(key, hello.random, flight)
        assert client.server_flight_length(flight) == len(flight)


def test_accept_refuses_what_python_refuses(lib: ctypes.CDLL,
                                            backends: tuple[backend.Backend, backend.Backend]) -> None:
    hello = parse(lib, TDLIB_HELLOS[0])
    for each in backends:
        for cert_size in (0, 16385):
            with pytest.raises(ProtocolError, match="fake certificate size"):
                faketls.accept_hello(each, hello, KEY, DRAWN, cert_size)
        with pytest.raises(TlsFormatError):
            faketls.accept_hello(each, hello._replace(suite=0), KEY, DRAWN, 100)
        with pytest.raises(ProtocolError, match="random bytes"):
            faketls.accept_hello(each, hello, KEY, DRAWN[1:], 100)
    # what the library would misread: a hello whose fields are not its record's, a short draw, bad sizes
    for wrong, drawn, size in ((hello._replace(session_id=bytes(32)), DRAWN, 100),
                               (hello._replace(random=bytes(32)), DRAWN, 100),
                               (hello._replace(record=hello.record[:40]), DRAWN, 100),
                               (hello, DRAWN[:63], 100), (hello, DRAWN, 0), (hello, DRAWN, 16385)):
        with pytest.raises(ValueError):
            native.accept_hello(lib, wrong, KEY, drawn, size)


def array_types() -> int:
    """How many ctypes array types exist now (each is a class, freed only by the cyclic GC)."""
    metaclass = type(ctypes.c_char * 1)
    return sum(1 for o in gc.get_objects() if type(o) is metaclass)


def test_flights_and_headers_make_no_array_type_per_size(lib: ctypes.CDLL) -> None:
    """Certificate sizes vary per handshake (the jitter), header-sized pieces by what came with an init: a
    ctypes array type per size would cost a new class (~10 µs) and GC work per handshake."""
    hello = parse(lib, TDLIB_HELLOS[0])
    stream = native.NativeCtr(lib, bytes(32), bytes(16))
    gc.collect()
    before = array_types()
    for size in range(1000, 1040):
        assert native.check_hello(lib, TDLIB_HELLOS[0], KEY, DRAWN, size)[1] is not None
        accepted = native.accept_hello(lib, hello, KEY, DRAWN, size)
        assert accepted is not None and client.server_flight_length(accepted[1]) == len(accepted[1])
        assert len(stream.update(bytes(size - 900))) == size - 900
    assert stream.update(b"") == b""
    assert array_types() == before
