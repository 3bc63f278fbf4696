"""`mtproxy status --section`: the status checks as one block of the host's status report (`vless status`):
a title line, then one `✓`/`✗` line per check, no colour unless asked for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

TITLE = "MTProxy"


class CheckLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def fix(self) -> str: ...


def section_lines(checks: Sequence[CheckLike], mark: Callable[[bool | None], str], summary: str) -> list[str]:
    """The block's lines: the title, each check (a failing one with its fix), and the traffic summary."""
    return [TITLE, *(check_line(check, mark) for check in checks), f"  {mark(None)} {summary}"]


def check_line(check: CheckLike, mark: Callable[[bool | None], str]) -> str:
    """One check as `status` prints it: its mark, name and detail, and the fix when it failed."""
    line = f"  {mark(check.ok)} {check.name}: {check.detail}"
    if check.fix and check.ok is False:
        line += f" — fix: {check.fix}"
    return line
