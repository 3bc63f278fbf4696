"""A worker's enforcer: admission with its log line and counter, reloads and expiry closing running sessions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mtproxy.accounts.limits import Limits, Quota
from mtproxy.runtime.accounting import IP_ENTRIES, AccountingTable, Live
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

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


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


# ------------------------------------------------- secrets without limits: admitted on the worker's own count


def test_a_secret_without_limits_is_admitted_without_touching_the_table(table: AccountingTable) -> None:
    clocks = Clocks()
    enforcer, _ = _enforcer(table, clocks)
    enforcer.update({"free": Limits(note="no limits")})
    grants = [enforcer.open("free", (f"192.0.2.{i % 3 + 1}", 1000 + i), LOCAL) for i in range(5)]
    assert all(g is not None and g.meter is None and not g.metered for g in grants)
    slot = table.slot("free")
    assert slot is not None
    assert table.read(slot) == Live()  # nothing written per session: the sync does it
    enforcer.sync()
    live = table.read(slot)
    assert (live.connections, live.opened) == (5, 5)
    assert live.first_seen == live.last_seen == NOW.timestamp()
    assert table.unique_ips(slot, 3600, NOW) == 3
    clocks.advance(7.0)
    for grant in grants[:2]:
        assert grant is not None
        grant.close()
    assert table.read(slot).connections == 5  # until the next sync
    enforcer.sync()
    live = table.read(slot)
    assert (live.connections, live.opened, live.first_seen, live.last_seen) == (3, 5, NOW.timestamp(),
                                                                                  NOW.timestamp() + 7.0)


def test_the_fold_counts_what_admission_under_the_table_counts() -> None:
    """The same sessions through the table (a limit that never binds) and through the worker's own count
    leave the same figures, addresses beyond the table's capacity included."""
    peers = [(f"192.0.2.{i % (IP_ENTRIES + 20) + 1}", 2000 + i) for i in range(3 * IP_ENTRIES)]
    figures = []
    for limits in (Limits(max_connections=10_000), Limits()):
        made = AccountingTable(b"key", capacity=8)
        clocks = Clocks()
        enforcer, _ = _enforcer(made, clocks)
        enforcer.update({"team": limits})
        grants = []
        for index, peer in enumerate(peers):
            grants.append(enforcer.open("team", peer, LOCAL))
            if index % 40 == 39:
                clocks.advance(1.0)
                enforcer.sync()
        for grant in grants[::2]:
            assert grant is not None
            grant.close()
        enforcer.sync()
        slot = made.slot("team")
        assert slot is not None
        figures.append((made.read(slot), made.unique_ips(slot, 3600, clocks.now)))
        made.close()
    assert figures[0] == figures[1]
    assert figures[1][0].connections == len(peers) // 2 and figures[1][1] == IP_ENTRIES


def test_a_reload_that_adds_a_connection_limit_counts_running_sessions_at_once(table: AccountingTable) -> None:
    clocks = Clocks()
    worker_a, counters = _enforcer(table, clocks)
    worker_b, _ = _enforcer(table, clocks)
    for worker in (worker_a, worker_b):
        worker.update({"team": Limits()})
    running = [worker_a.open("team", ("192.0.2.1", 1), LOCAL), worker_a.open("team", ("192.0.2.2", 2), LOCAL),
               worker_b.open("team", ("192.0.2.3", 3), LOCAL)]
    assert all(g is not None and g.deferred for g in running)
    # the reload reaches both workers; neither has synced since the sessions opened
    assert worker_a.update({"team": Limits(max_connections=3)}) == []
    assert worker_b.update({"team": Limits(max_connections=3)}) == []
    assert worker_a.open("team", ("192.0.2.4", 4), LOCAL) is None
    assert counters.refusals["max-connections"] == 1
    first = running[0]
    assert first is not None and first.meter is not None and not first.deferred
    first.close()  # frees its slot at once, as any session the table admitted
    slot = table.slot("team")
    assert slot is not None and table.read(slot).connections == 2
    assert worker_b.open("team", ("192.0.2.4", 4), LOCAL) is not None
    assert worker_a.open("team", ("192.0.2.5", 5), LOCAL) is None


def test_a_reload_that_adds_an_address_limit_sees_the_addresses_already_served(table: AccountingTable) -> None:
    enforcer, counters = _enforcer(table, Clocks())
    enforcer.update({"team": Limits()})
    for index in range(3):
        assert enforcer.open("team", (f"192.0.2.{index + 1}", index), LOCAL) is not None
    enforcer.update({"team": Limits(max_unique_ips=3)})
    assert enforcer.open("team", ("192.0.2.1", 9), LOCAL) is not None  # a known address
    assert enforcer.open("team", ("192.0.2.9", 9), LOCAL) is None
    assert counters.refusals["max-unique-ips"] == 1


def test_a_reload_that_drops_the_limits_counts_on_the_worker_from_then_on(table: AccountingTable) -> None:
    enforcer, _ = _enforcer(table, Clocks())
    enforcer.update({"team": Limits(max_connections=5)})
    old = enforcer.open("team", ("192.0.2.1", 1), LOCAL)
    assert old is not None and old.meter is not None
    enforcer.update({"team": Limits()})
    new = enforcer.open("team", ("192.0.2.2", 2), LOCAL)
    assert new is not None and new.deferred and new.meter is None
    slot = table.slot("team")
    assert slot is not None and table.read(slot).connections == 1
    enforcer.sync()
    assert table.read(slot).connections == 2
    old.close()
    assert table.read(slot).connections == 1  # the table admitted it: its meter frees it at once
    new.close()
    enforcer.sync()
    live = table.read(slot)
    assert (live.connections, live.opened) == (0, 2)
    # and back: a limit again applies to what runs and what comes
    again = [enforcer.open("team", ("192.0.2.3", 3), LOCAL) for _ in range(2)]
    enforcer.update({"team": Limits(max_connections=2)})
    assert enforcer.open("team", ("192.0.2.4", 4), LOCAL) is None
    assert all(g is not None and g.meter is not None for g in again)


def test_expiry_without_other_limits_is_checked_on_the_worker(table: AccountingTable) -> None:
    clocks = Clocks()
    enforcer, counters = _enforcer(table, clocks)
    enforcer.update({"a": Limits(expires_at=NOW + timedelta(seconds=30))})
    grant = enforcer.open("a", ("192.0.2.1", 1), LOCAL)
    assert grant is not None and grant.deferred
    clocks.advance(30.0)
    assert enforcer.tick() == [grant] and counters.refusals["expired"] == 1
    assert enforcer.open("a", ("192.0.2.1", 2), LOCAL) is None
    assert counters.refusals["expired"] == 2
    grant.close()
    enforcer.sync()
    slot = table.slot("a")
    assert slot is not None and table.read(slot).connections == 0


def test_a_reload_that_disables_a_secret_closes_its_locally_counted_sessions(table: AccountingTable) -> None:
    enforcer, counters = _enforcer(table, Clocks())
    enforcer.update({"a": Limits()})
    grant = enforcer.open("a", ("192.0.2.1", 1), LOCAL)
    assert enforcer.update({"a": Limits(enabled=False)}) == [grant]
    assert counters.refusals["disabled"] == 1
    assert grant is not None
    grant.close()
    slot = table.slot("a")
    assert slot is not None and table.read(slot).connections == 0
