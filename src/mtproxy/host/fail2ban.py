"""fail2ban: install or remove the mtproxy jail and filter, and make a running fail2ban pick them up."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from . import templates
from .files import remove_file, write_file
from .layout import HostLayout
from .runner import Runner

JAIL = "mtproxy"


def _serves(layout: HostLayout) -> bool:
    """A running fail2ban reads /etc/fail2ban; files written elsewhere (tests, MTPROXY_SYSCONF) are not its."""
    return layout.fail2ban_dir == Path("/etc/fail2ban")


def running(runner: Runner) -> bool:
    if not runner.available("fail2ban-client"):
        return False
    return runner.run(["fail2ban-client", "ping"], check=False, mutates=False, timeout=15).ok


def install(runner: Runner, layout: HostLayout, log_file: Path, port: int) -> list[Path]:
    """Write the filter and the jail; reload fail2ban when it runs. Returns the files written."""
    # fail2ban refuses a jail whose log file does not exist yet.
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if not log_file.exists():
        log_file.touch(mode=0o640)
    written = [
        path for path, text in (
            (layout.fail2ban_filter, templates.fail2ban_filter()),
            (layout.fail2ban_jail, templates.fail2ban_jail(log_file, port)),
        ) if write_file(path, text, 0o644)
    ]
    if _serves(layout) and running(runner):
        runner.run(["fail2ban-client", "reload"], timeout=60)
    return written


def remove(runner: Runner, layout: HostLayout, only: Collection[Path] | None = None) -> list[Path]:
    """Remove the jail and filter (or just those of them in `only`, e.g. what the install record lists).
    With runner.dry_run nothing is removed: the files that would go are returned."""
    targets = [p for p in (layout.fail2ban_jail, layout.fail2ban_filter) if only is None or p in only]
    if runner.dry_run:
        return [p for p in targets if p.exists()]
    removed = [p for p in targets if remove_file(p)]
    if removed and _serves(layout) and running(runner):
        runner.run(["fail2ban-client", "reload"], timeout=60)
    return removed


def banned(runner: Runner) -> list[str]:
    """Addresses the running jail has banned now (empty when fail2ban or the jail is not running)."""
    result = runner.run(["fail2ban-client", "get", JAIL, "banip"], check=False, mutates=False, timeout=15)
    return result.stdout.split() if result.ok else []
