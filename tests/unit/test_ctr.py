"""The CTR stream that moves to OpenSSL's GCM keystream: the field arithmetic behind the IV, and the
stream against cryptography's plain AES-CTR at any counter, chunking and context boundary."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.protocol import aesblock, ctr, obfs2

FIELD = st.integers(min_value=0, max_value=(1 << 128) - 1)


def reference_mul(a: int, b: int) -> int:
    """Schoolbook carry-less product, reduced bit by bit: slow and obviously right."""
    product = 0
    for i in range(128):
        if b >> i & 1:
            product ^= a << i
    for bit in range(254, 127, -1):
        if product >> bit & 1:
            product ^= ((1 << 128) | 0x87) << (bit - 128)
    return product


def reference_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)


@contextlib.contextmanager
def chosen(name: str) -> Iterator[None]:
    saved = ctr._choice
    ctr.decide(name, "test")
    try:
        yield
    finally:
        ctr._choice = saved


@pytest.fixture
def force_gcm() -> Iterator[None]:
    with chosen("gcm"):
        yield


@pytest.fixture
def force_ctr() -> Iterator[None]:
    with chosen("ctr"):
        yield


# ------------------------------------------------------------------------------------------- the field


def test_the_length_block_is_x_to_the_120() -> None:
    assert ctr.block_to_poly((128).to_bytes(16, "big")) == 1 << ctr._LENGTH_DEGREE
    assert ctr.poly_to_block(ctr.block_to_poly(bytes(range(16)))) == bytes(range(16))


@given(FIELD)
def test_square_is_the_product_with_itself(a: int) -> None:
    assert ctr.gf_square(a) == reference_mul(a, a)


@given(FIELD, FIELD.filter(bool))
def test_division_undoes_multiplication(a: int, b: int) -> None:
    assert reference_mul(ctr.gf_div_python(a, b), b) == a
    assert ctr.gf_div(a, b) == ctr.gf_div_python(a, b)


def test_libcrypto_divides_and_division_by_zero_is_refused() -> None:
    assert ctr._divider is not None  # Debian's libcrypto has GF(2^m); the Python path is tested above
    for divide in (ctr.gf_div_python, ctr._divider):
        with pytest.raises(ZeroDivisionError):
            divide(5, 0)


@settings(max_examples=300)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12),
       st.one_of(st.sampled_from([0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF)))
def test_the_iv_starts_gcm_at_the_chosen_counter_block(key: bytes, high: bytes, low: int) -> None:
    counter_block = high + low.to_bytes(4, "big")
    gcm = Cipher(algorithms.AES(key), modes.GCM(ctr.gcm_iv_for(key, counter_block))).encryptor()
    assert gcm.update(bytes(16)) == aesblock.encrypt_block(key, counter_block)


# ------------------------------------------------------------------------------------------ the stream

# counters near where the low 32 bits wrap (a new GCM context) and where all 128 bits do
COUNTERS = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.tuples(st.binary(min_size=12, max_size=12), st.integers(0, 40)).map(
        lambda t: t[0] + (0xFFFFFFFF - t[1]).to_bytes(4, "big")),
    st.integers(0, 40).map(lambda k: ((1 << 128) - 1 - k).to_bytes(16, "big")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(min_size=32, max_size=32), iv=COUNTERS,
       chunks=st.lists(st.integers(0, 3000), max_size=12), accelerate_after=st.integers(0, 2000),
       context_bytes=st.one_of(st.just(ctr.CONTEXT_BYTES), st.integers(32, 4000)),
       into=st.lists(st.booleans(), min_size=12, max_size=12))
def test_stream_matches_plain_ctr(force_gcm: None, key: bytes, iv: bytes, chunks: list[int], accelerate_after: int,
                                  context_bytes: int, into: list[bool]) -> None:
    data = os.urandom(sum(chunks))
    stream = ctr.CtrStream(key, iv, accelerate_after=accelerate_after, context_bytes=context_bytes)
    out = bytearray()
    at = 0
    for size, use_into in zip(chunks, into, strict=False):
        piece = data[at : at + size]
        if use_into:
            buf = bytearray(size + ctr.BLOCK - 1)
            assert stream.update_into(piece, buf) == size
            out += buf[:size]
        else:
            out += stream.update(piece)
        at += size
    assert bytes(out) == reference_ctr(key, iv, data)
    assert stream.position == len(data)
    assert stream.on_gcm == (len(data) > accelerate_after)


def test_in_place_across_the_wrap(force_gcm: None) -> None:
    """The relay decrypts in place: the input is a view of the output buffer, also across a new context."""
    key = os.urandom(32)
    iv = os.urandom(12) + (0xFFFFFFFF - 3).to_bytes(4, "big")  # the low 32 bits wrap 64 bytes in
    data = os.urandom(100_000)
    buf = bytearray(data) + bytearray(ctr.BLOCK)
    stream = ctr.CtrStream(key, iv, accelerate_after=10)
    assert stream.update_into(memoryview(buf)[:7], buf) == 7
    view = memoryview(buf)[7:]
    assert stream.update_into(view[: len(data) - 7], view) == len(data) - 7
    assert bytes(buf[: len(data)]) == reference_ctr(key, iv, data)
    assert stream.on_gcm


def test_a_stream_stays_on_ctr_where_gcm_does_not_win(force_ctr: None) -> None:
    key, iv = os.urandom(32), b"\xff" * 16
    stream = ctr.CtrStream(key, iv, accelerate_after=0)
    data = os.urandom(200_000)
    assert stream.update(data) == reference_ctr(key, iv, data)
    assert not stream.on_gcm


def test_short_streams_never_pay_for_the_switch(force_gcm: None) -> None:
    stream = obfs2.StreamKeys(os.urandom(32), os.urandom(16)).new_cipher()
    stream.update(bytes(ctr.ACCELERATE_AFTER))
    assert not stream.on_gcm
    stream.update(b"x")
    assert stream.on_gcm


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="32-byte key"):
        ctr.CtrStream(bytes(16), bytes(16))
    with pytest.raises(ValueError, match="16-byte counter"):
        ctr.CtrStream(bytes(32), bytes(12))
    for bad in (16, ctr.CONTEXT_BYTES + 1):
        with pytest.raises(ValueError, match="context_bytes"):
            ctr.CtrStream(bytes(32), bytes(16), context_bytes=bad)


@pytest.mark.parametrize("value", ["native", "gcm", "ctr"])
def test_the_environment_decides_without_measuring(value: str) -> None:
    code = "from mtproxy.protocol import ctr; print(ctr.keystream_choice())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MTPROXY_KEYSTREAM": value},
                         capture_output=True, text=True, check=True, timeout=60).stdout
    if value == "native" and ctr.NATIVE_LIBRARY is None:
        assert out.startswith("('ctr', 'native: not built here")
    else:
        assert out.strip() == repr((value, f"MTPROXY_KEYSTREAM={value}"))


def test_an_unknown_keystream_name_is_refused(undecided: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPROXY_KEYSTREAM", "fast")
    with pytest.raises(ValueError, match="MTPROXY_KEYSTREAM must be one of native, gcm, ctr, not 'fast'"):
        ctr.keystream_choice()
    with pytest.raises(ValueError, match="unknown keystream"):
        ctr.decide("aes", "test")


def test_the_timing_is_gcm_over_ctr_best_of_alternating_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: CTR's rounds take 4, 2, 3, 2 ticks and GCM's 3, 1, 5, 1 (they alternate, CTR first),
    so the ratio is GCM's best over CTR's best, 1/2."""
    ticks = iter([0, 4, 10, 13, 20, 22, 30, 31, 40, 43, 50, 55, 60, 62, 70, 71])
    monkeypatch.setattr(ctr.time, "perf_counter", lambda: next(ticks))
    assert ctr._gcm_time_over_ctr() == 0.5


