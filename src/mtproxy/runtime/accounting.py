"""Per-secret usage shared by all workers: a fixed table in shared memory, one slot per secret id.

Created by the supervisor before fork(), so every worker maps the same pages. A slot holds what the
ledger (accounts/usage.py) has not absorbed yet: sessions open now, sessions and bytes since the last
drain, the period's bytes already in the ledger (`base`, so a worker can compare persisted + live with a
quota without reading any file), first/last seen, and a small set of recent client addresses.

Safety: every read and write of a slot happens under one OFD lock (runtime/shared.py), so an admission's
check and its increment are one step for all workers (two workers cannot both take the last connection),
and a drain moves bytes from the live counters to `base` at once (nothing counted twice or lost). A worker
killed holding the lock releases it; what it left is whole integers written before it died. A critical
section is a few struct reads and writes (microseconds); the relay adds bytes per flush quantum, not per
read, so the lock is taken a handful of times per session-second. Sessions of a secret without limits take
no lock at all: their worker counts them and `fold`s the count in once a second (runtime/enforce.py).

Memory: SLOT_SIZE bytes per slot (832) for `capacity` slots (default 16384: 13 MiB of address space).
The pages are anonymous and touched only when a slot is used, so resident memory follows the number of
secrets, not the capacity. Ids are placed by open addressing on a stable 64-bit hash of the id; a slot is
never freed while the engine runs (ids ever served since start-up count against the capacity); a full
table answers None and that secret is served unaccounted, with a warning by the caller.

Client addresses: only a keyed 64-bit hash and the time last seen are stored, IP_ENTRIES per secret. The
count of distinct addresses in the window is exact up to IP_ENTRIES; past that the oldest entry is
replaced, so max_unique_ips is enforceable up to IP_ENTRIES (a larger limit behaves as no limit).
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from dataclasses import dataclass, field
from datetime import datetime

from mtproxy.accounts.limits import Limits
from mtproxy.accounts.policy import Refusal, Usage, admission
from mtproxy.runtime.shared import ThreadSafeSharedLock

DEFAULT_CAPACITY = 16384
IP_ENTRIES = 64

# tag (hash of the id; 0 = free), open now, opened since drain, bytes in, bytes out since drain,
# period bytes already in the ledger, first seen, last seen (Unix seconds; 0.0 = never)
_HEAD = struct.Struct("<QqQQQQdd")
_IP = struct.Struct("<QI")  # keyed hash of the address (0 = empty), last seen (whole Unix seconds)
SLOT_SIZE = _HEAD.size + IP_ENTRIES * _IP.size
_IPS = struct.Struct("<" + "QI" * IP_ENTRIES)  # a slot's address entries at once


@dataclass(frozen=True)
class Live:
    """A slot's figures at one moment; after `drain` the ones since the previous drain."""

    connections: int = 0
    opened: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    base: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(frozen=True)
class Fold:
    """What one worker counted for one secret since its last fold (see `AccountingTable.fold`)."""

    opened: int = 0  # sessions admitted
    open_delta: int = 0  # sessions admitted minus sessions ended
    bytes_in: int = 0
    bytes_out: int = 0
    addresses: list[tuple[int, float]] = field(default_factory=list)  # (keyed hash, last seen), one per address
    ip_since: float = 0.0  # the secret's unique-IP window starts here (Unix seconds): older entries are free
    first: float = 0.0  # earliest and latest activity (Unix seconds; 0.0 = none)
    last: float = 0.0


def _tag(secret_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(secret_id.encode(), digest_size=8).digest(), "little") or 1


