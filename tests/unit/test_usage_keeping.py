"""The supervisor's usage duty (runtime/keeping.py) with injected time: a quota period ends at local midnight
across a DST change and a month boundary, the ledger write lands on it, and the workers' enforcer admits
again; SIGHUP re-reads the set and applies a usage reset."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mtproxy.accounts.limits import Limits, Quota, QuotaPeriod
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.enforce import Enforcer
from mtproxy.runtime.keeping import SupervisorUsage
from mtproxy.runtime.ledger import UsageKeeper
from mtproxy.runtime.secrets import SecretSet
from mtproxy.stats.counters import Counters

PEER = ("192.0.2.1", 5000)
LOCAL = ("0.0.0.0", 443)


class Clocks:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.mono = 1000.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
def table() -> Iterator[AccountingTable]:
    made = AccountingTable(b"key", capacity=8)
    yield made
    made.close()


def _set(limits: Limits, reset: datetime | None = None) -> SecretSet:
    secret = Secret(b"k" * 16, SecretKind.FAKE_TLS, "example.com")
    return SecretSet((("team", secret),), {"team": limits}, {"team": reset}, {"team": "Team"})


def _spend(enforcer: Enforcer, limit: int) -> None:
    grant = enforcer.open("team", PEER, LOCAL)
    assert grant is not None and grant.metered
    assert grant.moved(limit, 0) is not None  # the quota is spent: this session closes
    grant.close()
    assert enforcer.open("team", PEER, LOCAL) is None


@pytest.mark.parametrize(("start", "boundary", "period"), [
    # Europe/Berlin leaves summer time on 2026-10-25: that day runs from 22:00 UTC the day before to 23:00 UTC
    (datetime(2026, 10, 25, 12, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC), QuotaPeriod.DAY),
    # the month's first instant in Berlin (winter time): 23:00 UTC on the last day of October
    (datetime(2026, 10, 31, 20, tzinfo=UTC), datetime(2026, 10, 31, 23, tzinfo=UTC), QuotaPeriod.MONTH),
])
def test_the_period_ends_at_local_midnight_and_the_workers_admit_again(
        tmp_path: Path, table: AccountingTable, start: datetime, boundary: datetime, period: QuotaPeriod) -> None:
    clocks = Clocks(start)
    limits = Limits(quota=Quota(limit_bytes=100_000, period=period, timezone="Europe/Berlin"))
    keeper = UsageKeeper(table, tmp_path / "usage.json", clocks.wall, pytest.fail)
    keeper.configure(_set(limits).all_limits(), {})
    duty = SupervisorUsage(keeper, None, lambda: _set(limits), None, 60.0, 1.0, clocks.monotonic)
    enforcer = Enforcer(table, Counters(started_at=0.0), clocks.wall, clocks.monotonic)
    enforcer.update({"team": limits})
    _spend(enforcer, 100_000)
    while clocks.now < boundary - timedelta(seconds=1):  # the supervisor's poll loop, coarser until the end
        clocks.advance(min(30.0, (boundary - timedelta(seconds=1) - clocks.now).total_seconds()))
        duty.tick(False)
        assert enforcer.open("team", PEER, LOCAL) is None, clocks.now
    clocks.advance(1.0)  # the boundary itself: its write is due now, not up to an interval later
    duty.tick(False)
    grant = enforcer.open("team", PEER, LOCAL)
    assert grant is not None
    grant.close()
    assert keeper.ledger.of("team").period_start == boundary
    assert keeper.report()["team"]["period_bytes"] == 0


def test_sighup_rereads_the_set_and_applies_a_reset(tmp_path: Path, table: AccountingTable) -> None:
    clocks = Clocks(datetime(2026, 12, 6, 1, tzinfo=UTC))
    limits = Limits(quota=Quota(limit_bytes=100_000))
    current = [_set(limits)]
    keeper = UsageKeeper(table, tmp_path / "usage.json", clocks.wall, pytest.fail)
    keeper.configure(current[0].all_limits(), {})
    duty = SupervisorUsage(keeper, None, lambda: current[0], None, 60.0, 1.0, clocks.monotonic)
    enforcer = Enforcer(table, Counters(started_at=0.0), clocks.wall, clocks.monotonic)
    enforcer.update({"team": limits})
    _spend(enforcer, 100_000)
    clocks.advance(1.0)
    current[0] = _set(limits, reset=clocks.now)
    duty.tick(True)
    grant = enforcer.open("team", PEER, LOCAL)
    assert grant is not None
    grant.close()
    duty.close()  # the shutdown write
    assert (tmp_path / "usage.json").exists()
    assert keeper.ledger.of("team").reset_at == clocks.now
