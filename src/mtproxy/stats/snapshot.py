"""The per-secret part of a stats snapshot: its keys, how workers' copies combine, and how the engine fills it.

A snapshot (`Counters.snapshot()`, merged by `counters.merge`) holds `snap["secrets"][secret_id]`, one
`SecretSnap` per secret, keyed by the store's id (never by the secret). The four counters are always there;
everything else is optional, so a renderer reads it with `.get` and an engine that does not fill a key yet
still renders:

- `label`: the operator's label ("" or missing: none). `/metrics` names a secret by its label when set,
  else by its id (labels are unique in the store; see `render.series_names`).
- `limits`: what the store sets (`SecretLimitsSnap`); a key that is missing or None means "no limit".
- `usage`: the shared accounting's figures as of the snapshot (`SecretUsageSnap`).
- `refusals`: sessions refused or closed by this secret's limits, per `accounts.policy.Refusal` value.

Workers combine as follows (`merge_secret`): the four counters and `refusals` are per worker and summed;
`label` and `limits` come from the store and are the same in every worker (during a reload the first
snapshot that has them wins: live workers come before a dead worker's folded totals); `usage` comes from
the accounting table every worker shares, so each worker reports the same figures at a slightly different
moment and the latest period (then the larger figure) wins.
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
    if figures.get("label") and not into.get("label"):
        into["label"] = figures["label"]
    if "limits" in figures and "limits" not in into:
        into["limits"] = dict(figures["limits"])
    theirs = figures.get("usage")
    if theirs is not None:
        ours = into.get("usage")
        if ours is None or _usage_key(theirs) > _usage_key(ours):
            into["usage"] = dict(theirs)


def _usage_key(usage: Mapping[str, Any]) -> tuple[str, int, int]:
    # ISO 8601 UTC times in one format sort as the moments they name
    return (str(usage.get("period_start") or ""), int(usage.get("period_bytes", 0)), int(usage.get("unique_ips", 0)))
