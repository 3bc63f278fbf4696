"""status: the block `vless status` shows — service state, port, connections, uptime — and a health exit code."""

from __future__ import annotations

import importlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..host.runner import Runner
from ..settings import Settings
from ..store import StoreError, read_store
from .env import Env
from .errors import ExitStatus
from .output import dump_json, human_count, human_duration
from .proxy_control import CONTAINER, SYSTEMD_UNIT, Deployment, detect, fetch_stats, stat_int
from .secret_cmds import load_settings
from .status_section import section_lines

pass_env = click.make_pass_decorator(Env)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: informational, neither healthy nor not
    detail: str
    fix: str = ""


def _port_accepts(port: int, timeout: float = 1.0) -> bool:
    for host in ("127.0.0.1", "::1"):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def _proxy_uid(runner: Runner, deployment: Deployment) -> int | None:
    """The effective uid the running proxy has, read from /proc of its main process."""
    pid: str = ""
    if deployment.manager == "docker" and deployment.running:
        pid = runner.run(["docker", "inspect", "--format", "{{.State.Pid}}", CONTAINER],
                         check=False, mutates=False, timeout=15).stdout.strip()
    elif deployment.manager == "systemd" and deployment.running:
        pid = runner.run(["systemctl", "show", "--property=MainPID", "--value", SYSTEMD_UNIT],
                         check=False, mutates=False, timeout=15).stdout.strip()
    if not pid.isdigit() or pid == "0":
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _readable_by(path: Path, uid: int) -> bool:
    """Owner/other permission bits only; group membership inside a container is not visible from here."""
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    return bool(st.st_mode & (stat.S_IROTH | stat.S_IRGRP))


def _store_check(env: Env, deployment: Deployment, runner: Runner) -> Check:
    path = env.paths.secrets_file
    try:
        data = read_store(path)
    except StoreError as exc:
        return Check("secrets", False, f"{path}: {exc.problem}",
                     exc.hint or "restore the file from a backup")
    if not path.exists():
        return Check("secrets", False, f"no store at {path}", "create a secret with `mtproxy add-secret`")
    active = len(data.active_records())
    if active == 0:
        return Check("secrets", False, "no active secret: clients cannot connect",
                     "create one with `mtproxy add-secret`")
    uid = _proxy_uid(runner, deployment)
    if uid is not None and not _readable_by(path, uid):
        st = path.stat()
        return Check("secrets", False,
                     f"the proxy (uid {uid}) cannot read {path} (mode {stat.S_IMODE(st.st_mode):o}, "
                     f"owner {st.st_uid}); the VPN installer resets config/ to 600 root",
                     f"chown {uid} {path} (or rerun `mtproxy setup`)")
    return Check("secrets", True, f"{active} active in {path}")


def _ufw_check(runner: Runner, port: int) -> Check | None:
    """Prefer the deployment code's reading of UFW (it knows how it writes the rule); else `ufw status`."""
    try:
        ufw: Any = importlib.import_module("mtproxy.host.ufw")
    except ImportError:
        ufw = None
    if not runner.available("ufw") or os.geteuid() != 0:
        return None
    fix = f"ufw limit {port}/tcp comment 'MTProxy' (or rerun `mtproxy setup`)"
    if ufw is not None and hasattr(ufw, "state") and hasattr(ufw, "port_rules"):
        current = ufw.state(runner)
        # ours first; an operator's own allow/limit rule for the port opens it just as well
        rules = ufw.port_rules(current, port) + [
            r for r in ufw.foreign_rules(current, port) if r.startswith(("ufw allow ", "ufw limit "))
        ]
        if not current.active:
            shown = "rule present" if rules else "no rule for the port yet"
            return Check("firewall", None, f"UFW is inactive ({shown})")
        if rules:
            return Check("firewall", True, f"UFW: {rules[0].removeprefix('ufw ')}")
        return Check("firewall", False, f"no UFW rule for {port}/tcp (the VPN installer removes 8443 to 8452)",
                     fix)
    result = runner.run(["ufw", "status"], check=False, mutates=False, timeout=15)
    if not result.ok:
        return Check("firewall", None, f"`ufw status` failed: {result.last_error_line()}")
    if "Status: inactive" in result.stdout:
        return Check("firewall", None, "UFW is inactive")
    for line in result.stdout.splitlines():
        head = line.split()[0] if line.split() else ""
        if head in (f"{port}/tcp", str(port)) and "(v6)" not in line:
            return Check("firewall", True, f"UFW rule for {port}/tcp: {' '.join(line.split()[1:3])}")
    return Check("firewall", False, f"no UFW rule for {port}/tcp (the VPN installer removes 8443 to 8452)", fix)


