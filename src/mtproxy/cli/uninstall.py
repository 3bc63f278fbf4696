"""`mtproxy-uninstall` / `mtproxy uninstall`: remove the container, image, firewall rule, jail and files."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TextIO

from ..host.haproxy import HaproxyError
from ..host.install import uninstall
from ..host.layout import HostLayout
from ..host.runner import CommandError, Runner
from ..paths import Paths
from ..usage import OneLineParser
from .edge import run_host_command
from .errors import CliError, ExitStatus


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="mtproxy-uninstall",
        description="Remove mtproxy from this host: the rules setup added to HAProxy's config, container and "
                    "image (or systemd unit), UFW rule, fail2ban jail and filter, logrotate, logs and link files. "
                    "The secrets are kept unless --purge.",
        epilog="Examples:\n  mtproxy-uninstall\n  mtproxy-uninstall --yes --purge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--purge", action="store_true", help="also delete the secrets and settings (config/)")
    p.add_argument("--root", help="installation root (default $MTPROXY_ROOT or /opt/vless)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    return p


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None,
         stdin: TextIO | None = None, stdout: TextIO | None = None, runner: Runner | None = None,
         stderr: TextIO | None = None) -> int:
    """`mtproxy-uninstall` run through the CLI's one error edge (one line on stderr, an ExitStatus)."""
    return run_host_command(remove, "mtproxy-uninstall", argv, env, stdin, stdout, runner, stderr)


def remove(argv: list[str], environ: Mapping[str, str], stdin: TextIO, stdout: TextIO,
           runner: Runner | None) -> ExitStatus:
    """Confirm, then remove what setup installed; raises what the edge reports."""
    ns = build_parser().parse_args(argv)
    paths = Paths.resolve(ns.root, environ)
    layout = HostLayout.resolve(paths.root, environ)
    runner = runner or Runner(dry_run=ns.dry_run)
    keep = "" if ns.purge else f" (the secrets in {paths.config_dir} are kept)"
    if not ns.yes and not runner.dry_run:  # a dry run removes nothing, so it needs no confirmation
        if not (stdin.isatty() and stdout.isatty()):
            raise CliError("refusing to remove without confirmation", "pass --yes", ExitStatus.CONFLICT)
        stdout.write(f"Remove mtproxy from this host{keep}? [y/N]: ")
        stdout.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            stdout.write("Nothing removed.\n")
            return ExitStatus.OK
    if os.geteuid() != 0:
        raise CliError("must run as root", "run it again with sudo", ExitStatus.PERMISSION)
    stdout.write("Dry run, nothing is removed:\n" if runner.dry_run else "Removing mtproxy:\n")
    try:
        removed = uninstall(runner, paths, layout, ns.purge, stdout)
    except (CommandError, OSError) as exc:
        raise CliError(str(exc), "fix it and run mtproxy-uninstall again (it is safe to repeat)") from None
    except HaproxyError as exc:  # before anything else was removed: HAProxy still routes to a running proxy
        raise CliError(exc.what, (exc.todo + "; " if exc.todo else "") + "then run mtproxy-uninstall again") from None
    if runner.dry_run:
        stdout.write("Dry run: nothing was removed.\n")
    else:
        stdout.write(("Done" if removed else "Nothing was installed") + keep + ".\n")
    return ExitStatus.OK
