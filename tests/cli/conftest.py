"""Fixtures for CLI tests: a temp root, an Env that sees no docker/systemd/ufw, and runners in and out of process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import mtproxy
from mtproxy.cli.env import Env
from mtproxy.cli.errors import ExitStatus
from mtproxy.cli.main import main
from mtproxy.host.runner import Runner
from mtproxy.paths import Paths

SRC = str(Path(mtproxy.__file__).resolve().parent.parent)
SERVER = "203.0.113.10"  # TEST-NET-3: never contacted, only written into links


@dataclass
class Result:
    status: int
    out: str
    err: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.out)


def no_host_tools(_program: str) -> str | None:
    """Hide docker, systemctl and ufw: these tests must not see the machine's own services."""
    return None


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "root")


@pytest.fixture
def make_env(paths: Paths) -> Callable[..., Env]:
    def build(**kw: object) -> Env:
        options: dict[str, object] = {"server_override": SERVER}
        options.update(kw)
        return Env(paths=paths, runner=Runner(which=no_host_tools), **options)  # type: ignore[arg-type]

    return build


@pytest.fixture
def cli(make_env: Callable[..., Env], capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `mtproxy ARGS` in process through the real error edge (main), with a fresh Env each time."""

    def run(*args: str, **env_kw: object) -> Result:
        capsys.readouterr()
        status = main(list(args), env=make_env(**env_kw))
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


@pytest.fixture
def two(cli: Callable[..., Result]) -> None:
    """Two secrets in the store, labelled alice and bob."""
    assert cli("add-secret", "--label", "alice").status == ExitStatus.OK
    assert cli("add-secret", "--label", "bob").status == ExitStatus.OK


def stored_entry(paths: Paths, label: str) -> dict:  # type: ignore[type-arg]
    """The store file's entry for the secret labelled `label`, as written."""
    doc = json.loads(paths.secrets_file.read_text())
    return next(e for e in doc["secrets"] if e["label"] == label)


def cli_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["MTPROXY_ROOT"] = str(root)
    env["MTPROXY_SERVER"] = SERVER
    env.pop("MTPROXY_DEBUG", None)
    return env


def run_process(root: Path, *args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    """The CLI as a separate process, as an operator runs it (stdin not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "mtproxy.cli.main", *args],
        env=cli_env(root), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False, **kw,  # type: ignore[call-overload]
    )
