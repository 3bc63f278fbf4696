"""The handshake A/B tool runs two labelled engines and the plain relay in interleaved rounds and reports
every subject's CPU per handshake and its per-round ratio to the relay (bench/hsab.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.netns
ENGINE = ("{python} -m mtproxy.cli.main run -H {port} {secret_args} --dc-override *={dc_host}:{dc_port} "
          "--mask {mask_host}:{mask_port} --workers {workers}")


@pytest.mark.timeout(120)
def test_two_engines_and_the_relay_in_interleaved_rounds(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hsab", "--engine", f"a={ENGINE}", "--engine", f"b={ENGINE}",
         "--modes", "classic,ee", "--rounds", "2", "--handshakes", "100", "--hs-parallel", "8", "--seed", "1",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    subjects = {"plain", "a:classic", "a:ee", "b:classic", "b:ee"}
    assert [set(one) for one in doc["rounds"]] == [subjects, subjects]
    for one in doc["rounds"]:
        for figures in one.values():
            assert figures["ok"] == 100 and figures["errors"] == 0  # every handshake went through, echo checked
            assert 0 < figures["cpu_ms_per_hs"] < 50
    for subject in subjects:
        assert f"| {subject} |" in proc.stdout


def test_a_bad_engine_spec_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.hsab", "--engine", "noequals"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "LABEL=TEMPLATE" in proc.stderr
