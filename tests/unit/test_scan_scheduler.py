"""The per-worker scan budget (runtime/scans.py): scans run at once while the bucket of CPU time is not in debt
and are charged what they took, then wait in arrival order; a wait longer than the handshake timeout is refused
at once; leaving frees the place; the per-trial estimate follows the measured scans."""

from __future__ import annotations

import asyncio

import pytest

from mtproxy.runtime.scans import FIRST_TRIAL_ESTIMATE, Admission, ScanScheduler
from mtproxy.stats.counters import Counters


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A waiting handshake whose scan takes `cost` seconds of the scan timer's clock."""

    def __init__(self, name: str, timer: Clock, cost: float, granted: list[str], done: asyncio.Event | None = None
                 ) -> None:
        self.name, self._timer, self.cost, self._granted, self._done = name, timer, cost, granted, done

    def scan_granted(self) -> None:
        self._timer.now += self.cost
        self._granted.append(self.name)
        if self._done is not None:
            self._done.set()


def test_budget_then_fifo_then_refusal() -> None:
    async def scenario() -> None:
        clock, timer = Clock(), Clock()
        counters = Counters(started_at=0.0)
        # a tenth of a core, bursts of 25 ms; a client gives up after 0.5 s
        scans = ScanScheduler(asyncio.get_running_loop(), counters, 0.1, 0.5, clock=clock, timer_clock=timer)
        granted: list[str] = []
        done = asyncio.Event()
        trials = 10_000  # 20 ms each at the first estimate, and each really takes 20 ms
        clients = {n: Client(n, timer, 0.02, granted, done if n == "f" else None) for n in "abcdef"}
        for n in "ab":  # 25 ms -> 5 ms -> -15 ms: in debt
            assert scans.admit(clients[n], trials) is Admission.NOW
            scans.run(clients[n].scan_granted, trials)
        assert scans.per_trial == pytest.approx(FIRST_TRIAL_ESTIMATE)
        # waits: (queued + own) * 2 µs + the debt, at 0.1 s per second: 0.35 s, then 0.55 s > 0.5 s
        assert scans.admit(clients["c"], trials) is Admission.QUEUED
        assert scans.admit(clients["d"], trials) is Admission.FULL
        assert counters.scans == 2 and counters.scans_waiting == 1
        scans.leave(clients["c"])  # closed while waiting: its place is free again
        assert counters.scans_waiting == 0
        assert [scans.admit(clients[n], trials) for n in "ef"] == [Admission.QUEUED, Admission.FULL]
        clock.now = 10.0  # the bucket is full again when the drain timer fires
        scans.admit(clients["f"], trials)  # e queued before it: f waits its turn behind e
        await asyncio.wait_for(done.wait(), 10)
        assert granted == ["a", "b", "e", "f"]
        assert counters.scans == 4 and counters.scans_waiting == 0
        scans.close()
        assert counters.scans_waiting == 0 and not scans.waiting

    asyncio.run(scenario())


def test_each_scan_is_charged_what_it_took_and_the_estimate_follows() -> None:
    async def scenario() -> None:
        clock, timer = Clock(), Clock()
        counters = Counters(started_at=0.0)
        scans = ScanScheduler(asyncio.get_running_loop(), counters, 0.01, 10.0, clock=clock, timer_clock=timer)
        granted: list[str] = []
        # 100 trials estimated at 0.2 ms, but this scan takes a whole second: far more than the 2.5 ms burst
        slow = Client("slow", timer, 1.0, granted)
        assert scans.admit(slow, 100) is Admission.NOW
        scans.run(slow.scan_granted, 100)
        assert scans.per_trial > FIRST_TRIAL_ESTIMATE * 100  # the estimate moved towards 10 ms per trial
        # the debt (~1 s at 0.01 s per second: ~100 s) makes any wait outlast the 10 s handshake timeout
        assert scans.admit(Client("next", timer, 0.0, granted), 1) is Admission.FULL
        clock.now = 200.0  # debt paid: with nobody queued the next runs at once
        assert scans.admit(Client("later", timer, 0.0, granted), 1) is Admission.NOW
        assert granted == ["slow"] and counters.scans == 1
        scans.close()

    asyncio.run(scenario())


def test_the_budget_is_a_share_of_one_core() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for share in (0.0, -0.1, 1.5):
            with pytest.raises(ValueError, match="share of one core"):
                ScanScheduler(loop, Counters(started_at=0.0), share, 1.0)

    asyncio.run(scenario())
