"""systemd: the alternative to Docker. Install, start, stop and remove the mtproxy unit."""

from __future__ import annotations

from pathlib import Path

from . import templates
from .files import remove_file, write_file
from .layout import HostLayout
from .runner import CommandError, Runner

UNIT = "mtproxy"
USER = "mtproxy"  # the unit's User=/Group=; setup adds it as a system user when the host lacks it
USERADD = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", USER]


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


def user_ids(runner: Runner) -> tuple[int, int] | None:
    """(uid, gid) of the service user, or None when the host has no such user (a query: runs in dry-run)."""
    uid = runner.run(["id", "-u", USER], check=False, mutates=False, timeout=30)
    if not uid.ok:
        return None
    gid = runner.run(["id", "-g", USER], mutates=False, timeout=30)
    try:
        return int(uid.stdout.strip()), int(gid.stdout.strip())
    except ValueError:
        raise CommandError(uid, f"unexpected output {uid.stdout.strip()!r}") from None


def ensure_user(runner: Runner) -> tuple[int, int, bool]:
    """(uid, gid, created): the service user, added with useradd when missing.

    In a dry run nothing is added and the ids are -1 (os.chown's "leave unchanged")."""
    ids = user_ids(runner)
    if ids is not None:
        return ids[0], ids[1], False
    runner.run(USERADD, timeout=60)
    if runner.dry_run:
        return -1, -1, True
    ids = user_ids(runner)
    if ids is None:
        raise CommandError(runner.run(["id", "-u", USER], check=False, mutates=False),
                           f"useradd ran but there is no user {USER}")
    return ids[0], ids[1], True


def remove_user(runner: Runner) -> bool:
    """Delete the service user (only ever called for a user setup itself added). Dry-run: reported only."""
    if runner.dry_run:
        return True
    return runner.run(["userdel", USER], check=False, timeout=60).ok
