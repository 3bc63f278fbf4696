"""The lock the workers share: the kernel releases it when its holder dies, and it never admits two holders."""

from __future__ import annotations

import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mtproxy.runtime.shared import SharedLock, SharedState, ThreadSafeSharedLock

WAIT = 10.0  # seconds: every wait in here is bounded by this, far above any expected delay


def _fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exit_status(pid: int) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not finish within {WAIT} s")


@contextmanager
def _bounded(seconds: float = WAIT) -> Iterator[None]:
    """Turn a wait that would hang the test run into a failure."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still waiting after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _holder(lock: SharedLock, ready_fd: int, then: Callable[[], None]) -> Callable[[], None]:
    def child() -> None:
        with lock:
            os.write(ready_fd, b"x")
            then()
    return child


def test_a_holder_killed_inside_its_critical_section_releases_the_lock_to_a_waiter() -> None:
    lock = SharedState(2, 1024).replay_lock
    ready_read, ready_write = os.pipe()
    got_read, got_write = os.pipe()
    holder = _fork(_holder(lock, ready_write, lambda: time.sleep(WAIT * 3)))
    waiter = 0
    try:
        with _bounded():
            assert os.read(ready_read, 1) == b"x"

        def wait_for_the_lock() -> None:
            with lock:
                os.write(got_write, b"y")
        waiter = _fork(wait_for_the_lock)
        time.sleep(0.2)  # the waiter is blocked in F_OFD_SETLKW by now (if not, it waits below)
        os.set_blocking(got_read, False)
        with pytest.raises(BlockingIOError):
            os.read(got_read, 1)  # the holder is alive: nobody else got in
        os.kill(holder, signal.SIGKILL)
        assert _exit_status(holder) == -signal.SIGKILL
        assert _exit_status(waiter) == 0
        os.set_blocking(got_read, True)
        assert os.read(got_read, 1) == b"y"
        with _bounded(), lock:  # and this process gets it too
            pass
    finally:
        for pid in (holder, waiter):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        for fd in (ready_read, ready_write, got_read, got_write):
            os.close(fd)


def test_a_holder_slower_than_any_timeout_is_never_overtaken() -> None:
    """The lock this replaces was taken over after 1 s, admitting a second holder beside a slow one."""
    lock = SharedState(2, 1024).replay_lock
    released = mmap.mmap(-1, 1)
    ready_read, ready_write = os.pipe()

    def hold_slowly() -> None:
        time.sleep(1.5)
        released[0] = 1  # written just before the holder leaves its critical section

    holder = _fork(_holder(lock, ready_write, hold_slowly))
    try:
        with _bounded():
            assert os.read(ready_read, 1) == b"x"
            with lock:
                assert released[0] == 1, "admitted while the first holder still held the lock"
        assert _exit_status(holder) == 0
    finally:
        os.close(ready_read)
        os.close(ready_write)


def _count_under(lock: SharedLock, memory: mmap.mmap, rounds: int) -> None:
    """Read-modify-write a shared counter; a flag shows whether another holder was inside at the time."""
    for _ in range(rounds):
        with lock:
            if memory[8]:
                memory[9] = 1  # two holders at once
            memory[8] = 1
            count = struct.unpack_from("<Q", memory, 0)[0]
            os.sched_yield()
            struct.pack_into("<Q", memory, 0, count + 1)
            memory[8] = 0


@pytest.mark.parametrize("make", [SharedLock, ThreadSafeSharedLock])
def test_processes_contending_are_admitted_one_at_a_time(make: Callable[[str], SharedLock]) -> None:
    lock = make("test")
    memory = mmap.mmap(-1, 16)
    workers, rounds = 4, 1500
    pids = [_fork(lambda: _count_under(lock, memory, rounds)) for _ in range(workers)]
    _count_under(lock, memory, rounds)  # the parent contends too
    assert all(_exit_status(pid) == 0 for pid in pids)
    assert memory[9] == 0, "two holders were inside the lock at once"
    assert struct.unpack_from("<Q", memory, 0)[0] == (workers + 1) * rounds


def test_the_stats_lock_also_excludes_threads_in_each_process() -> None:
    lock = ThreadSafeSharedLock("test")
    memory = mmap.mmap(-1, 16)
    rounds = 1000

    def threads_and_count() -> None:
        threads = [threading.Thread(target=_count_under, args=(lock, memory, rounds)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()

    child = _fork(threads_and_count)
    threads_and_count()
    assert _exit_status(child) == 0
    assert memory[9] == 0, "two holders were inside the lock at once"
    assert struct.unpack_from("<Q", memory, 0)[0] == 2 * 3 * rounds


def test_a_child_forked_while_a_parent_thread_holds_the_stats_lock_can_take_it() -> None:
    lock = ThreadSafeSharedLock("test")
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            inside.set()
            leave.wait(WAIT)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(WAIT)

    def take_it() -> None:
        with _bounded():
            with lock:
                pass

    child = _fork(take_it)
    time.sleep(0.1)
    leave.set()  # the parent's thread lets go; the child, with a thread lock of its own, gets it
    thread.join(WAIT)
    assert _exit_status(child) == 0


def test_a_closed_lock_leaves_the_file_that_reuses_its_number_alone_in_a_child() -> None:
    lock = SharedLock("closed")
    lock.close()
    read_end, write_end = os.pipe()  # the lowest free numbers: one of them is likely the lock's old fd
    try:
        def child() -> None:
            os.fstat(read_end)
            os.fstat(write_end)
        assert _exit_status(_fork(child)) == 0
    finally:
        os.close(read_end)
        os.close(write_end)
    lock.close()  # a second close is harmless
