"""CPU time and memory of a process tree, read from /proc (the proxy under test and its workers)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    out: list[int] = []
    stack = [r for r in roots if os.path.exists(f"/proc/{r}")]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def _process_clock(pid: int) -> int:
    """The clock id of `pid`'s CPU time (what clock_getcpuclockid(3) returns: CPUCLOCK_SCHED of the process)."""
    return ((~pid) << 3) | 2


def _runtime_ns(pid: int) -> int | None:
    """The CPU time of `pid` in nanoseconds, its exited threads' included (the process's CPU clock: the
    scheduler's own sum, where utime and stime come in clock ticks of 10 ms); None once it is reaped.
    Summing the live threads' schedstat instead loses a thread's time when the thread exits, so a reading
    could go down between two samples."""
    try:
        return time.clock_gettime_ns(_process_clock(pid))
    except OSError:
        return None


def cpu_seconds(roots: list[int]) -> float:
    """user+sys of the live tree plus what its reaped children used (cutime/cstime): nothing is counted
    twice, because a child's time enters its parent's cutime only once the child is gone. A live process's
    own time is read to the nanosecond where the kernel keeps it (a handshake is ~0.1 ms: ticks would
    round a 2,000-handshake phase by up to 5 %)."""
    total = 0.0
    for pid in tree(roots):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        reaped = (int(fields[13]) + int(fields[14])) / _TICK  # cutime cstime
        own = _runtime_ns(pid)
        total += reaped + (own / 1e9 if own is not None else (int(fields[11]) + int(fields[12])) / _TICK)
    return total


@dataclass
class Memory:
    rss: int  # bytes, summed over the tree (counts pages shared by forked workers once per worker)
    pss: int  # bytes, proportional set size: shared pages divided among their users


def memory(roots: list[int]) -> Memory:
    rss = pss = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return Memory(rss, pss)
