"""Quota periods: local midnight in the quota's zone, DST days of 23 and 25 hours, month and week anchors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.accounts.limits import Quota, QuotaPeriod
from mtproxy.accounts.periods import next_reset, period_start

BERLIN = ZoneInfo("Europe/Berlin")


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def _day(zone: str) -> Quota:
    return Quota(1, QuotaPeriod.DAY, timezone=zone)


def test_day_starts_at_local_midnight() -> None:
    now = _utc(2026, 7, 1, 21, 59, 59)  # 23:59:59 in Berlin (CEST, +2)
    assert period_start(now, _day("Europe/Berlin")) == _utc(2026, 6, 30, 22)
    assert next_reset(now, _day("Europe/Berlin")) == _utc(2026, 7, 1, 22)
    # one second later a new day has begun there
    assert period_start(now + timedelta(seconds=1), _day("Europe/Berlin")) == _utc(2026, 7, 1, 22)


def test_dst_days_last_23_and_25_hours() -> None:
    spring = _utc(2026, 3, 29, 12)  # Berlin moves from +1 to +2 at 02:00 local
    autumn = _utc(2026, 10, 25, 12)  # and back at 03:00 local
    quota = _day("Europe/Berlin")
    assert next_reset(spring, quota) - period_start(spring, quota) == timedelta(hours=23)  # type: ignore[operator]
    assert next_reset(autumn, quota) - period_start(autumn, quota) == timedelta(hours=25)  # type: ignore[operator]
    assert period_start(spring, quota) == _utc(2026, 3, 28, 23)
    assert next_reset(autumn, quota) == _utc(2026, 10, 25, 23)


def test_midnight_inside_a_dst_gap_starts_the_day_at_the_jump() -> None:
    # America/Santiago went from 00:00 -04 straight to 01:00 -03 on 2022-09-11: that day has no midnight
    quota = _day("America/Santiago")
    jump = _utc(2022, 9, 11, 4)
    assert period_start(jump + timedelta(minutes=30), quota) == jump
    assert next_reset(jump - timedelta(seconds=1), quota) == jump
    assert period_start(jump - timedelta(seconds=1), quota) == _utc(2022, 9, 10, 4)


def test_month_rolls_over_at_the_anchor_day_across_the_year() -> None:
    quota = Quota(1, QuotaPeriod.MONTH, anchor_day=15, timezone="UTC")
    assert period_start(_utc(2026, 12, 15), quota) == _utc(2026, 12, 15)
    assert period_start(_utc(2026, 12, 14, 23, 59, 59), quota) == _utc(2026, 11, 15)
    assert next_reset(_utc(2026, 12, 20), quota) == _utc(2027, 1, 15)
    assert period_start(_utc(2027, 1, 3), quota) == _utc(2026, 12, 15)


def test_month_boundary_in_a_zone_east_of_utc() -> None:
    quota = Quota(1, QuotaPeriod.MONTH, anchor_day=1, timezone="Asia/Tokyo")
    # 2026-02-28T15:00Z is already March 1st 00:00 in Tokyo
    assert period_start(_utc(2026, 2, 28, 15), quota) == _utc(2026, 2, 28, 15)
    assert period_start(_utc(2026, 2, 28, 14, 59, 59), quota) == _utc(2026, 1, 31, 15)
    assert next_reset(_utc(2026, 2, 28, 14, 59, 59), quota) == _utc(2026, 2, 28, 15)


def test_week_starts_on_its_iso_weekday() -> None:
    quota = Quota(1, QuotaPeriod.WEEK, anchor_day=3, timezone="UTC")  # Wednesday
    assert period_start(_utc(2026, 12, 6, 12), quota) == _utc(2026, 12, 2)  # a Sunday
    assert next_reset(_utc(2026, 12, 6, 12), quota) == _utc(2026, 12, 9)
    assert period_start(_utc(2026, 12, 9), quota) == _utc(2026, 12, 9)


def test_a_total_quota_never_resets() -> None:
    quota = Quota(1)
    assert period_start(_utc(2026, 1, 1), quota) is None
    assert next_reset(_utc(2026, 1, 1), quota) is None


ZONES = ["UTC", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata", "America/St_Johns",
         "Pacific/Apia", "America/Havana"]


@settings(max_examples=400, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)),
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(list(QuotaPeriod)),
    anchor=st.integers(1, 28),
)
def test_every_moment_lies_in_exactly_one_period(moment: datetime, zone: str, period: QuotaPeriod,
                                                 anchor: int) -> None:
    quota = Quota(1, period, anchor_day=anchor if period is not QuotaPeriod.WEEK else anchor % 7 + 1,
                  timezone=zone)
    now = moment.replace(tzinfo=UTC)
    start, end = period_start(now, quota), next_reset(now, quota)
    assert start is not None and end is not None
    assert start <= now < end
    # the next period begins where this one ends, and a period starts on a local date at its anchor
    assert period_start(end, quota) == end
    assert period_start(end - timedelta(seconds=1), quota) == start
    local = start.astimezone(ZoneInfo(zone))
    if period is QuotaPeriod.MONTH:
        assert local.day == quota.anchor_day
    elif period is QuotaPeriod.WEEK:
        assert local.isoweekday() == quota.anchor_day
    span = end - start
    longest = {QuotaPeriod.DAY: 1, QuotaPeriod.WEEK: 7, QuotaPeriod.MONTH: 31}[period]
    assert timedelta(hours=20) <= span <= timedelta(days=longest, hours=3)


@pytest.mark.parametrize("zone", ZONES)
def test_results_are_aware_utc(zone: str) -> None:
    start = period_start(_utc(2026, 5, 5, 5), _day(zone))
    assert start is not None and start.tzinfo is UTC
