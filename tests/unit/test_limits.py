"""accounts/limits.py: the JSON form of per-secret limits round-trips, and bad input names the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.accounts.limits import NO_LIMITS, Limits, LimitsError, Quota, QuotaPeriod, parse_limits

_quotas = st.builds(
    lambda limit, period, anchor, zone: Quota(limit, period, anchor if period is not QuotaPeriod.WEEK
                                              else min(anchor, 7), zone),
    st.integers(1, 2**62), st.sampled_from([None, *QuotaPeriod]), st.integers(1, 28),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
_limits = st.builds(
    Limits, enabled=st.booleans(),
    expires_at=st.one_of(st.none(), st.integers(0, 4_000_000_000).map(
        lambda s: datetime.fromtimestamp(s, UTC))),
    max_connections=st.one_of(st.none(), st.integers(0, 10**6)),
    max_unique_ips=st.one_of(st.none(), st.integers(1, 10**6)),
    unique_ip_window=st.integers(1, 10**8), quota=st.one_of(st.none(), _quotas),
    rate_limit=st.one_of(st.none(), st.integers(1, 2**40)), note=st.text(max_size=50))


@given(_limits)
def test_to_json_and_parse_limits_round_trip(limits: Limits) -> None:
    assert parse_limits(limits.to_json()) == limits


def test_absent_means_no_limits() -> None:
    assert parse_limits(None) == NO_LIMITS and parse_limits({}) == NO_LIMITS and NO_LIMITS.unlimited
    assert not Limits(max_connections=1).unlimited


def test_a_time_without_offset_is_utc_and_offsets_are_converted() -> None:
    assert parse_limits({"expires_at": "2027-01-01T00:00:00"}).expires_at == datetime(2027, 1, 1, tzinfo=UTC)
    moved = parse_limits({"expires_at": "2027-01-01T02:00:00+02:00"}).expires_at
    assert moved == datetime(2027, 1, 1, tzinfo=UTC) and moved.tzinfo == UTC
    assert datetime(2027, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))) == moved


@pytest.mark.parametrize(("doc", "problem"), [
    ([], "limits must be an object"),
    ({"enabled": "yes"}, "limits.enabled must be true or false"),
    ({"max_connections": True}, "limits.max_connections must be a whole number of at least 0"),
    ({"max_unique_ips": 0}, "limits.max_unique_ips must be a whole number of at least 1"),
    ({"rate_limit": 1.5}, "limits.rate_limit"),
    ({"quota": {"period": "day"}}, "limits.quota.limit_bytes is required"),
    ({"quota": {"limit_bytes": 1, "period": "week", "anchor_day": 8}}, "anchor_day must be 1..7"),
    ({"quota": {"limit_bytes": 1, "period": "month", "anchor_day": 29}}, "anchor_day must be 1..28"),
    ({"note": "x" * 1001}, "limits.note must be a string of at most 1000"),
    ({"unknown": 1}, "unknown field(s) unknown"),
])
def test_bad_input_names_the_field(doc: object, problem: str) -> None:
    with pytest.raises(LimitsError) as caught:
        parse_limits(doc)
    assert problem in str(caught.value)
