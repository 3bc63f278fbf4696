"""Giving memory back after a burst: when the trim runs, and the free-list refill it starts."""

from __future__ import annotations

import asyncio
import functools

import uvloop

from mtproxy.runtime.memory import (
    BURST,
    FILL_BLOCKS,
    FILL_SIZES,
    FREE_LIST,
    Trimmer,
    fill_partly_used_pools,
    refill_free_lists,
)


def test_no_trim_while_the_connections_are_still_falling() -> None:
    """A trim in the middle of the fall would leave the rest of the burst's objects scattered."""
    trimmer = Trimmer()
    assert not trimmer.due(BURST * 4)
    assert not trimmer.due(BURST * 2)  # fell to half: still falling
    assert not trimmer.due(BURST)
    assert not trimmer.due(10)
    assert trimmer.due(10)  # stopped: now
    assert trimmer.ended == BURST * 4 - 10
    assert not trimmer.due(10)  # once per burst


def test_a_rise_after_the_fall_is_not_a_stop_that_trims_twice() -> None:
    trimmer = Trimmer()
    trimmer.due(BURST * 4)
    trimmer.due(0)
    assert trimmer.due(5)  # stopped falling (rose a little): the burst is over
    assert not trimmer.due(0)  # a small drop afterwards is no burst


def test_refill_swaps_the_loops_handles_and_then_gives_back() -> None:
    """The refill leaves no timer or call behind and calls `then` once, on uvloop as on asyncio's loop."""
    for new_loop in (uvloop.new_event_loop, asyncio.new_event_loop):
        loop = new_loop()
        called: list[int] = []
        ran: list[int] = []
        try:
            loop.call_soon(ran.append, 1)  # ordinary work still runs
            refill_free_lists(loop, BURST, functools.partial(called.append, 0))
            loop.run_until_complete(asyncio.sleep(0.2))
            assert called == [0] and ran == [1]
            timers = getattr(loop, "_timers", None)
            if timers is not None:
                assert len(timers) < FREE_LIST  # the 2 x FREE_LIST cancelled timers are gone
        finally:
            loop.close()


def test_the_fill_follows_the_burst_up_to_its_cap() -> None:
    small, big = fill_partly_used_pools(600), fill_partly_used_pools(50_000)
    classes = 1 + len(FILL_SIZES)
    assert len(small) == 600 * classes and len(big) == FILL_BLOCKS * classes
    assert len({id(o) for o in small}) == len(small)  # distinct objects: each takes a block of its own
