"""What operators type for limits: sizes (10G, 500MB, 1.5GiB), rates (1M/s), durations (30d), dates.

Sizes: a number (decimals allowed) and a unit. K, M, G, T and KiB, MiB, GiB, TiB are binary (1024^n, as
`ls -h` and `dd` count); KB, MB, GB, TB are decimal (1000^n); B or nothing is bytes. Case-insensitive.
Durations: a whole number and s, m, h, d or w; several may follow each other (1d12h).
Dates: ISO 8601, a date (midnight UTC) or a time (UTC unless it carries an offset); `never` clears.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from ..accounts.limits import LimitsError, parse_time

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.I)
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
          "t": 1024**4, "tib": 1024**4, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CLEAR_WORDS = frozenset({"none", "unlimited", "never", "off"})


class UnitError(ValueError):
    """Input the operator typed is not a size, rate, duration or date; the message says what would be."""


def parse_size(text: str, what: str = "size") -> int:
    """Bytes; at least 1."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UnitError(f"{what} {text!r} is not a size such as 10G, 500MB or 1.5GiB")
    try:
        value = int(Decimal(match.group(1)) * _UNITS[unit])
    except InvalidOperation:
        raise UnitError(f"{what} {text!r} is not a size such as 10G, 500MB or 1.5GiB") from None
    if value < 1:
        raise UnitError(f"{what} {text!r} is less than one byte")
    return value


def parse_rate(text: str, what: str = "rate") -> int:
    """Bytes per second: a size, optionally followed by /s (1M/s, 500KB/s)."""
    body = text.strip()
    if body.lower().endswith("/s"):
        body = body[:-2]
    return parse_size(body, what)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise UnitError(f"{what} {text!r} is not a duration such as 30d, 12h, 1w or 1d12h")
    seconds = sum(int(n) * _SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise UnitError(f"{what} {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_when(text: str, what: str = "date") -> datetime | None:
    """An instant (UTC), or None for `never`."""
    if text.strip().lower() in CLEAR_WORDS:
        return None
    stripped = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", stripped):
            return datetime.combine(date.fromisoformat(stripped), datetime.min.time(), UTC)
        return parse_time(stripped, what)
    except (LimitsError, ValueError):
        raise UnitError(f"{what} {text!r} is not a date such as 2027-01-31 or 2027-01-31T18:00:00+01:00,"
                        " or `never`") from None


def show_size(count: int) -> str:
    """A byte count as the CLI shows limits: exact binary units when they fit, else bytes."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count}B"
