"""The benchmarks' CPU readings never go down: a thread that exits between two samples keeps its time in
the process's, as does a process that exited and is not reaped yet."""

from __future__ import annotations

import subprocess
import sys
import time

from bench import procstat

# A thread that spins for BUSY seconds and exits; the process then waits to be read, and exits on stdin.
CHILD = """
import sys, threading, time
def spin():
    end = time.process_time() + BUSY
    while time.process_time() < end:
        pass
thread = threading.Thread(target=spin)
thread.start()
print("started", flush=True)
thread.join()
print("joined", flush=True)
sys.stdin.readline()
"""
BUSY = 0.3


def _exited(pid: int) -> bool:
    fields = procstat._stat_fields(pid)
    return fields is None or fields[0] == "Z"


def test_a_thread_that_exits_keeps_its_time_and_so_does_an_unreaped_process() -> None:
    with subprocess.Popen([sys.executable, "-c", f"BUSY = {BUSY}\n{CHILD}"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == "started\n"
            during = procstat.cpu_seconds([child.pid])
            assert child.stdout.readline() == "joined\n"  # the spinning thread is gone now
            joined = procstat.cpu_seconds([child.pid])
            child.stdin.write("\n")
            child.stdin.flush()
            deadline = time.monotonic() + 10
            while not _exited(child.pid):
                assert time.monotonic() < deadline, "the child did not exit"
                time.sleep(0.01)
            exited = procstat.cpu_seconds([child.pid])  # a zombie: exited, not reaped
        finally:
            child.kill()
    assert during <= joined <= exited
    assert joined >= BUSY  # the exited thread's spin is in it
