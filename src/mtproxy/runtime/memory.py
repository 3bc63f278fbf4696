"""Giving memory back after a burst: when the connections drop well below the level they had, the tables
sized for the burst are rebuilt at their present size and glibc is asked to return its free heap pages
(it keeps them, and the freed tail of a fragmented heap, otherwise)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("mtproxy.memory")

INTERVAL = 1.0  # seconds between two looks at the connection count
BURST = 500  # a drop of at least this many connections, to at most half the peak, is a burst that ended


def load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl and other libcs have no such call)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Trimmer:
    """Remembers the highest connection count since the last trim; `due` says when a burst has ended."""

    __slots__ = ("_peak",)

    def __init__(self) -> None:
        self._peak = 0

    def due(self, active: int) -> bool:
        if active > self._peak:
            self._peak = active
        if self._peak - active < BURST or active > self._peak // 2:
            return False
        self._peak = active
        return True
