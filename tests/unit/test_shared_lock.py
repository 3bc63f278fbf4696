"""A shared lock whose holder died is taken over after a bounded wait, not waited on for ever."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from mtproxy.runtime.shared import held


def test_a_lock_left_held_by_a_killed_process_is_taken_over() -> None:
    ctx = multiprocessing.get_context("fork")
    lock = ctx.Lock()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and is killed inside its critical section
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    with held(lock, timeout=0.2):
        pass
    assert 0.2 <= time.monotonic() - started < 2
    # released afterwards: the next holder gets it at once
    started = time.monotonic()
    with held(lock, timeout=5):
        pass
    assert time.monotonic() - started < 0.1
