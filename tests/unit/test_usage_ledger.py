"""The usage ledger: JSON round trip, periods and resets, a corrupt file kept aside, kill -9 between writes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mtproxy.accounts.limits import Limits, Quota, QuotaPeriod
from mtproxy.accounts.policy import Refusal
from mtproxy.accounts.usage import Ledger, LedgerError, SecretUsage, parse_ledger, read_ledger, write_ledger
from mtproxy.paths import Paths
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.ledger import UsageKeeper

NOW = datetime(2026, 12, 31, 22, 0, tzinfo=UTC)
MONTHLY = Limits(quota=Quota(10_000, QuotaPeriod.MONTH, timezone="Europe/Berlin"))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def table() -> Iterator[AccountingTable]:
    made = AccountingTable(b"key", capacity=32)
    yield made
    made.close()


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    ledger = Ledger({"alice": SecretUsage(1, 2, 3, NOW - timedelta(days=3), NOW, NOW - timedelta(days=1), 3,
                                          NOW - timedelta(days=2)),
                     "bob": SecretUsage()})
    path = tmp_path / "data" / "usage.json"
    write_ledger(path, ledger)
    assert read_ledger(path) == ledger
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == 1
    assert read_ledger(tmp_path / "absent.json") == Ledger()


def test_the_path_lives_in_the_writable_data_directory() -> None:
    paths = Paths(Path("/srv/proxy"))
    assert paths.usage_file == paths.data_dir / "usage.json"


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not valid JSON"),
    ('{"version": 9, "secrets": {}}', "version 9"),
    ('{"version": 1, "secrets": {"a": {"bytes_in": -1}}}', "bytes_in"),
    ('{"version": 1, "secrets": {"a": {"last_seen": "yesterday"}}}', "last_seen"),
    ("[]", "object"),
])
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "usage.json"
    path.write_text(text)
    with pytest.raises(LedgerError, match=says):
        read_ledger(path)


def test_a_corrupt_file_is_kept_aside_and_counting_goes_on(tmp_path: Path, table: AccountingTable) -> None:
    path = tmp_path / "usage.json"
    path.write_bytes(b"\x00garbage")
    warnings: list[str] = []
    keeper = UsageKeeper(table, path, Clock(), warnings.append)
    keeper.load()
    kept = tmp_path / "usage.json.bad-20261231T220000Z"
    assert kept.read_bytes() == b"\x00garbage"
    assert len(warnings) == 1 and str(kept) in warnings[0] and "not valid JSON" in warnings[0]
    keeper.configure({"alice": Limits()}, {})
    keeper.persist()
    assert read_ledger(path).secrets["alice"] == SecretUsage()


def test_persist_folds_live_bytes_once_and_the_quota_sees_them(tmp_path: Path, table: AccountingTable) -> None:
    clock = Clock()
    keeper = UsageKeeper(table, tmp_path / "usage.json", clock, pytest.fail)
    keeper.load()
    keeper.configure({"alice": MONTHLY}, {})
    slot = table.slot("alice")
    assert slot is not None
    assert table.admit(slot, MONTHLY, "192.0.2.1", clock.now) is None
    table.add_bytes(slot, 4000, 2000, clock.now)
    keeper.persist()
    keeper.persist()  # a second drain finds nothing new
    entry = read_ledger(tmp_path / "usage.json").secrets["alice"]
    assert (entry.bytes_in, entry.bytes_out, entry.period_bytes, entry.connections_total) == (4000, 2000, 6000, 1)
    assert entry.first_seen == entry.last_seen == NOW
    # a restart: the new table learns the persisted period bytes, so the quota counts them
    fresh = AccountingTable(b"key", capacity=32)
    try:
        again = UsageKeeper(fresh, tmp_path / "usage.json", clock, pytest.fail)
        again.load()
        again.configure({"alice": MONTHLY}, {})
        new_slot = fresh.slot("alice")
        assert new_slot is not None
        assert fresh.add_bytes(new_slot, 3999, 0, clock.now) == 9999
        assert fresh.admit(new_slot, MONTHLY, "192.0.2.1", clock.now) is None
        fresh.add_bytes(new_slot, 1, 0, clock.now)
        assert fresh.admit(new_slot, MONTHLY, "192.0.2.1", clock.now) is Refusal.QUOTA
    finally:
        fresh.close()


def test_the_month_rolls_over_at_local_midnight(tmp_path: Path, table: AccountingTable) -> None:
    clock = Clock()
    clock.now = datetime(2026, 12, 31, 22, 59, 59, tzinfo=UTC)  # 23:59:59 in Berlin
    keeper = UsageKeeper(table, tmp_path / "usage.json", clock, pytest.fail)
    keeper.configure({"alice": MONTHLY}, {})
    assert keeper.wait_time(60.0) == 1.0  # the next write is when the period ends
    slot = table.slot("alice")
    assert slot is not None
    table.add_bytes(slot, 10_000, 0, clock.now)
    keeper.persist()
    assert table.admit(slot, MONTHLY, "192.0.2.1", clock.now) is Refusal.QUOTA
    clock.now += timedelta(seconds=1)
    keeper.persist()
    assert table.admit(slot, MONTHLY, "192.0.2.1", clock.now) is None
    entry = keeper.ledger.secrets["alice"]
    assert entry.period_start == datetime(2026, 12, 31, 23, tzinfo=UTC)
    assert (entry.period_bytes, entry.bytes_in) == (0, 10_000)


def test_a_reset_request_applies_once_and_survives_restarts(tmp_path: Path, table: AccountingTable) -> None:
    clock = Clock()
    path = tmp_path / "usage.json"
    keeper = UsageKeeper(table, path, clock, pytest.fail)
    keeper.configure({"alice": MONTHLY}, {})
    slot = table.slot("alice")
    assert slot is not None
    table.add_bytes(slot, 10_000, 500, clock.now)
    keeper.persist()
    asked = NOW + timedelta(minutes=5)
    keeper.configure({"alice": MONTHLY}, {"alice": asked})  # the reload after `reset-usage`
    assert table.admit(slot, MONTHLY, "192.0.2.1", clock.now) is None
    table.add_bytes(slot, 70, 0, clock.now)
    keeper.persist()
    entry = read_ledger(path).secrets["alice"]
    assert (entry.bytes_in, entry.bytes_out, entry.period_bytes, entry.reset_at) == (70, 0, 70, asked)
    restarted = UsageKeeper(table, path, clock, pytest.fail)
    restarted.load()
    restarted.configure({"alice": MONTHLY}, {"alice": asked})  # the same request is not applied twice
    assert restarted.ledger.secrets["alice"].bytes_in == 70


def test_a_total_quota_counts_every_byte_since_the_last_reset() -> None:
    ledger = Ledger()
    monthly, total = MONTHLY.quota, Quota(10_000)
    ledger.roll("a", monthly, NOW)
    ledger.add("a", 1, 3000, 1000, NOW, NOW)
    assert ledger.roll("a", monthly, NOW + timedelta(days=1)) is True  # 2027-01-01 in Berlin: a new month
    ledger.add("a", 1, 500, 0, NOW, NOW)
    assert ledger.secrets["a"].period_bytes == 500
    assert ledger.roll("a", total, NOW + timedelta(days=1)) is True  # the operator made it a total quota
    assert ledger.secrets["a"].period_bytes == 4500
    assert ledger.roll("a", total, NOW + timedelta(days=90)) is False
    ledger.apply_reset("a", NOW + timedelta(days=91))
    assert ledger.secrets["a"].period_bytes == 0


def test_report_adds_what_the_workers_have_not_handed_over_yet(tmp_path: Path, table: AccountingTable) -> None:
    clock = Clock()
    keeper = UsageKeeper(table, tmp_path / "usage.json", clock, pytest.fail)
    keeper.configure({"alice": MONTHLY}, {})
    slot = table.slot("alice")
    assert slot is not None
    assert table.admit(slot, MONTHLY, "192.0.2.1", clock.now) is None
    table.add_bytes(slot, 100, 200, clock.now)
    keeper.persist()
    assert table.admit(slot, MONTHLY, "192.0.2.2", clock.now + timedelta(seconds=9)) is None
    table.add_bytes(slot, 1, 2, clock.now + timedelta(seconds=9))
    assert keeper.report()["alice"] == {
        "bytes_in": 101, "bytes_out": 202, "connections": 2, "connections_total": 2, "unique_ips": 2,
        "first_seen": "2026-12-31T22:00:00Z", "last_seen": "2026-12-31T22:00:09Z",
        "period_start": "2026-11-30T23:00:00Z", "period_bytes": 303, "reset_at": None,
    }


def test_removed_secrets_leave_the_file(tmp_path: Path, table: AccountingTable) -> None:
    keeper = UsageKeeper(table, tmp_path / "usage.json", Clock(), pytest.fail)
    keeper.configure({"a": Limits(), "b": Limits()}, {})
    slot = table.slot("a")
    assert slot is not None
    table.add_bytes(slot, 100, 0, NOW)
    keeper.configure({"b": Limits()}, {})
    keeper.persist()
    assert set(read_ledger(tmp_path / "usage.json").secrets) == {"b"}
    keeper.configure({"a": Limits(), "b": Limits()}, {})  # the id comes back: it starts from nothing
    keeper.persist()
    assert read_ledger(tmp_path / "usage.json").secrets["a"].bytes_in == 0


def test_run_writes_once_more_at_shutdown(tmp_path: Path, table: AccountingTable) -> None:
    keeper = UsageKeeper(table, tmp_path / "usage.json", Clock(), pytest.fail)
    keeper.configure({"a": Limits()}, {})
    slot = table.slot("a")
    assert slot is not None
    table.add_bytes(slot, 5, 6, NOW)

    async def main() -> None:
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(keeper.run(3600.0, stop), 10)

    asyncio.run(main())
    assert read_ledger(tmp_path / "usage.json").secrets["a"].bytes_out == 6


def test_unparsable_entries_name_their_place() -> None:
    with pytest.raises(LedgerError, match=r"usage.secrets.x must be an object"):
        parse_ledger({"version": 1, "secrets": {"x": 5}})


CHUNK = 1000
PER_WRITE = 10  # adds between two writes: the interval, counted in adds so nothing depends on timing
_REPORT = struct.Struct("<q")


def test_kill_9_between_writes_loses_at_most_one_interval(tmp_path: Path, table: AccountingTable) -> None:
    path = tmp_path / "usage.json"
    keeper = UsageKeeper(table, path, Clock(), lambda line: None)
    keeper.configure({"alice": Limits()}, {})
    slot = table.slot("alice")
    assert slot is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            moved = 0
            for step in range(1, 1_000_000):
                table.add_bytes(slot, CHUNK, 0, NOW)
                moved += CHUNK
                os.write(write_end, _REPORT.pack(moved))
                if step % PER_WRITE == 0:
                    keeper.persist()
        except BaseException as exc:
            os.write(2, repr(exc).encode())
        finally:
            os._exit(1)
    os.close(write_end)
    got = b""
    deadline = time.monotonic() + 20
    try:
        while len(got) < _REPORT.size * PER_WRITE * 25 and time.monotonic() < deadline:
            got += os.read(read_end, 65536)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    while chunk := os.read(read_end, 65536):
        got += chunk
    os.close(read_end)
    moved = _REPORT.unpack_from(got, len(got) - len(got) % _REPORT.size - _REPORT.size)[0]
    assert moved >= CHUNK * PER_WRITE * 25
    saved = read_ledger(path).secrets["alice"].bytes_in  # whole and parsable, whenever the kill came
    assert moved - CHUNK * PER_WRITE <= saved <= moved + CHUNK
    # the next start-up clears a temp file the kill may have left, and reads the same figures
    restarted = UsageKeeper(table, path, Clock(), pytest.fail)
    restarted.load()
    assert restarted.ledger.secrets["alice"].bytes_in == saved
    assert [p.name for p in tmp_path.iterdir()] == ["usage.json"]
