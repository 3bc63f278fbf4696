"""The per-client secret hint cache is bounded (LRU) and its entries expire."""

from __future__ import annotations

from mtproxy.runtime.hints import HintCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hint_expires_after_ttl() -> None:
    clock = Clock()
    hints = HintCache(size=10, ttl=60.0, clock=clock)
    hints.put("10.0.0.1", 7)
    clock.now = 59.0
    assert hints.get("10.0.0.1") == 7
    clock.now = 60.0
    assert hints.get("10.0.0.1") is None
    assert len(hints) == 0


def test_least_recently_confirmed_is_dropped_first() -> None:
    clock = Clock()
    hints = HintCache(size=3, ttl=60.0, clock=clock)
    for i, ip in enumerate(["a", "b", "c"]):
        hints.put(ip, i)
    hints.put("a", 5)  # confirmed again: now the newest
    hints.put("d", 3)
    assert hints.get("b") is None
    assert [hints.get(ip) for ip in ("a", "c", "d")] == [5, 2, 3]
    assert len(hints) == 3


def test_many_addresses_stay_bounded() -> None:
    hints = HintCache(size=100, ttl=60.0)
    for i in range(10_000):
        hints.put(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", i)
    assert len(hints) == 100
    assert hints.get("10.0.39.15") == 9999
