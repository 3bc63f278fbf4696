"""faketls.frame_records: the DC->client direction of fake-TLS, written into the caller's buffer."""

from __future__ import annotations

import os

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls

MAX = faketls.MAX_RECORD_PAYLOAD
HEADER = faketls.RECORD_HEADER_SIZE
SIZES = [1, 100, MAX - 1, MAX, MAX + 1, 2 * MAX, 2 * MAX + 7, 5 * MAX, 65536, 300000]


def _out(size: int) -> memoryview:
    # room as the runtime's buffer has it: the payload, a header per record, the cipher's slack, and a
    # poisoned tail that must stay as it is
    return memoryview(bytearray(b"\xee" * (size + -(-size // MAX) * HEADER + 64)))


def _records(wire: bytes) -> list[tuple[bytes, bytes]]:
    """(header, payload) pairs; asserts the whole of `wire` is records."""
    records = []
    pos = 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        records.append((wire[pos : pos + HEADER], wire[pos + HEADER : pos + HEADER + length]))
        pos += HEADER + length
    assert pos == len(wire)
    return records


@pytest.mark.parametrize("size", SIZES)
def test_split_into_full_records_then_the_rest(size: int) -> None:
    payload = os.urandom(size)
    out = _out(size)
    n = faketls.frame_records(memoryview(payload), out)
    records = _records(bytes(out[:n]))
    assert [len(p) for _, p in records] == [MAX] * (size // MAX) + ([size % MAX] if size % MAX else [])
    assert all(h[:3] == faketls.APPLICATION_DATA for h, _ in records)
    assert b"".join(p for _, p in records) == payload
    assert bytes(out[n:]) == b"\xee" * (len(out) - n)
    # what a reader of the same framing gets back, and what the one-shot helper builds, byte for byte
    assert faketls.TlsRecordReader().unwrap(bytes(out[:n])) == payload
    assert bytes(out[:n]) == faketls.wrap_records(payload)


@pytest.mark.parametrize("size", [MAX, 2 * MAX, 3 * MAX + 1, 1000])
def test_exact_boundaries_make_no_empty_record(size: int) -> None:
    out = _out(size)
    n = faketls.frame_records(memoryview(bytes(size)), out)
    assert n == size + -(-size // MAX) * HEADER
    assert all(len(p) > 0 for _, p in _records(bytes(out[:n])))


def test_nothing_writes_nothing() -> None:
    out = _out(0)
    assert faketls.frame_records(memoryview(b""), out) == 0
    assert bytes(out) == b"\xee" * len(out)


@pytest.mark.parametrize("size", SIZES)
def test_payload_goes_through_the_cipher_in_stream_order(aes: Backend, size: int) -> None:
    key, iv = os.urandom(32), os.urandom(16)
    payload = os.urandom(size)
    out = _out(size)
    n = faketls.frame_records(memoryview(payload), out, aes.new_stream(key, iv))
    expected = aes.new_stream(key, iv).update(payload)  # one stream across all the records
    assert bytes(out[:n]) == faketls.wrap_records(expected)


def test_cipher_stream_continues_across_calls(aes: Backend) -> None:
    key, iv = os.urandom(32), os.urandom(16)
    cipher = aes.new_stream(key, iv)
    first, second = os.urandom(MAX + 3), os.urandom(777)
    out = _out(len(first))
    wire = bytes(out[: faketls.frame_records(memoryview(first), out, cipher)])
    out = _out(len(second))
    wire += bytes(out[: faketls.frame_records(memoryview(second), out, cipher)])
    plain = faketls.TlsRecordReader().unwrap(wire)
    assert plain == aes.new_stream(key, iv).update(first + second)


SHAPED = faketls.SHAPED_RECORD_PAYLOAD
SHAPED_SIZES = [17, 100, SHAPED - 1, SHAPED, SHAPED + 1, SHAPED + 16, SHAPED + 17, 2 * SHAPED + 3, 300000]


@pytest.mark.parametrize("size", SHAPED_SIZES)
def test_shaped_records_are_full_tls13_records_and_none_shorter_than_17(size: int) -> None:
    """--tls-records shaped: 16,401-byte records (16,384 + content type + tag), a last one of at least 17
    (it borrows from the one before), the payload intact; the one-shot helper builds the same bytes."""
    payload = os.urandom(size)
    out = _out(size)
    n = faketls.frame_records(memoryview(payload), out, shaped=True)
    lengths = [len(p) for _, p in _records(bytes(out[:n]))]
    assert all(faketls.MIN_AEAD_RECORD <= length <= SHAPED for length in lengths)
    assert lengths[:-2] == [SHAPED] * len(lengths[:-2])  # only the last two may differ from full
    assert sum(lengths) == size and len(lengths) == -(-size // SHAPED)
    assert faketls.TlsRecordReader().unwrap(bytes(out[:n])) == payload
    assert bytes(out[:n]) == faketls.wrap_records(payload, SHAPED, shaped=True)


def test_a_shaped_tail_borrows_what_it_lacks() -> None:
    assert faketls.record_cuts(SHAPED + 5, SHAPED, shaped=True) == (1, SHAPED - 12, 17)
    assert faketls.record_cuts(SHAPED + 5, SHAPED) == (1, SHAPED, 5)
    assert faketls.record_cuts(5, SHAPED, shaped=True) == (0, SHAPED, 5)  # alone: the caller holds it back
