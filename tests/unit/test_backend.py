"""The start-up choice of AES backend: self-tests, the measurement, a forced name, and what each backend is."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from mtproxy.crypto import aesblock, backend, ctr, native
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.faketls import ClientHello, HelloShape
from mtproxy.protocol.secret import Secret

from .conftest import cpu_has, walks_chosen_again


def never_timed() -> float:
    raise AssertionError("GCM need not be timed")


def candidates(libcrypto: ctypes.CDLL | None) -> tuple[backend.Backend | None, backend.Backend, backend.Backend]:
    block = aesblock.block_encryptor(libcrypto)
    lib = native.open_library()
    return (backend.native_library(lib, block) if lib is not None else None,
            backend.gcm_keystream(libcrypto, block), backend.openssl_ctr(block))


def test_every_backend_passes_its_own_self_test(aes: backend.Backend) -> None:
    backend.self_test(aes)


@pytest.mark.parametrize("name", backend.KEYSTREAMS)
def test_a_forced_name_is_used_without_measuring(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(backend, "gcm_time_over_ctr", never_timed)
    try:
        chosen = backend.load(name)
        walk = native.open_library()
        if name in backend.NATIVE and walk is None:
            assert chosen.name == "ctr" and chosen.why.startswith(f"{name}: not built here")
        elif name == "native" and walk is not None and walk.mtp_walk() != native.WALK_VAES:
            assert (chosen.name, chosen.why) == ("native-aesni", "MTPROXY_KEYSTREAM=native")  # all it has
        else:
            assert (chosen.name, chosen.why) == (name, f"MTPROXY_KEYSTREAM={name}")
    finally:
        walks_chosen_again()


def test_the_aesni_walk_is_forced_only_by_its_name() -> None:
    lib = native.open_library()
    if lib is None:
        pytest.skip("the native library is not built here")
    try:
        backend.load("native-aesni")
        assert lib.mtp_walk() == native.WALK_AESNI
        backend.load("native")
        assert lib.mtp_walk() == (native.WALK_VAES if cpu_has("vaes", "avx2") else native.WALK_AESNI)
    finally:
        walks_chosen_again()


def test_the_engine_reads_the_name_it_is_given_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPROXY_KEYSTREAM", "fast")  # would be refused if `load` read it
    assert backend.load("ctr").name == "ctr"
    with pytest.raises(ValueError, match="MTPROXY_KEYSTREAM must be one of native, native-aesni, gcm, ctr, not 'fast'"):
        backend.load("fast")


def test_the_timing_is_gcm_over_ctr_best_of_alternating_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: CTR's rounds take 4, 2, 3, 2 ticks and GCM's 3, 1, 5, 1 (they alternate, CTR first),
    so the ratio is GCM's best over CTR's best, 1/2."""
    ticks = iter([0, 4, 10, 13, 20, 22, 30, 31, 40, 43, 50, 55, 60, 62, 70, 71])
    monkeypatch.setattr(backend.time, "perf_counter", lambda: next(ticks))
    assert backend.gcm_time_over_ctr() == 0.5


@pytest.mark.parametrize(("ratio", "gcm"), [(0.45, True), (0.79, True), (0.81, False), (1.3, False)])
def test_gcm_is_chosen_only_when_clearly_faster(libcrypto: ctypes.CDLL | None, ratio: float, gcm: bool) -> None:
    _, gcm_backend, plain = candidates(libcrypto)
    chosen = backend.choose("", None, gcm_backend, plain, lambda: ratio)  # as on a machine without the library
    assert chosen.name == ("gcm" if gcm else "ctr")
    missing = "native: not built here, or this CPU lacks AES-NI"
    expected = f"measured: GCM takes {ratio:.2f}x" if gcm else f"{missing}; gcm: measured, it takes {ratio:.2f}x"
    assert chosen.why == f"{expected} the time of CTR"


