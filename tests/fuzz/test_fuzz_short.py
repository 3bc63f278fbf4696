"""A short fuzz run for CI: every target over its seeds, then a few seconds of atheris each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .targets import TARGETS, seeds

ROOT = Path(__file__).resolve().parents[2]
SECONDS_PER_TARGET = 3
RUNS_PER_TARGET = 3000


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_pass(name: str) -> None:
    """The captured TDLib flights and the seeds themselves must not trip any target."""
    target = TARGETS[name]
    inputs = seeds(name)
    assert inputs
    for data in inputs:
        target(data)
        for cut in (0, 1, 3, 64, len(data) // 2):
            target(data[:cut])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        name,
        f"-runs={RUNS_PER_TARGET}",
        f"-max_total_time={SECONDS_PER_TARGET}",
        "-max_len=4096",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=25, check=False)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, (
        f"fuzz target {name} failed (rc={result.returncode}, artifacts={crashes}):\n{result.stderr[-3000:]}"
    )
