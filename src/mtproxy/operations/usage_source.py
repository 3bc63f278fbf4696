"""Per-secret usage as operations report it, from the engine's usage ledger and its live counters.

`UsageSource` is the interface operations read usage through. `LedgerAndEngine` reads the ledger file the
engine persists beside the store (Paths.usage_file) and the live counters of this root's engine
(/stats.json). A reset is not sent here: `reset-usage` stamps the entry's `usage_reset_at` in the store,
which reaches every worker through the ordinary live reload; the ledger honours a stamp newer than the one
it last applied (its record's `reset_at`), and until it has, usage since the stamp is reported as zero.

The ledger file: {"version": 1, "secrets": {"<id>": {"bytes_in": int, "bytes_out": int,
"connections_total": int, "unique_ips": int, "first_seen": ISO, "last_seen": ISO, "period_start": ISO,
"reset_at": ISO}}}; missing fields count as zero or unknown, a malformed file as absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..host.record import ownership
from ..paths import Paths
from ..settings import read_settings
from ..store import StoreData
from .proxy_control import engine_of_root, fetch_engine, stats_port

MAX_LEDGER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SecretUsage:
    """One secret's usage; `source` says where the byte counts come from."""

    bytes_in: int = 0  # client -> DC
    bytes_out: int = 0  # DC -> client
    connections_total: int = 0
    connections_active: int | None = None  # live, from the engine; None when no engine answers
    unique_ips: int | None = None
    period_start: str | None = None
    last_seen: str | None = None
    # "ledger": the persisted ledger (the quota's figures); "engine": since the engine started; "none"
    source: str = "none"

    @property
    def bytes_total(self) -> int:
        return self.bytes_in + self.bytes_out

    def to_json(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "bytes_total": self.bytes_total,
                "connections_total": self.connections_total, "connections_active": self.connections_active,
                "unique_ips": self.unique_ips, "period_start": self.period_start, "last_seen": self.last_seen,
                "source": self.source}


class UsageSource(Protocol):
    """Where operations read usage from: every secret's usage, keyed by secret id."""

    def usage(self, store: StoreData) -> dict[str, SecretUsage]: ...


def _int(record: dict[str, Any], key: str) -> int:
    value = record.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def read_ledger(paths: Paths) -> dict[str, dict[str, Any]]:
    """The ledger's per-secret records; {} when there is none yet or it cannot be read."""
    try:
        with open(paths.usage_file, "rb") as handle:
            doc = json.loads(handle.read(MAX_LEDGER_BYTES))
    except (OSError, ValueError):
        return {}
    secrets = doc.get("secrets") if isinstance(doc, dict) else None
    if not isinstance(secrets, dict):
        return {}
    return {str(k): v for k, v in secrets.items() if isinstance(v, dict)}


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
    """The UsageSource of an installation: the ledger for byte counts, the engine for live connections."""

    paths: Paths
    counters: Callable[[Paths], dict[str, dict[str, Any]] | None] = engine_counters

    def usage(self, store: StoreData) -> dict[str, SecretUsage]:
        ledger = read_ledger(self.paths)
        live = self.counters(self.paths)
        found: dict[str, SecretUsage] = {}
        for rec in store.secrets:
            engine = (live or {}).get(rec.id, {})
            active = _int(engine, "active") if live is not None else None
            kept = ledger.get(rec.id)
            if kept is not None and (_text(kept, "reset_at") or "") >= rec.usage_reset_at:
                found[rec.id] = SecretUsage(
                    _int(kept, "bytes_in"), _int(kept, "bytes_out"), _int(kept, "connections_total"), active,
                    _int(kept, "unique_ips") if "unique_ips" in kept else None, _text(kept, "period_start"),
                    _text(kept, "last_seen"), "ledger")
            elif rec.usage_reset_at:
                # reset, and the ledger has not applied it yet (or there is none): nothing counted since then
                found[rec.id] = SecretUsage(connections_active=active, period_start=rec.usage_reset_at,
                                            source="ledger" if kept is not None else "none")
            elif engine:
                found[rec.id] = SecretUsage(_int(engine, "bytes_in"), _int(engine, "bytes_out"),
                                            _int(engine, "total"), active, source="engine")
            else:
                found[rec.id] = SecretUsage(connections_active=active)
        return found