def test_the_native_library_comes_first_when_it_passes(libcrypto: ctypes.CDLL | None) -> None:
    native_backend, gcm, plain = candidates(libcrypto)
    if native_backend is None or native_backend.name != "native":
        pytest.skip("the native library is not built here, or this CPU has no VAES")
    chosen = backend.choose("", native_backend, gcm, plain, never_timed)
    assert (chosen.name, chosen.why) == ("native", "the native library passed its self-test")
    assert type(chosen.new_stream(bytes(32), bytes(16))) is native.NativeCtr


def test_without_vaes_the_library_is_chosen_with_streams_that_move_to_openssl(libcrypto: ctypes.CDLL | None) -> None:
    """Its AES-NI walks make handshakes cheaper than OpenSSL's, OpenSSL's CTR moves bulk faster
    (BENCHMARKS.md): streams start in the library and move past ACCELERATE_AFTER."""
    lib = native.open_library()
    if lib is None:
        pytest.skip("the native library is not built here")
    try:
        lib.mtp_force_aesni(1)  # as a CPU without VAES runs it
        aesni, gcm, plain = candidates(libcrypto)
        assert aesni is not None
        chosen = backend.choose("", aesni, gcm, plain, never_timed)
        assert (chosen.name, chosen.why) == ("native-aesni", "the native library passed its self-test")
        stream = chosen.new_stream(bytes(32), bytes(16))
        assert type(stream) is ctr.HandoffCtr and not stream.moved
        stream.update(bytes(ctr.ACCELERATE_AFTER + 1))
        assert stream.moved
        assert chosen.start_init is not None
        assert type(chosen.start_init(bytes(range(64)), None)[1]) is ctr.HandoffCtr
    finally:
        walks_chosen_again()


def test_a_native_library_that_fails_its_self_test_is_never_used(libcrypto: ctypes.CDLL | None) -> None:
    _, gcm, plain = candidates(libcrypto)
    broken = backend.Backend("native", "", lambda key, iv: ctr.CtrStream(key, bytes(16)), plain.encrypt_block)
    chosen = backend.choose("native", broken, gcm, plain, never_timed)
    assert chosen.name == "ctr" and chosen.why == "native: its keystream is not AES-CTR's"


def test_a_gcm_that_fails_the_self_test_is_never_used(libcrypto: ctypes.CDLL | None) -> None:
    """As if OpenSSL's GCM differed: a stream that moves to a wrong GCM IV past ACCELERATE_AFTER."""
    _, _, plain = candidates(libcrypto)
    broken = backend.Backend("gcm", "", lambda key, iv: ctr.CtrStream(key, iv, gcm_iv=lambda k, c: bytes(16)),
                             plain.encrypt_block)
    chosen = backend.choose("gcm", None, broken, plain, never_timed)
    assert chosen.name == "ctr" and chosen.why == "gcm: its keystream is not AES-CTR's"


def test_a_wrong_block_cipher_fails_the_self_test(libcrypto: ctypes.CDLL | None) -> None:
    plain = candidates(libcrypto)[2]
    with pytest.raises(ValueError, match="block cipher"):
        backend.self_test(backend.Backend("ctr", "", plain.new_stream, lambda key, block: bytes(16)))


class MissingScan:
    """A secret scan that finds nothing."""

    def __init__(self, secrets: Sequence[Secret]) -> None:
        self.count = len(secrets)

    def find_obfs2(self, init: bytes, exclude: int) -> int:
        return -1

    def find_tls(self, hello: ClientHello, domain: str | None, exclude: int) -> tuple[int, int] | None:
        return None


class GuessingScan(MissingScan):
    """A secret scan that names the last secret whatever the client sent."""

    def find_obfs2(self, init: bytes, exclude: int) -> int:
        return self.count - 1

    def find_tls(self, hello: ClientHello, domain: str | None, exclude: int) -> tuple[int, int] | None:
        return self.count - 1, 1_000_000_000


