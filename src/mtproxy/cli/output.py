"""Text shapes shared by commands: aligned tables, human units, versioned JSON."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

JSON_VERSION = 1


def _width(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], styles: Sequence[str] | None = None) -> str:
    """Columns padded to the widest cell; `styles` are (already styled) header texts when colour is on."""
    widths = [_width(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], _width(cell))

    def line(cells: Sequence[str], shown: Sequence[str] | None = None) -> str:
        shown = shown or cells
        parts = [s + " " * (widths[i] - _width(c)) for i, (c, s) in enumerate(zip(cells, shown, strict=True))]
        return "  ".join(parts).rstrip()

    out = [line(headers, styles)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def human_duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def human_count(count: int | None) -> str:
    return "-" if count is None else f"{count:,}"


def dump_json(kind: str, payload: dict[str, Any]) -> str:
    """Every --json output carries its kind and a format version, so scripts can rely on the shape."""
    return json.dumps({"kind": kind, "version": JSON_VERSION, **payload}, indent=2, ensure_ascii=False)
