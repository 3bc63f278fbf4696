"""Engine counters of one worker, their JSON-able snapshot, and merging snapshots of several workers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtproxy.accounts.policy import Refusal
from mtproxy.protocol.errors import RejectReason

from .snapshot import merge_secret

REASONS = tuple(r.value for r in RejectReason)
REFUSALS = tuple(r.value for r in Refusal)


@dataclass
class SecretCounters:
    """Per-secret figures, keyed by the secret's store id (never by the secret)."""

    active: int = 0
    total: int = 0
    bytes_in: int = 0  # client -> DC
    bytes_out: int = 0  # DC -> client
    refusals: dict[str, int] = field(default_factory=dict)  # only reasons that happened


@dataclass
class Counters:
    """Plain integers mutated from the event loop thread only; snapshots are copied out for the HTTP side."""

    started_at: float
    active: int = 0
    total: int = 0
    handshakes_ok: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    masked: int = 0
    mask_failed: int = 0
    upstream_failed: int = 0
    refused_limit: int = 0
    unauthenticated: int = 0  # open connections not authenticated yet (handshake or masked)
    refused_unauthenticated: int = 0  # by --max-unauthenticated
    refused_unauthenticated_ip: int = 0  # by --max-unauthenticated-per-ip
    halfclose_released: int = 0  # closed by --halfclose-timeout
    out_of_fds: int = 0  # connections refused or sessions dropped for lack of file descriptors
    scans: int = 0  # handshakes no hint identified that tried the whole secret table (runtime/scans.py)
    scans_waiting: int = 0  # such handshakes waiting for the scan budget now
    rejects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    # authenticated clients refused a session, or sessions closed, by their secret's limits (accounts/policy)
    refusals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    secrets: dict[str, SecretCounters] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=lambda: {"classic": 0, "dd": 0, "ee": 0})
    secrets_loaded: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0
    cert_size: int = 0
    secrets_digest: str = ""  # stats/digest.py over the live set: the CLI compares it with the store
    reload_error: str = ""  # why the last reload failed; "" once one succeeds
    upstream: str = ""  # the SOCKS5 upstream DC legs go through, HOST:PORT (never its password); "" when direct
    # per DC (runtime/dc.health_key: Telegram's ids and "other", so bounded): [dials that worked, that failed]
    via_upstream: dict[str, list[int]] = field(default_factory=dict)
    # the middle proxy's figures and relay states (runtime/middle.py Middle.snapshot), while a worker runs it
    middle: Callable[[], dict[str, Any]] | None = None

    def for_secret(self, secret_id: str) -> SecretCounters:
        found = self.secrets.get(secret_id)
        if found is None:
            found = self.secrets[secret_id] = SecretCounters()
        return found

    def reject(self, reason: RejectReason) -> None:
        self.rejects[reason.value] = self.rejects.get(reason.value, 0) + 1

    def refuse(self, reason: Refusal, secret_id: str | None = None) -> None:
        """Count a session refused (or closed) by a secret's limits, engine-wide and, given its id, per secret."""
        self.refusals[reason.value] = self.refusals.get(reason.value, 0) + 1
        if secret_id is not None:
            per = self.for_secret(secret_id).refusals
            per[reason.value] = per.get(reason.value, 0) + 1

    def via_upstream_dial(self, dc: str, ok: bool) -> None:
        counts = self.via_upstream.get(dc)
        if counts is None:
            counts = self.via_upstream[dc] = [0, 0]
        counts[0 if ok else 1] += 1

    def snapshot(self) -> dict[str, Any]:
        """A copy safe to serialise or hand to another thread."""
        return {
            "started_at": self.started_at,
            "active": self.active,
            "total": self.total,
            "handshakes_ok": self.handshakes_ok,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "masked": self.masked,
            "mask_failed": self.mask_failed,
            "upstream_failed": self.upstream_failed,
            "refused_limit": self.refused_limit,
            "unauthenticated": self.unauthenticated,
            "refused_unauthenticated": self.refused_unauthenticated,
            "refused_unauthenticated_ip": self.refused_unauthenticated_ip,
            "halfclose_released": self.halfclose_released,
            "out_of_fds": self.out_of_fds,
            "scans": self.scans,
            "scans_waiting": self.scans_waiting,
            "rejects": dict(self.rejects),
            "refusals": dict(self.refusals),
            "modes": dict(self.modes),
            "secrets": {k: _secret_snap(v) for k, v in list(self.secrets.items())},
            "secrets_loaded": self.secrets_loaded,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "cert_size": self.cert_size,
            "secrets_digest": self.secrets_digest,
            "reload_error": self.reload_error,
            "upstream": self.upstream,
            "via_upstream": {dc: {"ok": ok, "failed": failed} for dc, (ok, failed) in self.via_upstream.items()},
            "middle": self.middle() if self.middle is not None else None,
            "workers": 1,
        }


