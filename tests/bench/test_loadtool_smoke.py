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


def _run(tmp_path: Path, *extra: str, row: str = "| plain |", timeout: float = 60) -> dict[str, object]:
    """Run the tool; its table must have `row`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadtool", "--smoke", "--out", str(tmp_path), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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


@pytest.mark.timeout(150)
@pytest.mark.skipif(not _engine_runs(), reason="the engine (mtproxy run) is not there yet")
def test_relay_path_beside_direct_mode(tmp_path: Path) -> None:
    """`--relay`: each mode is measured again with its clients' packets through the fake middle-proxy relay,
    whose CPU is reported apart; every packet of every phase went through the relay (none direct)."""
    from bench.loadtool import DEFAULT_ENGINE

    doc = _run(tmp_path, "--relay", "--modes", "classic,ee", "--phases", "bulk1,hs,lat", "--engine-cmd", DEFAULT_ENGINE,
               row="| middle-ee |", timeout=120)
    run = doc["runs"][0]  # type: ignore[index]
    for mode in ("classic", "ee"):
        direct, middle = run[f"engine-{mode}"], run[f"middle-{mode}"]
        assert "relay" not in direct and "relay_cpu" not in direct["up1"], mode
        assert middle["up1"]["ok"] == 1 and middle["up1"]["bytes"] == 1_000_000, mode
        assert middle["down1"]["ok"] == 1 and middle["down1"]["bytes"] == 1_000_000, mode
        assert middle["hs"]["ok"] == 20 and middle["hs"]["errors"] == 0, mode
        assert middle["lat"]["n"] == 10, mode
        assert middle["up1"]["relay_cpu_s_per_GB"] >= 0 and middle["hs"]["relay_cpu_ms_per_hs"] >= 0, mode
        relay = middle["relay"]
        # one command packet per session (20 handshakes, up, down, latency), 2 bulk packets up (1 MB in
        # 512 KiB packets), the GO packet down, 10 pings; answers: READY per session, DONE, 2 packets, 10 echoes
        assert relay["requests"] == 20 + 1 + 2 + 1 + 1 + 1 + 10, mode
        assert relay["answers"] == 20 + 2 + 3 + 11, mode
        assert relay["request_bytes"] >= 1_000_000 and relay["errors"] == 0, mode
        # the tool waited for the sessions of the handshakes and the bulk phases to end at the relay
        assert relay["closes_from_proxy"] >= 22, mode
