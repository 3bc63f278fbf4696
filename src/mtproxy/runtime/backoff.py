"""Capped exponential backoff with downward jitter: the one rule for every reconnect and retry delay."""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(first: float, ceiling: float, attempt: int, jitter: float, draw: Callable[[], float]) -> float:
    """The wait before retry number `attempt` (0, 1, ...): `first` doubling per attempt, never above
    `ceiling`, cut by a random fraction up to `jitter` (`draw` gives [0, 1)) so many retriers spread."""
    return min(ceiling, first * 2.0 ** min(max(attempt, 0), 62)) * (1.0 - jitter * draw())
