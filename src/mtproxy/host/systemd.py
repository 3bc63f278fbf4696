"""systemd: the alternative to Docker. Install, start, stop and remove the mtproxy unit."""

from __future__ import annotations

from pathlib import Path

from . import templates
from .files import remove_file, write_file
from .layout import HostLayout
from .runner import Runner

UNIT = "mtproxy"


def available(runner: Runner) -> bool:
    """systemd is the init system here (not just installed)."""
    return runner.available("systemctl") and Path("/run/systemd/system").is_dir()


def install(runner: Runner, layout: HostLayout, mtproxy_bin: str, port: int, user: str) -> bool:
    changed = write_file(layout.systemd_unit, templates.systemd_unit(mtproxy_bin, layout.root, port, user))
    runner.run(["systemctl", "daemon-reload"], timeout=60)
    runner.run(["systemctl", "enable", UNIT], timeout=60)
    runner.run(["systemctl", "restart", UNIT], timeout=120)
    return changed


def remove(runner: Runner, layout: HostLayout) -> bool:
    if not layout.systemd_unit.exists():
        return False
    if runner.dry_run:  # report only; the unit stays
        return True
    runner.run(["systemctl", "disable", "--now", UNIT], check=False, timeout=120)
    remove_file(layout.systemd_unit)
    runner.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    return True
