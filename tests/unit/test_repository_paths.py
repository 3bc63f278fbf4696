"""Nothing in the repository names a path outside it: a reader of any file can follow every citation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mtproxy import dc_addresses

ROOT = Path(__file__).resolve().parents[2]
# the workspace and build-farm roots this project is developed under; a citation must name a public source
OUTSIDE = re.compile(rb"/(?:work|farm)/[A-Za-z0-9_.-]+")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.decode(errors='replace').strip()}")
    assert offenders == []


def test_no_test_or_bench_file_names_a_telegram_address() -> None:
    """Tests and benchmarks reach DCs only through overrides pointing at loopback: no file under tests/ or
    bench/ may carry an address of the engine's DC table (a typo there could dial Telegram)."""
    addresses = {a.encode() for table in (dc_addresses.IPV4, dc_addresses.IPV6, dc_addresses.TEST_IPV4,
                                          dc_addresses.TEST_IPV6) for a in table.values()}
    pattern = re.compile(rb"(?<![0-9A-Fa-f.:])(?:" + b"|".join(re.escape(a) for a in addresses) + rb")(?![0-9A-Fa-f])")
    offenders = []
    for path in tracked_files():
        relative = path.relative_to(ROOT)
        if relative.parts[0] not in ("tests", "bench") or not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{relative}:{number}")
    assert offenders == []
