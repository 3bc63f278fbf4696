"""`-M N`: a supervisor that forks N workers sharing the port (SO_REUSEPORT), restarts dead ones and merges stats."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from mtproxy.config import HostPort
from mtproxy.stats.counters import merge

from .shared import SharedState

log = logging.getLogger("mtproxy.workers")

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF = 1.0  # a worker that keeps crashing is restarted at most once a second
POLL = 0.05


class Supervisor:
    """Synchronous on purpose: no event loop exists in this process, so fork() copies nothing surprising.
    Signal handlers only set flags; the loop below acts on them."""

    def __init__(self, workers: int, shared: SharedState, drain_timeout: float,
                 run_worker: Callable[[int], int], duty: Callable[[bool], None] | None = None,
                 final: Callable[[], None] | None = None,
                 orphaned: Callable[[dict[str, int]], None] | None = None) -> None:
        """`duty(hup)` runs every poll (the usage keeper: reload on SIGHUP or a changed file, persist when
        due); `final()` once all workers have exited (the last usage write); `orphaned(open)` when a worker
        died, with the sessions per secret id it last reported open (their connection slots are freed)."""
        self._n = workers
        self._shared = shared
        self._drain = drain_timeout
        self._run_worker = run_worker
        self._duty = duty
        self._final = final
        self._orphaned = orphaned
        self._pids: dict[int, int] = {}  # pid -> slot
        self._last_start: dict[int, float] = {}
        self._stop = False
        self._hup = False
        self.started_at = time.time()
        self._retired: list[dict[str, Any]] = []

    def snapshot(self) -> dict[str, Any]:
        return merge(self._shared.snapshots() + self._retired, self.started_at)

    def _spawn(self, slot: int) -> None:
        self._last_start[slot] = time.monotonic()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                # a SIGHUP forwarded before the worker's loop installs its handler must not kill it; the
                # worker compares the file with the one read at start-up anyway
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _term_with_parent(parent)
                code = self._run_worker(slot)
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self._pids[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def _retire(self, slot: int) -> None:
        """Keep a dead worker's totals, minus its gauges, so counters never go backwards."""
        for snap in self._shared.snapshots_of(slot):
            if self._orphaned is not None:
                self._orphaned({sid: int(figures.get("active", 0)) for sid, figures in snap.get("secrets", {}).items()
                                if int(figures.get("active", 0)) > 0})
            snap["active"] = 0
            snap["workers"] = 0
            for figures in snap.get("secrets", {}).values():
                figures["active"] = 0
            # folded into one snapshot: a crash-looping worker must not grow the supervisor
            self._retired = [merge([*self._retired, snap], self.started_at)]
        self._shared.clear(slot)

    def run(self) -> int:
        def on_term(signum: int, frame: Any) -> None:
            self._stop = True

        def on_hup(signum: int, frame: Any) -> None:
            self._hup = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        for slot in range(self._n):
            self._spawn(slot)
        dead: list[int] = []
        while not self._stop:
            self._reap(dead)
            for slot in list(dead):
                if time.monotonic() - self._last_start.get(slot, 0.0) >= RESTART_BACKOFF:
                    dead.remove(slot)
                    self._spawn(slot)
            hup, self._hup = self._hup, False
            if hup:
                self._signal_all(signal.SIGHUP)
            if self._duty is not None:
                self._duty(hup)
            time.sleep(POLL)
        return self._shutdown()

    def _reap(self, dead: list[int]) -> None:
        while self._pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self._pids.pop(pid, None)
            if slot is None:
                continue
            log.warning("worker %d (pid %d) exited with status %d; restarting", slot, pid,
                        os.waitstatus_to_exitcode(status))
            self._retire(slot)
            dead.append(slot)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self._pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _shutdown(self) -> int:
        log.info("stopping %d workers", len(self._pids))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._drain + 3.0
        while self._pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self._pids.pop(pid, None)
            else:
                time.sleep(POLL)
        if self._pids:
            log.warning("killing %d workers that outlived the drain deadline", len(self._pids))
            self._signal_all(signal.SIGKILL)
            for pid in list(self._pids):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        if self._final is not None:
            self._final()
        log.info("stopped")
        return 0


def worker_listen(listen: tuple[HostPort, ...]) -> tuple[HostPort, ...]:
    """Every worker binds the same addresses; with port 0 they would get different ports, so refuse it."""
    for address in listen:
        if address.port == 0:
            raise ValueError(f"-M needs a fixed port, not {address}")
    return listen


def _term_with_parent(parent: int) -> None:
    """A worker drains and exits when the supervisor dies (even by SIGKILL), instead of holding the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
