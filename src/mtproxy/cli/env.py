"""The environment commands run in: paths, streams, terminal facts, clock, randomness, host runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import click

from ..host.runner import Runner
from ..paths import Paths, choose_root


class OutputClosed(Exception):
    """The reader of our output went away (`| head`). Not an OSError, so click does not turn it into exit 1."""


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def _colour_wanted(stream: TextIO, forced: bool | None) -> bool:
    if forced is not None:
        return forced
    if os.environ.get("NO_COLOR"):
        return False
    return _is_terminal(stream)


@dataclass
class Env:
    """Passed to every command through click's context object; tests build their own."""

    paths: Paths
    runner: Runner
    # None: whatever sys.stdout/sys.stderr are when a line is written (click's test runner swaps them).
    stdout_stream: TextIO | None = None
    stderr_stream: TextIO | None = None
    colour: bool = False
    terminal: bool = False  # stdout is a terminal that takes cursor control (NO_COLOR turns off colour only)
    interactive: bool = False  # stdin and stdout are a terminal, so we may ask questions
    server_override: str | None = None
    clock: Callable[[], datetime] = field(default_factory=lambda: (lambda: datetime.now(UTC)))
    random16: Callable[[], bytes] = field(default_factory=lambda: (lambda: os.urandom(16)))
    debug: bool = False
    # doctor's name lookups (host name -> addresses); None: the host's resolver. Tests pass their own.
    resolve: Callable[[str], list[str]] | None = None
    root_note: str | None = None  # which root is used and why, when that is worth saying (paths.choose_root)

    @classmethod
    def from_process(
        cls, root: str | None, *, colour: bool | None, dry_run: bool, server: str | None, debug: bool
    ) -> Env:
        stdin_tty = sys.stdin is not None and sys.stdin.isatty()
        choice = choose_root(root, os.environ, os.geteuid())
        return cls(
            paths=choice.paths,
            root_note=choice.note,
            runner=Runner(dry_run=dry_run),
            colour=_colour_wanted(sys.stdout, colour),
            terminal=_is_terminal(sys.stdout),
            interactive=stdin_tty and sys.stdout.isatty(),
            server_override=server or os.environ.get("MTPROXY_SERVER") or None,
            debug=debug,
        )

    @property
    def stdout(self) -> TextIO:
        return self.stdout_stream or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self.stderr_stream or sys.stderr

    # Output helpers: every line goes through here so colour is decided in one place.
    def out(self, text: str = "", nl: bool = True) -> None:
        try:
            click.echo(text, file=self.stdout, color=self.colour, nl=nl)
            if not nl:
                self.stdout.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def clear_screen(self) -> None:
        """Home and clear, on a terminal only; written past click, which strips escapes when colour is off."""
        if not self.terminal:
            return
        try:
            self.stdout.write("\x1b[H\x1b[2J")
            self.stdout.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def err(self, text: str) -> None:
        try:
            click.echo(text, file=self.stderr, color=self.colour)
        except BrokenPipeError:
            raise OutputClosed from None

    def style(self, text: str, **kw: object) -> str:
        return click.style(text, **kw) if self.colour else text  # type: ignore[arg-type]

    def ok_mark(self, ok: bool | None) -> str:
        if ok is None:
            return self.style("•", fg="yellow")
        return self.style("✓", fg="green") if ok else self.style("✗", fg="red", bold=True)

    def warn(self, text: str) -> None:
        self.err(self.style("warning: ", fg="yellow") + text)
