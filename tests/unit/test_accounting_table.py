"""The per-secret table the workers share: exact counts under concurrent forked writers, atomic admission."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.accounts.limits import Limits, Quota
from mtproxy.accounts.policy import Refusal
from mtproxy.runtime.accounting import IP_ENTRIES, SLOT_SIZE, AccountingTable

WAIT = 20.0
NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


@pytest.fixture
def table() -> Iterator[AccountingTable]:
    made = AccountingTable(b"k" * 16, capacity=64)
    yield made
    made.close()


def _run_children(count: int, child: Callable[[int], int]) -> list[int]:
    """Fork `count` children running child(i) at once; return their exit statuses (the child's answer)."""
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 255
            try:
                code = child(index)
            finally:
                os._exit(code)
        pids.append(pid)
    results = []
    deadline = time.monotonic() + WAIT
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                results.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                for other in pids:
                    os.kill(other, signal.SIGKILL)
                raise AssertionError("a child did not finish in time")
            time.sleep(0.005)
    return results


def test_concurrent_workers_lose_no_update(table: AccountingTable) -> None:
    slot = table.slot("alice")
    assert slot is not None
    rounds = 400

    def worker(index: int) -> int:
        for _ in range(rounds):
            assert table.admit(slot, Limits(), f"10.0.0.{index}", NOW) is None
            table.add_bytes(slot, 3, 5, NOW)
            table.release(slot, NOW)
        return 0

    assert _run_children(4, worker) == [0, 0, 0, 0]
    live = table.read(slot)
    assert (live.connections, live.opened, live.bytes_in, live.bytes_out) == (0, 4 * rounds, 12 * rounds,
                                                                             20 * rounds)
    assert table.unique_ips(slot, 3600, NOW) == 4


def test_the_last_connection_goes_to_exactly_one_worker(table: AccountingTable) -> None:
    slot = table.slot("bob")
    assert slot is not None
    limits = Limits(max_connections=5)

    def worker(index: int) -> int:
        return sum(table.admit(slot, limits, "192.0.2.1", NOW) is None for _ in range(10))

    assert sum(_run_children(4, worker)) == 5
    assert table.read(slot).connections == 5
    assert table.admit(slot, limits, "192.0.2.1", NOW) is Refusal.MAX_CONNECTIONS
    table.release(slot, NOW)
    assert table.admit(slot, limits, "192.0.2.1", NOW) is None


def test_ids_get_stable_distinct_slots_seen_alike_by_every_process(table: AccountingTable) -> None:
    ids = [f"user{i}" for i in range(40)]

    def worker(index: int) -> int:
        slots = [table.slot(i) for i in ids[index::2]]
        return len(set(slots)) if None not in slots else 0

    assert _run_children(2, worker) == [20, 20]
    slots = [table.slot(i) for i in ids]
    assert len(set(slots)) == 40
    assert table.slot("user7") == slots[7]


def test_a_full_table_answers_none() -> None:
    small = AccountingTable(b"k", capacity=3)
    try:
        assert [small.slot(i) is not None for i in "abcd"] == [True, True, True, False]
    finally:
        small.close()


def test_unique_ips_count_within_the_window_and_refuse_one_too_many(table: AccountingTable) -> None:
    slot = table.slot("carol")
    assert slot is not None
    limits = Limits(max_unique_ips=2, unique_ip_window=3600)
    assert table.admit(slot, limits, "198.51.100.1", NOW) is None
    assert table.admit(slot, limits, "198.51.100.2", NOW) is None
    assert table.admit(slot, limits, "198.51.100.1", NOW) is None  # a known address is no new one
    assert table.admit(slot, limits, "198.51.100.3", NOW) is Refusal.MAX_UNIQUE_IPS
    later = NOW + timedelta(seconds=3601)  # both addresses left the window
    assert table.admit(slot, limits, "198.51.100.3", later) is None
    assert table.unique_ips(slot, 3600, later) == 1


def test_address_memory_is_bounded_and_replaces_the_oldest(table: AccountingTable) -> None:
    slot = table.slot("dave")
    assert slot is not None
    for i in range(IP_ENTRIES + 10):
        assert table.admit(slot, Limits(), f"2001:db8::{i:x}", NOW + timedelta(seconds=i)) is None
    assert table.unique_ips(slot, 10**6, NOW + timedelta(seconds=100)) == IP_ENTRIES
    assert SLOT_SIZE == 832


def test_quota_uses_ledger_base_plus_live_and_drain_moves_bytes_once(table: AccountingTable) -> None:
    slot = table.slot("erin")
    assert slot is not None
    limits = Limits(quota=Quota(1000))
    table.set_base(slot, 900)
    assert table.admit(slot, limits, "203.0.113.9", NOW) is None
    assert table.add_bytes(slot, 60, 30, NOW) == 990
    drained = table.drain(slot)
    assert (drained.opened, drained.bytes_in, drained.bytes_out, drained.base) == (1, 60, 30, 900)
    after = table.read(slot)
    assert (after.connections, after.opened, after.bytes_in, after.bytes_out, after.base) == (1, 0, 0, 0, 990)
    assert table.add_bytes(slot, 10, 0, NOW) == 1000
    assert table.admit(slot, limits, "203.0.113.9", NOW) is Refusal.QUOTA
    table.set_base(slot, 0)  # a new period
    assert table.admit(slot, limits, "203.0.113.9", NOW) is None
    assert table.read(slot).first_seen == NOW.timestamp()


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, IP_ENTRIES), window=st.integers(1, 100),
       visits=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 30)), min_size=1, max_size=300))
def test_unique_ips_match_a_plain_model_up_to_the_tracked_count(cap: int, window: int,
                                                                 visits: list[tuple[int, int]]) -> None:
    table = AccountingTable(b"model", capacity=1)
    try:
        slot = table.slot("x")
        assert slot is not None
        limits = Limits(max_unique_ips=cap, unique_ip_window=window)
        seen: dict[int, int] = {}
        now = 0
        for address, pause in visits:
            now += pause
            recent = {a for a, t in seen.items() if t >= now - window}
            admitted = len(recent | {address}) <= cap
            moment = NOW + timedelta(seconds=now)
            assert (table.admit(slot, limits, f"10.1.0.{address}", moment) is None) == admitted
            if admitted:
                seen[address] = now
                table.release(slot, moment)
    finally:
        table.close()
