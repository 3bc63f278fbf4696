"""The native AES-256-CTR library against OpenSSL's CTR (through `cryptography`): any counter, any chunking,
both passes in one walk, and the fake-TLS gather, reached the way the relay reaches it; every test once on
the VAES walks (where the CPU has VAES) and once on the AES-NI walks (what CPUs without VAES run)."""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import shutil
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.crypto import backend, ctr, native
from mtproxy.protocol import faketls, obfs2

from .conftest import cpu_has

# counters just before a carry out of the low 64 bits, or out of all 128, and anywhere
COUNTERS = st.one_of(
    st.integers(0, (1 << 128) - 1),
    st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, 40)).map(lambda t: (t[0] << 64) | ((1 << 64) - 1 - t[1])),
    st.integers(0, 40).map(lambda k: (1 << 128) - 1 - k),
)
CHUNKS = st.lists(st.integers(0, 700), min_size=1, max_size=12)


def reference(key: bytes, counter: int, data: bytes, skip: int = 0) -> bytes:
    """OpenSSL's CTR keystream from `skip` bytes into the stream, XORed onto `data`."""
    out = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(16, "big"))).encryptor().update(bytes(skip) + data)
    return out[skip:]


@pytest.fixture(scope="module", autouse=True, params=["vaes", "aesni"])
def walk(request: pytest.FixtureRequest) -> Iterator[str]:
    """The library's walks for this module's tests: its VAES walks, then its AES-NI walks (forced)."""
    lib = native.open_library()
    if lib is not None:
        lib.mtp_force_aesni(request.param == "aesni")
        if lib.mtp_walk() != (native.WALK_AESNI if request.param == "aesni" else native.WALK_VAES):
            lib.mtp_force_aesni(0)
            pytest.skip("this CPU has no VAES")
    yield request.param
    if lib is not None:
        lib.mtp_force_aesni(0)


def test_the_library_is_built_where_it_can_be() -> None:
    """pip builds it when cargo is there; on a CPU that can run it, it must then load (else the relay
    silently runs the slower path: this is what catches a broken build)."""
    if shutil.which("cargo") is None or not cpu_has("aes", "ssse3", "sse4_1"):
        pytest.skip("no cargo, or the CPU lacks AES-NI")
    assert native.open_library() is not None


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=COUNTERS, chunks=CHUNKS)
def test_one_stream_is_openssl_ctr(lib: ctypes.CDLL, key: bytes, counter: int, chunks: list[int]) -> None:
    data = os.urandom(sum(chunks))
    stream = native.NativeCtr(lib, key, counter.to_bytes(16, "big"))
    got, at = bytearray(), 0
    for i, size in enumerate(chunks):
        piece = data[at : at + size]
        if i % 3 == 0:
            got += stream.update(piece)  # read-only input
        elif i % 3 == 1:
            out = bytearray(size + 3)
            assert stream.update_into(bytearray(piece), memoryview(out)[1:]) == size  # another buffer
            assert out[0] == 0 and out[1 + size :] == bytes(2)  # nothing written outside
            got += out[1 : 1 + size]
        else:
            buf = bytearray(piece)
            stream.update_into(buf, buf)  # in place
            got += buf
        at += size
    assert bytes(got) == reference(key, counter, data)


@settings(max_examples=300, deadline=None)
@given(keys=st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
       counters=st.tuples(COUNTERS, COUNTERS), lead=st.tuples(st.integers(0, 40), st.integers(0, 40)), chunks=CHUNKS)
def test_two_passes_in_one_walk(lib: ctypes.CDLL, keys: tuple[bytes, bytes], counters: tuple[int, int],
                                lead: tuple[int, int], chunks: list[int]) -> None:
    """Streams already `lead` bytes in: at the same offset within a block they share the walk, at
    different offsets they take turns; either way the result is two CTR passes."""
    streams = [native.NativeCtr(lib, k, c.to_bytes(16, "big")) for k, c in zip(keys, counters, strict=True)]
    for stream, skip in zip(streams, lead, strict=True):
        stream.update(bytes(skip))
    data = os.urandom(sum(chunks))
    got, at = bytearray(), 0
    for size in chunks:
        buf = bytearray(data[at : at + size] + b"slack")
        assert native.gather_twice(streams[0], streams[1], buf, faketls.plain_layout(size)) == size
        assert buf[size:] == b"slack"
        got += buf[:size]
        at += size
    once = reference(keys[0], counters[0], data, lead[0])
    assert bytes(got) == reference(keys[1], counters[1], once, lead[1])


