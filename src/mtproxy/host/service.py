"""Restart the installed proxy after a settings change, keeping the firewall and the jail on its port.

`mtproxy set-port` / `set-workers` call `restart_proxy` (see cli/proxy_control.py): a new port must also
move the UFW rule and the fail2ban jail, or the new port is unprotected and the old one stays open.
Every action here takes the root's `Ownership` (host/record.py): without this root's own install record
no container or unit is queried, signalled or restarted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..paths import Paths
from ..settings import read_settings
from . import docker, fail2ban, systemd, templates, ufw
from .files import write_file
from .layout import HostLayout
from .record import InstallRecord, Ownership, same_root, service_name
from .runner import Runner


def follow_port(runner: Runner, paths: Paths, layout: HostLayout, record: InstallRecord, port: int) -> str:
    """Move our UFW rule (only when setup added it) and the jail from the recorded port to `port`, then
    record it. With runner.dry_run nothing changes. Returns a line saying what happened to the firewall."""
    old = record.port
    move_ufw = record.ufw_added and record.ufw_mode in ufw.MODES and runner.available("ufw")
    if runner.dry_run:
        if move_ufw:
            return f"would move the UFW rule: ufw {record.ufw_mode} {old}/tcp -> {port}/tcp, and the jail"
        return "would move the fail2ban jail; no UFW rule of ours to move"
    firewall = f"no UFW rule of ours to move: open {port}/tcp in your firewall"
    if move_ufw:
        ufw.remove_rule(runner, old)
        ufw.add_rule(runner, port, record.ufw_mode)
        record.ufw_added = ufw.has_rule(runner, port, record.ufw_mode)
        firewall = (f"UFW rule moved: ufw {record.ufw_mode} {port}/tcp (the rule for {old} removed)"
                    if record.ufw_added else
                    f"the UFW rule for {old} removed; your own rule for {port} is kept, none added")
    if layout.fail2ban_jail.exists():
        # clients connect to HAProxy's public port behind it: the jail bans there, wherever the engine binds
        jail_port = record.haproxy.public_port if record.haproxy is not None else port
        fail2ban.install(runner, layout, paths.logs_dir / templates.LOG_NAME, jail_port)
    record.port = port
    record.save(layout.install_record)
    return firewall


@dataclass(frozen=True)
class ServiceState:
    """The container or unit this root's record names, as its manager reports it."""

    manager: str  # "docker", "systemd" or "none"
    name: str  # the container or unit ("" for none)
    state: str  # the manager's word (running, exited, active, failed, …), "not installed" or "not ours"
    running: bool  # running AND serving this root: the only state that may be signalled or restarted
    health: str = ""  # Docker's healthcheck status when the image defines one
    problem: str = ""  # why nothing may be signalled or restarted ("" when it may)


def service_state(runner: Runner, layout: HostLayout, own: Ownership) -> ServiceState:
    """Read-only queries (they run under --dry-run too), and only about the service the record names:
    without this root's record no container or unit is asked about at all. A service that exists but
    serves another root (the container was recreated from another root's Compose file; the unit runs
    another `--root`) is "not ours", never "running"."""
    record = own.record
    if record is None:
        return ServiceState("none", "", "not installed", False, problem=own.problem)
    name = record.service
    if record.manager == "docker" and name:
        if not runner.available("docker"):
            return ServiceState("docker", name, "unknown", False, problem="the docker command is not installed")
        result = runner.run(
            ["docker", "inspect", "--format", "{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}"
             "{{end}}|{{index .Config.Labels \"com.docker.compose.project.config_files\"}}", name],
            check=False, mutates=False, timeout=15)
        if not result.ok:
            return ServiceState("docker", name, "not created", False, problem=f"there is no container {name}")
        status, _, rest = result.stdout.strip().partition("|")
        health, _, config_files = rest.partition("|")
        if not _made_from(config_files, layout):
            made_from = config_files or "no Compose file"
            return ServiceState("docker", name, "not ours", False, health, problem=(
                f"the container {name} was created from {made_from}, not from {layout.compose_file}"))
        return ServiceState("docker", name, status, status == "running", health)
    if record.manager == "systemd" and name:
        if not runner.available("systemctl"):
            return ServiceState("systemd", name, "unknown", False, problem="systemctl is not installed")
        show = runner.run(["systemctl", "show", "--property=LoadState,ActiveState,ExecStart", name],
                          check=False, mutates=False, timeout=15)
        fields = dict(line.partition("=")[::2] for line in show.stdout.splitlines())
        if not show.ok or fields.get("LoadState", "not-found") in ("", "not-found"):
            return ServiceState("systemd", name, "not installed", False, problem=f"there is no unit {name}")
        state = fields.get("ActiveState", "") or "unknown"
        unit_root = _unit_root(fields.get("ExecStart", ""))
        if unit_root is None or not same_root(unit_root, record.root):
            return ServiceState("systemd", name, "not ours", False, problem=(
                f"the unit {name} does not run `--root {record.root}`"))
        return ServiceState("systemd", name, state, state == "active")
    return ServiceState("none", "", "not installed", False, problem="setup installed no service (--manager none)")


