"""The secret scan in the native library against the Python loops it replaces (and against hashlib and hmac):
the same secret found, in the same order, on the SHA extensions and on the portable SHA-256."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import random
from collections.abc import Iterator

import pytest

from mtproxy.crypto import aesblock, backend, native
from mtproxy.protocol import client, faketls, obfs2
from mtproxy.protocol.handshake import SecretTable
from mtproxy.protocol.secret import Secret, SecretKind

from .conftest import make_backend

NOW = 1_790_000_000
DOMAINS = ["a.example", "b.example", None]


@pytest.fixture(params=["extensions", "portable"])
def sha_path(request: pytest.FixtureRequest, lib: ctypes.CDLL) -> Iterator[str]:
    """Each SHA-256 this machine can run: the CPU's SHA extensions, and the portable code (forced here,
    as it runs on a CPU without them)."""
    portable = request.param == "portable"
    previous = lib.mtp_sha_force_portable(portable)
    try:
        if lib.mtp_sha_extensions() != (0 if portable else 1):
            pytest.skip("this CPU has no SHA extensions")
        yield request.param
    finally:
        lib.mtp_sha_force_portable(previous)


@pytest.fixture(scope="module")
def backends(lib: ctypes.CDLL) -> tuple[backend.Backend, backend.Backend]:
    """(native, plain): the native library with its scan, and OpenSSL's CTR with SecretTable's own loops."""
    libcrypto = aesblock.open_libcrypto()
    native_backend, plain = make_backend("native", libcrypto), make_backend("ctr", libcrypto)
    assert native_backend.secret_scan is not None and plain.secret_scan is None
    return native_backend, plain


def secrets_with(count: int, rng: random.Random) -> list[Secret]:
    secrets = []
    for _ in range(count):
        domain = rng.choice(DOMAINS)
        key = rng.randbytes(16)
        secrets.append(Secret(key, SecretKind.FAKE_TLS, domain) if domain else Secret(key, SecretKind.PADDED))
    return secrets


def tables(backends: tuple[backend.Backend, backend.Backend],
           secrets: list[Secret]) -> tuple[SecretTable, SecretTable]:
    entries = [(f"s{i}", s) for i, s in enumerate(secrets)]
    return SecretTable(entries, backends[0]), SecretTable(entries, backends[1])


def init_for(key: bytes, aes: backend.Backend) -> bytes:
    return obfs2.build_init(os.urandom, obfs2.TAG_INTERMEDIATE, 3, key, aes).wire


def hello_for(key: bytes, domain: str) -> faketls.ClientHello:
    return faketls.parse_client_hello(client.build_client_hello(key, domain, os.urandom, NOW))


@pytest.mark.parametrize("where", ["first", "middle", "last", "nowhere"])
def test_native_and_python_scans_find_the_same_secret(backends: tuple[backend.Backend, backend.Backend],
                                                      sha_path: str, where: str) -> None:
    rng = random.Random(f"{where}-{sha_path}")
    secrets = secrets_with(41, rng)  # not a multiple of the library's batch of four
    at = {"first": 0, "middle": 20, "last": 40, "nowhere": -1}[where]
    key = secrets[at].key if at >= 0 else rng.randbytes(16)
    with_native, with_python = tables(backends, secrets)
    init = init_for(key, backends[1])
    for exclude in (-1, 7, at):
        expected = at if at >= 0 and exclude != at else -1
        assert with_native.find_obfs2(init, exclude) == with_python.find_obfs2(init, exclude) == expected
    for domain in DOMAINS:
        hello = hello_for(key, domain or "c.example")
        for exclude in (-1, 7, at):
            expected = (at, NOW) if at >= 0 and exclude != at else None
            assert with_native.find_tls(hello, domain, exclude) == with_python.find_tls(hello, domain, exclude)
            assert with_native.find_tls(hello, domain, exclude) == expected


def test_several_matching_secrets_give_the_first_in_candidate_order(
        backends: tuple[backend.Backend, backend.Backend], sha_path: str) -> None:
    """One key under three ids: classic takes the lowest index; fake-TLS takes the SNI domain's first,
    then the lowest index, as `SecretTable.candidates` orders them."""
    rng = random.Random(f"duplicates-{sha_path}")
    secrets = secrets_with(30, rng)
    key = rng.randbytes(16)
    secrets[5] = Secret(key, SecretKind.PADDED)
    secrets[12] = Secret(key, SecretKind.FAKE_TLS, "a.example")
    secrets[23] = Secret(key, SecretKind.FAKE_TLS, "b.example")
    with_native, with_python = tables(backends, secrets)
    init = init_for(key, backends[1])
    for exclude, expected in ((-1, 5), (5, 12), (12, 5)):
        assert with_native.find_obfs2(init, exclude) == with_python.find_obfs2(init, exclude) == expected
    hello = hello_for(key, "b.example")
    cases = [("b.example", -1, 23), ("b.example", 23, 5), ("a.example", -1, 12), ("a.example", 12, 5),
             (None, -1, 5), (None, 5, 12), ("c.example", 12, 5)]
    for domain, exclude, index in cases:
        assert with_native.find_tls(hello, domain, exclude) == with_python.find_tls(hello, domain, exclude)
        assert with_native.find_tls(hello, domain, exclude) == (index, NOW)


def test_an_empty_table_finds_nothing(backends: tuple[backend.Backend, backend.Backend]) -> None:
    with_native, with_python = tables(backends, [])
    init = init_for(os.urandom(16), backends[1])
    hello = hello_for(os.urandom(16), "a.example")
    assert with_native.find_obfs2(init, -1) == with_python.find_obfs2(init, -1) == -1
    assert with_native.find_tls(hello, "a.example", -1) is None
    assert with_python.find_tls(hello, "a.example", -1) is None


def lengths() -> list[int]:
    """0..2000 bytes: every length around the first block boundaries (55, 56: where the padding takes a
    second block), and random ones up to 2000."""
    rng = random.Random("sha lengths")
    return sorted(set(range(0, 200)) | {rng.randrange(200, 2001) for _ in range(60)} | {1023, 1024, 1025, 2000})


def test_sha256_is_hashlib_on_every_length(lib: ctypes.CDLL, sha_path: str) -> None:
    for n in lengths():
        data = os.urandom(n)
        assert native.sha256(lib, data) == hashlib.sha256(data).digest(), n


def tls_scan(lib: ctypes.CDLL, midstates: bytes, record: bytes, digest_source: bytes) -> tuple[int, int]:
    """The library's fake-TLS scan over one key, called directly; returns (result, the clock it wrote)."""
    timestamp = ctypes.c_uint32()
    one = (ctypes.c_int32 * 1)(0)
    found = lib.mtp_tls_scan(record, len(record), digest_source, midstates, 1, None, one, 1, -1, -1,
                             ctypes.byref(timestamp))
    return found, timestamp.value


