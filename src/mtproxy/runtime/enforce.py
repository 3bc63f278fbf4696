"""One worker's enforcement of per-secret limits: the narrow object a session asks at admission, and
that closes running sessions when a reload or the clock says so.

`open()` decides and counts a new session across all workers (runtime/accounting.py); a refusal is logged
(logs.log_refusal) and counted (Counters.refuse) here, once, so callers only close the connection. An
admitted session gets a Grant: its meter (batched byte accounting and quota check) and, with a rate limit,
one token bucket per direction. `update()` applies a reloaded secret set to running sessions; `tick()` is
for a timer (the earliest expiry, `next_expiry()`): both return the grants that must close now, already
logged and counted.

Per-chunk cost: only a *metered* session (its secret has a quota or a rate limit) calls `moved()` per read.
Any other session's bytes reach the shared table through `sync()`, once a second per worker, from the
worker's per-secret byte counters, which the relay keeps anyway; so a secret without limits costs the relay
nothing. A reload that adds or drops a quota or rate limit switches running sessions (`Holder.rerated`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from mtproxy.accounts.bucket import TokenBucket
from mtproxy.accounts.limits import NO_LIMITS, Limits
from mtproxy.accounts.policy import Refusal, next_check
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.logs import log_refusal
from mtproxy.runtime.meter import SessionMeter
from mtproxy.stats.counters import Counters


class Holder(Protocol):
    """The session a grant belongs to, as the enforcer needs it."""

    def close(self) -> None: ...

    def rerated(self) -> None:
        """The grant's `metered` or buckets changed (a reload)."""


def metered(limits: Limits) -> bool:
    """Whether a session of a secret with these limits must report every read (quota or rate limit)."""
    return limits.quota is not None or limits.rate_limit is not None


class Grant:
    """An admitted session's share of its secret's limits; `meter` is None when the table was full."""

    __slots__ = ("_enforcer", "closing", "holder", "local", "meter", "metered", "peer", "rate_in", "rate_out",
                 "secret_id")

    def __init__(self, enforcer: Enforcer, secret_id: str, peer: tuple[str, int], local: tuple[str, int],
                 meter: SessionMeter | None, rate_in: TokenBucket | None, rate_out: TokenBucket | None) -> None:
        self._enforcer = enforcer
        self.secret_id = secret_id
        self.peer = peer
        self.local = local
        self.meter = meter
        self.rate_in = rate_in  # client -> DC
        self.rate_out = rate_out  # DC -> client
        self.closing = False  # refused while running: reported once, the session is on its way out
        self.holder: Holder | None = None  # the session, which the enforcer closes or re-rates
        self.metered = False  # set by the enforcer: the relay calls moved() per read

    def moved(self, bytes_in: int, bytes_out: int) -> Refusal | None:
        """After each read; a refusal (already logged and counted) means: close the session now."""
        if self.meter is None or self.closing:
            return None
        refusal = self.meter.moved(bytes_in, bytes_out)
        if refusal is not None:
            self._enforcer.report(self, refusal)
        return refusal

    def close(self) -> None:
        """The session ended, for whatever reason: count its last bytes and free its connection."""
        self._enforcer.forget(self)
        if self.meter is not None:
            self.meter.close()
            self.meter = None