def _reads(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.tuples(st.sampled_from([1, 17, 2878, 5000, 16384]), st.integers(1, 30)), min_size=1,
                        max_size=4),
       cuts=st.lists(st.integers(0, 400_000), max_size=8), key_seed=st.binary(min_size=64, max_size=64))
def test_the_fake_tls_upload_step_matches_openssl(lib: ctypes.CDLL, lengths: list[tuple[int, int]], cuts: list[int],
                                                  key_seed: bytes) -> None:
    """The relay's upload step, `ctr.transform_upload`, over any cut of a record stream: the native walk
    (gathering runs of equal records) gives what OpenSSL's CTR gives on the Python gather."""
    payload_parts = [os.urandom(length * count) for length, count in lengths]
    wire = b"".join(faketls.wrap_records(part, length) for part, (length, _) in zip(payload_parts, lengths,
                                                                                       strict=True))
    keys = (key_seed[:32], key_seed[32:])
    ivs = (key_seed[:16], key_seed[16:32])
    results = []
    for make in (functools.partial(native.NativeCtr, lib), ctr.CtrStream):
        reader = faketls.TlsRecordReader()
        first, second = make(keys[0], ivs[0]), make(keys[1], ivs[1])
        out = bytearray()
        for piece in _reads(wire, cuts):
            buf = bytearray(piece) + bytearray(16)
            layout = reader.layout(memoryview(buf)[: len(piece)])
            n = ctr.transform_upload(first, second, buf, layout)
            assert buf[len(piece) :] == bytes(16)
            out += buf[:n]
        results.append(bytes(out))
    assert results[0] == results[1]
    assert results[0] == reference(keys[1], int.from_bytes(ivs[1], "big"),
                                   reference(keys[0], int.from_bytes(ivs[0], "big"), b"".join(payload_parts)))


@settings(max_examples=300, deadline=None)
@given(keys=st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
       counters=st.tuples(COUNTERS, COUNTERS), lead=st.tuples(st.integers(0, 40), st.integers(0, 40)),
       head=st.integers(0, 50), gap=st.integers(0, 20), length=st.integers(1, 300), spare=st.integers(0, 9),
       count=st.integers(0, 12), tail_gap=st.integers(0, 20), tail=st.integers(0, 60))
def test_a_gather_of_any_layout_is_two_passes_over_its_payload(lib: ctypes.CDLL,
        keys: tuple[bytes, bytes], counters: tuple[int, int], lead: tuple[int, int], head: int, gap: int,
        length: int, spare: int, count: int, tail_gap: int, tail: int) -> None:
    """Any layout the library accepts, beyond the ones the reader makes: records after a gap, slots
    wider than their records, streams at different offsets within a block (they take turns then, and
    the second pass works on the gathered bytes)."""
    streams = [native.NativeCtr(lib, k, c.to_bytes(16, "big")) for k, c in zip(keys, counters, strict=True)]
    for stream, skip in zip(streams, lead, strict=True):
        stream.update(bytes(skip))
    stride = length + faketls.RECORD_HEADER_SIZE + spare
    first_record = head + gap
    tail_start = first_record + count * stride + tail_gap
    buf = bytearray(os.urandom(tail_start + tail) + bytes(16))
    payload = bytes(buf[:head]) + b"".join(
        bytes(buf[first_record + i * stride + 5 : first_record + i * stride + 5 + length]) for i in range(count)
    ) + bytes(buf[tail_start : tail_start + tail])
    n = native.gather_twice(streams[0], streams[1], buf, (head, first_record, stride, length, count, tail_start, tail))
    once = reference(keys[0], counters[0], payload, lead[0])
    assert n == len(payload)
    assert buf[:n] == reference(keys[1], counters[1], once, lead[1])
    assert buf[tail_start + tail :] == bytes(16)


@pytest.mark.parametrize("layout", [
    (0, 0, 105, 100, 10, 1000, 20),  # the tail runs past the buffer
    (0, 0, 105, 100, 10, 900, 0),  # the records run past the tail
    (50, 40, 105, 100, 1, 200, 0),  # the head runs into the first record
    (0, 0, 50, 100, 8, 400, 0),  # records longer than their slots: output would overtake input
    (0, 0, 10, 1_000_000, 1, 10, 0),  # the same, reaching far past the buffer
    (-1000, 0, 105, 100, 1, 105, 0),  # negative
    (0, 0, 105, 100, -1, 0, 0),
])
def test_a_layout_outside_the_buffer_is_refused(lib: ctypes.CDLL,
                                               layout: tuple[int, int, int, int, int, int, int]) -> None:
    first, second = native.NativeCtr(lib, bytes(32), bytes(16)), native.NativeCtr(lib, bytes(32), bytes(16))
    buf = bytearray(1000)
    with pytest.raises(ValueError, match="does not fit"):
        native.gather_twice(first, second, buf, layout)
    assert buf == bytearray(1000)


