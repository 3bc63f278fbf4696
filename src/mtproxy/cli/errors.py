"""The CLI's exit statuses and the one error type commands raise: what went wrong, and what to do."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Every exit status the CLI uses; documented in docs/cli.md, stable for scripts."""

    OK = 0
    FAILURE = 1  # an internal error or a host command that failed
    USAGE = 2  # bad arguments or options (also click's own usage errors)
    NOT_FOUND = 3  # no secret matches the id, label or value given
    DATA = 4  # the store or settings file is malformed; left untouched
    PERMISSION = 5  # the OS refused to read or write a file
    CONFLICT = 6  # port in use or reserved, label taken, refused to prompt without a terminal
    UNAVAILABLE = 7  # no running proxy answered (stats) or a host tool is missing
    UNHEALTHY = 8  # `status` found at least one failed check
    INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    """A failure to report as `mtproxy: <what> — <todo>` with `status` as the exit status."""

    def __init__(self, what: str, todo: str = "", status: ExitStatus = ExitStatus.FAILURE) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.status = status

    def line(self) -> str:
        return f"mtproxy: {self.what}" + (f" — {self.todo}" if self.todo else "")
