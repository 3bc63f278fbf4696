"""The shipped deployment files parse with the real tools: systemd-analyze, docker-compose, logrotate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mtproxy.host import templates

pytestmark = pytest.mark.netns


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("port", [443, 8443])
def test_systemd_unit_verifies(tmp_path: Path, port: int) -> None:
    _need("systemd-analyze")
    unit = tmp_path / "mtproxy.service"
    unit.write_text(templates.systemd_unit("/usr/bin/true", Path("/opt/vless"), port, "nobody"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    text = unit.read_text()
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in text) == (port < 1024)
    assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text


@pytest.mark.parametrize("port", [443, 8443])
def test_compose_file_is_valid_and_locked_down(tmp_path: Path, port: int) -> None:
    _need("docker-compose")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(templates.compose_file("mtproxy:local", Path("/opt/vless"), port, 8888))
    result = subprocess.run(["docker-compose", "-f", str(compose), "config"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = result.stdout
    for expected in ("container_name: vless_mtproxy", "network_mode: host", "read_only: true",
                     "restart: unless-stopped", "no-new-privileges:true", "max-size: 10m",
                     "/opt/vless/config/mtproxy:/opt/vless/config/mtproxy:ro"):
        assert expected in resolved, expected
    assert "environment" not in resolved  # secrets never travel as variables
    assert ("NET_BIND_SERVICE" in resolved) == (port < 1024)
    assert ("user: 10001:10001" in resolved or "user: '10001:10001'" in resolved) == (port >= 1024)


def test_logrotate_config_parses(tmp_path: Path) -> None:
    _need("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mtproxy.log").write_text("x\n")
    conf = tmp_path / "mtproxy"
    conf.write_text(templates.logrotate(logs))
    result = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    assert "copytruncate" in conf.read_text()
