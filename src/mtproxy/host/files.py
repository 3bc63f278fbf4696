"""Writing and removing the host files the deployment owns: atomic, mode set, no-op when unchanged."""

from __future__ import annotations

from pathlib import Path

from ..store import write_atomic


def write_file(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write atomically through the store's `write_atomic`; True when the content or mode changed (so
    re-running setup changes nothing)."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            return False
    except OSError:
        pass
    # Host directories (/etc/fail2ban/filter.d, ...) a missing parent is created in get the usual mode,
    # not the 0700 `write_atomic` gives the directories of secrets.
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode)
    return True


def remove_file(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
