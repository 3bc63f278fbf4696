"""A shared lock whose holder died is taken over after a bounded wait, not waited on for ever."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time

import pytest

from mtproxy.runtime.shared import held

TAKEOVER = "was not released within"


def test_a_lock_left_held_by_a_killed_process_is_taken_over(caplog: pytest.LogCaptureFixture) -> None:
    ctx = multiprocessing.get_context("fork")
    lock = ctx.Lock()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and is killed inside its critical section
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert not lock.acquire(block=False)  # the dead child still holds it
    caplog.set_level(logging.ERROR, logger="mtproxy")
    started = time.monotonic()
    with held(lock, timeout=0.2):
        pass
    assert time.monotonic() - started >= 0.2  # it waited its timeout (a lower bound: load cannot break it)
    assert [r.getMessage() for r in caplog.records].count(
        "a shared lock was not released within 0.2 s (its holder died?): taking it over") == 1
    # released afterwards: free at once, without a wall-clock bound that a loaded machine can miss
    assert lock.acquire(block=False)
    lock.release()
    caplog.clear()
    with held(lock, timeout=5):
        pass
    assert not any(TAKEOVER in r.getMessage() for r in caplog.records)
    assert lock.acquire(block=False)
    lock.release()
