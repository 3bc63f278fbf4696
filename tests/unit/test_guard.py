"""The pieces behind the engine's limits: one log line per interval with a count, the unauthenticated caps,
descriptor headroom, and when a burst is over."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource

import pytest

from mtproxy.config import Limits
from mtproxy.runtime.guard import FD_RESERVE, Guard, is_fd_exhaustion
from mtproxy.runtime.logs import Notice
from mtproxy.runtime.memory import BURST, Trimmer
from mtproxy.stats.counters import Counters


def test_a_notice_reports_the_first_at_once_and_the_rest_per_interval() -> None:
    reported: list[int] = []

    async def scenario() -> None:
        notice = Notice(0.2, reported.append)
        for _ in range(100):
            notice.hit()
        assert reported == [1]
        await asyncio.sleep(0.3)
        assert reported == [1, 99]
        await asyncio.sleep(0.3)  # nothing new: no line, and the next hit is reported at once again
        notice.hit()
        assert reported == [1, 99, 1]
        notice.hit()
        notice.hit()
        notice.close()  # shutting down: the count since the last line is not lost
        assert reported == [1, 99, 1, 2]

    asyncio.run(scenario())


def test_unauthenticated_caps_per_ip_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters(started_at=0.0)
    guard = Guard(Limits(max_unauthenticated=3, max_unauthenticated_per_ip=2), counters)

    async def scenario() -> list[bool]:
        admitted = [guard.admit_unauthenticated(ip) for ip in ("a", "a", "a", "b", "c")]
        guard.authenticated_or_gone("a")
        admitted.append(guard.admit_unauthenticated("c"))
        guard.close()
        return admitted

    with caplog.at_level(logging.WARNING, logger="mtproxy.guard"):
        admitted = asyncio.run(scenario())
    assert admitted == [True, True, False, True, False, True]
    assert counters.refused_unauthenticated_ip == 1
    assert counters.refused_unauthenticated == 1
    assert counters.unauthenticated == 3
    assert guard.per_ip == {"a": 1, "b": 1, "c": 1}
    assert "unauthenticated connections at their cap (3 per worker, 2 per IP): 1 connections refused" in caplog.text


def test_descriptor_headroom_keeps_a_reserve() -> None:
    counters = Counters(started_at=0.0)
    guard = Guard(Limits(), counters)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    async def scenario() -> tuple[bool, bool]:
        ok = guard.fd_headroom(limit - FD_RESERVE - 1)
        refused = guard.fd_headroom(limit - FD_RESERVE)
        guard.close()
        return ok, refused

    assert asyncio.run(scenario()) == (True, False)
    assert counters.out_of_fds == 1
    assert is_fd_exhaustion(OSError(errno.EMFILE, "x")) and is_fd_exhaustion(OSError(errno.ENFILE, "x"))
    assert not is_fd_exhaustion(OSError(errno.ECONNREFUSED, "x"))


def test_a_burst_is_over_when_connections_fell_far_and_to_half() -> None:
    trimmer = Trimmer()
    assert not trimmer.due(10)
    assert not trimmer.due(BURST * 4)  # rising
    assert not trimmer.due(BURST * 3)  # fell by BURST, but not to half
    assert not trimmer.due(BURST)  # fell by 3 x BURST, to a quarter, but may still be falling
    assert trimmer.due(BURST)  # stopped falling: the burst is over
    assert not trimmer.due(BURST // 2)  # the new peak is what was left: a small drop is no burst
    assert not trimmer.due(1)
