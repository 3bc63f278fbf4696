"""Property tests: any input gives a step (no exception, no session it did not earn, the same whatever
the split), and framing round-trips under any split."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.client import build_client_hello
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import (
    Authenticated,
    Handshake,
    HandshakeSettings,
    NeedMore,
    Rejected,
    SecretTable,
    Step,
)
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.protocol.transport import FrameDecoder, encode_frame

KEY = bytes(range(16))
ENTRIES = [("a", Secret(KEY, SecretKind.FAKE_TLS, "www.example.com"))]
NOW = 1_790_000_000
HELLO = build_client_hello(KEY, "www.example.com", os.urandom, NOW)


def handshake(aes: Backend) -> Handshake:
    return Handshake(SecretTable(ENTRIES, aes), HandshakeSettings(), ReplayFilter.in_process(64), os.urandom, aes=aes)


def outcome(aes: Backend, chunks: list[bytes]) -> tuple[Step, bytes, bytes]:
    """Feed chunks until the handshake ends; returns the last step, every byte fed up to it and every byte
    the server answered. Checks on the way what must hold of any input: each step is a step, and a
    rejection carries exactly the bytes received, for the mask to replay byte for byte."""
    hs = handshake(aes)
    fed = answered = b""
    step: Step = NeedMore()
    for chunk in chunks:
        fed += chunk
        step = hs.feed(chunk, NOW)
        assert isinstance(step, NeedMore | Rejected | Authenticated)
        answered += step.send if not isinstance(step, Rejected) else b""
        if isinstance(step, Rejected):
            assert step.received == fed
        if not isinstance(step, NeedMore):
            break
    return step, fed, answered


def same_outcome(a: Step, b: Step) -> bool:
    if isinstance(a, Rejected) and isinstance(b, Rejected):
        return a.reason is b.reason and a.maskable == b.maskable
    return type(a) is type(b)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_never_authenticate_and_split_does_not_matter(aes: Backend, chunks: list[bytes]) -> None:
    step, fed, answered = outcome(aes, chunks)
    assert not isinstance(step, Authenticated)  # random bytes match the key's framing tag with odds 3 in 2^32
    assert answered == b""  # nothing but a hello made with the key is answered as a proxy
    whole, _, _ = outcome(aes, [fed])
    assert same_outcome(whole, step), (whole, step)
    looks_tls = fed[: len(faketls.HELLO_PREFIX)] == faketls.HELLO_PREFIX
    if len(fed) >= 64 and not looks_tls:  # a whole obfuscated2 init: decided, never left waiting
        assert isinstance(step, Rejected) and step.reason is RejectReason.UNKNOWN_SECRET


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_hellos_never_authenticate(aes: Backend, data: st.DataObject) -> None:
    hello = bytearray(HELLO)
    for _ in range(data.draw(st.integers(1, 6))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    step, _, answered = outcome(aes, [bytes(hello[:cut]), bytes(hello[cut:]), data.draw(st.binary(max_size=200))])
    assert not isinstance(step, Authenticated)  # the trailing bytes are no init made with the key
    if answered:  # answered as a proxy: the HMAC verified, so at most the clock bytes (random[28:32]) changed
        changed = [i for i in range(len(hello)) if hello[i] != HELLO[i]]
        assert all(faketls.RANDOM_OFFSET + 28 <= i < faketls.RANDOM_OFFSET + 32 for i in changed), changed


def test_a_genuine_hello_is_answered_and_its_one_changed_byte_is_not(aes: Backend) -> None:
    """The two properties above are not vacuous: the unchanged hello gets the flight, a changed one the mask."""
    step, _, answered = outcome(aes, [HELLO])
    assert isinstance(step, NeedMore) and answered.startswith(faketls.SERVER_HELLO_PREFIX)
    broken = bytearray(HELLO)
    broken[100] ^= 1
    step, _, answered = outcome(aes, [bytes(broken)])
    assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_BAD_HMAC and answered == b""


@given(st.binary(max_size=40000), st.lists(st.integers(1, 5000), max_size=30))
def test_tls_records_round_trip_under_any_split(payload: bytes, cuts: list[int]) -> None:
    wire = faketls.CHANGE_CIPHER_SPEC + faketls.wrap_records(payload)
    reader = faketls.TlsRecordReader()
    out, pos = b"", 0
    for cut in cuts:
        out += reader.unwrap(wire[pos : pos + cut])
        pos += cut
    out += reader.unwrap(wire[pos:])
    assert out == payload


@given(st.sampled_from(sorted(obfs2.KNOWN_TAGS)), st.lists(st.binary(max_size=600), max_size=10), st.integers(1, 97))
def test_frames_round_trip(tag: bytes, payloads: list[bytes], step: int) -> None:
    payloads = [p[: len(p) - len(p) % 4] for p in payloads] if tag == obfs2.TAG_ABRIDGED else payloads
    wire = b"".join(encode_frame(tag, p) for p in payloads)
    decoder = FrameDecoder(tag)
    frames: list[bytes] = []
    for i in range(0, len(wire), step):
        frames += decoder.feed(wire[i : i + step])
    assert frames == payloads


def _records(sizes: list[int]) -> tuple[bytes, bytes]:
    payload = os.urandom(sum(sizes))
    wire, at = bytearray(), 0
    for size in sizes:
        wire += faketls.APPLICATION_DATA + size.to_bytes(2, "big") + payload[at : at + size]
        at += size
    return bytes(wire), payload


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([1, 17, 2878, 5891, 16384]), st.integers(1, 40)), min_size=1, max_size=5),
       st.lists(st.integers(1, 120_000), max_size=12), st.booleans())
def test_relay_payload_matches_the_record_stream_under_any_split(
        runs: list[tuple[int, int]], cuts: list[int], ccs: bool) -> None:
    """payload() on relay-sized reads of runs of equal records (the strided fast path) and of mixed sizes
    and cuts anywhere (the compacting path) gives exactly the payload, whatever it returns."""
    wire, payload = _records([size for size, count in runs for _ in range(count)])
    if ccs:
        wire = faketls.CHANGE_CIPHER_SPEC + wire
    reader = faketls.TlsRecordReader()
    out, pos = bytearray(), 0
    for cut in [*cuts, len(wire)]:
        out += reader.payload(memoryview(bytearray(wire[pos : pos + cut])))
        pos += cut
        if pos >= len(wire):
            break
    assert bytes(out) == payload


def test_relay_payload_gathers_a_bulk_run_and_still_checks_every_header() -> None:
    wire, payload = _records([2878] * 90)
    reader = faketls.TlsRecordReader()
    got = reader.payload(memoryview(bytearray(wire[:100_000])))
    assert isinstance(got, bytes)  # the gathered fast path, not the in-place compaction
    assert got + reader.payload(memoryview(bytearray(wire[100_000:]))) == payload
    for at, value in ((50 * 2883, 0x16), (50 * 2883 + 2, 0x01), (89 * 2883 + 3, 0x7f)):
        broken = bytearray(wire)
        broken[at] = value
        try:
            faketls.TlsRecordReader().payload(memoryview(broken))
        except faketls.TlsFormatError:
            continue
        raise AssertionError(f"a broken header at {at} was accepted")


def test_relay_payload_gathers_any_count_of_records() -> None:
    """The gather takes power-of-two blocks of records: every count, after a partial record and before
    one, comes out whole."""
    for length in (17, 2878):
        for count in [*range(8, 70), 127, 128, 129, 255, 256, 257, 363, 364, 511, 512, 513]:
            wire, payload = _records([length] * (count + 2))
            reader = faketls.TlsRecordReader()
            first = reader.payload(memoryview(bytearray(wire[:9])))  # leaves a partial first record
            cut = 9 + (count + 1) * (length + 5) + 3
            middle = reader.payload(memoryview(bytearray(wire[9:cut])))
            assert isinstance(middle, bytes)  # the gathered path
            last = reader.payload(memoryview(bytearray(wire[cut:])))
            assert bytes(first) + middle + bytes(last) == payload, (length, count)
