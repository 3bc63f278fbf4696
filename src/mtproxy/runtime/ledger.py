"""Keeps the usage ledger in step with the workers' shared table and writes it at an interval and at exit.

The supervisor owns one UsageKeeper. `configure` runs at start-up and at every reload that swapped the
secret set: it applies resets and the new quotas, and tells the table each secret's period bytes. `persist`
drains the table into the ledger, starts new periods and writes usage.json atomically; `run` calls it
every `interval` seconds, and sooner when a quota period ends first, so a new period opens on time.
A write that fails is logged and retried at the next interval; the ledger in memory loses nothing.

`annotate` adds each secret's label, limits and usage to a stats snapshot; it runs on the stats thread, so
every method that touches the ledger holds one lock (the table has its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mtproxy.accounts.limits import Limits, format_time
from mtproxy.accounts.periods import next_reset
from mtproxy.accounts.usage import Ledger, LedgerError, read_ledger, set_aside, write_ledger
from mtproxy.runtime.accounting import AccountingTable, Live
from mtproxy.stats.snapshot import annotate
from mtproxy.store import remove_stale_temps

DEFAULT_INTERVAL = 60.0  # seconds: the most usage a crash can lose


def _iso(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def _when(stamp: float) -> datetime | None:
    return datetime.fromtimestamp(stamp, UTC) if stamp else None


class UsageKeeper:
    def __init__(self, table: AccountingTable, path: Path, clock: Callable[[], datetime],
                 warn: Callable[[str], None]) -> None:
        self._table = table
        self._path = path
        self._clock = clock
        self._warn = warn
        self.ledger = Ledger()
        self._limits: dict[str, Limits] = {}
        self._labels: dict[str, str] = {}
        self._unplaced: set[str] = set()
        self._guard = threading.Lock()

    def load(self) -> None:
        """Read usage.json; an unusable one is moved aside (kept for the operator) and counting starts
        afresh, with an error line naming both files: the proxy keeps serving."""
        remove_stale_temps(self._path)  # what a write killed midway left beside the file
        try:
            self.ledger = read_ledger(self._path)
        except LedgerError as exc:
            kept = None
            with contextlib.suppress(OSError):
                kept = set_aside(self._path, self._clock())
            self._warn(f"{exc}; usage counting starts from zero"
                       + (f", the old file is kept as {kept}" if kept else ""))
            self.ledger = Ledger()

    def configure(self, limits: Mapping[str, Limits], resets: Mapping[str, datetime | None],
                  labels: Mapping[str, str] | None = None) -> None:
        """The secret set in force from now on: its limits and each secret's latest `usage_reset_at`."""
        with self._guard:
            self._labels = dict(labels or {})
            self._configure(limits, resets)

    def _configure(self, limits: Mapping[str, Limits], resets: Mapping[str, datetime | None]) -> None:
        now = self._clock()
        for gone in set(self._limits) - set(limits):
            self._fold(gone, self._table.slot(gone))  # its last bytes leave with it, not into a namesake
        self._limits = dict(limits)
        for secret_id, secret_limits in self._limits.items():
            slot = self._slot(secret_id)
            self._fold(secret_id, slot)
            self.ledger.apply_reset(secret_id, resets.get(secret_id))
            self.ledger.roll(secret_id, secret_limits.quota, now)
            if slot is not None:
                self._table.set_base(slot, self.ledger.of(secret_id).period_bytes)
        self.ledger.keep_only(set(self._limits))

    def persist(self) -> None:
        with self._guard:
            self._persist()

    def _persist(self) -> None:
        now = self._clock()
        for secret_id, secret_limits in self._limits.items():
            slot = self._slot(secret_id)
            self._fold(secret_id, slot)
            self.ledger.roll(secret_id, secret_limits.quota, now)
            if slot is not None:
                self._table.set_base(slot, self.ledger.of(secret_id).period_bytes)
        try:
            write_ledger(self._path, self.ledger)
        except OSError as exc:
            self._warn(f"{self._path}: cannot write the usage file ({exc.strerror}); retrying at the next interval")

    def orphaned(self, sessions: Mapping[str, int]) -> None:
        """A worker died with these sessions open (as it last reported them, at most half a second old): they
        no longer hold connection slots. Bytes they moved since the worker's last count are lost."""
        now = self._clock()
        for secret_id, count in sessions.items():
            slot = self._table.slot(secret_id)
            if slot is None:
                continue
            for _ in range(count):
                self._table.release(slot, now)

    def live(self, secret_id: str) -> Live:
        slot = self._table.slot(secret_id)
        return self._table.read(slot) if slot is not None else Live()

    def annotate(self, snap: dict[str, Any]) -> dict[str, Any]:
        """`snap["secrets"][id]` gains each secret's label, limits and usage (stats/snapshot.py)."""
        with self._guard:
            return annotate(snap, self._labels, self._limits, self._report())

    def report(self) -> dict[str, dict[str, Any]]:
        """Each secret's usage as of now (persisted plus not yet drained), for stats and the management API."""
        with self._guard:
            return self._report()

    def _report(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for secret_id, secret_limits in self._limits.items():
            entry = self.ledger.of(secret_id)
            slot = self._table.slot(secret_id)
            live = self._table.read(slot) if slot is not None else Live()
            unique = self._table.unique_ips(slot, secret_limits.unique_ip_window, now) if slot is not None else 0
            last = _when(live.last_seen)
            out[secret_id] = {
                "bytes_in": entry.bytes_in + live.bytes_in, "bytes_out": entry.bytes_out + live.bytes_out,
                "connections": live.connections, "connections_total": entry.connections_total + live.opened,
                "unique_ips": unique,
                "first_seen": _iso(entry.first_seen or _when(live.first_seen)),
                "last_seen": _iso(max(filter(None, (entry.last_seen, last)), default=None)),
                "period_start": _iso(entry.period_start),
                "period_bytes": entry.period_bytes + live.bytes_in + live.bytes_out,
                "reset_at": _iso(entry.reset_at),  # the last usage_reset_at applied (listings compare it)
            }
        return out

    def wait_time(self, interval: float) -> float:
        """Seconds until the next write: the interval, or the end of the earliest quota period if sooner."""
        now = self._clock()
        wait = interval
        for secret_limits in self._limits.values():
            if secret_limits.quota is not None:
                reset = next_reset(now, secret_limits.quota)
                if reset is not None:
                    wait = min(wait, max(0.0, (reset - now).total_seconds()))
        return wait

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Persist until `stop` is set, then once more: shutdown loses nothing counted so far."""
        while True:
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.wait_time(interval))
            self.persist()
            if stop.is_set():
                return

    def _slot(self, secret_id: str) -> int | None:
        slot = self._table.slot(secret_id)
        if slot is None and secret_id not in self._unplaced:
            self._unplaced.add(secret_id)
            self._warn(f"the usage table is full ({self._table.capacity} secrets since start-up): secret"
                       f" {secret_id} is served without limits or accounting until a restart")
        return slot

    def _fold(self, secret_id: str, slot: int | None) -> None:
        if slot is None:
            return
        moved = self._table.drain(slot)
        self.ledger.add(secret_id, moved.opened, moved.bytes_in, moved.bytes_out, _when(moved.first_seen),
                        _when(moved.last_seen))
