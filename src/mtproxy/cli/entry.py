"""The `mtproxy` program. `run` and `healthcheck` go straight to the engine without loading the operator
CLI: an image's health check runs every few seconds and should cost little; all else goes to the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["healthcheck"]:
        from .healthcheck import healthcheck_command

        sys.exit(healthcheck_command(args[1:]))
    if args[:1] == ["run"]:
        from .run import run_command

        sys.exit(run_command(args[1:]))
    from .main import main as cli_main

    cli_main()
