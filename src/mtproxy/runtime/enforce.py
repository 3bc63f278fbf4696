"""One worker's enforcement of per-secret limits: the narrow object a session asks at admission, and
that closes running sessions when a reload or the clock says so.

`open()` decides and counts a new session across all workers (runtime/accounting.py); a refusal is logged
(logs.log_refusal) and counted (Counters.refuse) here, once, so callers only close the connection. An
admitted session gets a Grant: its meter (batched byte accounting and quota check) and, with a rate limit,
one token bucket per direction. `update()` applies a reloaded secret set to running sessions; `tick()` is
for a timer (the earliest expiry, `next_expiry()`): both return the grants that must close now, already
logged and counted.

Per-session cost: a secret whose limits cannot refuse a session for what others use (no connection or
address cap, no quota, no rate limit; `counted_locally`) is admitted with no lock and no shared-memory
write: the worker counts its sessions, addresses and first/last activity (`_Pending`) and `sync()` folds
them into the shared table with the bytes, so every figure there is at most one sync late. Its expiry, if
any, is checked against the clock here. A reload that gives such a secret a limit the table must decide
(`update`) folds first, so the table counts the sessions already running, then gives each of them a meter
as if it had been admitted under the table; a reload the other way leaves running sessions on the table
until they end.

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
from mtproxy.accounts.policy import Refusal, next_check, session_refusal
from mtproxy.runtime.accounting import AccountingTable, Fold
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


def counted_locally(limits: Limits) -> bool:
    """Whether a session of a secret with these limits is admitted without the shared table: nothing it
    could be refused for depends on what other sessions used (its expiry is a comparison with the clock)."""
    return (limits.enabled and limits.max_connections is None and limits.max_unique_ips is None
            and limits.quota is None and limits.rate_limit is None)


class _Pending:
    """A worker's sessions of one secret admitted without the table, since the last `sync()`.
    Times are the enforcer's monotonic clock (cheap per session); the sync turns them into wall time."""

    __slots__ = ("addresses", "first", "last", "open_delta", "opened")

    def __init__(self, now: float) -> None:
        self.opened = 0
        self.open_delta = 0
        self.addresses: dict[str, float] = {}
        self.first = self.last = now


