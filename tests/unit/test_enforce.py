"""A worker's enforcer: admission with its log line and counter, reloads and expiry closing running sessions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mtproxy.accounts.limits import Limits, Quota
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.enforce import Enforcer
from mtproxy.stats.counters import Counters

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
LOCAL = ("0.0.0.0", 443)


class Clocks:
    def __init__(self) -> None:
        self.now = NOW
        self.mono = 50.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def table() -> Iterator[AccountingTable]:
    made = AccountingTable(b"key", capacity=8)
    yield made
    made.close()


def _enforcer(table: AccountingTable, clocks: Clocks) -> tuple[Enforcer, Counters]:
    counters = Counters(started_at=0.0)
    return Enforcer(table, counters, clocks.wall, clocks.monotonic), counters


def test_a_refusal_is_logged_and_counted_once(table: AccountingTable, caplog: pytest.LogCaptureFixture) -> None:
    enforcer, counters = _enforcer(table, Clocks())
    enforcer.update({"team": Limits(max_connections=1)})
    first = enforcer.open("team", ("192.0.2.1", 5000), LOCAL)
    assert first is not None
    with caplog.at_level(logging.WARNING, logger="mtproxy.reject"):
        assert enforcer.open("team", ("192.0.2.2", 5001), LOCAL) is None
    assert [r.getMessage() for r in caplog.records] == [
        "refused session from 192.0.2.2 port 5001 on 0.0.0.0:443: reason=max-connections id=team"]
    assert counters.refusals["max-connections"] == 1
    first.close()
    assert enforcer.open("team", ("192.0.2.2", 5001), LOCAL) is not None


def test_quota_closes_the_session_that_crosses_it(table: AccountingTable) -> None:
    enforcer, counters = _enforcer(table, Clocks())
    enforcer.update({"team": Limits(quota=Quota(100_000))})
    grant = enforcer.open("team", ("192.0.2.1", 5000), LOCAL)
    assert grant is not None
    moved = 0
    while grant.moved(4096, 0) is None:
        moved += 4096
        assert moved < 200_000
    assert counters.refusals["quota"] == 1
    assert grant.moved(4096, 0) is None  # already closing: not reported twice
    grant.close()
    assert enforcer.open("team", ("192.0.2.1", 5002), LOCAL) is None
    assert counters.refusals["quota"] == 2


def test_a_reload_applies_to_running_sessions(table: AccountingTable) -> None:
    clocks = Clocks()
    enforcer, counters = _enforcer(table, clocks)
    enforcer.update({"a": Limits(rate_limit=100_000), "b": Limits()})
    a = enforcer.open("a", ("192.0.2.1", 1), LOCAL)
    b = enforcer.open("b", ("192.0.2.2", 2), LOCAL)
    assert a is not None and b is not None and a.rate_in is not None and b.rate_in is None
    closing = enforcer.update({"a": Limits(rate_limit=200_000), "b": Limits(enabled=False)})
    assert closing == [b] and counters.refusals["disabled"] == 1
    assert a.rate_in.rate == 200_000
    assert enforcer.update({"a": Limits(), "b": Limits(enabled=False)}) == []  # b is already closing
    assert a.rate_in is None and a.rate_out is None


def test_expiry_closes_sessions_at_the_instant(table: AccountingTable) -> None:
    clocks = Clocks()
    enforcer, counters = _enforcer(table, clocks)
    enforcer.update({"a": Limits(expires_at=NOW + timedelta(seconds=30))})
    grant = enforcer.open("a", ("192.0.2.1", 1), LOCAL)
    assert grant is not None
    assert enforcer.next_expiry() == 30.0
    clocks.now += timedelta(seconds=29, microseconds=999_999)
    assert enforcer.tick() == []
    clocks.now += timedelta(microseconds=1)
    assert enforcer.tick() == [grant] and counters.refusals["expired"] == 1
    grant.close()
    assert enforcer.next_expiry() is None
    live = table.read(table.slot("a") or 0)
    assert live.connections == 0


def test_a_full_table_serves_unaccounted(table: AccountingTable) -> None:
    enforcer, _ = _enforcer(table, Clocks())
    grants = [enforcer.open(f"id{i}", ("192.0.2.1", i), LOCAL) for i in range(9)]
    assert all(g is not None for g in grants)
    assert grants[-1] is not None and grants[-1].meter is None and grants[-1].moved(10, 10) is None
