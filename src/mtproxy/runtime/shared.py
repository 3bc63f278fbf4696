"""Memory shared by the supervisor and its forked workers: the replay table and per-worker stats slots."""

from __future__ import annotations

import json
import logging
import mmap
import multiprocessing
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mtproxy.protocol.replay import ReplayFilter

log = logging.getLogger("mtproxy")

SLOT_SIZE = 256 * 1024  # one worker's JSON snapshot; per-secret figures for a few thousand ids fit
_LEN = struct.Struct("<I")


@contextmanager
def held(lock: Any, timeout: float = 1.0) -> Iterator[None]:
    """Hold a lock shared with other processes. A worker killed inside its few-microsecond critical section
    (SIGKILL, the OOM killer) never releases it, and every other process would block for good: after
    `timeout` we take it over instead, and releasing it afterwards puts it right again."""
    if not lock.acquire(timeout=timeout):
        log.error("a shared lock was not released within %.1f s (its holder died?): taking it over", timeout)
    try:
        yield
    finally:
        try:
            lock.release()
        except ValueError:  # released meanwhile by a holder that was only slow
            pass


class SharedState:
    """Anonymous MAP_SHARED memory created before fork(), so every worker sees the same bytes.
    One lock guards the replay table: an init or hello seen by any worker is a replay on all of them."""

    def __init__(self, workers: int, replay_entries: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.replay_lock = ctx.Lock()
        self._stats_lock = ctx.Lock()
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
        with held(self._stats_lock):
            self._stats[base + _LEN.size : base + _LEN.size + len(payload)] = payload
            _LEN.pack_into(self._stats, base, len(payload))

    def clear(self, slot: int) -> None:
        with held(self._stats_lock):
            _LEN.pack_into(self._stats, slot * SLOT_SIZE, 0)

    def snapshots_of(self, slot: int) -> list[dict[str, Any]]:
        with held(self._stats_lock):
            base = slot * SLOT_SIZE
            payload = bytes(self._stats[base + _LEN.size : base + _LEN.size + _LEN.unpack_from(self._stats, base)[0]])
        return _decode([payload])

    def snapshots(self) -> list[dict[str, Any]]:
        with held(self._stats_lock):
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
        except ValueError:  # torn by a writer we took the lock over from: skip it this time
            continue
    return out