def main_pid(runner: Runner, service: ServiceState) -> int | None:
    """The main process of this root's running container or unit, as its manager reports it (a read-only
    query: it runs under --dry-run too). None when it is not running or the manager does not say."""
    if not service.running:
        return None
    if service.manager == "docker":
        argv = ["docker", "inspect", "--format", "{{.State.Pid}}", service.name]
    elif service.manager == "systemd":
        argv = ["systemctl", "show", "--property=MainPID", "--value", service.name]
    else:
        return None
    pid = runner.run(argv, check=False, mutates=False, timeout=15).stdout.strip()
    return int(pid) if pid.isdigit() and pid != "0" else None


def reload_command(service: ServiceState) -> list[str]:
    """The command that sends SIGHUP (reload the secrets) to the engine of this root's service."""
    if service.manager == "docker":
        return ["docker", "kill", "--signal", "HUP", service.name]
    return ["systemctl", "kill", "--kill-whom=main", "--signal=HUP", service.name]


def signal_reload(runner: Runner, service: ServiceState) -> bool:
    """SIGHUP this root's running service (only when `service_state` found it running and ours); True when
    the manager accepted. Under --dry-run the command is shown and nothing is sent."""
    if not service.running:
        return False
    return runner.run(reload_command(service), check=False, timeout=15).ok


def foreign_service(runner: Runner, layout: HostLayout, manager: str) -> str:
    """Setup's guard: the container or unit name is fixed, so one that already serves another root would be
    replaced by this root's. Returns what it is, or "" when there is none or it is this root's."""
    name = service_name(manager)
    if manager == "docker" and runner.available("docker"):
        result = runner.run(["docker", "inspect", "--format",
                             "{{index .Config.Labels \"com.docker.compose.project.config_files\"}}", name],
                            check=False, mutates=False, timeout=15)
        made_from = result.stdout.strip() or "no Compose file"
        if result.ok and not _made_from(made_from, layout):
            return f"the container {name} belongs to another installation (created from {made_from})"
    if manager == "systemd" and layout.systemd_unit.exists():
        for line in layout.systemd_unit.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("ExecStart="):
                root = _unit_root(line)
                if root is not None and not same_root(root, layout.root):
                    return f"the unit {name} ({layout.systemd_unit}) serves another installation (--root {root})"
    return ""


def _made_from(config_files: str, layout: HostLayout) -> bool:
    """Was the container created from this root's Compose file? (Compose's config_files label: absolute
    paths, comma-separated; compared resolved, as a relative or symlinked --root names the same file.)"""
    return any(f and same_root(f, layout.compose_file) for f in config_files.split(","))


def _unit_root(exec_start: str) -> str | None:
    """The `--root` of `systemctl show`'s ExecStart ("{ path=… ; argv[]=mtproxy run --root /x … }")."""
    words = exec_start.replace(";", " ").split()
    for i, word in enumerate(words[:-1]):
        if word == "--root":
            return words[i + 1]
    return None


def restart_proxy(runner: Runner, paths: Paths, own: Ownership) -> None:
    """Apply the settings file to this root's own installation (Compose service or systemd unit).
    Refuses (ValueError) without this root's record: nothing else is ever restarted."""
    record = own.record
    if record is None:
        raise ValueError(own.problem)
    layout = HostLayout.resolve(paths.root)
    settings = read_settings(paths.settings_file)
    # the port the engine binds: behind HAProxy the loopback one (`listen`), never HAProxy's port in links
    port = settings.bound_port
    if record.port != port:
        follow_port(runner, paths, layout, record, port)
    if record.stats_port != settings.stats_port and not runner.dry_run:
        record.stats_port = settings.stats_port  # the restarted engine serves stats there
        record.save(layout.install_record)
    if record.manager == "systemd":
        systemd.install(runner, layout, systemd_bin(layout), port, "mtproxy")
    elif record.manager == "docker":
        if not layout.compose_file.exists():
            raise ValueError(f"the Compose file {layout.compose_file} is missing (rerun `mtproxy setup`)")
        # Crossing port 1024 changes the user and capabilities, so the Compose file is rewritten too.
        if not runner.dry_run:
            write_file(layout.compose_file, templates.compose_file(record.image, paths.root, port,
                                                                   settings.stats_port), 0o644)
        docker.compose_up(runner, layout.compose_file)


def systemd_bin(layout: HostLayout) -> str:
    """The mtproxy program the installed unit runs (kept when rewriting the unit)."""
    try:
        for line in layout.systemd_unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                return line.split("=", 1)[1].split()[0]
    except OSError:
        pass
    return "/usr/local/bin/mtproxy"
