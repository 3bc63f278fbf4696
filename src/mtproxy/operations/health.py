"""The installation's health checks `status` shows and `doctor` builds on: service, stats endpoint, port,
secrets store, firewall. Only the root in use is looked at: its own installation (host/record.py) and an
engine that serves its store.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host import systemd, templates, ufw
from ..host.layout import HostLayout
from ..host.record import Ownership, ownership
from ..host.runner import CommandError, Runner
from ..host.service import ServiceState, main_pid, service_state
from ..paths import Paths
from ..settings import Settings, read_settings
from ..store import StoreError, read_store
from .proxy_control import compare, engine_of_root, fetch_engine, stats_port


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: informational, neither healthy nor not
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Health:
    """Every check, and what they were computed from (doctor reuses these rather than asking again)."""

    checks: list[Check]
    settings: Settings | None  # None when the settings file is unreadable (a check says why)
    engine: dict[str, Any] | None  # this root's engine's /stats.json; None when none of this root answers
    own: Ownership
    service: ServiceState

    @property
    def effective(self) -> Settings:
        return self.settings or Settings()


def port_accepts(port: int, timeout: float = 1.0, host: str = "") -> bool:
    """A connect test of the engine's own listener: `host` as it binds it (a wildcard or "" is tried on the
    loopback addresses)."""
    hosts = ("127.0.0.1", "::1") if host in ("", "0.0.0.0", "::", "*") else (host,)
    for address in hosts:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def _loopback_only(settings: Settings) -> bool:
    """The engine binds loopback addresses only (behind HAProxy): no firewall rule concerns it."""
    return all(host in ("127.0.0.1", "::1", "localhost") for host, _ in settings.bound)


def proxy_uid(runner: Runner, service: ServiceState) -> int | None:
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


def service_uid(runner: Runner, service: ServiceState, engine: dict[str, Any] | None,
                installed: Ownership | None = None) -> int | None:
    """Who the proxy runs as: the running process, else what its engine says; with `installed` (doctor)
    also who it will run as when started: the user the installed Compose file or unit names."""
    uid = proxy_uid(runner, service)
    if uid is None and engine is not None and isinstance(engine.get("uid"), int):
        uid = int(engine["uid"])
    if uid is None and installed is not None and installed.record is not None:
        uid = _installed_uid(runner, installed.record.manager, HostLayout.resolve(Path(installed.record.root)))
    return uid


def _installed_uid(runner: Runner, manager: str, layout: HostLayout) -> int | None:
    if manager == "docker":
        try:
            found = re.search(r'^\s*user:\s*"?(\d+)', layout.compose_file.read_text(), re.MULTILINE)
        except OSError:
            return templates.CONTAINER_UID
        return int(found.group(1)) if found else templates.CONTAINER_UID
    if manager == "systemd" and runner.available("id"):
        try:
            ids = systemd.user_ids(runner)
        except CommandError:
            return None
        return ids[0] if ids is not None else None
    return None


def readable_by(path: Path, uid: int) -> bool:
    """Owner/other permission bits only; group membership inside a container is not visible from here."""
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    return bool(st.st_mode & (stat.S_IROTH | stat.S_IRGRP))


def store_check(paths: Paths, uid: int | None, engine: dict[str, Any] | None) -> Check:
    """The store itself, then whether this root's engine serves it (count and digest, every worker), or
    without an engine whether the proxy's user `uid` could read it."""
    path = paths.secrets_file
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
    chown = f"chown {uid} {path} (the engine picks the fix up by itself)" if uid is not None else (
        f"make {path} readable by the proxy's user (or rerun `mtproxy setup`)")
    if engine is not None:  # what the engine itself says beats any prediction from the file's mode
        verdict = compare(engine, data)
        if verdict.ok:
            return Check("secrets", True, f"{active} active in {path}; {verdict.detail}")
        fix = chown if "cannot read" in verdict.detail else "wait a few seconds; if it stays, read the proxy's log"
        return Check("secrets", False, verdict.detail, fix)
    if uid is not None and not readable_by(path, uid):
        st = path.stat()
        return Check("secrets", False,
                     f"the proxy (uid {uid}) cannot read {path} (mode {stat.S_IMODE(st.st_mode):o}, "
                     f"owner {st.st_uid}); the VPN installer resets config/ to 600 root", chown)
    return Check("secrets", True, f"{active} active in {path} (no engine of this root to compare with)")


def ufw_check(runner: Runner, port: int) -> Check | None:
    """Our tagged rule or the operator's own allow/limit rule for the port; a failing `ufw status` is
    "unknown", never "inactive". None when UFW is not there to ask (or we are not root)."""
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


def service_check(service: ServiceState, engine_here: bool) -> Check:
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


def port_check(port: int, accepting: bool, engine_here: bool, service: ServiceState) -> Check:
    if accepting and not engine_here and not service.running:
        return Check("port", None, f"{port}/tcp accepts connections, but not for a proxy of this root")
    return Check("port", accepting,
                 f"{port}/tcp accepting connections" if accepting
                 else f"nothing accepts connections on {port}/tcp",
                 "" if accepting else "start the proxy, or check `mtproxy set-port`")


def collect(paths: Paths, runner: Runner, local_probes: bool = True, predict_uid: bool = False) -> Health:
    """Every check of `status`. Without `local_probes` nothing is contacted, not even on loopback: the
    stats endpoint and the port's connect test are left out (doctor --offline). With `predict_uid` a stopped
    proxy's store is judged for the user its installation runs it as (doctor)."""
    checks: list[Check] = []
    try:
        settings: Settings | None = read_settings(paths.settings_file)
    except StoreError as exc:
        settings = None
        checks.append(Check("settings", False, f"{exc.path}: {exc.problem}", exc.hint))
    effective = settings or Settings()
    own = ownership(paths)
    service = service_state(runner, HostLayout.resolve(paths.root), own)
    port = stats_port(own, effective)
    # before the port probe below, which the engine does not count anyway
    answer = fetch_engine(port) if local_probes else None
    engine = answer if engine_of_root(answer, own, paths) else None
    checks.append(service_check(service, engine is not None))
    endpoint = f"127.0.0.1:{port}"
    if not local_probes:
        pass
    elif engine is not None:
        checks.append(Check("stats", True, f"answering on {endpoint}"))
    elif answer is not None:
        checks.append(Check("stats", False, f"{endpoint} answers for another installation (it reads "
                                            f"{answer.get('store')}, not {paths.secrets_file})",
                            "give this root its own stats_port, or use that installation's root"))
    else:
        checks.append(Check("stats", False, f"nothing answers on {endpoint}", "start the proxy and read its log"))
    host, port = effective.bound[0]  # where the engine binds: behind HAProxy the loopback port, not 443
    if local_probes:
        checks.append(port_check(port, port_accepts(port, host=host), engine is not None, service))
    uid = service_uid(runner, service, engine, own if predict_uid else None)
    checks.append(store_check(paths, uid, engine))
    firewall = (Check("firewall", None, f"listens on {host}:{port} only (behind HAProxy: port {effective.port} "
                                        "is the stack's); no UFW rule needed")
                if _loopback_only(effective) else ufw_check(runner, port))
    if firewall is not None:
        checks.append(firewall)
    return Health(checks, settings, engine, own, service)

