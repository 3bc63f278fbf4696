"""Per-secret usage as operations report it, from the engine's usage ledger and its live figures.

`UsageSource` is the interface operations read usage through. `LedgerAndEngine` reads the usage of this
root's engine from its /stats.json (per secret "usage": the ledger plus what the workers counted since its
last write, distinct addresses and open sessions), and, when no engine answers, the ledger file the engine
persists (Paths.usage_file), read by accounts/usage.py, the one reader of that file. A reset is not sent
here: `reset-usage` stamps the entry's `usage_reset_at` in the store, which reaches the engine through the
ordinary live reload; the ledger honours a stamp newer than the one it last applied (its `reset_at`), and
until it has, usage since the stamp is reported as zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..accounts.limits import LimitsError, format_time, parse_time
from ..accounts.usage import Ledger, LedgerError, read_ledger
from ..host.record import ownership
from ..paths import Paths
from ..settings import read_settings
from ..store import StoreData
from .proxy_control import engine_of_root, fetch_engine, stats_port


@dataclass(frozen=True)
class UsageReport:
    """One secret's usage as listings show it; `source` says where the byte counts come from."""

    bytes_in: int = 0  # client -> DC
    bytes_out: int = 0  # DC -> client
    connections_total: int = 0
    connections_active: int | None = None  # live, from the engine; None when no engine answers
    unique_ips: int | None = None  # live, from the engine (distinct addresses within the limit's window)
    period_start: str | None = None
    last_seen: str | None = None
    # "ledger": the ledger (the quota's figures: from the engine, else its file); "engine": an engine without
    # a ledger, counting since it started; "none"
    source: str = "none"
    period_bytes: int = 0  # both ways in the quota's period (without a period: since the last reset)

    @property
    def bytes_total(self) -> int:
        return self.bytes_in + self.bytes_out

    def to_json(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "bytes_total": self.bytes_total,
                "period_bytes": self.period_bytes,
                "connections_total": self.connections_total, "connections_active": self.connections_active,
                "unique_ips": self.unique_ips, "period_start": self.period_start, "last_seen": self.last_seen,
                "source": self.source}


class UsageSource(Protocol):
    """Where operations read usage from: every secret's usage, keyed by secret id."""

    def usage(self, store: StoreData) -> dict[str, UsageReport]: ...


def _int(record: dict[str, Any], key: str) -> int:
    value = record.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def _moment(text: str | None) -> datetime | None:
    try:
        return parse_time(text, "reset_at") if text else None
    except LimitsError:
        return None


def ledger_of(paths: Paths) -> Ledger:
    """The engine's persisted ledger; empty when there is none yet or it cannot be read (the engine sets an
    unreadable one aside and says so in its log)."""
    try:
        return read_ledger(paths.usage_file)
    except LedgerError:
        return Ledger()


def engine_snapshot(paths: Paths) -> dict[str, Any] | None:
    """This root's engine's /stats.json; None when no engine of this root answers."""
    own = ownership(paths)
    engine = fetch_engine(stats_port(own, read_settings(paths.settings_file)))
    return engine if engine is not None and engine_of_root(engine, own, paths) else None


def engine_counters(paths: Paths) -> dict[str, dict[str, Any]] | None:
    """This root's engine's per-secret counters from /stats.json; None when it does not answer."""
    engine = engine_snapshot(paths)
    if engine is None:
        return None
    secrets = engine.get("secrets")
    return {str(k): v for k, v in secrets.items() if isinstance(v, dict)} if isinstance(secrets, dict) else {}


@dataclass
class LedgerAndEngine:
    """The UsageSource of an installation: the engine's live view of its ledger, else the ledger file."""

    paths: Paths
    counters: Callable[[Paths], dict[str, dict[str, Any]] | None] = engine_counters

    def usage(self, store: StoreData) -> dict[str, UsageReport]:
        live = self.counters(self.paths)
        ledger: Ledger | None = None
        found: dict[str, UsageReport] = {}
        for rec in store.secrets:
            engine = (live or {}).get(rec.id, {})
            active = _int(engine, "active") if live is not None else None
            figures = engine.get("usage")
            unique: int | None = None
            if isinstance(figures, dict):
                unique = _int(figures, "unique_ips")
            else:
                ledger = ledger if ledger is not None else ledger_of(self.paths)
                kept = ledger.secrets.get(rec.id)
                figures = kept.to_json() if kept is not None else None
            requested = _moment(rec.usage_reset_at)
            applied = _moment(_text(figures, "reset_at")) if figures is not None else None
            if figures is not None and (requested is None or (applied is not None and applied >= requested)):
                found[rec.id] = UsageReport(
                    _int(figures, "bytes_in"), _int(figures, "bytes_out"), _int(figures, "connections_total"),
                    active, unique, _text(figures, "period_start"), _text(figures, "last_seen"), "ledger",
                    _int(figures, "period_bytes"))
            elif requested is not None:
                # reset, and the ledger has not applied it yet (or there is none): nothing counted since then
                found[rec.id] = UsageReport(connections_active=active, period_start=format_time(requested),
                                            source="ledger" if figures is not None else "none")
            elif engine:
                found[rec.id] = UsageReport(_int(engine, "bytes_in"), _int(engine, "bytes_out"),
                                            _int(engine, "total"), active, source="engine")
            else:
                found[rec.id] = UsageReport(connections_active=active)
        return found
