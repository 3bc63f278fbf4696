"""Restart the installed proxy after a settings change, keeping the firewall and the jail on its port.

`mtproxy set-port` / `set-workers` call `restart_proxy` (see cli/proxy_control.py): a new port must also
move the UFW rule and the fail2ban jail, or the new port is unprotected and the old one stays open.
"""

from __future__ import annotations

from ..paths import Paths
from ..settings import read_settings
from . import docker, fail2ban, systemd, templates, ufw
from .files import write_file
from .install import InstallRecord
from .layout import HostLayout
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
        fail2ban.install(runner, layout, paths.logs_dir / templates.LOG_NAME, port)
    record.port = port
    record.save(layout.install_record)
    return firewall


def restart_proxy(runner: Runner, paths: Paths | None = None) -> None:
    """Apply the settings file to the running installation (Compose service or systemd unit)."""
    paths = paths or Paths.resolve()
    layout = HostLayout.resolve(paths.root)
    record = InstallRecord.load(layout.install_record)
    settings = read_settings(paths.settings_file)
    if record is not None and record.port != settings.port:
        follow_port(runner, paths, layout, record, settings.port)
    if record is not None and record.manager == "systemd":
        systemd.install(runner, layout, systemd_bin(layout), settings.port, "mtproxy")
    elif layout.compose_file.exists():
        image = record.image if record else docker.DEFAULT_IMAGE
        # Crossing port 1024 changes the user and capabilities, so the Compose file is rewritten too.
        write_file(layout.compose_file, templates.compose_file(image, paths.root, settings.port,
                                                               settings.stats_port), 0o644)
        docker.compose_up(runner, layout.compose_file)
    else:
        runner.run(["docker", "restart", docker.CONTAINER], timeout=120)


def systemd_bin(layout: HostLayout) -> str:
    """The mtproxy program the installed unit runs (kept when rewriting the unit)."""
    try:
        for line in layout.systemd_unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                return line.split("=", 1)[1].split()[0]
    except OSError:
        pass
    return "/usr/local/bin/mtproxy"
