"""The one place that starts host programs: argument lists (never a shell), stderr kept, dry-run, timeouts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


class CommandError(Exception):
    """A program could not be started, timed out, or exited non-zero when success was required."""

    def __init__(self, result: CommandResult, problem: str) -> None:
        super().__init__(f"{result.display}: {problem}")
        self.result = result
        self.problem = problem


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def display(self) -> str:
        return shlex.join(self.argv)

    def last_error_line(self) -> str:
        """The last non-empty stderr line: usually the one that says why."""
        for line in reversed(self.stderr.splitlines()):
            if line.strip():
                return line.strip()
        return f"exit status {self.returncode}"


@dataclass
class Runner:
    """Runs programs for the CLI and the deployment code; tests give it dry_run or a `which` of their own.

    `history` records every command asked for (run or not), so dry-run output and tests can show them.
    """

    dry_run: bool = False
    timeout: float = 120.0
    env: Mapping[str, str] | None = None
    which: Callable[[str], str | None] = shutil.which
    history: list[tuple[str, ...]] = field(default_factory=list)

    def available(self, program: str) -> bool:
        return self.which(program) is not None

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input_text: str | None = None,
        timeout: float | None = None,
        mutates: bool = True,
    ) -> CommandResult:
        """Run `argv`. With dry_run, commands that change the host (`mutates`) are only recorded.

        Read-only queries (mutates=False, e.g. `docker inspect`) still run in dry-run so the plan is real.
        """
        args = tuple(str(a) for a in argv)
        if not args:
            raise ValueError("empty command")
        self.history.append(args)
        if self.dry_run and mutates:
            return CommandResult(args, 0, dry_run=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("LC_ALL", "C")  # parse-stable messages from the tools
        try:
            proc = subprocess.run(
                args,
                input=input_text,
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                timeout=self.timeout if timeout is None else timeout,
                check=False,
                stdin=None if input_text is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            result = CommandResult(args, 127, stderr=f"{args[0]}: command not found")
            if check:
                raise CommandError(result, "not installed") from None
            return result
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            result = CommandResult(args, 124, stderr=stderr)
            if check:
                raise CommandError(result, f"timed out after {exc.timeout:.0f} s") from None
            return result
        except PermissionError:
            result = CommandResult(args, 126, stderr=f"{args[0]}: permission denied")
            if check:
                raise CommandError(result, "permission denied") from None
            return result
        result = CommandResult(args, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise CommandError(result, result.last_error_line())
        return result
