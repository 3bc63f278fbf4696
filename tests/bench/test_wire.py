"""The load client's record stripper: it counts (and, for replies, extracts) the payload of the proxy's
fake-TLS records under any split of the stream, and refuses anything but application data. The relay path's
packet reader: it splits each MTProto transport's frames (as the protocol core encodes them) under any split,
or only counts them."""

from __future__ import annotations

import os
import random

import pytest
from bench.wire import MIN_PACKET, PacketReader, RecordStripper, packet_sizes, relay_wire_bytes

from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.transport import encode_frame


@pytest.mark.parametrize("seed", range(20))
def test_payload_is_counted_and_extracted_under_any_split(seed: int) -> None:
    rng = random.Random(seed)
    payload = os.urandom(rng.randint(0, 200_000))
    wire = faketls.wrap_records(payload, rng.choice([1, 100, 2878, 16384]))
    counted, collected, stripper = 0, bytearray(), RecordStripper()
    pos = 0
    while pos < len(wire):
        cut = rng.choice([1, 3, 5, 6, 4096, 70_000])
        counted += stripper.feed(memoryview(wire)[pos : pos + cut], collected)
        pos += cut
    assert counted == len(payload)
    assert bytes(collected) == payload


def test_a_record_that_is_not_application_data_fails() -> None:
    wire = faketls.wrap_records(b"x" * 100) + b"\x15\x03\x03\x00\x02\x02\x28"
    with pytest.raises(ValueError):
        RecordStripper().feed(memoryview(wire), None)


@pytest.mark.parametrize("tag", [obfs2.TAG_ABRIDGED, obfs2.TAG_INTERMEDIATE, obfs2.TAG_PADDED])
@pytest.mark.parametrize("seed", range(5))
def test_packets_are_split_or_counted_under_any_split(tag: bytes, seed: int) -> None:
    rng = random.Random(seed)
    # 508 and 512 bytes straddle abridged's one-byte length (below 0x7f words) and its four-byte form
    packets = [os.urandom(rng.choice([28, 64, 508, 512, 4096, 70_000, 524_288])) for _ in range(12)]
    stream = b"".join(encode_frame(tag, p) for p in packets)
    for keep in (True, False):
        reader, got, done, pos = PacketReader(tag), [], 0, 0
        while pos < len(stream):
            cut = rng.choice([1, 2, 3, 5, 4096, 100_000])
            split, n = reader.feed(stream[pos : pos + cut], keep)
            got += split
            done += n
            pos += cut
        assert done == len(packets)
        assert got == (packets if keep else [])


def test_a_packet_shorter_than_any_mtproto_packet_fails() -> None:
    with pytest.raises(ValueError):
        PacketReader(obfs2.TAG_INTERMEDIATE).feed(encode_frame(obfs2.TAG_INTERMEDIATE, bytes(24)), True)


def test_bulk_payload_becomes_valid_packets() -> None:
    assert packet_sizes(1_000_000, 524_288) == [524_288, 475_712]
    assert packet_sizes(1_048_576, 524_288) == [524_288, 524_288]
    assert packet_sizes(65_538, 65_536) == [65_536, MIN_PACKET]  # the last one: a multiple of 4, 28 at least
    assert relay_wire_bytes([65_536, MIN_PACKET]) == 65_536 + MIN_PACKET + 8
    with pytest.raises(ValueError):
        packet_sizes(100, 65_537)
