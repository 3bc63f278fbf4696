"""Per-secret limits as the operator sets them: the values the store holds and the engine enforces.

Pure data with its JSON form; what a limit means at a given moment (period boundaries, buckets, windows)
is decided elsewhere in this package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_IP_WINDOW = 24 * 3600  # seconds over which max_unique_ips counts distinct client addresses
MAX_NOTE = 1000


class LimitsError(ValueError):
    """A limits object in a file or request is malformed; the message names the field."""


class QuotaPeriod(enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True)
class Quota:
    """Bytes both ways together per period; with no period a total that only `reset-usage` clears."""

    limit_bytes: int
    period: QuotaPeriod | None = None
    # month: the day of the month (1..28) a period starts on; week: the ISO weekday (1 = Monday .. 7)
    anchor_day: int = 1
    timezone: str = "UTC"  # IANA name: a period starts at local midnight there, DST included

    def to_json(self) -> dict[str, Any]:
        return {"limit_bytes": self.limit_bytes, "period": self.period.value if self.period else None,
                "anchor_day": self.anchor_day, "timezone": self.timezone}


@dataclass(frozen=True)
class Limits:
    """Every field's default means "no limit"; `Limits()` is what a secret without limits has."""

    enabled: bool = True
    expires_at: datetime | None = None  # aware, UTC
    max_connections: int | None = None  # concurrent sessions, across all workers
    max_unique_ips: int | None = None  # distinct client addresses within unique_ip_window
    unique_ip_window: int = DEFAULT_IP_WINDOW
    quota: Quota | None = None
    rate_limit: int | None = None  # bytes per second, each direction on its own
    note: str = ""

    @property
    def unlimited(self) -> bool:
        return self == NO_LIMITS

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
            "max_connections": self.max_connections,
            "max_unique_ips": self.max_unique_ips,
            "unique_ip_window": self.unique_ip_window,
            "quota": self.quota.to_json() if self.quota else None,
            "rate_limit": self.rate_limit,
            "note": self.note,
        }


NO_LIMITS = Limits()


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, where: str) -> datetime:
    """An ISO 8601 instant; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise LimitsError(f"{where} must be an ISO 8601 time such as 2027-01-31T00:00:00Z, not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _count(value: Any, where: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LimitsError(f"{where} must be a whole number of at least {minimum}, or null")
    return value


def parse_quota(value: Any, where: str) -> Quota | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LimitsError(f"{where} must be an object or null")
    limit = _count(value.get("limit_bytes"), f"{where}.limit_bytes", 1)
    if limit is None:
        raise LimitsError(f"{where}.limit_bytes is required")
    period_text = value.get("period")
    try:
        period = QuotaPeriod(period_text) if period_text is not None else None
    except ValueError:
        raise LimitsError(f"{where}.period must be day, week, month or null, not {period_text!r}") from None
    anchor = value.get("anchor_day", 1)
    top = 7 if period is QuotaPeriod.WEEK else 28
    if isinstance(anchor, bool) or not isinstance(anchor, int) or not 1 <= anchor <= top:
        raise LimitsError(f"{where}.anchor_day must be 1..{top} for a {period_text or 'total'} quota")
    zone = value.get("timezone", "UTC")
    if not isinstance(zone, str):
        raise LimitsError(f"{where}.timezone must be an IANA time zone name such as Europe/Berlin")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise LimitsError(f"{where}.timezone {zone!r} is not a known IANA time zone") from None
    return Quota(limit_bytes=limit, period=period, anchor_day=anchor, timezone=zone)


def parse_limits(value: Any, where: str = "limits") -> Limits:
    """The inverse of Limits.to_json; absent fields keep their no-limit defaults."""
    if value is None:
        return NO_LIMITS
    if not isinstance(value, dict):
        raise LimitsError(f"{where} must be an object")
    unknown = sorted(set(value) - set(NO_LIMITS.to_json()))
    if unknown:
        raise LimitsError(f"{where}: unknown field(s) {', '.join(unknown)}")
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise LimitsError(f"{where}.enabled must be true or false")
    expires = value.get("expires_at")
    if expires is not None and not isinstance(expires, str):
        raise LimitsError(f"{where}.expires_at must be an ISO 8601 time or null")
    window = _count(value.get("unique_ip_window", DEFAULT_IP_WINDOW), f"{where}.unique_ip_window", 1)
    note = value.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise LimitsError(f"{where}.note must be a string of at most {MAX_NOTE} characters")
    return Limits(
        enabled=enabled,
        expires_at=parse_time(expires, f"{where}.expires_at") if expires is not None else None,
        max_connections=_count(value.get("max_connections"), f"{where}.max_connections"),
        max_unique_ips=_count(value.get("max_unique_ips"), f"{where}.max_unique_ips", 1),
        unique_ip_window=window if window is not None else DEFAULT_IP_WINDOW,
        quota=parse_quota(value.get("quota"), f"{where}.quota"),
        rate_limit=_count(value.get("rate_limit"), f"{where}.rate_limit", 1),
        note=note,
    )
