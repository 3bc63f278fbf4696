"""One atomic write for every file the package writes: temp beside the file, mode first, fsync, rename,
fsync of the directory; host files go through it too."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from mtproxy.host.files import write_file
from mtproxy.store import remove_stale_temps, write_atomic

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mtproxy"


class DiskSpy:
    """Records, in order, what write_atomic asks of the disk: fsyncs (file or directory) and renames with
    the temp file's mode at that moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, object]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            self.events.append(("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file", fd))
            real_fsync(fd)

        def replace(src: str, dst: str) -> None:
            self.events.append(("rename", (Path(src).name, stat.S_IMODE(os.stat(src).st_mode), Path(dst))))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def rename(self) -> tuple[str, int, Path]:
        [detail] = [detail for kind, detail in self.events if kind == "rename"]
        return detail  # type: ignore[return-value]


def _assert_the_one_atomic_write(spy: DiskSpy, path: Path, mode: int) -> None:
    assert spy.kinds() == ["fsync-file", "rename", "fsync-dir"]
    temp, temp_mode, target = spy.rename()
    assert target == path
    assert re.fullmatch(rf"\.{re.escape(path.name)}\.\w+\.tmp", temp), temp  # what remove_stale_temps removes
    assert temp_mode == mode  # the mode is right before the file appears under its name
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]  # no temp left


def test_write_atomic_sets_the_mode_first_and_fsyncs_file_and_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = DiskSpy(monkeypatch)
    path = tmp_path / "data" / "link.txt"
    write_atomic(path, b"tg://proxy\n")
    assert path.read_bytes() == b"tg://proxy\n"
    _assert_the_one_atomic_write(spy, path, 0o600)


def test_host_files_are_written_by_the_one_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "etc" / "mtproxy.service"
    spy = DiskSpy(monkeypatch)
    assert write_file(path, "[Unit]\n", 0o644) is True
    _assert_the_one_atomic_write(spy, path, 0o644)
    assert stat.S_IMODE(path.parent.stat().st_mode) != 0o700  # a host directory, not a secrets one
    spy.events.clear()
    assert write_file(path, "[Unit]\n", 0o644) is False  # unchanged: nothing written
    assert spy.events == []
    assert write_file(path, "[Unit]\n", 0o640) is True  # a mode change alone rewrites it
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mtproxy.service"
    write_file(path, "old\n")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_file(path, "new\n")
    assert path.read_text() == "old\n"
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def test_the_temp_of_a_killed_host_write_is_what_remove_stale_temps_clears(tmp_path: Path) -> None:
    path = tmp_path / "jail.local"
    write_file(path, "x\n")
    left = tmp_path / f".{path.name}.k1ll3d.tmp"  # the name mkstemp gives write_atomic's temp
    left.write_bytes(b"half")
    other = tmp_path / ".jail.local.bak"
    other.write_bytes(b"the operator's")
    remove_stale_temps(path)
    assert not left.exists() and other.exists() and path.exists()


# Whole-file writes done another way than write_atomic, and why they may.
ALLOWED = {
    "accounts/usage.py": "renames an unreadable usage file aside for the operator: no byte is written",
    "store.py": "write_atomic itself",
    "testkit/haproxy.py": "a test HAProxy's output, streamed into a log file beside the test's config",
    "testkit/nginx.py": "a test nginx's config and certificate chain in the test's own tmp_path, read by it only",
    "testkit/process.py": "a test engine's stdout/stderr, streamed into log files",
    "testkit/servers.py": "a throw-away test certificate in a private TemporaryDirectory, read once by ssl",
    "testkit/socks.py": "a test's danted config and log in the test's own tmp_path, read by that danted only",
    "testkit/website.py": "a test nginx's certificates, page, config and log in the test's own directory",
}
WRITERS = re.compile(r"\.write_(?:text|bytes)\(|os\.(?:replace|rename)\(|mkstemp\(|NamedTemporaryFile\("
                     r"|\bopen\([^)]*[\"'][wax]b?\+?[\"']")


def test_every_file_the_package_writes_goes_through_write_atomic() -> None:
    found = {}
    for source in sorted(PACKAGE.rglob("*.py")):
        name = source.relative_to(PACKAGE).as_posix()
        lines = [f"{number}: {line.strip()}" for number, line in enumerate(source.read_text().splitlines(), 1)
                 if WRITERS.search(line) and not line.lstrip().startswith("#")]
        if lines:
            found[name] = lines
    unexplained = {name: lines for name, lines in found.items() if name not in ALLOWED}
    assert not unexplained, f"files written without write_atomic: {unexplained}"
    assert set(ALLOWED) <= set(found), f"allowances no longer needed: {set(ALLOWED) - set(found)}"
