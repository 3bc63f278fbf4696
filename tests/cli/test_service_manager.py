"""One root, one installation: a command signals, restarts or reports on the container or unit only when the
root's own install record names it (and the service really serves that root).

`docker` and `systemctl` here are recording scripts on PATH that claim a running `vless_mtproxy` container
and an active `mtproxy` unit, as on a production host (the real engine is exercised in tests/deploy with
real Docker); the runner's history holds every command a command asked for, run or (dry run) not.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtproxy.cli.env import Env
from mtproxy.cli.errors import ExitStatus
from mtproxy.host.layout import HostLayout
from mtproxy.host.record import InstallRecord, ownership
from mtproxy.host.runner import Runner
from mtproxy.paths import Paths

from .conftest import SERVER

_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$HOST_LOG"
case "$*" in
  *"{{.State.Status}}"*) echo "running|healthy|$CONFIG_FILES" ;;
  *config_files*) echo "$CONFIG_FILES" ;;
  *"{{.State.Pid}}"*) echo 0 ;;
esac
exit 0
"""

_SYSTEMCTL = """#!/bin/sh
printf 'systemctl %s\\n' "$*" >> "$HOST_LOG"
case "$*" in
  *"--property=LoadState,ActiveState,ExecStart"*)
    echo "LoadState=loaded"; echo "ActiveState=active"
    echo "ExecStart={ path=/usr/bin/mtproxy ; argv[]=/usr/bin/mtproxy run --root $UNIT_ROOT --config x ; }" ;;
  *MainPID*) echo 0 ;;
esac
exit 0
"""

SERVICE_WORDS = ("vless_mtproxy", "systemctl")