@pytest.fixture
def undecided(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = ctr._choice
    ctr._choice = None
    monkeypatch.delenv("MTPROXY_KEYSTREAM", raising=False)
    yield
    ctr._choice = saved


@pytest.mark.parametrize(("ratio", "gcm"), [(0.45, True), (0.79, True), (0.81, False), (1.3, False)])
def test_gcm_is_chosen_only_when_clearly_faster(undecided: None, monkeypatch: pytest.MonkeyPatch, ratio: float,
                                                gcm: bool) -> None:
    monkeypatch.setattr(ctr, "NATIVE_LIBRARY", None)  # as on a machine without the native library
    monkeypatch.setattr(ctr, "_gcm_time_over_ctr", lambda: ratio)
    name, why = ctr.keystream_choice()
    assert name == ("gcm" if gcm else "ctr")
    assert f"GCM takes {ratio:.2f}x the time of CTR" in why or f"it takes {ratio:.2f}x the time of CTR" in why


def test_the_native_library_comes_first_when_it_passes(undecided: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if ctr.NATIVE_LIBRARY is None:
        pytest.skip("the native library is not built here")
    monkeypatch.setattr(ctr, "_gcm_time_over_ctr", lambda: pytest.fail("GCM need not be timed"))
    assert ctr.keystream_choice() == ("native", "the native library passed its self-test")


def test_a_native_library_that_fails_its_self_test_is_never_used(undecided: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPROXY_KEYSTREAM", "native")
    monkeypatch.setattr(ctr, "NativeCtr", lambda key, iv: ctr.CtrStream(key, bytes(16)))  # a wrong keystream
    name, why = ctr.keystream_choice()
    assert name == "ctr" and why.startswith("native: ")


def test_a_gcm_that_fails_the_self_test_is_never_used(undecided: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPROXY_KEYSTREAM", "gcm")
    monkeypatch.setattr(ctr, "gcm_iv_for", lambda key, counter: bytes(16))  # as if OpenSSL's GCM differed
    name, why = ctr.keystream_choice()
    assert name == "ctr" and why == "gcm: GCM's keystream is not AES-CTR's"


def test_a_new_context_every_context_bytes(force_gcm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[bytes] = []
    real = ctr.gcm_iv_for

    def counting(key: bytes, counter: bytes) -> bytes:
        starts.append(counter)
        return real(key, counter)

    monkeypatch.setattr(ctr, "gcm_iv_for", counting)
    key, iv = os.urandom(32), bytes(16)  # the low 32 bits are far from wrapping
    stream = ctr.CtrStream(key, iv, accelerate_after=0, context_bytes=1000)
    data = os.urandom(10_000)
    assert stream.update(data) == reference_ctr(key, iv, data)
    # a context takes context_bytes in all, counting the bytes it skips into its first block
    positions = [0]
    while (nxt := positions[-1] + 1000 - positions[-1] % 16) < len(data):
        positions.append(nxt)
    assert [int.from_bytes(c, "big") for c in starts] == [p // 16 for p in positions]


def test_threads_sharing_the_libcrypto_divider_get_their_own_answers() -> None:
    assert ctr._divider is not None
    divider = ctr._divider
    jobs = [(int.from_bytes(os.urandom(16), "big"), int.from_bytes(os.urandom(16), "big") | 1) for _ in range(3000)]
    expected = [ctr.gf_div_python(a, b) for a, b in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: divider(*job), jobs, chunksize=50))
    assert got == expected


def test_a_fixed_choice_replaces_the_measurement(force_gcm: None) -> None:
    ctr.decide("ctr", "load side")
    assert ctr.keystream_choice() == ("ctr", "load side")
    stream = ctr.CtrStream(os.urandom(32), os.urandom(16), accelerate_after=0)
    stream.update(bytes(100))
    assert not stream.on_gcm
