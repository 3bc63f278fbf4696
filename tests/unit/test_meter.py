"""The session meter: batched accounting, and how far past a quota sessions get before they are closed."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mtproxy.accounts.limits import Limits, Quota
from mtproxy.accounts.policy import Refusal
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.meter import DEFAULT_FLOOR, DEFAULT_QUANTUM, SessionMeter

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
READ = 64 * 1024  # the relay's largest read
QUOTA = 50 * 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def table() -> Iterator[AccountingTable]:
    made = AccountingTable(b"key", capacity=16)
    yield made
    made.close()


def _session(table: AccountingTable, limits: Limits, clock: Clock) -> SessionMeter:
    slot = table.slot("alice")
    assert slot is not None
    assert table.admit(slot, limits, "192.0.2.1", clock.now) is None
    return SessionMeter(table, slot, limits, clock)


def test_bytes_reach_the_table_in_batches_and_all_at_close(table: AccountingTable) -> None:
    clock = Clock()
    meter = _session(table, Limits(), clock)
    slot = table.slot("alice")
    assert slot is not None
    for _ in range(3):
        assert meter.moved(1000, 2000) is None
    assert table.read(slot).bytes_in == 0  # below the batch: nothing locked yet
    meter.moved(DEFAULT_QUANTUM, 0)
    assert table.read(slot).bytes_in == 3000 + DEFAULT_QUANTUM
    meter.moved(7, 9)
    meter.close()
    live = table.read(slot)
    assert (live.bytes_in, live.bytes_out, live.connections) == (3007 + DEFAULT_QUANTUM, 6009, 0)


def test_one_session_overshoots_a_quota_by_at_most_the_floor_plus_one_read(table: AccountingTable) -> None:
    clock = Clock()
    meter = _session(table, Limits(quota=Quota(QUOTA)), clock)
    moved, refusal = 0, None
    while refusal is None:
        refusal = meter.moved(READ, 0)
        moved += READ
    assert refusal is Refusal.QUOTA
    assert QUOTA <= moved <= QUOTA + DEFAULT_FLOOR + READ


def test_expiry_and_a_reload_close_a_running_session(table: AccountingTable) -> None:
    clock = Clock()
    meter = _session(table, Limits(expires_at=NOW + timedelta(seconds=5)), clock)
    assert meter.check() is None
    clock.now += timedelta(seconds=5)
    assert meter.check() is Refusal.EXPIRED
    assert meter.set_limits(Limits(enabled=False)) is Refusal.DISABLED
    assert meter.set_limits(Limits()) is None


_RESULT = struct.Struct("<q")


def test_concurrent_sessions_overshoot_within_the_documented_bound(table: AccountingTable) -> None:
    """Four processes, one session each, read as fast as they can until the quota closes them."""
    limits = Limits(quota=Quota(QUOTA))
    sessions = 4
    slot = table.slot("alice")
    assert slot is not None
    meters = [_session(table, limits, Clock()) for _ in range(sessions)]  # all admitted, then all move
    read_end, write_end = os.pipe()
    gate_read, gate_write = os.pipe()
    pids = []
    for meter in meters:
        pid = os.fork()
        if pid == 0:
            try:
                os.close(gate_write)
                os.read(gate_read, 1)  # returns at EOF: when the parent has forked every session
                moved = 0
                while meter.moved(READ, 0) is None:
                    moved += READ
                os.write(write_end, _RESULT.pack(moved + READ))
                meter.close()
            except BaseException as exc:
                os.write(2, f"session failed: {exc!r}\n".encode())
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(write_end)
    os.close(gate_write)
    os.close(gate_read)
    deadline = time.monotonic() + 30
    try:
        for pid in pids:
            while not os.waitpid(pid, os.WNOHANG)[0]:
                assert time.monotonic() < deadline, "a session never met its quota"
                time.sleep(0.01)
    finally:
        for pid in pids:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    got = os.read(read_end, 4096)
    os.close(read_end)
    total = sum(_RESULT.unpack_from(got, i)[0] for i in range(0, len(got), _RESULT.size))
    assert len(got) == sessions * _RESULT.size
    assert table.read(slot).bytes_in == total
    overshoot = total - QUOTA
    print(f"4 sessions, quota {QUOTA} B: overshoot {overshoot} B")
    assert 0 <= overshoot <= sessions * (DEFAULT_QUANTUM + READ)