@dataclass
class Host:
    """A fake production host: a running container and unit that serve /opt/vless, not the test root."""

    paths: Paths
    log: Path
    bin_dir: Path
    config_files: str = "/opt/vless/mtproxy/docker-compose.yml"
    unit_root: str = "/opt/vless"
    runner: Runner | None = None

    def run(self, capsys: pytest.CaptureFixture[str], *args: str, dry_run: bool = False) -> tuple[int, str]:
        from mtproxy.cli.main import main

        env = {**os.environ, "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "HOST_LOG": str(self.log), "CONFIG_FILES": self.config_files, "UNIT_ROOT": self.unit_root}
        self.runner = Runner(dry_run=dry_run, env=env,
                             which=lambda program: shutil.which(program, path=str(self.bin_dir)))
        capsys.readouterr()
        status = main(list(args), env=Env(paths=self.paths, runner=self.runner, server_override=SERVER))
        return status, capsys.readouterr().out

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def named_service(self) -> list[str]:
        """Every command (run or only recorded) that names the container or the unit."""
        assert self.runner is not None
        asked = [" ".join(argv) for argv in self.runner.history]
        return [c for c in asked + self.calls() if any(w in c for w in SERVICE_WORDS) or "mtproxy" in c.split()]

    def record(self, manager: str, root: Path | None = None) -> InstallRecord:
        layout = HostLayout.resolve(self.paths.root)
        files = [str(layout.compose_file)] if manager == "docker" else [str(layout.systemd_unit)]
        record = InstallRecord.new(self.paths, 8443, manager, "limit", "mtproxy:local", files, False, False, 8888)
        if root is not None:
            record.root = str(root)
        layout.compose_dir.mkdir(parents=True, exist_ok=True)
        record.save(layout.install_record)
        if manager == "docker":
            layout.compose_file.write_text("services: {}\n")
        return record


@pytest.fixture
def host(paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("MTPROXY_SYSCONF", str(tmp_path / "etc"))  # nothing under /etc is written
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", _DOCKER), ("systemctl", _SYSTEMCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return Host(paths, tmp_path / "host.log", bin_dir)


COMMANDS: list[tuple[str, ...]] = [
    ("add-secret",), ("regenerate-secret", "first", "--yes"), ("set-port", "2087"), ("set-workers", "2"),
    ("status",), ("status", "--json"),
]


def _first_secret(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out = host.run(capsys, "add-secret", "--label", "first")
    assert status == ExitStatus.OK


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_no_record_no_service_command(host: Host, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                      dry_run: bool) -> None:
    """A throwaway root: the host's running container and unit are never named, not even by a query."""
    _first_secret(host, capsys)
    status, out = host.run(capsys, *args, dry_run=dry_run)
    assert status in (ExitStatus.OK, ExitStatus.UNHEALTHY), out
    assert host.named_service() == []
    assert "vless_mtproxy" not in out and "systemd unit" not in out
    assert "reloaded the secrets" not in out and "restarted the proxy" not in out


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("manager", ["docker", "systemd"])
def test_foreign_record_no_service_command(host: Host, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                           manager: str) -> None:
    """A copy of the production root carries its record, which names /opt/vless: nothing is touched."""
    _first_secret(host, capsys)
    host.record(manager, root=Path("/opt/vless"))
    status, out = host.run(capsys, *args)
    assert status in (ExitStatus.OK, ExitStatus.UNHEALTHY), out
    assert host.named_service() == []


def test_schema1_record_of_a_copied_root_is_foreign(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """A record written before schema 2 is migrated from what it lists: the Compose file of the original."""
    _first_secret(host, capsys)
    layout = HostLayout.resolve(host.paths.root)
    layout.compose_dir.mkdir(parents=True, exist_ok=True)
    layout.install_record.write_text(json.dumps({
        "port": 8443, "manager": "docker", "ufw_mode": "limit", "image": "mtproxy:local",
        "files": ["/opt/vless/mtproxy/docker-compose.yml"], "ufw_added": True, "user_created": False}))
    own = ownership(host.paths, layout)
    assert own.record is None and "belongs to /opt/vless" in own.problem
    status, out = host.run(capsys, "set-port", "2087")
    assert status == ExitStatus.OK
    assert host.named_service() == []
    assert "no proxy is running for this root" in out


def test_own_record_signals_its_container(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    _first_secret(host, capsys)
    host.record("docker")
    host.config_files = str(HostLayout.resolve(host.paths.root).compose_file)
    status, out = host.run(capsys, "add-secret")
    assert status == ExitStatus.OK, out
    assert "kill --signal HUP vless_mtproxy" in host.calls()
    # nothing answers on the stats port: signalled, but not claimed as reloaded
    assert "not confirmed" in out and "reloaded the secrets" not in out


def test_own_record_restarts_through_its_compose_file(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    _first_secret(host, capsys)
    host.record("docker")
    compose = HostLayout.resolve(host.paths.root).compose_file
    host.config_files = str(compose)
    status, out = host.run(capsys, "set-port", "2087")
    assert status == ExitStatus.OK, out
    assert any(c.endswith(f"-f {compose} up -d --force-recreate") for c in host.calls()), host.calls()
    assert not any(c.startswith("restart ") for c in host.calls())
    assert "restarted the proxy (docker vless_mtproxy)" in out
    assert json.loads(HostLayout.resolve(host.paths.root).install_record.read_text())["port"] == 2087


def test_container_recreated_by_another_root_is_not_ours(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """Our record, but the container now runs another root's Compose file: not signalled, not restarted."""
    _first_secret(host, capsys)
    host.record("docker")
    for args in (("add-secret",), ("set-port", "2087")):
        status, out = host.run(capsys, *args)
        assert status == ExitStatus.OK, out
        assert not any(c.startswith(("kill", "restart")) or " up " in c for c in host.calls())
    status, out = host.run(capsys, "status")
    assert status == ExitStatus.UNHEALTHY
    assert "was created from /opt/vless/mtproxy/docker-compose.yml" in out


def test_own_systemd_unit_is_signalled_only_when_it_runs_this_root(host: Host,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _first_secret(host, capsys)
    host.record("systemd")
    host.run(capsys, "add-secret")
    assert not any("kill" in c for c in host.calls())  # the unit runs --root /opt/vless
    host.unit_root = str(host.paths.root)
    host.run(capsys, "add-secret")
    assert "systemctl kill --kill-whom=main --signal=HUP mtproxy" in host.calls()


def test_dry_run_shows_but_does_not_restart(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    _first_secret(host, capsys)
    host.record("docker")
    host.config_files = str(HostLayout.resolve(host.paths.root).compose_file)
    status, out = host.run(capsys, "set-workers", "2", dry_run=True)
    assert status == ExitStatus.OK
    assert "would restart the proxy" in out
    assert not any("restart" in c or " up " in c for c in host.calls())


def test_setup_refuses_to_replace_another_roots_container(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """The container name is fixed: setup for a second root would recreate the first root's container."""
    if os.geteuid() != 0:
        pytest.skip("preflight needs root")
    from mtproxy.host.install import InstallError, InstallPlan, preflight
    from mtproxy.testkit.process import free_port

    host.run(capsys, "status")  # builds the runner with the fake docker on PATH
    assert host.runner is not None
    layout = HostLayout.resolve(host.paths.root)
    plan = InstallPlan(host.paths.root, free_port(), 1, "dd", None, None, ufw_mode="skip")
    with pytest.raises(InstallError) as refused:
        preflight(plan, host.runner, layout)
    assert refused.value.what == ("the container vless_mtproxy belongs to another installation "
                                  "(created from /opt/vless/mtproxy/docker-compose.yml)")
    host.config_files = str(layout.compose_file)  # a re-run for the root that made it
    host.run(capsys, "status")
    preflight(plan, host.runner, layout)


@pytest.mark.parametrize("dry_run", [False, True])
def test_uninstall_of_a_copied_root_leaves_the_original_alone(host: Host, capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path, dry_run: bool) -> None:
    """The copy has the original's record and Compose file: `compose down -p vless_mtproxy` would remove the
    original's container, so nothing naming it runs; the copy's own directories go."""
    if os.geteuid() != 0:
        pytest.skip("uninstall needs root")
    import io

    from mtproxy.cli import uninstall

    _first_secret(host, capsys)
    host.record("docker", root=Path("/opt/vless"))
    assert host.runner is not None
    runner = Runner(dry_run=dry_run, env=host.runner.env, which=host.runner.which)
    host.runner = runner
    out = io.StringIO()
    environ = {"MTPROXY_SYSCONF": str(tmp_path / "etc")}
    status = uninstall.main(["--yes", "--root", str(host.paths.root)], env=environ, stdout=out, runner=runner)
    assert status == 0, out.getvalue()
    assert host.named_service() == []
    assert "belongs to /opt/vless" in out.getvalue()
    compose_dir = HostLayout.resolve(host.paths.root).compose_dir
    assert compose_dir.exists() == dry_run


def test_service_queries_and_the_reload_signal_come_from_host(host: Host) -> None:
    """The main PID and the SIGHUP are host/service.py's: asked only of a running service of this root,
    and a dry run shows the signal without sending it."""
    from mtproxy.host.service import ServiceState, main_pid, signal_reload

    env = {**os.environ, "PATH": f"{host.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOST_LOG": str(host.log), "CONFIG_FILES": "", "UNIT_ROOT": ""}
    (host.bin_dir / "docker").write_text(_DOCKER.replace("*) echo 0 ;;", "*) echo 4242 ;;"))
    runner = Runner(env=env, which=lambda program: shutil.which(program, path=str(host.bin_dir)))
    running = ServiceState("docker", "vless_mtproxy", "running", True)
    assert main_pid(runner, running) == 4242
    assert main_pid(runner, ServiceState("systemd", "mtproxy", "active", True)) is None  # the unit says 0
    stopped = ServiceState("docker", "vless_mtproxy", "exited", False)
    assert main_pid(runner, stopped) is None and not signal_reload(runner, stopped)
    assert len(host.calls()) == 2  # nothing was asked of a stopped container
    assert signal_reload(runner, running)
    assert host.calls()[-1] == "kill --signal HUP vless_mtproxy"
    dry = Runner(dry_run=True, env=env, which=runner.which)
    assert signal_reload(dry, ServiceState("systemd", "mtproxy", "active", True))
    assert host.calls()[-1] == "kill --signal HUP vless_mtproxy"  # shown, not sent
    assert dry.history[-1] == ("systemctl", "kill", "--kill-whom=main", "--signal=HUP", "mtproxy")


def test_the_cli_builds_no_host_command_itself() -> None:
    """docker, systemctl and ufw argument lists live in host/ only: the CLI asks host/ for what it needs."""
    import ast

    import mtproxy.cli

    host_programs = {"docker", "systemctl", "ufw", "journalctl", "useradd", "fail2ban-client"}
    found = []
    for module in sorted(Path(mtproxy.cli.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant) \
                    and node.elts[0].value in host_programs:
                found.append(f"{module.name}:{node.lineno}")
    assert found == []


def test_host_never_imports_the_cli() -> None:
    """host/ is below the CLI: the port checks setup and set-port share live in host/ports.py."""
    import ast

    import mtproxy.host

    upward = []
    for module in sorted(Path(mtproxy.host.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("cli", "mtproxy.cli")):
                upward.append(f"{module.name}:{node.lineno}")
    assert upward == []


def test_behind_haproxy_a_restart_leaves_the_recorded_port(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """Behind HAProxy the settings' `port` is HAProxy's (in links) and the record's the loopback port the
    engine binds: a restart must not take the one for the other (a re-run of setup would then find its own
    proxy on its port and refuse it)."""
    from mtproxy.host.record import HaproxyRecord

    _first_secret(host, capsys)
    record = host.record("systemd")
    record.haproxy = HaproxyRecord("/etc/haproxy/haproxy.cfg", 443, ("true",), ("true",))
    layout = HostLayout.resolve(host.paths.root)
    record.save(layout.install_record)
    settings = json.loads(host.paths.settings_file.read_text()) if host.paths.settings_file.exists() else {}
    host.paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    host.paths.settings_file.write_text(json.dumps({**settings, "port": 443, "listen": ["127.0.0.1:8443"],
                                                    "proxy_protocol": True}))
    host.unit_root = str(host.paths.root)
    status, out = host.run(capsys, "set-workers", "2")
    assert status == ExitStatus.OK, out
    assert "systemctl restart mtproxy" in " ".join(host.calls()), host.calls()
    after = InstallRecord.load(layout.install_record)
    assert after is not None and after.port == 8443 and after.haproxy is not None
