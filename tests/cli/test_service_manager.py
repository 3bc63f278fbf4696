"""The commands a running Docker deployment gets: SIGHUP for secret changes, a Compose restart for the port.

`docker` here is a recording script on PATH (the real engine is exercised in tests/deploy with real Docker);
what is under test is which commands the CLI builds and that it builds them as argument lists.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mtproxy.cli.env import Env
from mtproxy.cli.errors import ExitStatus
from mtproxy.host.runner import Runner
from mtproxy.paths import Paths

from .conftest import SERVER, Result

_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$DOCKER_LOG"
case "$*" in
  *"{{.State.Status}}"*) echo "running|healthy" ;;
  *com.docker.compose.project.working_dir*) echo "/srv/stack|/srv/stack/docker-compose.yml" ;;
esac
exit 0
"""


@pytest.fixture
def docker_log(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(_DOCKER)
    script.chmod(0o755)
    return tmp_path / "docker.log"


@pytest.fixture
def with_docker(paths: Paths, docker_log: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    from mtproxy.cli.main import main

    bin_dir = str(docker_log.parent / "bin")

    def run(*args: str) -> Result:
        runner = Runner(env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                             "DOCKER_LOG": str(docker_log)},
                        which=lambda program: shutil.which(program, path=bin_dir))
        capsys.readouterr()
        status = main(list(args), env=Env(paths=paths, runner=runner, server_override=SERVER))
        out = capsys.readouterr()
        return Result(status, out.out, out.err)

    return run


def test_secret_change_signals_the_container(with_docker: Callable[..., Result], docker_log: Path) -> None:
    result = with_docker("add-secret")
    assert result.status == ExitStatus.OK, result.err
    assert "kill --signal HUP vless_mtproxy" in docker_log.read_text().splitlines()
    assert "a proxy is running; signalled it" in result.out


def test_port_change_restarts_the_container(with_docker: Callable[..., Result], docker_log: Path) -> None:
    # No install record and no Compose file of ours under the root: host.service.restart_proxy restarts the
    # running container as it is (tests/deploy cover the rewrite of our own Compose file).
    result = with_docker("set-port", "2087")
    assert result.status == ExitStatus.OK, result.err
    calls = docker_log.read_text().splitlines()
    assert "restart vless_mtproxy" in calls
    assert "restarted the proxy (docker)" in result.out


def test_dry_run_shows_but_does_not_restart(with_docker: Callable[..., Result], docker_log: Path) -> None:
    result = with_docker("--dry-run", "set-workers", "2")
    assert result.status == ExitStatus.OK
    assert "would restart" in result.out
    assert not any("restart" in line for line in docker_log.read_text().splitlines())
