"""Admission and mid-session decisions for a secret's limits, with the time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.accounts.limits import NO_LIMITS, Limits, Quota, QuotaPeriod
from mtproxy.accounts.policy import Refusal, Usage, admission, next_check, session_refusal

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


def test_no_limits_admit_anything() -> None:
    assert admission(NO_LIMITS, Usage(connections=10**6, unique_ips=10**6, period_bytes=10**15), NOW) is None


def test_expiry_is_exact_to_the_instant() -> None:
    limits = Limits(expires_at=NOW)
    assert admission(limits, Usage(), NOW - timedelta(microseconds=1)) is None
    assert admission(limits, Usage(), NOW) is Refusal.EXPIRED
    assert session_refusal(limits, 0, NOW) is Refusal.EXPIRED
    assert next_check(limits, NOW - timedelta(seconds=2.5)) == 2.5
    assert next_check(limits, NOW + timedelta(days=1)) == 0.0
    assert next_check(NO_LIMITS, NOW) is None


@pytest.mark.parametrize(("limits", "usage", "expected"), [
    (Limits(enabled=False), Usage(), Refusal.DISABLED),
    (Limits(max_connections=2), Usage(connections=1), None),
    (Limits(max_connections=2), Usage(connections=2), Refusal.MAX_CONNECTIONS),
    (Limits(max_connections=0), Usage(), Refusal.MAX_CONNECTIONS),
    (Limits(max_unique_ips=3), Usage(unique_ips=3), None),
    (Limits(max_unique_ips=3), Usage(unique_ips=4), Refusal.MAX_UNIQUE_IPS),
    (Limits(quota=Quota(1000, QuotaPeriod.DAY)), Usage(period_bytes=999), None),
    (Limits(quota=Quota(1000, QuotaPeriod.DAY)), Usage(period_bytes=1000), Refusal.QUOTA),
    (Limits(quota=Quota(1000)), Usage(period_bytes=5000), Refusal.QUOTA),
])
def test_each_limit_refuses_at_its_bound(limits: Limits, usage: Usage, expected: Refusal | None) -> None:
    assert admission(limits, usage, NOW) is expected


def test_the_secret_state_is_reported_before_usage() -> None:
    everything = Limits(enabled=False, expires_at=NOW, max_connections=0, max_unique_ips=1, quota=Quota(1))
    usage = Usage(connections=5, unique_ips=5, period_bytes=5)
    assert admission(everything, usage, NOW) is Refusal.DISABLED
    assert admission(Limits(expires_at=NOW, quota=Quota(1), max_connections=0), usage, NOW) is Refusal.EXPIRED
    assert admission(Limits(quota=Quota(1), max_connections=0), usage, NOW) is Refusal.QUOTA


def test_tokens_are_log_friendly() -> None:
    assert [r.value for r in Refusal] == ["disabled", "expired", "quota", "max-connections", "max-unique-ips"]


@given(connections=st.integers(0, 100), cap=st.integers(0, 100), used=st.integers(0, 10**6),
       quota=st.integers(1, 10**6))
def test_admission_matches_the_plain_comparisons(connections: int, cap: int, used: int, quota: int) -> None:
    limits = Limits(max_connections=cap, quota=Quota(quota))
    refusal = admission(limits, Usage(connections=connections, period_bytes=used), NOW)
    assert (refusal is Refusal.QUOTA) == (used >= quota)
    assert (refusal is None) == (used < quota and connections < cap)
    assert (session_refusal(limits, used, NOW) is None) == (used < quota)
