"""The one error edge of every entry point (`mtproxy` and its commands, run, healthcheck, setup, uninstall).

Commands raise typed errors; here each becomes one line `PROG: what went wrong — what to do` on stderr and
an ExitStatus. Tracebacks only with --debug; a closed pipe is not an error. Kept free of click and of the
operator commands, so `mtproxy run` and the image's frequent `mtproxy healthcheck` load little.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from ..usage import UsageError
from .errors import CliError, ExitStatus

if TYPE_CHECKING:
    from ..host.runner import Runner

HostCommand = Callable[[list[str], Mapping[str, str], TextIO, TextIO, "Runner | None"], int]


def run_at_edge(
    call: Callable[[], int | None],
    *,
    prog: str = "mtproxy",
    typed: Sequence[str] = (),
    debug: bool = False,
    err: TextIO | None = None,
) -> int:
    """Run `call` and map every outcome to an exit status; `typed` (the command line) is where secrets
    are looked for, so an error never repeats one."""
    try:
        return int(call() or 0)
    except SystemExit as exc:  # argparse's usage errors (2) and --help/--version (0)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else int(ExitStatus.FAILURE))
    except KeyboardInterrupt:
        error = CliError("interrupted", "", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe()
        return int(ExitStatus.OK)
    except Exception as exc:
        from .env import OutputClosed

        if isinstance(exc, OutputClosed):
            _quiet_broken_pipe()
            return int(ExitStatus.OK)
        known = as_cli_error(exc)
        if known is None and debug:
            import traceback

            traceback.print_exc()
        error = known or CliError(f"internal error: {type(exc).__name__}: {exc}",
                                  "rerun with --debug and report the traceback", ExitStatus.FAILURE)
    _say(error.line(typed, prog), sys.stderr if err is None else err)
    return int(error.status)


def as_cli_error(exc: Exception) -> CliError | None:
    """The one line and exit status for an error a module raised on purpose; None for a bug."""
    # Imported here: only a failing command pays for them.
    from ..config import ConfigError
    from ..host.install import InstallError
    from ..host.runner import CommandError
    from ..operations.errors import Failure, OpError
    from ..store import StoreAccessError, StoreError
    from .validation import Invalid

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, OpError):
        statuses = {Failure.INVALID: ExitStatus.USAGE, Failure.NOT_FOUND: ExitStatus.NOT_FOUND,
                    Failure.CONFLICT: ExitStatus.CONFLICT, Failure.UNAVAILABLE: ExitStatus.UNAVAILABLE,
                    Failure.FAILED: ExitStatus.FAILURE}
        return CliError(exc.what, exc.todo, statuses[exc.failure])
    if isinstance(exc, UsageError):
        return CliError(exc.what, exc.todo, ExitStatus.USAGE)
    if isinstance(exc, Invalid):
        return exc.cli_error()
    if isinstance(exc, ConfigError):
        return CliError(str(exc), "", ExitStatus.USAGE)
    if isinstance(exc, InstallError):
        return CliError(exc.what, exc.todo, ExitStatus.FAILURE)
    if isinstance(exc, StoreError):
        if isinstance(exc, StoreAccessError):
            return CliError(f"{exc.path}: {exc.problem}", exc.hint, ExitStatus.PERMISSION)
        kept = "the file was left untouched"
        return CliError(f"{exc.path}: {exc.problem}", f"{exc.hint}; {kept}" if exc.hint else kept, ExitStatus.DATA)
    if isinstance(exc, CommandError):
        return CliError(f"`{exc.result.display}` failed: {exc.problem}", "check the tool's own logs")
    return None


def _say(line: str, stream: TextIO) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (BrokenPipeError, ValueError):
        pass


def _quiet_broken_pipe() -> None:
    # The reader went away (`mtproxy list-secrets | head -1`): not an error. Point stdout at /dev/null so
    # the interpreter's final flush does not complain.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_host_command(body: HostCommand, prog: str, argv: list[str] | None, env: Mapping[str, str] | None,
                     stdin: TextIO | None, stdout: TextIO | None, runner: Runner | None,
                     stderr: TextIO | None) -> int:
    """`mtproxy-setup` and `mtproxy-uninstall`: the process's arguments, environment and streams unless a test
    passes its own, through the one edge."""
    args = sys.argv[1:] if argv is None else argv
    return run_at_edge(lambda: body(args, os.environ if env is None else env, sys.stdin if stdin is None else stdin,
                                    sys.stdout if stdout is None else stdout, runner),
                       prog=prog, typed=args, err=stderr)
