"""Giving memory back after a burst. Once the connections have fallen far below their peak and stopped
falling, the tables sized for the burst are rebuilt at their present size, uvloop's free lists are
refilled from compact memory, and glibc is asked to return its free heap pages.

Why the free lists: uvloop keeps up to 250 dead objects of each of several types (timer and callback
handles, write requests) for reuse. After a burst those are the last ones freed, scattered over the
allocator's 1 MiB arenas, and a few objects are enough to keep an arena, whole, in RSS."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("mtproxy.memory")

INTERVAL = 1.0  # seconds between two looks at the connection count
BURST = 500  # a drop of at least this many connections, to at most half the peak, is a burst that ended
FREE_LIST = 250  # uvloop's DEFAULT_FREELIST_SIZE: dead objects kept per type
SETTLE = 0.05  # seconds for the loop to close the handles of the refill before they are let go


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
    """Remembers the highest connection count since the last trim; `due` says when a burst has ended:
    the count fell by BURST or more, to at most half the peak, and stopped falling (a trim in the middle
    of the fall would leave the rest of the burst's objects where they were)."""

    __slots__ = ("_last", "_peak", "ended")

    def __init__(self) -> None:
        self._peak = 0
        self._last = 0
        self.ended = 0  # connections the last burst that ended fell by

    def due(self, active: int) -> bool:
        falling = active < self._last
        self._last = active
        if active > self._peak:
            self._peak = active
        if falling or self._peak - active < BURST or active > self._peak // 2:
            return False
        self.ended = self._peak - active
        self._peak = active
        return True


def _nothing() -> None:
    pass


# The size classes where a burst leaves partly used pools behind (sys._debugmallocstats after the stress
# suite's burst: 32 to 160 bytes), and at most as many blocks as a 5,000-connection burst leaves free in
# any of them (< 3,500); a smaller burst gets a fill of one block per connection it had.
FILL_SIZES = range(48, 161, 16)  # bytes objects fill 33 bytes and up; 32-byte blocks take ints
FILL_BLOCKS = 4096
BIG_INT = 1 << 40  # beyond the cached small ints: a fresh 32-byte object each


def fill_partly_used_pools(burst: int) -> list[object]:
    """Objects that take the free blocks of the allocator's partly used pools, the burst's included, so
    that what is allocated next comes from fresh pools of its fullest arenas (old ones). At most ~3.5 MB,
    freed at once."""
    blocks = min(burst, FILL_BLOCKS)
    fill: list[object] = [BIG_INT + i for i in range(blocks)]
    fill += [bytes(size - 33) for size in FILL_SIZES for _ in range(blocks)]
    return fill


def refill_free_lists(loop: asyncio.AbstractEventLoop, burst: int, then: Callable[[], None]) -> None:
    """Swap the loop's free lists of timer and callback handles for fresh ones in old arenas, then call
    `then`. `burst`: how many connections the burst that ended fell by.

    With the partly used pools filled, taking 2 x FREE_LIST handles empties each free list and allocates
    the rest in fresh pools of the fullest arenas. The handles go newest first (a list lets its items go
    from the end), so the fresh ones fill the free lists again and the burst's are really freed; the
    fill goes before them, oldest first (BENCHMARKS.md, "Memory after bursts": without the fill the
    refill alone gained less). Harmless on asyncio's own loop, which keeps no free lists.
    About 5 ms, once per burst."""
    fill = fill_partly_used_pools(burst)
    timers = [loop.call_later(3600.0, _nothing) for _ in range(2 * FREE_LIST)]
    calls = [loop.call_soon(_nothing) for _ in range(2 * FREE_LIST)]
    for handle in calls:
        handle.cancel()
    for timer in timers:
        timer.cancel()

    def release() -> None:
        # the loop has skipped the cancelled calls and closed the timers' libuv handles by now
        fill.reverse()
        fill.clear()
        timers.clear()
        calls.clear()
        then()

    loop.call_later(SETTLE, release)
