"""Shared fixtures for the deployment tests: the repo root and the namespaced scenario runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_scenario(tmp_path: Path) -> Callable[[str], dict[str, Any]]:
    """Run a tests/deploy/scenarios.py scenario in a fresh network + mount namespace; its JSON result."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")

    def run(name: str) -> dict[str, Any]:
        proc = subprocess.run(
            ["unshare", "-n", "-m", "--", sys.executable, "-m", "tests.deploy.scenarios", name, str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stdout}\n{proc.stderr}"
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    return run
