"""Whether a secret may open a session now, and whether a running session may go on: pure decisions.

The caller gathers the usage (from the workers' shared table and the persisted ledger) and the time;
this module only compares. The refusal's value is the token written to the log line and the metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from .limits import Limits


class Refusal(enum.Enum):
    """Why an authenticated client was refused a session (or had one closed)."""

    DISABLED = "disabled"  # the operator disabled the secret
    EXPIRED = "expired"  # now is at or past expires_at
    QUOTA = "quota"  # the period's (or the total) bytes reached the quota
    MAX_CONNECTIONS = "max-connections"  # as many sessions as allowed are open, across all workers
    MAX_UNIQUE_IPS = "max-unique-ips"  # this address would be one distinct address too many in the window


@dataclass(frozen=True)
class Usage:
    """What a secret uses at the moment of a decision."""

    connections: int = 0  # sessions open now, across all workers, not counting the one being decided
    unique_ips: int = 0  # distinct addresses within the window, counting the new client's own
    period_bytes: int = 0  # bytes both ways this period: persisted plus live


def session_refusal(limits: Limits, period_bytes: int, now: datetime) -> Refusal | None:
    """Why a running session must close now (None: it may go on). Checked by a timer and whenever the
    session adds its bytes to the shared table; expiry is exact to the instant (`now >= expires_at`)."""
    if not limits.enabled:
        return Refusal.DISABLED
    if limits.expires_at is not None and now >= limits.expires_at:
        return Refusal.EXPIRED
    if limits.quota is not None and period_bytes >= limits.quota.limit_bytes:
        return Refusal.QUOTA
    return None


def admission(limits: Limits, usage: Usage, now: datetime) -> Refusal | None:
    """Why a new session is refused (None: admit it). The order is the one an operator reads the reasons in:
    the secret's own state first, then what it has used, then how many clients share it."""
    refusal = session_refusal(limits, usage.period_bytes, now)
    if refusal is not None:
        return refusal
    if limits.max_connections is not None and usage.connections >= limits.max_connections:
        return Refusal.MAX_CONNECTIONS
    if limits.max_unique_ips is not None and usage.unique_ips > limits.max_unique_ips:
        return Refusal.MAX_UNIQUE_IPS
    return None


def next_check(limits: Limits, now: datetime) -> float | None:
    """Seconds until a running session's limits change with time alone (its expiry), for the one timer the
    caller keeps; None when only bytes or a reload can end it."""
    if limits.expires_at is None:
        return None
    return max(0.0, (limits.expires_at - now).total_seconds())
