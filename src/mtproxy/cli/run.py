"""`mtproxy run`: the engine's command line (official mtproto-proxy flags included) to an exit status."""

from __future__ import annotations

import sys

from mtproxy.config import ConfigError, resolve


def run_command(argv: list[str]) -> int:
    """Parse, resolve and run; configuration problems are one line on stderr and exit status 2."""
    from mtproxy.runtime.engine import StartupError, run_engine
    from mtproxy.runtime.startup import file_error

    try:
        cfg = resolve(argv)
    except ConfigError as exc:
        sys.stderr.write(f"mtproxy run: {exc}\n")
        return 2
    try:
        return run_engine(cfg)
    except StartupError as exc:
        sys.stderr.write(f"mtproxy run: {exc}\n")
        return 2
    except OSError as exc:  # one the start-up steps did not phrase themselves: still path, reason and fix
        sys.stderr.write(f"mtproxy run: {file_error('use', exc)}\n")
        return 1
    except KeyboardInterrupt:
        return 0
