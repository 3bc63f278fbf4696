"""When a handshake's secret scan runs (protocol/handshake.py ScanNeeded): a per-worker budget of secret trials
per second, and a bounded FIFO of the handshakes waiting for it. A client no hint identifies costs a try of
every secret; without this, a few dozen such connections per second (random bytes, a browser's hello) keep a
worker busy and every user's handshake waits behind them. Hinted clients never come here."""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from mtproxy.stats.counters import Counters

BURST_SECONDS = 0.25  # an idle worker saves up at most this much of its budget
MAX_WAITING = 4096  # waiting handshakes, whatever the budget


class Waiter(Protocol):
    def scan_granted(self) -> None: ...


class Admission(enum.Enum):
    NOW = "now"  # run the scan at once
    QUEUED = "queued"  # scan_granted() is called when the budget allows
    FULL = "full"  # reject: the wait would outlast the handshake timeout, or the queue is at its bound


class ScanScheduler:
    """Tokens are trials; a scan is charged its whole cost up front (a garbage client always pays it all),
    so the bucket may go into debt and the next scan waits until it is paid off. One timer drains the queue,
    one scan per callback, so the loop serves other clients between scans."""

    __slots__ = ("_burst", "_clock", "_counters", "_loop", "_max_wait", "_queued_cost", "_timer", "_tokens",
                 "_updated", "budget", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: Counters, budget: float, max_wait: float,
                 clock: Callable[[], float] | None = None) -> None:
        if budget <= 0:
            raise ValueError("the scan budget must be positive")
        self._loop = loop
        self._counters = counters
        self._clock = clock or loop.time
        self.budget = budget
        self._max_wait = max_wait
        self._burst = budget * BURST_SECONDS
        self._tokens = self._burst
        self._updated = self._clock()
        self.waiting: OrderedDict[Waiter, int] = OrderedDict()  # in arrival order, with each one's cost
        self._queued_cost = 0
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, waiter: Waiter, cost: int) -> Admission:
        self._refill()
        if not self.waiting and self._tokens >= 0:
            self._tokens -= cost
            self._counters.scans += 1
            return Admission.NOW
        # what is queued plus the debt, paid at the budget's rate, must be over before the client gives up
        wait = (self._queued_cost + cost - self._tokens) / self.budget
        if len(self.waiting) >= MAX_WAITING or wait > self._max_wait:
            return Admission.FULL
        self.waiting[waiter] = cost
        self._queued_cost += cost
        self._counters.scans_waiting = len(self.waiting)
        self._arm()
        return Admission.QUEUED

    def leave(self, waiter: Waiter) -> None:
        """A waiting handshake closed or timed out."""
        cost = self.waiting.pop(waiter, None)
        if cost is not None:
            self._queued_cost -= cost
            self._counters.scans_waiting = len(self.waiting)
            if not self.waiting and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.clear()
        self._queued_cost = 0
        self._counters.scans_waiting = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self.budget)
        self._updated = now

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(max(0.0, -self._tokens / self.budget), self._drain)

    def _drain(self) -> None:
        self._timer = None
        self._refill()
        if self.waiting and self._tokens >= 0:
            waiter, cost = self.waiting.popitem(last=False)
            self._queued_cost -= cost
            self._tokens -= cost
            self._counters.scans += 1
            self._counters.scans_waiting = len(self.waiting)
            waiter.scan_granted()
        if self.waiting:
            self._arm()
