"""When a handshake's secret scan runs (protocol/handshake.py ScanNeeded): a per-worker budget of CPU time for
scans, and a bounded FIFO of the handshakes waiting for it. A client no hint identifies costs a try of every
secret; without this, a stream of such connections (random bytes, a browser's hello) keeps a worker busy and
every user's handshake waits behind them. Hinted clients never come here.

The budget is a share of one core, not a count of trials: a trial's cost differs 15-fold between an
obfuscated2 init in the native library and a long fake-TLS hello in Python, and each scan is charged what it
actually took. What a queued scan will take is estimated from the scans before it (per trial)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, TypeVar

from mtproxy.stats.counters import Counters

BURST_SECONDS = 0.25  # an idle worker saves up at most this much wall time's worth of its budget
MAX_WAITING = 4096  # waiting handshakes, whatever the budget
FIRST_TRIAL_ESTIMATE = 2e-6  # seconds per trial before any scan was timed: Python's cost, the dearer one
_ESTIMATE_WEIGHT = 0.25  # how much the latest scan moves the per-trial estimate

T = TypeVar("T")


class Waiter(Protocol):
    def scan_granted(self) -> None: ...


class Admission(enum.Enum):
    NOW = "now"  # run the scan at once, through run()
    QUEUED = "queued"  # scan_granted() is called when the budget allows
    FULL = "full"  # reject: the wait would outlast the handshake timeout, or the queue is at its bound


class ScanScheduler:
    """Tokens are CPU seconds; `share` of them arrive per second. A scan starts while the bucket is not in
    debt and is charged its measured time afterwards, so one long scan may put the bucket in debt and the
    next waits until it is paid off. One timer drains the queue, one scan per callback, so the loop serves
    other clients between scans."""

    __slots__ = ("_burst", "_clock", "_counters", "_loop", "_max_wait", "_queued_trials", "_timer", "_timer_clock",
                 "_tokens", "_updated", "per_trial", "share", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: Counters, share: float, max_wait: float,
                 clock: Callable[[], float] | None = None,
                 timer_clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0 < share <= 1:
            raise ValueError("the scan budget is a share of one core: more than 0, at most 1")
        self._loop = loop
        self._counters = counters
        self._clock = clock or loop.time
        self._timer_clock = timer_clock  # times the scans themselves
        self.share = share
        self._max_wait = max_wait
        self._burst = share * BURST_SECONDS
        self._tokens = self._burst
        self._updated = self._clock()
        self.per_trial = FIRST_TRIAL_ESTIMATE
        self.waiting: OrderedDict[Waiter, int] = OrderedDict()  # in arrival order, with each one's trials
        self._queued_trials = 0
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, waiter: Waiter, trials: int) -> Admission:
        self._refill()
        if not self.waiting and self._tokens >= 0:
            return Admission.NOW
        # what is queued plus the debt, paid at the budget's rate, must be over before the client gives up
        wait = ((self._queued_trials + trials) * self.per_trial - self._tokens) / self.share
        if len(self.waiting) >= MAX_WAITING or wait > self._max_wait:
            return Admission.FULL
        self.waiting[waiter] = trials
        self._queued_trials += trials
        self._counters.scans_waiting = len(self.waiting)
        self._arm()
        return Admission.QUEUED

    def run(self, scan: Callable[[], T], trials: int) -> T:
        """Run an admitted scan and charge the bucket what it took."""
        started = self._timer_clock()
        try:
            return scan()
        finally:
            spent = max(0.0, self._timer_clock() - started)
            self._tokens -= spent
            self._counters.scans += 1
            if trials > 0:
                self.per_trial += _ESTIMATE_WEIGHT * (spent / trials - self.per_trial)

    def leave(self, waiter: Waiter) -> None:
        """A waiting handshake closed or timed out."""
        trials = self.waiting.pop(waiter, None)
        if trials is not None:
            self._queued_trials -= trials
            self._counters.scans_waiting = len(self.waiting)
            if not self.waiting and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.clear()
        self._queued_trials = 0
        self._counters.scans_waiting = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self.share)
        self._updated = now

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(max(0.0, -self._tokens / self.share), self._drain)

    def _drain(self) -> None:
        self._timer = None
        self._refill()
        if self.waiting and self._tokens >= 0:
            waiter, trials = self.waiting.popitem(last=False)
            self._queued_trials -= trials
            self._counters.scans_waiting = len(self.waiting)
            self.run(waiter.scan_granted, trials)
        if self.waiting:
            self._arm()
