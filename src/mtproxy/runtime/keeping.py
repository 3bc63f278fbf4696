"""The supervisor's share of per-secret accounting (-M N): it has no event loop, so its poll loop calls
`tick()`, which re-reads the secrets when the workers would (SIGHUP, a changed file) and persists the usage
ledger when due; `close()` writes it once more after the workers have exited."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from .ledger import UsageKeeper
from .reload import FileId, file_id
from .secrets import SecretsError, SecretSet

log = logging.getLogger("mtproxy.usage")


class SupervisorUsage:
    def __init__(self, keeper: UsageKeeper, path: Path | None, load: Callable[[], SecretSet], loaded: FileId,
                 interval: float, reload_interval: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._keeper = keeper
        self._path = path
        self._load = load
        self._seen = loaded
        self._interval = interval
        self._reload_interval = reload_interval
        self._monotonic = monotonic
        now = monotonic()
        self._next_look = now + reload_interval
        self._due = now + keeper.wait_time(interval)

    def tick(self, hup: bool) -> None:
        now = self._monotonic()
        if hup or (self._path is not None and now >= self._next_look):
            self._next_look = now + self._reload_interval
            current = file_id(self._path) if self._path is not None else None
            if hup or current != self._seen:
                self._seen = current
                self._reload()
        if now >= self._due:
            self._keeper.persist()
            self._due = self._monotonic() + self._keeper.wait_time(self._interval)

    def _reload(self) -> None:
        try:
            new = self._load()
        except SecretsError:
            return  # the workers log it and keep their set; so does the ledger
        self._keeper.configure(new.all_limits(), new.resets, new.labels)

    def close(self) -> None:
        self._keeper.persist()