@pytest.mark.parametrize("scan", [MissingScan, GuessingScan])
def test_a_wrong_secret_scan_fails_the_self_test(libcrypto: ctypes.CDLL | None, scan: type[MissingScan]) -> None:
    plain = candidates(libcrypto)[2]
    with pytest.raises(ValueError, match="its secret scan does not find a classic init's secret"):
        backend.self_test(replace(plain, secret_scan=scan))


def test_only_the_native_backend_brings_a_secret_scan(aes: backend.Backend) -> None:
    assert (aes.secret_scan is not None) == (aes.name in backend.NATIVE)


def test_a_wrong_init_start_fails_the_self_test(libcrypto: ctypes.CDLL | None) -> None:
    plain = candidates(libcrypto)[2]

    def reversed_keys_swapped(init: bytes, secret_key: bytes | None) -> tuple[bytes, ctr.CtrStream, bytes]:
        forward, backward = obfs2.derive_keys(init, secret_key, plain)
        stream = ctr.CtrStream(backward.key, backward.iv)
        return stream.update(init), stream, forward.key + forward.iv

    with pytest.raises(ValueError, match="its init start is not obfuscated2's stream"):
        backend.self_test(replace(plain, start_init=reversed_keys_swapped))


def test_only_the_native_backend_brings_an_init_start(aes: backend.Backend) -> None:
    assert (aes.start_init is not None) == (aes.name in backend.NATIVE)
    assert (aes.dc_link is not None) == (aes.name in backend.NATIVE)
    assert (aes.replay_check is not None) == (aes.name in backend.NATIVE)


def test_a_wrong_dc_link_or_replay_check_fails_the_self_test(aes: backend.Backend) -> None:
    """The self-test's own checks of the one-call DC link and the native replay filter catch a broken one."""
    if aes.name not in backend.NATIVE:
        pytest.skip("only the native backend brings them")
    link = aes.dc_link
    assert link is not None

    def stale_stream(*args: Any) -> tuple[bytes, Any] | None:
        made = link(*args)
        return None if made is None else (made[0], aes.new_stream(bytes(32), bytes(16)))

    with pytest.raises(ValueError, match="DC link is not obfuscated2's"):
        backend.self_test(replace(aes, dc_link=stale_stream))

    def forgetful(memory: memoryview) -> Callable[[bytes, int, int], bool]:
        return lambda key, now, ttl: False

    with pytest.raises(ValueError, match="replay filter"):
        backend.self_test(replace(aes, replay_check=forgetful))


def seeded(seed: int) -> Callable[[int], bytes]:
    """The same bytes for every backend: a random source that is not random."""
    return random.Random(seed).randbytes


def test_every_backend_builds_and_reads_the_same_headers(aes: backend.Backend, libcrypto: ctypes.CDLL | None) -> None:
    """The one-call init start and the Python steps give the same bytes: a client's init, the proxy's
    header towards a DC (fast mode and not), and what each stream makes of the bytes after them."""
    plain = candidates(libcrypto)[2]
    secret_key, after = os.urandom(16), os.urandom(200)
    for seed in range(20):
        results = []
        for each in (aes, plain):
            built = obfs2.build_init(seeded(seed), obfs2.TAG_PADDED, seed - 10, secret_key, each)
            decoded = obfs2.decode_init(built.wire, secret_key, each)
            assert decoded is not None and (decoded.tag, decoded.dc_id) == (obfs2.TAG_PADDED, seed - 10)
            # the client's first bytes ride behind the header (deciphered, enciphered for the DC): on the native
            # backend in one library call
            fast = obfs2.dc_link(decoded.to_initiator, decoded.tag, decoded.dc_id,
                                 seeded(seed), fast=True, from_client=decoded.from_initiator, pending=after[:seed * 7])
            slow = obfs2.dc_link(decoded.to_initiator, decoded.tag, decoded.dc_id,
                                 seeded(seed), fast=False, from_client=decoded.from_initiator, pending=after[:seed])
            assert slow.from_dc is not None and slow.to_client is not None
            results.append((built.wire, built.to_acceptor.update(after), decoded.from_initiator.update(after),
                            decoded.to_initiator.key, decoded.to_initiator.iv, fast.first, fast.to_dc.update(after),
                            slow.first, slow.to_dc.update(after), slow.from_dc.update(after),
                            slow.to_client.update(after)))
        assert results[0] == results[1]


