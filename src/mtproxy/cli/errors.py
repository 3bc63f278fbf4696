"""The CLI's exit statuses and the one error type commands raise: what went wrong, and what to do."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from ..protocol.errors import SecretFormatError
from ..protocol.secret import parse_secret


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

    def line(self, typed: Iterable[str] = (), prog: str = "mtproxy") -> str:
        """The one-line message; secrets inside `typed` (the command line) are masked if it repeats them."""
        text = f"{prog}: {self.what}" + (f" — {self.todo}" if self.todo else "")
        return mask_secrets(text, typed)


_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z_-]+")
_MIN_SECRET_TEXT = 22  # the shortest way to write a secret: 16 bytes in unpadded base64url


def secret_tokens(text: str) -> list[str]:
    """The parts of `text` a client would accept as a secret (hex or base64url, with dd/ee prefixes)."""
    found = []
    for token in _TOKEN_SPLIT.split(text):
        if len(token) < _MIN_SECRET_TEXT:
            continue
        try:
            parse_secret(token)
        except SecretFormatError:
            continue
        found.append(token)
    return found


def mask_secrets(text: str, typed: Iterable[str] | None = None) -> str:
    """`text` with every secret it contains shown masked (`dd1a2b…4b5c`), so an error never echoes one.

    `typed`: look only for secrets inside these strings (what the operator typed), so a long path or
    word in an error that merely decodes as base64 is left alone; None: look in `text` itself.
    """
    sources = [text] if typed is None else list(typed)
    for source in sources:
        for token in secret_tokens(source):
            text = text.replace(token, parse_secret(token).masked())
    return text
