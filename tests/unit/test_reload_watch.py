"""The reload watcher's file identity: a chmod or chown (content and mtime unchanged) is a change."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mtproxy.runtime.reload import Reloader, file_id
from mtproxy.runtime.secrets import SecretsError, SecretSet


def test_file_id_changes_on_chmod_and_chown_only(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text("{}")
    before = file_id(path)
    assert file_id(path) == before
    mtime = path.stat().st_mtime_ns
    path.chmod(0o640)
    assert file_id(path) != before and path.stat().st_mtime_ns == mtime
    if os.geteuid() == 0:
        after_chmod = file_id(path)
        os.chown(path, 65534, -1)
        assert file_id(path) != after_chmod


def test_the_watcher_reloads_after_a_permission_fix_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text("{}")
    path.chmod(0o000)
    results: list[str | None] = []

    def load() -> SecretSet:  # stands for an engine user that may read only a 0o600+ file
        if not path.stat().st_mode & 0o400:
            raise SecretsError(f"{path}: permission denied while reading")
        return SecretSet(())

    async def scenario() -> None:
        reloader = Reloader(path, load, lambda new: 0, 0.02, results.append, None)
        task = asyncio.create_task(reloader.run())
        try:
            for _ in range(100):  # the first tick sees a file it has not read yet
                if results:
                    break
                await asyncio.sleep(0.01)
            assert results and results[-1] is not None and "permission denied" in results[-1]
            path.chmod(0o600)  # the fix; no request(), no SIGHUP
            for _ in range(100):
                if results[-1] is None:
                    break
                await asyncio.sleep(0.01)
            assert results[-1] is None
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))
