"""The CTR stream that moves to OpenSSL's GCM keystream: the field arithmetic behind the IV (`crypto.gcm`), and
the stream (`crypto.ctr`) against cryptography's plain AES-CTR at any counter, chunking and context boundary."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.crypto import aesblock, ctr, gcm

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


@pytest.fixture(scope="module")
def divider() -> gcm.Divide:
    divide = gcm.load_divider(aesblock.open_libcrypto())
    assert isinstance(divide, gcm.Gf2mDivider)  # Debian's libcrypto has GF(2^m); the Python path is tested too
    return divide


@pytest.fixture(scope="module")
def gcm_iv(divider: gcm.Divide) -> gcm.GcmIv:
    return gcm.GcmIv(aesblock.block_encryptor(aesblock.open_libcrypto()), divider)


# ------------------------------------------------------------------------------------------- the field


def test_the_length_block_is_x_to_the_120() -> None:
    assert gcm.block_to_poly((128).to_bytes(16, "big")) == 1 << gcm._LENGTH_DEGREE
    assert gcm.poly_to_block(gcm.block_to_poly(bytes(range(16)))) == bytes(range(16))


@given(FIELD)
def test_square_is_the_product_with_itself(a: int) -> None:
    assert gcm.gf_square(a) == reference_mul(a, a)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FIELD, FIELD.filter(bool))
def test_division_undoes_multiplication(divider: gcm.Divide, a: int, b: int) -> None:
    assert reference_mul(gcm.gf_div_python(a, b), b) == a
    assert divider(a, b) == gcm.gf_div_python(a, b)


def test_libcrypto_divides_and_division_by_zero_is_refused(divider: gcm.Divide) -> None:
    assert gcm.load_divider(None) is gcm.gf_div_python  # without libcrypto, the Python division
    for divide in (gcm.gf_div_python, divider):
        with pytest.raises(ZeroDivisionError):
            divide(5, 0)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12),
       st.one_of(st.sampled_from([0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF)))
def test_the_iv_starts_gcm_at_the_chosen_counter_block(gcm_iv: gcm.GcmIv, key: bytes, high: bytes, low: int) -> None:
    counter_block = high + low.to_bytes(4, "big")
    context = Cipher(algorithms.AES(key), modes.GCM(gcm_iv(key, counter_block))).encryptor()
    assert context.update(bytes(16)) == aesblock.cryptography_encrypt_block(key, counter_block)


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
def test_stream_matches_plain_ctr(gcm_iv: gcm.GcmIv, key: bytes, iv: bytes, chunks: list[int], accelerate_after: int,
                                  context_bytes: int, into: list[bool]) -> None:
    data = os.urandom(sum(chunks))
    stream = ctr.CtrStream(key, iv, gcm_iv=gcm_iv, accelerate_after=accelerate_after, context_bytes=context_bytes)
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


def test_in_place_across_the_wrap(gcm_iv: gcm.GcmIv) -> None:
    """The relay decrypts in place: the input is a view of the output buffer, also across a new context."""
    key = os.urandom(32)
    iv = os.urandom(12) + (0xFFFFFFFF - 3).to_bytes(4, "big")  # the low 32 bits wrap 64 bytes in
    data = os.urandom(100_000)
    buf = bytearray(data) + bytearray(ctr.BLOCK)
    stream = ctr.CtrStream(key, iv, gcm_iv=gcm_iv, accelerate_after=10)
    assert stream.update_into(memoryview(buf)[:7], buf) == 7
    view = memoryview(buf)[7:]
    assert stream.update_into(view[: len(data) - 7], view) == len(data) - 7
    assert bytes(buf[: len(data)]) == reference_ctr(key, iv, data)
    assert stream.on_gcm


def test_a_stream_without_the_gcm_keystream_stays_on_ctr() -> None:
    key, iv = os.urandom(32), b"\xff" * 16
    stream = ctr.CtrStream(key, iv, accelerate_after=0)
    data = os.urandom(200_000)
    assert stream.update(data) == reference_ctr(key, iv, data)
    assert not stream.on_gcm


def test_short_streams_never_pay_for_the_switch(gcm_iv: gcm.GcmIv) -> None:
    stream = ctr.CtrStream(os.urandom(32), os.urandom(16), gcm_iv=gcm_iv)
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


def test_a_new_context_every_context_bytes(gcm_iv: gcm.GcmIv) -> None:
    starts: list[bytes] = []

    def counting(key: bytes, counter: bytes) -> bytes:
        starts.append(counter)
        return gcm_iv(key, counter)

    key, iv = os.urandom(32), bytes(16)  # the low 32 bits are far from wrapping
    stream = ctr.CtrStream(key, iv, gcm_iv=counting, accelerate_after=0, context_bytes=1000)
    data = os.urandom(10_000)
    assert stream.update(data) == reference_ctr(key, iv, data)
    # a context takes context_bytes in all, counting the bytes it skips into its first block
    positions = [0]
    while (nxt := positions[-1] + 1000 - positions[-1] % 16) < len(data):
        positions.append(nxt)
    assert [int.from_bytes(c, "big") for c in starts] == [p // 16 for p in positions]


def test_threads_sharing_the_libcrypto_divider_get_their_own_answers(divider: gcm.Divide) -> None:
    jobs = [(int.from_bytes(os.urandom(16), "big"), int.from_bytes(os.urandom(16), "big") | 1) for _ in range(3000)]
    expected = [gcm.gf_div_python(a, b) for a, b in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: divider(*job), jobs, chunksize=50))
    assert got == expected