class AccountingTable:
    """The shared table. Methods take a slot number from `slot()`; `now` is wall time (policy and stats)."""

    def __init__(self, ip_key: bytes, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the accounting table needs at least one slot")
        self.capacity = capacity
        self._memory = mmap.mmap(-1, capacity * SLOT_SIZE)
        self._lock = ThreadSafeSharedLock("accounting")
        self._ip_key = ip_key
        self._slots: dict[str, int] = {}

    def close(self) -> None:
        self._memory.close()
        self._lock.close()

    def slot(self, secret_id: str) -> int | None:
        """The id's slot, claimed on first use by whichever process asks first; None when the table is full."""
        known = self._slots.get(secret_id)
        if known is not None:
            return known
        tag = _tag(secret_id)
        with self._lock:
            for step in range(self.capacity):
                index = (tag + step) % self.capacity
                held = _HEAD.unpack_from(self._memory, index * SLOT_SIZE)[0]
                if held == tag:
                    break
                if held == 0:
                    _HEAD.pack_into(self._memory, index * SLOT_SIZE, tag, 0, 0, 0, 0, 0, 0.0, 0.0)
                    break
            else:
                return None
        self._slots[secret_id] = index
        return index

    def ip_hash(self, address: str) -> int:
        return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8, key=self._ip_key).digest(),
                              "little") or 1

    def admit(self, slot: int, limits: Limits, address: str, now: datetime) -> Refusal | None:
        """Decide a new session and, when admitted, count it, all under the lock (None: admitted)."""
        stamp = now.timestamp()
        ip = self.ip_hash(address)
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, period, first, _last = _HEAD.unpack_from(self._memory, base)
            known, free, oldest, _seen, distinct = self._scan(base, ip, stamp - limits.unique_ip_window)
            usage = Usage(connections=open_now, unique_ips=distinct + (0 if known >= 0 else 1),
                          period_bytes=period + b_in + b_out)
            refusal = admission(limits, usage, now)
            if refusal is not None:
                return refusal
            entry = known if known >= 0 else free if free >= 0 else oldest
            _IP.pack_into(self._memory, base + _HEAD.size + entry * _IP.size, ip, int(stamp))
            _HEAD.pack_into(self._memory, base, tag, open_now + 1, opened + 1, b_in, b_out, period,
                            first or stamp, stamp)
        return None

    def _scan(self, base: int, ip: int, since: float) -> tuple[int, int, int, int, int]:
        """(entry of ip or -1, a free or expired entry or -1, the oldest entry, its time, distinct in window).
        One unpack and list operations that run in C: this is on every session's admission."""
        values = _IPS.unpack_from(self._memory, base + _HEAD.size)
        seen = values[1::2]
        windowed = [held if stamp >= since else 0 for held, stamp in zip(values[0::2], seen, strict=True)]
        known = windowed.index(ip) if ip and ip in windowed else -1
        free = windowed.index(0) if 0 in windowed else -1
        distinct = IP_ENTRIES - windowed.count(0)
        if free >= 0:
            return known, free, 0, 0, distinct
        oldest_seen = min(seen)  # every entry is in the window here
        return known, free, seen.index(oldest_seen), oldest_seen, distinct

    def release(self, slot: int, now: datetime) -> None:
        """A session of this slot ended."""
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, period, first, _last = _HEAD.unpack_from(self._memory, base)
            _HEAD.pack_into(self._memory, base, tag, max(0, open_now - 1), opened, b_in, b_out, period, first,
                            now.timestamp())

    def add_bytes(self, slot: int, bytes_in: int, bytes_out: int, now: datetime) -> int:
        """Count bytes a session moved; returns the period's bytes so far (ledger + live) for the quota check."""
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, period, first, _last = _HEAD.unpack_from(self._memory, base)
            b_in += bytes_in
            b_out += bytes_out
            _HEAD.pack_into(self._memory, base, tag, open_now, opened, b_in, b_out, period, first or now.timestamp(),
                            now.timestamp())
        total: int = period + b_in + b_out
        return total

    def fold(self, slot: int, fold: Fold) -> None:
        """Add what a worker counted on its own since its last fold (sessions admitted without the table,
        bytes of unmetered sessions) in one locked step: the same figures `admit`, `release` and `add_bytes`
        would have written one session at a time, at most one fold interval late."""
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, period, first, last = _HEAD.unpack_from(self._memory, base)
            if fold.addresses:
                self._place(base, fold.addresses, fold.ip_since)
            first = min(first, fold.first) if first and fold.first else first or fold.first
            _HEAD.pack_into(self._memory, base, tag, max(0, open_now + fold.open_delta), opened + fold.opened,
                            b_in + fold.bytes_in, b_out + fold.bytes_out, period, first, max(last, fold.last))

    def _place(self, base: int, addresses: list[tuple[int, float]], since: float) -> None:
        """Record addresses (keyed hash, when seen) oldest first, as `admit` places one: its own entry, else a
        free or expired one, else the oldest. Only the newest IP_ENTRIES can survive, so only they are placed."""
        values = _IPS.unpack_from(self._memory, base + _HEAD.size)
        hashes, stamps = list(values[0::2]), list(values[1::2])
        where = {held: index for index, (held, stamp) in enumerate(zip(hashes, stamps, strict=True))
                 if held and stamp >= since}
        for ip, seen in sorted(addresses, key=lambda entry: entry[1])[-IP_ENTRIES:]:
            index = where.get(ip)
            if index is None:
                free = [i for i, (held, stamp) in enumerate(zip(hashes, stamps, strict=True))
                        if not held or stamp < since]
                index = free[0] if free else stamps.index(min(stamps))
                if where.get(hashes[index]) == index:
                    del where[hashes[index]]
                hashes[index] = ip
                where[ip] = index
                stamps[index] = 0
            stamps[index] = max(stamps[index], int(seen))
        _IPS.pack_into(self._memory, base + _HEAD.size,
                       *[value for pair in zip(hashes, stamps, strict=True) for value in pair])

    def read(self, slot: int) -> Live:
        with self._lock:
            figures = _HEAD.unpack_from(self._memory, slot * SLOT_SIZE)
        return Live(*figures[1:])

    def unique_ips(self, slot: int, window: int, now: datetime) -> int:
        with self._lock:
            distinct: int = self._scan(slot * SLOT_SIZE, 0, now.timestamp() - window)[4]
        return distinct

    def drain(self, slot: int) -> Live:
        """Take the figures since the last drain for the ledger: the live counters go to zero and their bytes
        into `base` in one step. Sessions open now and first/last seen stay."""
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, period, first, last = _HEAD.unpack_from(self._memory, base)
            _HEAD.pack_into(self._memory, base, tag, open_now, 0, 0, 0, period + b_in + b_out, first, last)
        return Live(open_now, opened, b_in, b_out, period, first, last)

    def set_base(self, slot: int, period_bytes: int) -> None:
        """The ledger's bytes for the current period: at start-up, a period rollover and a usage reset."""
        base = slot * SLOT_SIZE
        with self._lock:
            tag, open_now, opened, b_in, b_out, _period, first, last = _HEAD.unpack_from(self._memory, base)
            _HEAD.pack_into(self._memory, base, tag, open_now, opened, b_in, b_out, period_bytes, first, last)
