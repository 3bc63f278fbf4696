"""Quota periods: when the period containing a moment began and when the next one begins.

A period starts at local midnight in the quota's IANA time zone, so a day is 23 or 25 hours long across a
DST change. A month period starts on its anchor day (1..28, which every month has); a week period on its
ISO weekday. A total quota (no period) never resets by itself: both functions return None for it.
Pure: the moment is passed in, aware; results are aware datetimes in UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from .limits import Quota, QuotaPeriod


def period_start(now: datetime, quota: Quota) -> datetime | None:
    """The first instant of the period that contains `now` (None: a total quota)."""
    if quota.period is None:
        return None
    zone = ZoneInfo(quota.timezone)
    return _local_midnight(_start_date(now.astimezone(zone).date(), quota), zone)


def next_reset(now: datetime, quota: Quota) -> datetime | None:
    """The first instant of the period after the one that contains `now` (None: a total quota)."""
    if quota.period is None:
        return None
    zone = ZoneInfo(quota.timezone)
    return _local_midnight(_following(_start_date(now.astimezone(zone).date(), quota), quota), zone)


def _start_date(today: date, quota: Quota) -> date:
    if quota.period is QuotaPeriod.DAY:
        return today
    if quota.period is QuotaPeriod.WEEK:
        return today - timedelta(days=(today.isoweekday() - quota.anchor_day) % 7)
    if today.day >= quota.anchor_day:
        return today.replace(day=quota.anchor_day)
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return date(year, month, quota.anchor_day)


def _following(start: date, quota: Quota) -> date:
    if quota.period is QuotaPeriod.DAY:
        return start + timedelta(days=1)
    if quota.period is QuotaPeriod.WEEK:
        return start + timedelta(days=7)
    year, month = (start.year, start.month + 1) if start.month < 12 else (start.year + 1, 1)
    return date(year, month, quota.anchor_day)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant whose local date is `day`. Usually 00:00 there; where a DST gap swallows midnight
    (clocks jump from 23:xx to 00:30 or 01:00, as in America/Santiago), the instant of the jump."""
    naive = datetime(day.year, day.month, day.day)
    # fold=0 maps a time that happens twice (clocks turned back over midnight) to its first occurrence.
    first = naive.replace(tzinfo=zone).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # Midnight does not exist. Both offsets around the gap bracket the jump: search the second at which
    # the local date turns to `day` (a gap lasts hours at most: about fifteen steps).
    other = int(naive.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    low, high = sorted((other, int(first.timestamp())))
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).date() >= day:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)