def _secret_snap(figures: SecretCounters) -> dict[str, Any]:
    """The counters part of a `snapshot.SecretSnap`; `snapshot.annotate` adds the store's and accounting's."""
    out: dict[str, Any] = {"active": figures.active, "total": figures.total, "bytes_in": figures.bytes_in,
                           "bytes_out": figures.bytes_out}
    if figures.refusals:
        out["refusals"] = dict(figures.refusals)
    return out


_SUMMED = ("active", "total", "handshakes_ok", "bytes_in", "bytes_out", "masked", "mask_failed",
           "upstream_failed", "refused_limit", "reloads_ok", "reloads_failed", "workers", "unauthenticated",
           "refused_unauthenticated", "refused_unauthenticated_ip", "halfclose_released", "out_of_fds", "scans",
           "scans_waiting")


def merge(snapshots: list[dict[str, Any]], started_at: float) -> dict[str, Any]:
    """Sum the workers' snapshots; gauges that every worker holds alike take the maximum; per-secret
    entries combine as snapshot.py says."""
    out: dict[str, Any] = {k: 0 for k in _SUMMED}
    out.update(started_at=started_at, rejects=dict.fromkeys(REASONS, 0), refusals=dict.fromkeys(REFUSALS, 0),
               modes={}, secrets={}, upstream="", via_upstream={},
               secrets_loaded=0, cert_size=0)
    for snap in snapshots:
        for k in _SUMMED:
            out[k] += int(snap.get(k, 0))
        for group in ("rejects", "refusals", "modes"):
            for k, v in snap.get(group, {}).items():
                out[group][k] = out[group].get(k, 0) + int(v)
        for sid, figures in snap.get("secrets", {}).items():
            merge_secret(out["secrets"].setdefault(sid, {}), figures)
        out["upstream"] = out["upstream"] or str(snap.get("upstream", ""))  # every worker has the same
        for dc, counts in snap.get("via_upstream", {}).items():
            mine = out["via_upstream"].setdefault(dc, {"ok": 0, "failed": 0})
            for k in ("ok", "failed"):
                mine[k] += int(counts.get(k, 0))
        out["secrets_loaded"] = max(out["secrets_loaded"], int(snap.get("secrets_loaded", 0)))
        out["cert_size"] = max(out["cert_size"], int(snap.get("cert_size", 0)))
    out["secret_sets"] = worker_sets(snapshots)
    out["middle"] = merge_middle([snap["middle"] for snap in snapshots if snap.get("middle")])
    return out


# gauges every worker holds alike (the same relays, declared to each): the maximum, not the sum
_MIDDLE_ALIKE = ("total_declared_targets", "total_ready_targets", "relay_dcs_down")


def merge_middle(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The workers' middle-proxy figures as one: counters summed, a relay ready when some worker has a
    ready link to it (links summed), a DC down when some worker has it down."""
    if not parts:
        return None
    counters: dict[str, int] = {}
    relays: dict[tuple[int, str], dict[str, Any]] = {}
    down: set[int] = set()
    for part in parts:
        for k, v in part.get("counters", {}).items():
            counters[k] = max(counters.get(k, 0), int(v)) if k in _MIDDLE_ALIKE else counters.get(k, 0) + int(v)
        for relay in part.get("relays", []):
            key = (int(relay["dc"]), str(relay["relay"]))
            mine = relays.get(key)
            if mine is None:
                relays[key] = dict(relay)
                continue
            mine["links"] += int(relay["links"])
            mine["ready_links"] += int(relay["ready_links"])
            if relay["state"] == "ready" and mine["state"] != "ready":
                mine["state"], mine["reason"] = "ready", relay["reason"]
        down.update(int(dc) for dc in part.get("dcs_down", []))
    return {"mode": parts[0].get("mode", ""), "configured": any(part.get("configured") for part in parts),
            "counters": counters, "relays": [relays[key] for key in sorted(relays)], "dcs_down": sorted(down)}


def worker_sets(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each live worker has loaded: a reload is confirmed only when every one of them has it.
    A retired (dead) worker's folded snapshot reports 0 workers and is left out."""
    return [{"count": int(s.get("secrets_loaded", 0)), "digest": str(s.get("secrets_digest", "")),
             "error": str(s.get("reload_error", ""))}
            for s in snapshots if int(s.get("workers", 1)) > 0 and "secret_sets" not in s]