def collect(env: Env) -> tuple[list[Check], Settings | None, dict[str, str] | None]:
    checks: list[Check] = []
    try:
        settings: Settings | None = load_settings(env)
    except StoreError as exc:
        settings = None
        checks.append(Check("settings", False, f"{exc.path}: {exc.problem}", exc.hint))
    effective = settings or Settings()
    deployment = detect(env.runner)
    stats = fetch_stats(effective.stats_port)
    if deployment.manager == "docker":
        health = f" ({deployment.health})" if deployment.health else ""
        ok = deployment.running and deployment.health in ("", "healthy", "starting")
        checks.append(Check("service", ok, f"container {CONTAINER}: {deployment.state}{health}",
                            "" if ok else f"docker start {CONTAINER}; docker logs {CONTAINER}"))
    elif deployment.manager == "systemd":
        checks.append(Check("service", deployment.running, f"systemd unit {SYSTEMD_UNIT}: {deployment.state}",
                            "" if deployment.running else f"systemctl start {SYSTEMD_UNIT}; "
                            f"journalctl -u {SYSTEMD_UNIT}"))
    else:
        checks.append(Check("service", None if stats is not None else False,
                            "no container or systemd unit installed",
                            "" if stats is not None else "install it with `mtproxy setup`"))
    endpoint = f"127.0.0.1:{effective.stats_port}"
    checks.append(Check("stats", stats is not None,
                        f"answering on {endpoint}" if stats is not None else f"nothing answers on {endpoint}",
                        "" if stats is not None else "start the proxy and read its log"))
    accepting = _port_accepts(effective.port)
    checks.append(Check("port", accepting,
                        f"{effective.port}/tcp accepting connections" if accepting
                        else f"nothing accepts connections on {effective.port}/tcp",
                        "" if accepting else "start the proxy, or check `mtproxy set-port`"))
    checks.append(_store_check(env, deployment, env.runner))
    ufw = _ufw_check(env.runner, effective.port)
    if ufw is not None:
        checks.append(ufw)
    return checks, settings, stats


@click.command("status", epilog="""\b
Examples:
  mtproxy status
  mtproxy status --json
  mtproxy status >/dev/null && echo healthy
  mtproxy status --section        the block for `vless status`
Exit status: 0 when every check passes, 8 when one fails.
""")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@click.option("--section", is_flag=True, help="One ✓/✗ block for the host's status report (`vless status`).")
@pass_env
def status(env: Env, json_out: bool, section: bool) -> int:
    """Check the service, the stats endpoint, the port, the secrets store and the firewall rule."""
    checks, settings, stats = collect(env)
    healthy = all(c.ok is not False for c in checks)
    port = (settings or Settings()).port
    active = stat_int(stats, "active_connections")
    total = stat_int(stats, "total_connections")
    uptime = stat_int(stats, "uptime")
    if section:
        summary = f"{port}/tcp, {human_count(active)} active, {human_count(total)} total, up {human_duration(uptime)}"
        env.out("\n".join(section_lines(checks, env.ok_mark, summary)))
    elif json_out:
        env.out(dump_json("status", {
            "healthy": healthy, "port": port, "uptime_seconds": uptime,
            "connections": {"active": active, "total": total},
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks],
        }))
    else:
        title = "MTProxy: healthy" if healthy else "MTProxy: NOT healthy"
        env.out(env.style(title, bold=True, fg="green" if healthy else "red"))
        for c in checks:
            line = f"  {env.ok_mark(c.ok)} {c.name}: {c.detail}"
            if c.fix and c.ok is False:
                line += f" — fix: {c.fix}"
            env.out(line)
        env.out(f"    port:        {port}/tcp")
        env.out(f"    connections: {human_count(active)} active, {human_count(total)} total")
        env.out(f"    uptime:      {human_duration(uptime)}")
    return int(ExitStatus.OK if healthy else ExitStatus.UNHEALTHY)


COMMANDS = [status]
