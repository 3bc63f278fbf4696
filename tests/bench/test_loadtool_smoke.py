"""The load tool runs end to end with minute numbers (baselines, and the engine once it can run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The tool isolates itself (re-exec under `unshare -n`) when run outside a private namespace.
pytestmark = pytest.mark.netns


def _run(tmp_path: Path, *extra: str, row: str = "| plain |") -> dict[str, object]:
    """Run the tool; its table must have `row`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadtool", "--smoke", "--out", str(tmp_path), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert row in proc.stdout
    [result] = tmp_path.glob("bench-*.json")
    doc: dict[str, object] = json.loads(result.read_text())
    return doc


@pytest.mark.timeout(90)
def test_baselines_relay_every_phase(tmp_path: Path) -> None:
    doc = _run(tmp_path, "--no-engine")
    runs = doc["runs"]
    assert isinstance(runs, list)
    plain = runs[0]["plain"]
    # Every byte went through the relay and every echo came back intact (the clients check content).
    assert plain["up1"]["ok"] == 1 and plain["up1"]["bytes"] == 1_000_000
    assert plain["down1"]["ok"] == 1 and plain["down1"]["bytes"] == 1_000_000
    assert plain["upN"]["ok"] == 2 and plain["downN"]["ok"] == 2
    assert plain["hs"]["ok"] == 20
    assert plain["lat"]["n"] == 10
    assert runs[0]["direct"]["lat"]["n"] == 10
    # the load clients' own CPU is reported beside the subject's (they share the box)
    assert plain["up1"]["client_cpu_s_per_GB"] >= 0 and plain["down1"]["client_cpu_s_per_GB"] >= 0


def _engine_runs() -> bool:
    return (REPO / "src" / "mtproxy" / "cli" / "run.py").exists()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _engine_runs(), reason="the engine (mtproxy run) is not there yet")
def test_engine_modes_relay_every_phase(tmp_path: Path) -> None:
    doc = _run(tmp_path, "--pin")  # the subject on CPU 0, the load elsewhere: the same phases must pass
    runs = doc["runs"]
    assert isinstance(runs, list)
    assert doc["args"]["pin"] is True  # type: ignore[index]
    for mode in ("classic", "dd", "ee"):
        engine = runs[0][f"engine-{mode}"]
        assert engine["up1"]["ok"] == 1 and engine["down1"]["ok"] == 1, mode
        assert engine["hs"]["ok"] == 20, mode
        assert engine["lat"]["n"] == 10, mode


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _engine_runs(), reason="the engine (mtproxy run) is not there yet")
def test_flood_stage_runs_alone(tmp_path: Path) -> None:
    """`--phases flood`: only that stage; returning clients handshake without and with garbage, every piece of
    garbage is answered (the mask) or closed, and the engine's counters say it scanned or shed each one."""
    doc = _run(tmp_path, "--phases", "flood", "--flood-modes", "classic,ee", row="| ee budget=default | with |")
    assert doc["runs"] == [] and set(doc["extra"]) == {"flood"}  # type: ignore[arg-type]
    flood = doc["extra"]["flood"]  # type: ignore[index]
    assert set(flood) == {"classic budget=default", "ee budget=default"}
    for name, figures in flood.items():
        for when in ("without", "with"):
            assert figures[when]["ok"] > 0 and figures[when]["errors"] == 0, (name, when)
        garbage = figures["garbage"]
        assert garbage["sent"] > 0 and garbage["answered"] + garbage["closed"] == garbage["sent"], name
        engine = figures["engine"]
        assert engine["scans"] + engine["scan-busy"] == garbage["sent"], name
        assert engine["masked"] == garbage["sent"], name
