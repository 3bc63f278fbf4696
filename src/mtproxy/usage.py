"""Command-line usage errors as one line: the argument parser every entry point's own flags use.

argparse prints a usage block and exits 2 from inside `parse_args`; here a bad flag raises UsageError
instead, which the CLI's edge (cli/edge.py) prints as `PROG: what — see `PROG --help`` with ExitStatus.USAGE
(still 2). Kept free of imports beyond argparse: the engine's parser (config.py) uses it too.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(Exception):
    """An unknown option, a missing value, a value of the wrong type: what, and where the help is."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(f"{what} — {todo}")
        self.what = what
        self.todo = todo


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (--help and --version still print and exit 0)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")
