"""Secrets reload: poll the file's identity (mtime, inode, size) and react to SIGHUP; parse, then swap."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .secrets import SecretsError, SecretSet

log = logging.getLogger("mtproxy.reload")

FileId = tuple[int, int, int] | None


def file_id(path: Path) -> FileId:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class Reloader:
    """Loads a new set when the file changed or on request; a broken file keeps the old set live."""

    def __init__(self, path: Path | None, load: Callable[[], SecretSet], apply: Callable[[SecretSet], int],
                 interval: float, on_result: Callable[[bool], None], loaded: FileId) -> None:
        """`loaded` is the file's identity when the live set was read (before any fork): a worker started
        later, with the file changed since, then reloads on its first tick instead of serving a stale set."""
        self._path = path
        self._load = load
        self._apply = apply
        self._interval = interval
        self._on_result = on_result
        self._seen: FileId = loaded
        self._requested = asyncio.Event()

    def request(self) -> None:
        """SIGHUP: reload now, even when the file looks unchanged."""
        self._requested.set()

    def reload_now(self) -> bool:
        if self._path is not None:
            self._seen = file_id(self._path)
        try:
            new = self._load()
        except SecretsError as exc:
            log.error("secrets reload failed, keeping the previous set: %s", exc)
            self._on_result(False)
            return False
        except Exception:  # a bug or a pathological file must not end reloading for good
            log.exception("secrets reload failed, keeping the previous set")
            self._on_result(False)
            return False
        closed = self._apply(new)
        log.info("secrets reloaded: %d active%s", len(new.entries),
                 f", closed {closed} sessions of removed secrets" if closed else "")
        self._on_result(True)
        return True

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._requested.wait(), self._interval)
            except TimeoutError:
                pass
            if self._requested.is_set():
                self._requested.clear()
                self.reload_now()
            elif self._path is not None and file_id(self._path) != self._seen:
                self.reload_now()
