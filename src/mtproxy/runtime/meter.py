"""A session's share of its secret's accounting: bytes go to the shared table in batches, and the quota,
expiry and on/off state are checked at each batch.

The relay calls `moved(n_in, n_out)` after every read; that is an addition and a comparison until the
batch is full, then one locked update of the shared table (runtime/accounting.py) and a policy check.
A batch is `quantum` bytes, or less near a quota: a quarter of what the quota had left at the previous
batch, and never under `floor`. So a session alone on its secret overshoots a quota by at most
`floor` plus one read; N sessions of one secret moving at once, by at most N x (quantum + one read)
(each may have a batch in flight that the others' bytes already made too much); in practice far less,
because batches shrink as the quota nears.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from mtproxy.accounts.limits import Limits
from mtproxy.accounts.policy import Refusal, session_refusal
from mtproxy.runtime.accounting import AccountingTable

DEFAULT_QUANTUM = 256 * 1024
DEFAULT_FLOOR = 16 * 1024


class SessionMeter:
    __slots__ = ("_clock", "_floor", "_in", "_limits", "_out", "_quantum", "_slot", "_table", "_threshold")

    def __init__(self, table: AccountingTable, slot: int, limits: Limits, clock: Callable[[], datetime],
                 quantum: int = DEFAULT_QUANTUM, floor: int = DEFAULT_FLOOR) -> None:
        self._table = table
        self._slot = slot
        self._clock = clock
        self._quantum = quantum
        self._floor = min(floor, quantum)
        self._in = self._out = 0
        self._limits = limits
        self._threshold = quantum
        self._retune(table.read(slot).base if limits.quota is not None else 0)  # no lock without a quota

    def _retune(self, period_bytes: int) -> None:
        quota = self._limits.quota
        if quota is None:
            self._threshold = self._quantum
        else:
            left = max(0, quota.limit_bytes - period_bytes)
            self._threshold = max(self._floor, min(self._quantum, left // 4))

    def moved(self, bytes_in: int, bytes_out: int) -> Refusal | None:
        """Count a read's bytes; a refusal means: close this session now, for that reason."""
        self._in += bytes_in
        self._out += bytes_out
        if self._in + self._out < self._threshold:
            return None
        return self.flush()

    def flush(self) -> Refusal | None:
        period_bytes = self._table.add_bytes(self._slot, self._in, self._out, self._clock())
        self._in = self._out = 0
        self._retune(period_bytes)
        return session_refusal(self._limits, period_bytes, self._clock())

    def check(self) -> Refusal | None:
        """For the session's timer (expiry) and for a reload: flush what is pending and decide."""
        return self.flush()

    def set_limits(self, limits: Limits) -> Refusal | None:
        """A reload changed the secret's limits: they apply to this session from now on."""
        self._limits = limits
        return self.flush()

    def close(self) -> None:
        """The session ended: its last bytes are counted and its connection slot freed."""
        now = self._clock()
        if self._in or self._out:  # release() stamps last_seen too: one locked step when nothing is pending
            self._table.add_bytes(self._slot, self._in, self._out, now)
        self._in = self._out = 0
        self._table.release(self._slot, now)
