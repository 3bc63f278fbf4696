"""`mtproxy run`: the engine's command line (official mtproto-proxy flags included) to an exit status."""

from __future__ import annotations

from mtproxy.cli.edge import run_at_edge
from mtproxy.cli.errors import CliError, ExitStatus
from mtproxy.config import resolve


def run_command(argv: list[str]) -> int:
    """Parse, resolve and run through the CLI's one error edge: configuration and start-up problems are
    one line `mtproxy run: …` on stderr and ExitStatus.USAGE (2)."""
    return run_at_edge(lambda: _run(argv), prog="mtproxy run", typed=argv)


def _run(argv: list[str]) -> int:
    from mtproxy.runtime.engine import StartupError, run_engine
    from mtproxy.runtime.startup import file_error

    cfg = resolve(argv)  # ConfigError: the edge's ExitStatus.USAGE
    try:
        return run_engine(cfg)
    except StartupError as exc:
        raise CliError(str(exc), "", ExitStatus.USAGE) from None
    except OSError as exc:  # one the start-up steps did not phrase themselves: still path, reason and fix
        raise CliError(file_error("use", exc), "", ExitStatus.FAILURE) from None
    except KeyboardInterrupt:  # Ctrl-C on a foreground engine is how an operator stops it
        return ExitStatus.OK
