"""The load client's record stripper: it counts (and, for replies, extracts) the payload of the proxy's
fake-TLS records under any split of the stream, and refuses anything but application data."""

from __future__ import annotations

import os
import random

import pytest
from bench.wire import RecordStripper

from mtproxy.protocol import faketls


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