class Enforcer:
    def __init__(self, table: AccountingTable, counters: Counters, clock: Callable[[], datetime],
                 monotonic: Callable[[], float]) -> None:
        self._table = table
        self._counters = counters
        self._clock = clock
        self._monotonic = monotonic
        self._limits: dict[str, Limits] = {}
        self._grants: dict[str, set[Grant]] = {}
        self._synced: dict[str, tuple[int, int]] = {}  # per-secret byte counters at the last sync()

    def limits_of(self, secret_id: str) -> Limits:
        return self._limits.get(secret_id, NO_LIMITS)

    def open(self, secret_id: str, peer: tuple[str, int], local: tuple[str, int]) -> Grant | None:
        """Admit a session of an authenticated client (None: refused, logged and counted)."""
        limits = self.limits_of(secret_id)
        slot = self._table.slot(secret_id)
        meter = None
        if slot is not None:
            refusal = self._table.admit(slot, limits, peer[0], self._clock())
            if refusal is not None:
                self._count(secret_id, refusal)
                log_refusal(peer, local, refusal, secret_id)
                return None
            meter = SessionMeter(self._table, slot, limits, self._clock)
        buckets = ((TokenBucket(limits.rate_limit, self._monotonic), TokenBucket(limits.rate_limit, self._monotonic))
                   if limits.rate_limit is not None else (None, None))
        grant = Grant(self, secret_id, peer, local, meter, *buckets)
        grant.metered = meter is not None and metered(limits)
        self._grants.setdefault(secret_id, set()).add(grant)
        return grant

    def sync(self) -> None:
        """Add what unmetered sessions moved since the last call to the shared table, from the worker's
        per-secret counters (metered sessions' meters add their own bytes). Once a second and at exit."""
        counters = self._counters.secrets
        for secret_id in [sid for sid in self._synced if sid not in counters]:
            del self._synced[secret_id]  # a removed secret's counters start again from zero
        now = None
        for secret_id, figures in counters.items():
            last_in, last_out = self._synced.get(secret_id, (0, 0))
            moved_in, moved_out = figures.bytes_in - last_in, figures.bytes_out - last_out
            if not moved_in and not moved_out:
                continue
            self._synced[secret_id] = (figures.bytes_in, figures.bytes_out)
            if metered(self.limits_of(secret_id)):
                continue
            slot = self._table.slot(secret_id)
            if slot is not None:
                now = now or self._clock()
                self._table.add_bytes(slot, moved_in, moved_out, now)

    def update(self, limits: Mapping[str, Limits]) -> list[Grant]:
        """A reload: the new limits apply to running sessions; returns those that must close."""
        self.sync()  # bytes moved so far are accounted under the limits they moved under
        self._limits = dict(limits)
        closing = []
        for secret_id, grants in self._grants.items():
            new = self.limits_of(secret_id)
            for grant in grants:
                if grant.closing:
                    continue
                if grant.meter is not None:
                    refusal = grant.meter.set_limits(new)
                    if refusal is not None:
                        self.report(grant, refusal)
                        closing.append(grant)
                        continue
                _rerate(grant, new, self._monotonic)
                grant.metered = grant.meter is not None and metered(new)
                if grant.holder is not None:
                    grant.holder.rerated()
        return closing

    def tick(self) -> list[Grant]:
        """For the expiry timer (and any periodic check): the sessions that must close now."""
        closing = []
        for grants in self._grants.values():
            for grant in grants:
                refusal = grant.meter.check() if grant.meter is not None and not grant.closing else None
                if refusal is not None:
                    self.report(grant, refusal)
                    closing.append(grant)
        return closing

    def next_expiry(self) -> float | None:
        """Seconds until the earliest expiry among secrets with running sessions (None: none expires)."""
        now = self._clock()
        waits = [wait for secret_id, grants in self._grants.items() if grants
                 if (wait := next_check(self.limits_of(secret_id), now)) is not None]
        return min(waits, default=None)

    def next_expiry_of(self, secret_id: str) -> float | None:
        """Seconds until this secret expires (None: never), for re-arming the timer when a session opens."""
        return next_check(self.limits_of(secret_id), self._clock())

    def report(self, grant: Grant, refusal: Refusal) -> None:
        grant.closing = True
        self._count(grant.secret_id, refusal)
        log_refusal(grant.peer, grant.local, refusal, grant.secret_id)

    def _count(self, secret_id: str, refusal: Refusal) -> None:
        self._counters.refuse(refusal, secret_id)

    def forget(self, grant: Grant) -> None:
        grants = self._grants.get(grant.secret_id)
        if grants is not None:
            grants.discard(grant)
            if not grants:
                del self._grants[grant.secret_id]


def _rerate(grant: Grant, limits: Limits, monotonic: Callable[[], float]) -> None:
    if limits.rate_limit is None:
        grant.rate_in = grant.rate_out = None
    elif grant.rate_in is None or grant.rate_out is None:
        grant.rate_in, grant.rate_out = TokenBucket(limits.rate_limit, monotonic), TokenBucket(limits.rate_limit,
                                                                                                 monotonic)
    else:
        grant.rate_in.set_rate(limits.rate_limit)
        grant.rate_out.set_rate(limits.rate_limit)