class Grant:
    """An admitted session's share of its secret's limits; `meter` is None when the table was full."""

    __slots__ = ("_enforcer", "closing", "deferred", "holder", "local", "meter", "metered", "peer", "rate_in",
                 "rate_out", "secret_id")

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
        self.deferred = False  # counted by the worker, folded into the table by sync() (no meter)

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
        self._on_table: frozenset[str] = frozenset()  # secret ids whose sessions the table admits
        self._pending: dict[str, _Pending] = {}

    def limits_of(self, secret_id: str) -> Limits:
        return self._limits.get(secret_id, NO_LIMITS)

    def open(self, secret_id: str, peer: tuple[str, int], local: tuple[str, int]) -> Grant | None:
        """Admit a session of an authenticated client (None: refused, logged and counted)."""
        if secret_id not in self._on_table:
            return self._open_locally(secret_id, peer, local)
        limits = self.limits_of(secret_id)
        slot = self._table.slot(secret_id)
        meter = None
        if slot is not None:
            refusal = self._table.admit(slot, limits, peer[0], self._clock())
            if refusal is not None:
                self._refuse(secret_id, peer, local, refusal)
                return None
            meter = SessionMeter(self._table, slot, limits, self._clock)
        buckets = ((TokenBucket(limits.rate_limit, self._monotonic), TokenBucket(limits.rate_limit, self._monotonic))
                   if limits.rate_limit is not None else (None, None))
        grant = Grant(self, secret_id, peer, local, meter, *buckets)
        grant.metered = meter is not None and metered(limits)
        self._grants.setdefault(secret_id, set()).add(grant)
        return grant

    def _open_locally(self, secret_id: str, peer: tuple[str, int], local: tuple[str, int]) -> Grant | None:
        limits = self._limits.get(secret_id)
        if limits is not None and limits.expires_at is not None:
            refusal = session_refusal(limits, 0, self._clock())
            if refusal is not None:
                self._refuse(secret_id, peer, local, refusal)
                return None
        now = self._monotonic()
        pending = self._pending.get(secret_id)
        if pending is None:
            pending = self._pending[secret_id] = _Pending(now)
        pending.opened += 1
        pending.open_delta += 1
        pending.addresses[peer[0]] = pending.last = now
        grant = Grant(self, secret_id, peer, local, None, None, None)
        grant.deferred = True
        grants = self._grants.get(secret_id)
        if grants is None:
            grants = self._grants[secret_id] = set()
        grants.add(grant)
        return grant

    def _refuse(self, secret_id: str, peer: tuple[str, int], local: tuple[str, int], refusal: Refusal) -> None:
        self._count(secret_id, refusal)
        log_refusal(peer, local, refusal, secret_id)

    def sync(self) -> None:
        """Fold into the shared table what this worker counted on its own since the last call: sessions
        admitted without the table, and what unmetered sessions moved, from the worker's per-secret counters
        (metered sessions' meters add their own bytes). Once a second, before a reload applies, before the
        worker publishes its counters (so a dead worker's last report matches what it left in the table),
        and at exit."""
        moved: dict[str, tuple[int, int]] = {}
        counters = self._counters.secrets
        for secret_id in [sid for sid in self._synced if sid not in counters]:
            del self._synced[secret_id]  # a removed secret's counters start again from zero
        for secret_id, figures in counters.items():
            last_in, last_out = self._synced.get(secret_id, (0, 0))
            moved_in, moved_out = figures.bytes_in - last_in, figures.bytes_out - last_out
            if not moved_in and not moved_out:
                continue
            self._synced[secret_id] = (figures.bytes_in, figures.bytes_out)
            if not metered(self.limits_of(secret_id)):
                moved[secret_id] = (moved_in, moved_out)
        if not moved and not self._pending:
            return
        wall = self._clock().timestamp()
        offset = wall - self._monotonic()  # monotonic time + offset = wall time
        pending, self._pending = self._pending, {}
        for secret_id in moved.keys() | pending.keys():
            slot = self._table.slot(secret_id)
            if slot is None:
                continue
            bytes_in, bytes_out = moved.get(secret_id, (0, 0))
            sessions = pending.get(secret_id)
            if sessions is None:
                self._table.fold(slot, Fold(bytes_in=bytes_in, bytes_out=bytes_out, first=wall, last=wall))
                continue
            since = wall - self.limits_of(secret_id).unique_ip_window
            addresses = [(self._table.ip_hash(address), seen + offset) for address, seen in sessions.addresses.items()]
            self._table.fold(slot, Fold(sessions.opened, sessions.open_delta, bytes_in, bytes_out, addresses, since,
                                        sessions.first + offset, wall if moved.get(secret_id) else
                                        sessions.last + offset))

    def update(self, limits: Mapping[str, Limits]) -> list[Grant]:
        """A reload: the new limits apply to running sessions; returns those that must close."""
        self.sync()  # bytes moved so far are accounted under the limits they moved under; the table has
        # every session this worker admitted on its own
        self._limits = dict(limits)
        self._on_table = frozenset(sid for sid, secret_limits in self._limits.items()
                                   if not counted_locally(secret_limits))
        now = self._clock()
        closing = []
        for secret_id, grants in self._grants.items():
            new = self.limits_of(secret_id)
            for grant in grants:
                if grant.closing:
                    continue
                if grant.deferred and secret_id in self._on_table:
                    self._move_to_table(grant, new)
                refusal = (grant.meter.set_limits(new) if grant.meter is not None
                           else session_refusal(new, 0, now) if grant.deferred else None)
                if refusal is not None:
                    self.report(grant, refusal)
                    closing.append(grant)
                    continue
                _rerate(grant, new, self._monotonic)
                grant.metered = grant.meter is not None and metered(new)
                if grant.holder is not None:
                    grant.holder.rerated()
        return closing

    def _move_to_table(self, grant: Grant, limits: Limits) -> None:
        """A session admitted on this worker's count, whose secret the table decides now: the last sync
        counted it there, so from here on it is the table's like any other (its meter frees its slot)."""
        grant.deferred = False
        slot = self._table.slot(grant.secret_id)
        if slot is not None:
            grant.meter = SessionMeter(self._table, slot, limits, self._clock)

    def tick(self) -> list[Grant]:
        """For the expiry timer (and any periodic check): the sessions that must close now."""
        closing = []
        now = None
        for secret_id, grants in self._grants.items():
            for grant in grants:
                if grant.closing:
                    continue
                if grant.meter is not None:
                    refusal = grant.meter.check()
                elif grant.deferred:
                    now = now or self._clock()
                    refusal = session_refusal(self.limits_of(secret_id), 0, now)
                else:
                    refusal = None
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
        limits = self.limits_of(secret_id)
        if limits.expires_at is None:  # most secrets: no clock read (a timezone-aware datetime, ~1.5 µs)
            return None
        return next_check(limits, self._clock())

    def report(self, grant: Grant, refusal: Refusal) -> None:
        grant.closing = True
        self._count(grant.secret_id, refusal)
        log_refusal(grant.peer, grant.local, refusal, grant.secret_id)

    def _count(self, secret_id: str, refusal: Refusal) -> None:
        self._counters.refuse(refusal, secret_id)

    def forget(self, grant: Grant) -> None:
        if grant.deferred:
            grant.deferred = False
            now = self._monotonic()
            pending = self._pending.get(grant.secret_id)
            if pending is None:
                pending = self._pending[grant.secret_id] = _Pending(now)
            pending.open_delta -= 1
            pending.last = now
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
