"""The one error type operations raise: what went wrong, what to do, and whose kind of failure it is."""

from __future__ import annotations

import enum


class Failure(enum.Enum):
    """What kind of failure: the CLI maps it to an exit status, the API to an HTTP status."""

    INVALID = "invalid"  # the input is wrong (a bad limit, label or value)
    NOT_FOUND = "not_found"  # no secret matches the reference
    CONFLICT = "conflict"  # taken label, refused to act without confirmation
    UNAVAILABLE = "unavailable"  # no server address for links, no proxy answering
    FAILED = "failed"  # a host step (restart) failed


class OpError(Exception):
    """`what` went wrong and `todo` says what to do; both safe to show (never a secret)."""

    def __init__(self, what: str, todo: str = "", failure: Failure = Failure.FAILED) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.failure = failure
