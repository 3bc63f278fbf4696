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
    lines = [TITLE]
    for check in checks:
        line = f"  {mark(check.ok)} {check.name}: {check.detail}"
        if check.fix and check.ok is False:
            line += f" — fix: {check.fix}"
        lines.append(line)
    lines.append(f"  {mark(None)} {summary}")
    return lines
