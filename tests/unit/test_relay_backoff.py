"""The relay side's reconnect backoff and timing rules (runtime/relaylink.py): exact with the randomness
passed in, no sleeping."""

from __future__ import annotations

import pytest

from mtproxy.runtime.relaylink import Backoff, RelayTimings

TIMINGS = RelayTimings(backoff_first=0.5, backoff_max=4.0, backoff_jitter=0.5)


def test_delays_double_up_to_the_ceiling_and_reset() -> None:
    backoff = Backoff(TIMINGS, lambda: 0.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_jitter_only_shortens_and_by_at_most_its_fraction() -> None:
    backoff = Backoff(TIMINGS, lambda: 0.999999)
    delays = [backoff.next_delay() for _ in range(5)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert all(ceiling * 0.5 <= delay < ceiling for delay, ceiling in zip(delays, ceilings, strict=True))


def test_a_thousand_failures_stay_bounded() -> None:
    backoff = Backoff(TIMINGS, lambda: 0.0)
    assert max(backoff.next_delay() for _ in range(1000)) == 4.0


@pytest.mark.parametrize("bad", [
    {"stall_after": 5.0, "ping_interval": 5.0},  # an idle healthy link would look stalled
    {"connect_timeout": 0.0},
    {"backoff_first": 2.0, "backoff_max": 1.0},
    {"backoff_jitter": 1.0},
])
def test_timings_that_cannot_work_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RelayTimings(**bad)
