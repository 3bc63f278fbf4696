"""The `mtproxy` program. `run` and `healthcheck` go straight to the engine without loading the operator
CLI: an image's health check runs every few seconds and should cost little; all else goes to the CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def version_asked(prog: str, argv: Sequence[str]) -> bool:
    """`--version` among a pass-through program's options (before any `--`): print `prog VERSION`.

    setup, uninstall and the engine parse their own flags; this gives every entry point the same answer.
    """
    options = list(argv)
    if "--" in options:
        options = options[: options.index("--")]
    if "--version" not in options:
        return False
    from .. import __version__

    sys.stdout.write(f"{prog} {__version__}\n")
    return True


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["healthcheck"]:
        from .healthcheck import healthcheck_command

        sys.exit(healthcheck_command(args[1:]))
    if args[:1] == ["run"]:
        if version_asked("mtproxy run", args[1:]):
            sys.exit(0)
        from .run import run_command

        sys.exit(run_command(args[1:]))
    from .main import main as cli_main

    cli_main()
