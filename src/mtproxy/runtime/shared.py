"""Memory shared by the supervisor and its forked workers: the replay table and per-worker stats slots."""

from __future__ import annotations

import json
import mmap
import multiprocessing
import struct
from typing import Any

from mtproxy.protocol.replay import ReplayFilter

SLOT_SIZE = 256 * 1024  # one worker's JSON snapshot; per-secret figures for a few thousand ids fit
_LEN = struct.Struct("<I")


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
        return [json.loads(payload)] if payload else []

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        with self._stats_lock:
            raw = [bytes(self._stats[i * SLOT_SIZE + _LEN.size : i * SLOT_SIZE + _LEN.size
                                     + _LEN.unpack_from(self._stats, i * SLOT_SIZE)[0]])
                   for i in range(self.workers)]
        for payload in raw:
            if payload:
                out.append(json.loads(payload))
        return out
