"""A bounded replay filter over caller-provided memory (a bytearray, or shared memory across workers).

The caller passes the time, and when several processes share the memory, holds their common lock
around `check_and_add`. Entries are 16-byte digests with their insertion time and expiry. A full bucket
evicts an expired entry, else the oldest one: long-lived entries (classic inits) must not push out
short-lived ones (fake-TLS hellos) that are younger, or a prober could replay a fresh hello."""

from __future__ import annotations

import struct
from collections.abc import Callable

DIGEST_SIZE = 16
WAYS = 8  # slots per bucket: a lookup scans one bucket, never the whole table
_SLOT = struct.Struct("<16sII")  # digest, inserted and expiry as unix seconds (expiry 0 = empty)
SLOT_SIZE = _SLOT.size
_BUCKET = struct.Struct("<" + "16sII" * WAYS)
_HEADER = 16  # reserved for a layout version and future counters

# The same lookup and insert on the same memory in one call (the native library's `mtp_replay_check`): given a
# 16-byte digest, the time in unix seconds and a ttl in seconds (0: look up only), whether it was seen.
ReplayCheck = Callable[[bytes, int, int], bool]


class ReplayFilter:
    """Remembers digests until they expire or are evicted by newer ones in the same bucket."""

    def __init__(self, memory: memoryview | bytearray,
                 accelerated: Callable[[memoryview], ReplayCheck] | None = None) -> None:
        view = memoryview(memory)
        buckets = (len(view) - _HEADER) // (SLOT_SIZE * WAYS)
        if buckets < 1:
            raise ValueError("replay filter memory is too small for one bucket")
        self._view = view
        self._buckets = buckets
        # the native check on the same memory, where the backend has one (~1 µs less a handshake)
        self._check = accelerated(view) if accelerated is not None else None

    @staticmethod
    def memory_size(capacity: int) -> int:
        """Bytes needed to remember about `capacity` digests."""
        buckets = max(1, -(-capacity // WAYS))
        return _HEADER + buckets * WAYS * SLOT_SIZE

    @classmethod
    def in_process(cls, capacity: int) -> ReplayFilter:
        return cls(bytearray(cls.memory_size(capacity)))

    @property
    def capacity(self) -> int:
        return self._buckets * WAYS

    def _bucket(self, key: bytes) -> tuple[int, tuple[bytes | int, ...]]:
        """The offset of `key`'s bucket and its slots' fields (digest, inserted, expiry for each), read in
        one unpack: slot by slot cost a Python step each, ~1 µs a handshake."""
        base = _HEADER + int.from_bytes(key[:8], "little") % self._buckets * WAYS * SLOT_SIZE
        return base, _BUCKET.unpack_from(self._view, base)

    def seen(self, digest: bytes, now: float) -> bool:
        """True if `digest` is remembered and has not expired; remembers nothing (a lookup before paying for
        a secret scan: only an authenticated init or hello may take a slot)."""
        if len(digest) < DIGEST_SIZE:
            raise ValueError("a replay digest is at least 16 bytes")
        key = bytes(digest[:DIGEST_SIZE])
        if self._check is not None:
            return self._check(key, int(now), 0)
        _, fields = self._bucket(key)
        return key in fields[0::3] and _live_match(fields, key, int(now))

    def check_and_add(self, digest: bytes, now: float, ttl: float) -> bool:
        """True if `digest` was seen and has not expired; otherwise remember it for `ttl` seconds."""
        if len(digest) < DIGEST_SIZE:
            raise ValueError("a replay digest is at least 16 bytes")
        key = bytes(digest[:DIGEST_SIZE])
        now_s = int(now)
        if self._check is not None:
            return self._check(key, now_s, max(1, int(ttl)))
        base, fields = self._bucket(key)
        if key in fields[0::3] and _live_match(fields, key, now_s):
            return True
        # an expired slot (the longest expired) first, else the oldest insertion; C calls, no Python loop
        expiries: tuple[int, ...] = fields[2::3]  # type: ignore[assignment]
        soonest = min(expiries)
        if soonest <= now_s:
            victim = expiries.index(soonest)
        else:
            inserted: tuple[int, ...] = fields[1::3]  # type: ignore[assignment]
            victim = inserted.index(min(inserted))
        _SLOT.pack_into(self._view, base + victim * SLOT_SIZE, key, now_s & 0xFFFFFFFF,
                        min(now_s + max(1, int(ttl)), 0xFFFFFFFF))
        return False


def _live_match(fields: tuple[bytes | int, ...], key: bytes, now_s: int) -> bool:
    """Whether a slot holding `key` in this bucket has not expired."""
    return any(fields[way] == key and fields[way + 2] > now_s for way in range(0, 3 * WAYS, 3))  # type: ignore[operator]
