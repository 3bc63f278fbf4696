"""The per-worker scan budget (runtime/scans.py): scans run at once while the bucket has tokens, then wait in
arrival order; a wait longer than the handshake timeout is refused at once; leaving frees the place."""

from __future__ import annotations

import asyncio

from mtproxy.runtime.scans import Admission, ScanScheduler
from mtproxy.stats.counters import Counters


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Client:
    def __init__(self, name: str, granted: list[str], done: asyncio.Event, last: bool = False) -> None:
        self.name, self._granted, self._done, self._last = name, granted, done, last

    def scan_granted(self) -> None:
        self._granted.append(self.name)
        if self._last:
            self._done.set()


def test_budget_then_fifo_then_refusal() -> None:
    async def scenario() -> None:
        clock = Clock()
        counters = Counters(started_at=0.0)
        # 1,000 trials/s, bursts of 250: scans of 100 trials each; a client gives up after 0.5 s
        scans = ScanScheduler(asyncio.get_running_loop(), counters, 1000.0, 0.5, clock=clock)
        granted: list[str] = []
        done = asyncio.Event()
        clients = {n: Client(n, granted, done, last=n == "g") for n in "abcdefgh"}
        assert [scans.admit(clients[n], 100) for n in "abc"] == [Admission.NOW] * 3  # 250 -> -50: in debt
        # waits: (queued + own + debt) / budget = 0.15, 0.25, 0.35, 0.45, then 0.55 > 0.5
        assert [scans.admit(clients[n], 100) for n in "defgh"] == [Admission.QUEUED] * 4 + [Admission.FULL]
        assert counters.scans == 3 and counters.scans_waiting == 4
        scans.leave(clients["e"])  # closed while waiting
        assert counters.scans_waiting == 3
        clock.now = 10.0  # the bucket is full again when the drain timer fires
        await asyncio.wait_for(done.wait(), 10)
        assert granted == ["d", "f", "g"]
        assert counters.scans == 6 and counters.scans_waiting == 0
        assert scans.admit(clients["h"], 100) is Admission.QUEUED  # the last three put the bucket in debt
        scans.close()
        assert counters.scans_waiting == 0 and not scans.waiting

    asyncio.run(scenario())


def test_a_scan_dearer_than_the_burst_runs_and_the_next_waits_for_the_debt() -> None:
    async def scenario() -> None:
        clock = Clock()
        counters = Counters(started_at=0.0)
        scans = ScanScheduler(asyncio.get_running_loop(), counters, 100.0, 10.0, clock=clock)
        granted: list[str] = []
        waiting = Client("w", granted, asyncio.Event())
        assert scans.admit(Client("x", granted, asyncio.Event()), 1000) is Admission.NOW  # 25 -> -975
        assert scans.admit(waiting, 10) is Admission.QUEUED
        assert scans.admit(Client("y", granted, asyncio.Event()), 100) is Admission.FULL  # (10+100+975)/100 > 10
        scans.leave(waiting)
        clock.now = 100.0  # debt paid: with nobody queued the next runs at once
        assert scans.admit(Client("z", granted, asyncio.Event()), 10) is Admission.NOW
        assert granted == [] and counters.scans == 2 and counters.scans_waiting == 0
        scans.close()

    asyncio.run(scenario())