@pytest.mark.parametrize("key_size", [0, 1, 16, 63, 64, 65, 100])
def test_hmac_from_midstates_is_hmac_new(lib: ctypes.CDLL, sha_path: str, key_size: int) -> None:
    """The scan's HMAC-SHA256 (midstates, then the message) equals hmac.new's for any key and message
    length: a message whose random holds the digest is found, with the clock XORed into its last 4 bytes."""
    rng = random.Random(f"hmac-{key_size}-{sha_path}")
    keys = [rng.randbytes(key_size) for _ in range(3)]
    packed = native.hmac_midstates(lib, keys)
    for n in [rng.randrange(0, 2001) for _ in range(12)] + [55, 56, 64, 119, 120]:
        key, record = keys[n % 3], rng.randbytes(n)
        midstates = packed[native.MIDSTATES_SIZE * (n % 3) : native.MIDSTATES_SIZE * (n % 3 + 1)]
        digest = hmac.new(key, record, hashlib.sha256).digest()
        clock = rng.randrange(1 << 32)
        random_field = digest[:28] + bytes(a ^ b for a, b in zip(digest[28:], clock.to_bytes(4, "little"), strict=True))
        assert tls_scan(lib, midstates, record, random_field) == (0, clock)
        wrong = bytearray(random_field)
        wrong[rng.randrange(28)] ^= 1 << rng.randrange(8)
        assert tls_scan(lib, midstates, record, bytes(wrong))[0] == -1


def test_a_bad_index_or_size_is_refused_not_read(lib: ctypes.CDLL) -> None:
    keys = os.urandom(32)
    init = os.urandom(64)
    for bad in (-5, 2, 1 << 30):
        indexes = (ctypes.c_int32 * 2)(0, bad)
        assert lib.mtp_obfs2_scan(init, keys, 2, indexes, 2, -1) == -2
    assert lib.mtp_obfs2_scan(None, keys, 2, (ctypes.c_int32 * 1)(0), 1, -1) == -2
    # sizes no buffer can have: refused before anything is read
    assert lib.mtp_obfs2_scan(init, keys, 1 << 62, (ctypes.c_int32 * 1)(0), 1, -1) == -2
    timestamp = ctypes.c_uint32()
    assert lib.mtp_tls_scan(init, 1 << 63, init, keys, 0, None, None, 0, -1, -1, ctypes.byref(timestamp)) == -2


def test_the_self_test_passes_on_each_sha_path(backends: tuple[backend.Backend, backend.Backend],
                                                  sha_path: str) -> None:
    backend.self_test(backends[0])
