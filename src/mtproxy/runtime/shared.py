"""Memory shared by the supervisor and its forked workers: the replay table and per-worker stats slots."""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import struct
import threading
import weakref
from types import TracebackType
from typing import Any

from mtproxy.protocol.replay import ReplayFilter

SLOT_SIZE = 256 * 1024  # one worker's JSON snapshot; per-secret figures for a few thousand ids fit
_LEN = struct.Struct("<I")

# struct flock for the whole file; l_pid must be 0 for an open-file-description lock.
_FLOCK = struct.Struct("@hhqqi4x")
_WRITE_LOCK = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_UNLOCK = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)


class SharedLock:
    """An exclusive lock shared by a process and the children it forks, held with `with lock:`.

    An open-file-description (OFD) lock on a memfd: the kernel drops it when the description's last file
    descriptor closes, so a holder killed inside its critical section (SIGKILL, the OOM killer) releases
    it at once, and no waiter ever takes it over from a holder that is only slow. A forked child reopens
    the memfd after fork() to get a description of its own (a shared description would let parent and
    child hold the lock together). OFD locks do not exclude threads sharing a description: this class is
    for locks each process takes from one thread only (the replay table, on the event loop's handshake
    path, where two fcntl calls are all it costs); `ThreadSafeSharedLock` is for the others.
    """

    def __init__(self, name: str) -> None:
        self._fd = os.memfd_create(f"mtproxy-{name}-lock", os.MFD_CLOEXEC)
        # A forked child must reopen the memfd through /proc; fail here, not silently in the child.
        os.close(os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC))
        this = weakref.ref(self)

        def reopen_in_child() -> None:
            lock = this()
            if lock is not None:
                lock._after_fork()

        os.register_at_fork(after_in_child=reopen_in_child)

    def _after_fork(self) -> None:
        inherited = self._fd
        if inherited < 0:  # closed: its number may belong to another file by now, which must stay open
            return
        self._fd = os.open(f"/proc/self/fd/{inherited}", os.O_RDWR | os.O_CLOEXEC)
        os.close(inherited)  # the parent still holds the shared description: nothing of its is released

    def __enter__(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, _WRITE_LOCK)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _UNLOCK)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class ThreadSafeSharedLock(SharedLock):
    """A SharedLock that also excludes the threads of one process (the supervisor's stats HTTP threads).
    The child of fork() gets a fresh thread lock: a thread of the parent may hold it during fork()."""

    def __init__(self, name: str) -> None:
        self._threads = threading.Lock()
        super().__init__(name)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            super().__enter__()
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            super().__exit__(kind, error, trace)
        finally:
            self._threads.release()


class SharedState:
    """Anonymous MAP_SHARED memory created before fork(), so every worker sees the same bytes.
    One lock guards the replay table: an init or hello seen by any worker is a replay on all of them."""

    def __init__(self, workers: int, replay_entries: int) -> None:
        self.replay_lock = SharedLock("replay")
        self._stats_lock = ThreadSafeSharedLock("stats")
        self._replay = mmap.mmap(-1, ReplayFilter.memory_size(replay_entries))
        self._stats = mmap.mmap(-1, SLOT_SIZE * workers)
        self.workers = workers

    @property
    def replay_memory(self) -> memoryview:
        return memoryview(self._replay)

    def publish(self, slot: int, snapshot: dict[str, Any]) -> None:
        payload = json.dumps(snapshot, separators=(",", ":")).encode()
        if len(payload) + _LEN.size > SLOT_SIZE:
            snapshot = dict(snapshot, secrets={})  # keep the totals when per-secret figures overflow
            payload = json.dumps(snapshot, separators=(",", ":")).encode()
        base = slot * SLOT_SIZE
        with self._stats_lock:
            self._stats[base + _LEN.size : base + _LEN.size + len(payload)] = payload
            _LEN.pack_into(self._stats, base, len(payload))

    def clear(self, slot: int) -> None:
        with self._stats_lock:
            _LEN.pack_into(self._stats, slot * SLOT_SIZE, 0)

    def snapshots_of(self, slot: int) -> list[dict[str, Any]]:
        with self._stats_lock:
            base = slot * SLOT_SIZE
            payload = bytes(self._stats[base + _LEN.size : base + _LEN.size + _LEN.unpack_from(self._stats, base)[0]])
        return _decode([payload])

    def snapshots(self) -> list[dict[str, Any]]:
        with self._stats_lock:
            raw = [bytes(self._stats[i * SLOT_SIZE + _LEN.size : i * SLOT_SIZE + _LEN.size
                                     + _LEN.unpack_from(self._stats, i * SLOT_SIZE)[0]])
                   for i in range(self.workers)]
        return _decode(raw)


def _decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for payload in payloads:
        try:
            if payload:
                out.append(json.loads(payload))
        except ValueError:  # not valid JSON (a bug, or memory written outside the lock): skip it this time
            continue
    return out
