"""A token bucket for one direction of one secret's rate limit: how many bytes may move now, and when.

Tokens are bytes. They accrue at `rate` per second up to `burst`; a read that took more than was there
leaves the bucket in debt, which later tokens pay off first, so the long-run rate is exact whatever the
read size. The relay asks `allowance()` before a read (read at most that much), `consume(n)` after it, and
when the allowance is 0 pauses reading for `delay(n)` seconds. The clock is monotonic seconds, passed in.
No call allocates a container; the state is three floats.

Burst: by default one second of traffic, and never less than `MIN_BURST` (one relay read), so a slow
rate still moves whole reads instead of stalling on a tiny allowance.
"""

from __future__ import annotations

from collections.abc import Callable

MIN_BURST = 64 * 1024


def default_burst(rate: int) -> int:
    return max(rate, MIN_BURST)


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: int, clock: Callable[[], float], burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("a rate limit is a positive number of bytes per second")
        self._clock = clock
        self._rate = float(rate)
        self._burst = float(burst if burst is not None else default_burst(rate))
        self._tokens = self._burst  # a new session starts with a full burst
        self._stamp = clock()

    @property
    def rate(self) -> int:
        return int(self._rate)

    @property
    def burst(self) -> int:
        return int(self._burst)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now

    def allowance(self) -> int:
        """Bytes that may move now (0 while in debt)."""
        self._refill()
        return int(self._tokens) if self._tokens >= 1 else 0

    def consume(self, count: int) -> None:
        """Record `count` bytes moved; more than the allowance puts the bucket in debt."""
        self._refill()
        self._tokens -= count

    def delay(self, count: int) -> float:
        """Seconds until `count` bytes may move (0.0: now). A count above the burst waits for a full bucket."""
        self._refill()
        missing = min(float(count), self._burst) - self._tokens
        return missing / self._rate if missing > 0 else 0.0

    def set_rate(self, rate: int, burst: int | None = None) -> None:
        """Apply a reloaded limit at once; tokens already earned stay (capped at the new burst)."""
        if rate <= 0:
            raise ValueError("a rate limit is a positive number of bytes per second")
        self._refill()
        self._rate = float(rate)
        self._burst = float(burst if burst is not None else default_burst(rate))
        self._tokens = min(self._tokens, self._burst)
