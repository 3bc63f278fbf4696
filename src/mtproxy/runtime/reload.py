"""Secrets reload: poll the file's identity and react to SIGHUP; parse, then swap.

The identity includes the inode change time, owner and mode: `chown`/`chmod` change neither the content
nor the mtime, and the usual fix for "the proxy cannot read its store" is exactly a chown, which must be
picked up without a SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .secrets import SecretsError, SecretSet

log = logging.getLogger("mtproxy.reload")

FileId = tuple[int, ...] | None


def file_id(path: Path) -> FileId:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size, st.st_uid, st.st_gid, st.st_mode)


class Reloader:
    """Loads a new set when the file changed or on request; a broken file keeps the old set live."""

    def __init__(self, path: Path | None, load: Callable[[], SecretSet], apply: Callable[[SecretSet], int],
                 interval: float, on_result: Callable[[str | None], None], loaded: FileId) -> None:
        """`loaded` is the file's identity when the live set was read (before any fork): a worker started
        later, with the file changed since, then reloads on its first tick instead of serving a stale set.
        `on_result` gets None after a reload, or why it failed (served on /stats.json)."""
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
            self._on_result(str(exc) or "the secrets file could not be read")
            return False
        except Exception as exc:  # a bug or a pathological file must not end reloading for good
            log.exception("secrets reload failed, keeping the previous set")
            self._on_result(f"internal error: {type(exc).__name__}")
            return False
        closed = self._apply(new)
        log.info("secrets reloaded: %d active%s", len(new.entries),
                 f", closed {closed} sessions of removed secrets" if closed else "")
        self._on_result(None)
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
