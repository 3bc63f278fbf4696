"""The usage ledger: what each secret has used, as persisted in `usage.json` beside the store.

Per secret: bytes each way and sessions since the last reset, first and last seen, and the bytes of the
current quota period with that period's start. The engine adds what its workers moved (runtime/ledger.py)
and writes the whole file atomically at an interval and at shutdown, so a crash loses at most one interval.

A usage reset is a time, not a command: the store keeps a `usage_reset_at` per secret (set by
`mtproxy reset-usage` or the management API); the ledger remembers the last one it applied, and a newer one
zeroes the counters when the engine next loads the store (start-up or reload). It is idempotent, survives
restarts, and needs no channel into the running engine beside the reload that already exists.

Reading and writing are the only IO here (`read_ledger`, `write_ledger`, `set_aside`); the rest is pure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mtproxy.store import FILE_MODE, write_atomic

from .limits import Quota, format_time, parse_time
from .periods import period_start

LEDGER_VERSION = 1
MAX_LEDGER_BYTES = 64 * 1024 * 1024


class LedgerError(ValueError):
    """The usage file cannot be used; the message names the file and what is wrong with it."""


@dataclass
class SecretUsage:
    """One secret's figures. Times are aware UTC datetimes; None: never."""

    bytes_in: int = 0  # client -> DC
    bytes_out: int = 0  # DC -> client
    connections_total: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    period_start: datetime | None = None  # None: no period (no quota, or a total quota)
    period_bytes: int = 0  # both ways since period_start; without a period, since the last reset
    reset_at: datetime | None = None  # the last usage_reset_at applied

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "connections_total": self.connections_total,
            "first_seen": _time_or_none(self.first_seen), "last_seen": _time_or_none(self.last_seen),
            "period_start": _time_or_none(self.period_start), "period_bytes": self.period_bytes,
            "reset_at": _time_or_none(self.reset_at),
        }


@dataclass
class Ledger:
    secrets: dict[str, SecretUsage] = field(default_factory=dict)

    def of(self, secret_id: str) -> SecretUsage:
        found = self.secrets.get(secret_id)
        if found is None:
            found = self.secrets[secret_id] = SecretUsage()
        return found

    def add(self, secret_id: str, opened: int, bytes_in: int, bytes_out: int,
            first_seen: datetime | None, last_seen: datetime | None) -> None:
        """Fold in what the workers counted since the previous drain."""
        entry = self.of(secret_id)
        entry.bytes_in += bytes_in
        entry.bytes_out += bytes_out
        entry.period_bytes += bytes_in + bytes_out
        entry.connections_total += opened
        if first_seen is not None and (entry.first_seen is None or first_seen < entry.first_seen):
            entry.first_seen = first_seen
        if last_seen is not None and (entry.last_seen is None or last_seen > entry.last_seen):
            entry.last_seen = last_seen

    def roll(self, secret_id: str, quota: Quota | None, now: datetime) -> bool:
        """Start a new period when `now` is past the stored one's end (or the quota's period changed);
        True when period_bytes changed. Without a period (a total quota, or none) period_bytes is every
        byte since the last reset, so a total quota set later counts what was already used."""
        entry = self.of(secret_id)
        start = period_start(now, quota) if quota is not None else None
        if start == entry.period_start:
            return False
        entry.period_start = start
        entry.period_bytes = 0 if start is not None else entry.bytes_in + entry.bytes_out
        return True

    def apply_reset(self, secret_id: str, requested_at: datetime | None) -> bool:
        """Zero the counters when the store asks for a reset newer than the last one applied."""
        entry = self.of(secret_id)
        if requested_at is None or (entry.reset_at is not None and requested_at <= entry.reset_at):
            return False
        entry.bytes_in = entry.bytes_out = entry.connections_total = entry.period_bytes = 0
        entry.reset_at = requested_at
        return True

    def keep_only(self, secret_ids: set[str]) -> None:
        """Forget the secrets no longer in the store, so the file stays the size of the secret set."""
        for gone in set(self.secrets) - secret_ids:
            del self.secrets[gone]

    def to_json(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "secrets": {k: v.to_json() for k, v in sorted(self.secrets.items())}}


def _time_or_none(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def _count(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError(f"{where}.{key} must be a whole number of at least 0")
    return value


def _time(entry: dict[str, Any], key: str, where: str) -> datetime | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LedgerError(f"{where}.{key} must be an ISO 8601 time or null")
    try:
        return parse_time(value, f"{where}.{key}")
    except ValueError as exc:
        raise LedgerError(str(exc)) from None


def parse_ledger(data: Any, where: str = "usage") -> Ledger:
    """The inverse of Ledger.to_json; a newer version than ours is refused rather than half understood."""
    if not isinstance(data, dict) or not isinstance(data.get("secrets"), dict):
        raise LedgerError(f"{where} must be an object with a 'secrets' object")
    version = data.get("version")
    if version != LEDGER_VERSION:
        raise LedgerError(f"{where} has version {version!r}; this mtproxy reads version {LEDGER_VERSION}")
    ledger = Ledger()
    for secret_id, entry in data["secrets"].items():
        at = f"{where}.secrets.{secret_id}"
        if not isinstance(entry, dict):
            raise LedgerError(f"{at} must be an object")
        ledger.secrets[secret_id] = SecretUsage(
            bytes_in=_count(entry, "bytes_in", at), bytes_out=_count(entry, "bytes_out", at),
            connections_total=_count(entry, "connections_total", at),
            first_seen=_time(entry, "first_seen", at), last_seen=_time(entry, "last_seen", at),
            period_start=_time(entry, "period_start", at), period_bytes=_count(entry, "period_bytes", at),
            reset_at=_time(entry, "reset_at", at),
        )
    return ledger


def serialize(ledger: Ledger) -> bytes:
    return (json.dumps(ledger.to_json(), indent=1) + "\n").encode()


def read_ledger(path: Path) -> Ledger:
    """The ledger in `path`; an empty one when there is no file yet (a first start)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_LEDGER_BYTES + 1)
    except FileNotFoundError:
        return Ledger()
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the usage file ({exc.strerror})") from None
    if len(raw) > MAX_LEDGER_BYTES:
        raise LedgerError(f"{path}: larger than {MAX_LEDGER_BYTES} bytes, not a usage file")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{path}: not valid JSON ({exc})") from None
    return parse_ledger(data, str(path))


def write_ledger(path: Path, ledger: Ledger) -> None:
    write_atomic(path, serialize(ledger), FILE_MODE)


def set_aside(path: Path, now: datetime) -> Path:
    """Move an unusable usage file out of the way, keeping its bytes for the operator; returns where."""
    kept = path.with_name(f"{path.name}.bad-{now.strftime('%Y%m%dT%H%M%SZ')}")
    os.replace(path, kept)
    return kept