def test_the_library_checks_a_layout_itself(lib: ctypes.CDLL) -> None:
    """Its own check, behind the one in Python: -2 and nothing touched."""
    first, second = native.NativeCtr(lib, bytes(32), bytes(16)), native.NativeCtr(lib, bytes(32), bytes(16))
    buf = bytearray(1000)
    addr, pin = native.address(buf)
    for layout in [(0, 0, 10, 1_000_000, 1, 10, 0), (0, 0, 105, 100, 10, 1000, 20), (0, 0, 2**63, 100, 4, 0, 0)]:
        assert lib.mtp_gather_xor2(first._addr, second._addr, addr, len(buf), *layout) == -2
    del pin
    assert buf == bytearray(1000)


def test_the_relay_takes_the_native_walk_for_native_streams(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    """`transform_upload` would give the same bytes through the streams' own `update_into`; this checks
    that native streams really take the one-walk path (classic and fake-TLS reads alike)."""
    walks: list[tuple[int, ...]] = []
    real = ctr.gather_twice

    def counting(first: native.NativeCtr, second: native.NativeCtr, buf: bytearray, layout: faketls.Layout) -> int:
        walks.append(layout)
        return real(first, second, buf, layout)

    monkeypatch.setattr(ctr, "gather_twice", counting)
    first, second = native.NativeCtr(lib, bytes(32), bytes(16)), native.NativeCtr(lib, bytes(range(32)), bytes(16))
    ctr.transform_upload(first, second, bytearray(100), faketls.plain_layout(100))
    wire = bytearray(faketls.wrap_records(bytes(2878 * 10), 2878))
    ctr.transform_upload(first, second, wire, faketls.TlsRecordReader().layout(memoryview(wire)))
    assert [layout[4] for layout in walks] == [0, 10]


@settings(max_examples=200, deadline=None)
@given(init=st.binary(min_size=64, max_size=64), secret_key=st.none() | st.binary(min_size=1, max_size=32),
       portable=st.booleans(), after=st.binary(max_size=300))
def test_an_init_start_is_the_derived_keys_on_openssl_ctr(lib: ctypes.CDLL, init: bytes, secret_key: bytes | None,
                                                          portable: bool, after: bytes) -> None:
    """One call gives what `obfs2.derive_keys` (hashlib) and OpenSSL's CTR give, on either SHA-256."""
    previous = lib.mtp_sha_force_portable(portable)
    try:
        out, stream, reverse = native.NativeCtr.start_init(lib, init, secret_key)
    finally:
        lib.mtp_sha_force_portable(previous)
    forward, backward = obfs2.derive_keys(init, secret_key, backend.openssl_ctr())
    counter = int.from_bytes(forward.iv, "big")
    assert out == reference(forward.key, counter, init)
    assert stream.update(after) == reference(forward.key, counter, after, skip=64)
    assert reverse == backward.key + backward.iv


@settings(max_examples=150, deadline=None)
@given(reverse=st.binary(min_size=48, max_size=48), drawn=st.binary(min_size=64, max_size=64),
       tag=st.sampled_from(sorted(obfs2.KNOWN_TAGS)), dc_id=st.integers(-32768, 32767),
       pending=st.one_of(st.binary(max_size=300), st.integers(4000, 9000).map(bytes)), after=st.binary(max_size=200))
def test_a_dc_link_is_the_python_header_on_openssl_ctr(lib: ctypes.CDLL, reverse: bytes, drawn: bytes, tag: bytes,
                                                       dc_id: int, pending: bytes, after: bytes) -> None:
    """One call gives the fast-mode header `obfs2.build_init` makes of the same random bytes, the client's
    first bytes deciphered and enciphered for the DC behind it (a short run and one past the fixed output
    array), and the DC stream after them; random bytes that make a refused init give None."""
    client_key, client_iv = bytes(range(32)), bytes(range(16))
    plain = backend.openssl_ctr()
    made = native.NativeCtr.link(lib, reverse, tag, dc_id, drawn, native.NativeCtr(lib, client_key, client_iv), pending)
    init = bytearray(drawn)
    init[8:56], init[56:60], init[60:62] = reverse[::-1], tag, dc_id.to_bytes(2, "little", signed=True)
    if not obfs2.is_acceptable_init(init):
        assert made is None
        return
    built = obfs2.build_init(lambda n: drawn, tag, dc_id, None, plain, reverse[::-1])
    assert made is not None
    first, to_dc = made
    assert first == built.wire + built.to_acceptor.update(reference(client_key, int.from_bytes(client_iv, "big"),
                                                                    pending))
    assert to_dc.update(after) == built.to_acceptor.update(after)


def test_a_dc_link_refuses_bad_input(lib: ctypes.CDLL) -> None:
    client = native.NativeCtr(lib, bytes(32), bytes(16))
    for reverse, tag, drawn in ((bytes(47), obfs2.TAG_PADDED, bytes(64)), (bytes(48), b"\xdd", bytes(64)),
                                (bytes(48), obfs2.TAG_PADDED, bytes(63))):
        with pytest.raises(ValueError, match="48 bytes of reverse keys"):
            native.NativeCtr.link(lib, reverse, tag, 2, drawn, client, b"")
    with pytest.raises(TypeError, match="native stream"):
        native.NativeCtr.link(lib, bytes(48), obfs2.TAG_PADDED, 2, bytes(range(64)), backend.openssl_ctr().new_stream(
            bytes(32), bytes(16)), b"x")


def test_bad_input_is_refused_before_the_library_sees_it(lib: ctypes.CDLL) -> None:
    for init, secret_key in ((bytes(63), None), (bytes(65), None), (bytes(64), b""), (bytes(64), bytes(33))):
        with pytest.raises(ValueError, match=r"init is 64 bytes|secret key of 1 to 32"):
            native.NativeCtr.start_init(lib, init, secret_key)
    with pytest.raises(ValueError, match="32-byte key"):
        native.NativeCtr(lib, bytes(16), bytes(16))
    with pytest.raises(ValueError, match="16-byte counter"):
        native.NativeCtr(lib, bytes(32), bytes(8))
    stream = native.NativeCtr(lib, bytes(32), bytes(16))
    with pytest.raises(ValueError, match="smaller than the input"):
        stream.update_into(bytes(100), bytearray(99))
    other = native.NativeCtr(lib, bytes(32), bytes(16))
    for n in (-1, 101):
        with pytest.raises(ValueError, match="does not fit"):
            native.gather_twice(stream, other, bytearray(100), faketls.plain_layout(n))
    with pytest.raises(ValueError, match="two streams"):
        native.gather_twice(stream, stream, bytearray(100), (100, 100, 0, 0, 0, 100, 0))


def _handoff_after(budget: int) -> type[ctr.HandoffCtr]:
    return type("EarlyHandoff", (ctr.HandoffCtr,), {"__slots__": (), "move_after": budget})


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=COUNTERS, budget=st.integers(0, 200), chunks=CHUNKS)
def test_a_handoff_stream_is_one_ctr_stream_across_its_move(lib: ctypes.CDLL, key: bytes, counter: int, budget: int,
                                                            chunks: list[int]) -> None:
    """Begun in the library, moved to OpenSSL's CTR at any position (mid-block too, across the counter's
    carries): the bytes are one AES-CTR stream's, through `update` and `update_into` alike."""
    stream = _handoff_after(budget)(lib, key, counter.to_bytes(16, "big"))
    data = os.urandom(sum(chunks))
    got, at = bytearray(), 0
    for i, size in enumerate(chunks):
        piece = data[at : at + size]
        if i % 2:
            got += stream.update(piece)
        else:
            buf = bytearray(piece)
            assert stream.update_into(buf, buf) == size
            got += buf
        at += size
    assert bytes(got) == reference(key, counter, data)
    assert stream.moved == (sum(chunks) > budget)


def test_a_dc_link_behind_a_moved_stream_deciphers_in_python(lib: ctypes.CDLL) -> None:
    """The client's stream moved before the DC was dialled (its library state is stale): the pending bytes
    are still the client's, deciphered, and enciphered for the DC behind the header."""
    client_key, client_iv = bytes(range(200, 232)), bytes(range(16))
    early = _handoff_after(10)
    mover = early(lib, client_key, client_iv)
    mover.update(bytes(30))
    assert mover.moved
    pending = os.urandom(300)
    reverse, tag, drawn = bytes(range(48)), obfs2.TAG_PADDED, bytes(range(100, 164))
    made = early.link(lib, reverse, tag, 2, drawn, mover, pending)
    still = native.NativeCtr(lib, client_key, client_iv)
    still.update(bytes(30))
    want = native.NativeCtr.link(lib, reverse, tag, 2, drawn, still, pending)
    assert made is not None and want is not None
    assert made[0] == want[0] and type(made[1]) is early
    assert made[1].update(b"after") == want[1].update(b"after")
