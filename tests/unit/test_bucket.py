"""The rate-limit token bucket: exact allowances and delays on an injected monotonic clock."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.accounts.bucket import MIN_BURST, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_starts_full_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(100_000, clock)
    assert bucket.burst == 100_000 and bucket.allowance() == 100_000
    bucket.consume(100_000)
    assert bucket.allowance() == 0
    assert bucket.delay(50_000) == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.allowance() == 25_000
    clock.now += 10  # idle time never earns more than the burst
    assert bucket.allowance() == 100_000


def test_debt_is_paid_before_new_bytes_move() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock, burst=1000)
    bucket.consume(5000)  # one big read took far more than was there
    assert bucket.allowance() == 0
    assert bucket.delay(1) == pytest.approx(4.001)
    clock.now += 4.0
    assert bucket.allowance() == 0
    clock.now += 0.5
    assert bucket.allowance() == 500


def test_small_rates_still_move_whole_reads() -> None:
    bucket = TokenBucket(10, Clock())
    assert bucket.burst == MIN_BURST
    assert bucket.delay(10 * MIN_BURST) == 0.0  # asking above the burst waits only for a full bucket


def test_set_rate_applies_at_once_and_keeps_earned_tokens_within_the_new_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(1_000_000, clock)
    bucket.consume(400_000)
    bucket.set_rate(100_000)
    assert bucket.allowance() == 100_000
    bucket.consume(100_000)
    assert bucket.delay(100_000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bucket.set_rate(0)
    with pytest.raises(ValueError):
        TokenBucket(0, clock)


def test_calls_allocate_nothing_that_stays() -> None:
    clock = Clock()
    bucket = TokenBucket(1 << 20, clock)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            clock.now += 0.001
            bucket.consume(bucket.allowance())
            bucket.delay(4096)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 10_000_000), steps=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 1 << 21)),
                                                        min_size=1, max_size=60))
def test_never_more_than_burst_plus_rate_times_time(rate: int, steps: list[tuple[float, int]]) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, clock)
    start, moved = clock.now, 0
    for pause, want in steps:
        clock.now += pause
        take = min(want, bucket.allowance())
        bucket.consume(take)
        moved += take
    assert moved <= bucket.burst + rate * (clock.now - start) + 1