def test_each_backend_makes_its_own_kind_of_stream(aes: backend.Backend) -> None:
    stream = aes.new_stream(os.urandom(32), os.urandom(16))
    assert type(stream) is {"native": native.NativeCtr, "native-aesni": ctr.HandoffCtr}.get(aes.name, ctr.CtrStream)
    if isinstance(stream, ctr.CtrStream):  # the GCM backend's streams move to GCM past ACCELERATE_AFTER
        stream.update(bytes(ctr.ACCELERATE_AFTER + 1))
        assert stream.on_gcm == (aes.name == "gcm")


def test_a_fresh_interpreter_loads_the_name_it_passes_in() -> None:
    """As the engine starts: it reads the environment itself and passes the name to `load`."""
    code = ("import os; from mtproxy.crypto import backend as c; "
            "b = c.load(os.environ.get(c.KEYSTREAM_ENV, '')); print(b.name, c.KEYSTREAMS[b.name])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MTPROXY_KEYSTREAM": "gcm"},
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "gcm OpenSSL's AES-GCM keystream"


def test_only_the_native_backend_brings_the_fake_tls_handshake(aes: backend.Backend) -> None:
    assert {aes.tls_hello is not None, aes.tls_accept is not None} == {aes.name in backend.NATIVE}


Accepted = tuple[int, bytes] | None


def test_a_wrong_fake_tls_handshake_fails_the_self_test(libcrypto: ctypes.CDLL | None) -> None:
    plain = candidates(libcrypto)[2]

    def lenient(record: bytes, key: bytes | None, drawn: bytes, size: int,
                shape: HelloShape) -> tuple[ClientHello, Accepted]:
        # takes a truncated record as Python's parser would a whole one
        return faketls.check_hello(plain, record if len(record) % 2 else record + b"\x00", key, drawn, size,
                                   shape=shape)

    def trusting(hello: ClientHello, key: bytes, drawn: bytes, size: int, shape: HelloShape) -> Accepted:
        return faketls.accept_hello(plain, hello, bytes(range(16)), drawn, size, shape=shape)

    def unsigned(hello: ClientHello, key: bytes, drawn: bytes, size: int, shape: HelloShape) -> Accepted:
        accepted = faketls.accept_hello(plain, hello, key, drawn, size, shape=shape)
        return None if accepted is None else (accepted[0], faketls.build_server_flight(key, hello, drawn[:32],
                                                                                        bytes(size)))

    for wrong, message in ((replace(plain, tls_hello=lenient), "check takes a truncated record"),
                           (replace(plain, tls_accept=trusting), "accept takes a wrong key"),
                           (replace(plain, tls_accept=unsigned), "accept is not faketls'")):
        with pytest.raises(ValueError, match=message):
            backend.self_test(wrong)


def test_the_cbc_factory_chains_across_calls() -> None:
    """NIST SP 800-38A F.2.5/F.2.6 (CBC-AES256), fed a block at a time: the chain must carry over."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    iv = bytes(range(16))
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51")
    cipher = bytes.fromhex("f58c4c04d6e5f1ba779eabfb5f7bfbd6" "9cfc4e967edb808d679f777bc6702c7d")
    encrypt = backend.openssl_ctr().new_cbc(key, iv, True)
    assert encrypt.update(plain[:16]) + encrypt.update(plain[16:]) == cipher
    decrypt = backend.openssl_cbc(key, iv, False)
    assert decrypt.update(cipher[:16]) + decrypt.update(cipher[16:]) == plain
    with pytest.raises(ValueError, match="32-byte key"):
        backend.openssl_cbc(key[:16], iv, True)
