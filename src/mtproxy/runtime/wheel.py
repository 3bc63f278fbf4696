"""The timeouts every connection sets and almost always cancels (the handshake's, a dial's) on one loop timer.

A loop timer per timeout costs its handle and two heap operations (~2.2 µs for call_later and cancel
here, more with many pending); an entry here costs a dict insert and a pop (~0.4 µs). Deadlines are rounded
up to the wheel's next tick, so an entry expires between its timeout and one tick later, never before.
The loop timer runs only while entries are pending."""

from __future__ import annotations

import asyncio
from typing import Protocol

TICK = 0.05  # seconds: how late an expiry may come
_SLACK = TICK / 10  # the walk for a tick runs this much after it: the loop's clock counts whole milliseconds


class Expiring(Protocol):
    """What the wheel holds: told once its time is up (unless discarded first)."""

    def expired(self) -> None: ...


class TimerWheel:
    """Entries by the tick they are due at; one loop timer, at the first pending tick."""

    __slots__ = ("_armed", "_due", "_loop", "_slots", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, dict[Expiring, None]] = {}
        self._due = 0  # entries pending
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the tick the loop timer is for

    def __len__(self) -> int:
        return self._due

    def add(self, entry: Expiring, seconds: float) -> int:
        """`entry.expired()` in `seconds` (up to a tick later); returns the tick, for `discard`."""
        tick = int((self._loop.time() + seconds) / TICK) + 1
        bucket = self._slots.get(tick)
        if bucket is None:
            bucket = self._slots[tick] = {}
        if entry not in bucket:
            bucket[entry] = None
            self._due += 1
        if self._timer is None or tick < self._armed:
            self._arm(tick)
        return tick

    def discard(self, entry: Expiring, tick: int) -> None:
        """`entry` will not be told (nothing when it was told already, or never added at `tick`)."""
        bucket = self._slots.get(tick)
        if bucket is not None and bucket.pop(entry, 0) is None:
            self._due -= 1
            if not bucket:
                del self._slots[tick]

    def close(self) -> None:
        """Forget every entry (the loop is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()
        self._due = 0

    def _arm(self, tick: int) -> None:
        """The loop timer at `tick` (a pending one later than that is moved)."""
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = self._loop.call_at(tick * TICK + _SLACK, self._walk)

    def _walk(self) -> None:
        self._timer = None
        now = int(self._loop.time() / TICK)
        slots = self._slots
        while slots:
            tick = min(slots)
            if tick > now:
                break
            bucket = slots[tick]
            # one at a time, the bucket still in place: an entry told first may discard one not told yet
            while bucket:
                entry, _ = bucket.popitem()
                self._due -= 1
                try:
                    entry.expired()  # may add entries, always at a later tick (and arm the timer for them)
                except Exception as exc:  # one entry's bug must not stop the others' timeouts
                    self._loop.call_exception_handler({"message": "timeout callback failed", "exception": exc})
            slots.pop(tick, None)
        if slots:
            first = min(slots)
            if self._timer is None or first < self._armed:
                self._arm(first)
