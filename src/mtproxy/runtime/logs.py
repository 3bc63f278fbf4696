"""Log setup and the one-line-per-rejected-handshake record fail2ban matches (format in docs/engine.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mtproxy.accounts.policy import Refusal
from mtproxy.protocol.errors import RejectReason

reject_log = logging.getLogger("mtproxy.reject")
log = logging.getLogger("mtproxy")


class _Formatter(logging.Formatter):
    """`<ISO8601 UTC> mtproxy[<pid>]: <message>`; the pid is read per record, so forked workers show theirs."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        message = record.getMessage()
        if record.name != reject_log.name and record.levelno != logging.INFO:
            message = f"{record.levelname.lower()}: {message}"
        line = f"{stamp} mtproxy[{os.getpid()}]: {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    """stderr always; a file too when asked (the reject lines go to both)."""
    root = logging.getLogger("mtproxy")
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(_Formatter())
        root.addHandler(handler)


def _bare(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host.split("%", 1)[0]


def log_reject(peer: tuple[str, int], local: tuple[str, int], reason: RejectReason) -> None:
    """Exactly one WARNING per rejected handshake; IPv6 addresses bare, ports numeric."""
    reject_log.warning(
        "rejected handshake from %s port %d on %s:%d: reason=%s",
        _bare(peer[0]), peer[1], _bare(local[0]), local[1], reason.value,
    )


def log_refused_connection(peer: tuple[str, int], local: tuple[str, int], reason: RejectReason, detail: str) -> None:
    """Exactly one WARNING per connection refused before any client spoke (--proxy-protocol: an untrusted
    source, a missing or broken PROXY header). Its own verb, which the shipped fail2ban filter does not count:
    the peer is the load balancer (or a misconfigured one), and banning it would ban every client behind it."""
    reject_log.warning(
        "rejected connection from %s port %d on %s:%d: reason=%s (%s)",
        _bare(peer[0]), peer[1], _bare(local[0]), local[1], reason.value, detail,
    )


def log_refusal(peer: tuple[str, int], local: tuple[str, int], reason: Refusal, secret_id: str) -> None:
    """Exactly one WARNING per session a secret's limits refused or closed, in the rejected-handshake shape
    but with its own verb: the client did authenticate, so the shipped fail2ban filter does not count it
    (banning an address for a spent quota would lock out everyone behind it, for every secret)."""
    reject_log.warning(
        "refused session from %s port %d on %s:%d: reason=%s id=%s",
        _bare(peer[0]), peer[1], _bare(local[0]), local[1], reason.value, secret_id,
    )


class Notice:
    """One log line per interval for an event that can happen thousands of times a second: the first
    occurrence is reported at once, later ones are counted and reported together when the interval ends."""

    __slots__ = ("_emit", "_interval", "_pending", "_timer")

    def __init__(self, interval: float, emit: Callable[[int], None]) -> None:
        self._interval = interval
        self._emit = emit
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None

    def hit(self) -> None:
        self._pending += 1
        if self._timer is None:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            count, self._pending = self._pending, 0
            self._emit(count)
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def close(self) -> None:
        """Stop the timer; what was counted since the last line is reported now, not lost."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            count, self._pending = self._pending, 0
            self._emit(count)
