"""The timer wheel (runtime/wheel.py) on a real uvloop loop: every entry is told once, never before its
timeout and at most a tick (plus the loop's scheduling) after it; a discarded one never; a shorter timeout
than those pending moves the loop timer; an entry told first may discard or add others."""

from __future__ import annotations

import asyncio

import uvloop

from mtproxy.runtime.wheel import TICK, TimerWheel

LATE = TICK + 0.05  # the wheel's rounding plus what a loaded test machine adds


class Entry:
    def __init__(self, name: str, told: list[tuple[str, float]], loop: asyncio.AbstractEventLoop,
                 then: object = None) -> None:
        self.name, self.told, self.loop, self.then = name, told, loop, then

    def expired(self) -> None:
        self.told.append((self.name, self.loop.time()))
        if callable(self.then):
            self.then()


def run(scenario: object) -> None:
    uvloop.run(scenario)  # type: ignore[arg-type]


def test_entries_expire_in_order_within_a_tick_and_discarded_ones_never() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop)
        told: list[tuple[str, float]] = []
        start = loop.time()
        timeouts = {"late": 0.5, "early": 0.2, "gone": 0.3, "mid": 0.3}
        entries = {name: Entry(name, told, loop) for name in timeouts}
        ticks = {name: wheel.add(entries[name], seconds) for name, seconds in timeouts.items()}
        assert wheel.add(entries["mid"], 0.3) == ticks["mid"] and len(wheel) == 4  # the same entry and tick: once
        wheel.discard(entries["gone"], ticks["gone"])
        wheel.discard(entries["gone"], ticks["gone"])  # twice: nothing more
        await asyncio.sleep(0.5 + LATE + 0.05)
        assert [name for name, _ in told] == ["early", "mid", "late"]
        for name, at in told:
            assert timeouts[name] <= at - start <= timeouts[name] + LATE, (name, at - start)
        assert len(wheel) == 0
        wheel.close()

    run(scenario())


def test_a_shorter_timeout_moves_the_loop_timer_forward() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop)
        told: list[tuple[str, float]] = []
        start = loop.time()
        wheel.add(Entry("long", told, loop), 5.0)
        wheel.add(Entry("short", told, loop), 0.1)
        await asyncio.sleep(0.1 + LATE)
        assert [name for name, _ in told] == ["short"]
        assert told[0][1] - start >= 0.1
        wheel.close()  # the long one is forgotten, and its timer with it
        assert len(wheel) == 0

    run(scenario())


def test_an_entry_told_first_may_discard_or_add_others() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop)
        told: list[tuple[str, float]] = []
        start = loop.time()
        victim = Entry("victim", told, loop)
        later = Entry("later", told, loop)
        holder: dict[str, int] = {}

        def act() -> None:
            wheel.discard(victim, holder["victim"])  # due in the same tick: must not be told
            wheel.add(later, 0.1)  # told a tick or more after this

        first = Entry("first", told, loop, act)
        holder["victim"] = wheel.add(victim, 0.2)
        wheel.add(first, 0.2)
        # both in one tick: whichever is told first, the other is the victim or the actor
        await asyncio.sleep(0.2 + 0.1 + 2 * LATE)
        names = [name for name, _ in told]
        assert "later" in names
        assert names.count("first") == 1
        if names[0] == "first":
            assert "victim" not in names
        later_at = dict(told)["later"]
        assert later_at - start >= 0.3
        assert len(wheel) == 0

    run(scenario())


def test_an_entry_that_fails_does_not_stop_the_others() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        wheel = TimerWheel(loop)
        told: list[tuple[str, float]] = []

        def fail() -> None:
            raise RuntimeError("a bug")

        wheel.add(Entry("fails", told, loop, fail), 0.1)
        wheel.add(Entry("same tick", told, loop), 0.1)
        wheel.add(Entry("later", told, loop), 0.3)
        await asyncio.sleep(0.3 + LATE)
        assert sorted(name for name, _ in told) == ["fails", "later", "same tick"]
        assert [type(context["exception"]) for context in reported] == [RuntimeError]

    run(scenario())
