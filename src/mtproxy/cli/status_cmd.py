"""status: the block `vless status` shows — service state, port, connections, uptime — and a health exit code.

Only the root in use is looked at: its own installation (host/record.py) and an engine that serves its store.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..host import ufw
from ..host.layout import HostLayout
from ..host.record import ownership
from ..host.runner import Runner
from ..host.service import ServiceState, main_pid, service_state
from ..operations.proxy_control import compare, engine_of_root, fetch_engine, stats_port
from ..settings import Settings
from ..store import StoreError, read_store
from .env import Env
from .errors import ExitStatus
from .output import dump_json, human_count, human_duration
from .secret_cmds import load_settings
from .status_section import check_line, section_lines

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


def _proxy_uid(runner: Runner, service: ServiceState) -> int | None:
    """The effective uid the running proxy has, read from /proc of its main process (this root's only)."""
    pid = main_pid(runner, service)
    if pid is None:
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


def _store_check(env: Env, service: ServiceState, engine: dict[str, Any] | None) -> Check:
    """The store itself, then whether this root's engine serves it (count and digest, every worker)."""
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
    uid = _proxy_uid(env.runner, service)
    if uid is None and engine is not None and isinstance(engine.get("uid"), int):
        uid = int(engine["uid"])
    chown = f"chown {uid} {path} (the engine picks the fix up by itself)" if uid is not None else (
        f"make {path} readable by the proxy's user (or rerun `mtproxy setup`)")
    if engine is not None:  # what the engine itself says beats any prediction from the file's mode
        verdict = compare(engine, data)
        if verdict.ok:
            return Check("secrets", True, f"{active} active in {path}; {verdict.detail}")
        fix = chown if "cannot read" in verdict.detail else "wait a few seconds; if it stays, read the proxy's log"
        return Check("secrets", False, verdict.detail, fix)
    if uid is not None and not _readable_by(path, uid):
        st = path.stat()
        return Check("secrets", False,
                     f"the proxy (uid {uid}) cannot read {path} (mode {stat.S_IMODE(st.st_mode):o}, "
                     f"owner {st.st_uid}); the VPN installer resets config/ to 600 root", chown)
    return Check("secrets", True, f"{active} active in {path} (no engine of this root to compare with)")


def _ufw_check(runner: Runner, port: int) -> Check | None:
    """Our tagged rule or the operator's own allow/limit rule for the port; a failing `ufw status` is
    "unknown", never "inactive"."""
    if not runner.available("ufw") or os.geteuid() != 0:
        return None
    fix = f"ufw limit {port}/tcp comment 'MTProxy' (or rerun `mtproxy setup`)"
    current = ufw.state(runner)
    rules = ufw.port_rules(current, port) + [
        r for r in ufw.foreign_rules(current, port) if r.startswith(("ufw allow ", "ufw limit "))
    ]
    if current.active is None:
        return Check("firewall", None, f"UFW state unknown: `ufw status` failed ({current.error})")
    if not current.active:
        shown = "rule present" if rules else "no rule for the port yet"
        return Check("firewall", None, f"UFW is inactive ({shown})")
    if rules:
        return Check("firewall", True, f"UFW: {rules[0].removeprefix('ufw ')}")
    return Check("firewall", False, f"no UFW rule for {port}/tcp (the VPN installer removes 8443 to 8452)", fix)


def _service_check(service: ServiceState, engine_here: bool) -> Check:
    name = service.name
    if service.manager == "none" or service.state == "not installed":
        if service.manager == "none" and not service.problem.startswith("setup installed no service"):
            # no record of this root: the host's container or unit is not looked at, let alone reported
            detail = f"{service.problem}: no container or unit of this root"
        else:
            detail = service.problem or "not installed"
        return Check("service", None if engine_here else False, detail,
                     "" if engine_here else "install it with `mtproxy setup`")
    if service.state == "not ours":
        return Check("service", False, service.problem, "rerun `mtproxy setup` for this root")
    if service.manager == "docker":
        health = f" ({service.health})" if service.health else ""
        ok = service.running and service.health in ("", "healthy", "starting")
        return Check("service", ok, f"container {name}: {service.state}{health}",
                     "" if ok else f"docker start {name}; docker logs {name}")
    return Check("service", service.running, f"systemd unit {name}: {service.state}",
                 "" if service.running else f"systemctl start {name}; journalctl -u {name}")


def collect(env: Env) -> tuple[list[Check], Settings | None, dict[str, Any] | None]:
    """Every check, the settings, and this root's engine's /stats.json (None when no engine of this root
    answers: another installation's is never taken for it)."""
    checks: list[Check] = []
    try:
        settings: Settings | None = load_settings(env)
    except StoreError as exc:
        settings = None
        checks.append(Check("settings", False, f"{exc.path}: {exc.problem}", exc.hint))
    effective = settings or Settings()
    own = ownership(env.paths)
    service = service_state(env.runner, HostLayout.resolve(env.paths.root), own)
    port = stats_port(own, effective)
    answer = fetch_engine(port)  # before the port probe below, which the engine does not count anyway
    engine = answer if engine_of_root(answer, own, env.paths) else None
    checks.append(_service_check(service, engine is not None))
    endpoint = f"127.0.0.1:{port}"
    if engine is not None:
        checks.append(Check("stats", True, f"answering on {endpoint}"))
    elif answer is not None:
        checks.append(Check("stats", False, f"{endpoint} answers for another installation (it reads "
                                            f"{answer.get('store')}, not {env.paths.secrets_file})",
                            "give this root its own stats_port, or use that installation's root"))
    else:
        checks.append(Check("stats", False, f"nothing answers on {endpoint}", "start the proxy and read its log"))
    accepting = _port_accepts(effective.port)
    if accepting and engine is None and not service.running:
        checks.append(Check("port", None, f"{effective.port}/tcp accepts connections, but not for a proxy of "
                                          "this root"))
    else:
        checks.append(Check("port", accepting,
                            f"{effective.port}/tcp accepting connections" if accepting
                            else f"nothing accepts connections on {effective.port}/tcp",
                            "" if accepting else "start the proxy, or check `mtproxy set-port`"))
    checks.append(_store_check(env, service, engine))
    firewall = _ufw_check(env.runner, effective.port)
    if firewall is not None:
        checks.append(firewall)
    return checks, settings, engine


def _engine_int(engine: dict[str, Any] | None, key: str) -> int | None:
    value = engine.get(key) if engine is not None else None
    return value if isinstance(value, int) else None


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
    checks, settings, engine = collect(env)
    healthy = all(c.ok is not False for c in checks)
    port = (settings or Settings()).port
    active = _engine_int(engine, "active")
    total = _engine_int(engine, "total")
    uptime = _engine_int(engine, "uptime")
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
            env.out(check_line(c, env.ok_mark))
        env.out(f"    port:        {port}/tcp")
        env.out(f"    connections: {human_count(active)} active, {human_count(total)} total")
        env.out(f"    uptime:      {human_duration(uptime)}")
    return int(ExitStatus.OK if healthy else ExitStatus.UNHEALTHY)


COMMANDS = [status]
