"""The per-secret part of a stats snapshot: its keys, how workers' copies combine, and how the engine fills it.

A snapshot (`Counters.snapshot()`, merged by `counters.merge`) holds `snap["secrets"][secret_id]`, one
`SecretSnap` per secret, keyed by the store's id (never by the secret). The four counters are always there;
everything else is optional, so a renderer reads it with `.get` and an engine that does not fill a key yet
still renders:

- `label`: the operator's label ("" or missing: none). `/metrics` names a secret by its label when set,
  else by its id (labels are unique in the store; see `render.series_names`).
- `limits`: what the store sets, as `Limits.to_json()` (the store's and the API's form).
- `usage`: the shared accounting's figures as of the snapshot (`SecretUsageSnap`).
- `refusals`: sessions refused or closed by this secret's limits, per `accounts.policy.Refusal` value.

Workers' snapshots carry only the counters and `refusals`, summed by `merge_secret`; `label`, `limits`
and `usage` come from the store and the table every worker shares, so they are added once, after the
merge (`annotate`, called by runtime/ledger.py on the stats thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from mtproxy.accounts.limits import Limits

COUNTERS = ("active", "total", "bytes_in", "bytes_out")


class SecretUsageSnap(TypedDict, total=False):
    """One secret's entry in `runtime/ledger.py` `UsageKeeper.report()`: ISO 8601 UTC times, or None."""

    bytes_in: int
    bytes_out: int
    connections: int  # sessions open now, across workers
    connections_total: int
    unique_ips: int  # distinct client addresses within the secret's unique-IP window
    first_seen: str | None
    last_seen: str | None
    period_start: str | None  # None without a periodic quota
    period_bytes: int  # bytes both ways in the current quota period (persisted plus live)
    reset_at: str | None  # the last usage_reset_at the ledger applied


class SecretSnap(TypedDict):
    active: int
    total: int
    bytes_in: int  # client -> DC
    bytes_out: int  # DC -> client
    label: NotRequired[str]
    limits: NotRequired[dict[str, Any]]  # Limits.to_json(): the store's and the API's form
    usage: NotRequired[SecretUsageSnap]
    refusals: NotRequired[dict[str, int]]


def annotate(snap: dict[str, Any], labels: Mapping[str, str], limits: Mapping[str, Limits],
             usage: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Add the store's labels and limits and the accounting's usage to a snapshot, in place.

    Every secret in any of the three gets an entry (a secret with no session yet has zero counters), so
    limits and quota show before its first client. Returns `snap` for chaining.
    """
    secrets: dict[str, Any] = snap.setdefault("secrets", {})
    for sid in {*labels, *limits, *usage}:
        entry = secrets.setdefault(sid, dict.fromkeys(COUNTERS, 0))
        entry["label"] = labels.get(sid, "")
        if sid in limits:
            entry["limits"] = limits[sid].to_json()
        if sid in usage:
            entry["usage"] = dict(usage[sid])
        entry.setdefault("refusals", {})
    return snap


def timestamp(iso: str | None) -> float | None:
    """Unix time of a snapshot's ISO 8601 UTC time; None stays None."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def merge_secret(into: dict[str, Any], figures: Mapping[str, Any]) -> None:
    """Fold one worker's `SecretSnap` into the running merge `into` (rules in the module docstring)."""
    for k in COUNTERS:
        into[k] = into.get(k, 0) + int(figures.get(k, 0))
    refusals = figures.get("refusals")
    if refusals:
        mine = into.setdefault("refusals", {})
        for reason, n in refusals.items():
            mine[reason] = mine.get(reason, 0) + int(n)
