"""Per-client secret hints: which secret a client IP matched last, so a returning client costs one try.

Bounded two ways: at most `size` addresses (least recently confirmed dropped first) and each hint expires
after `ttl` seconds, so a hint for an address that moved on or a NAT that changed users does not linger.
A stale or wrong hint only costs one extra trial decryption; the full scan still follows."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_SIZE = 16384  # ~150 bytes each: ~2.5 MB per worker at most
DEFAULT_TTL = 300.0


class HintCache:
    """ip -> index of the secret that ip's last successful handshake used."""

    def __init__(self, size: int = DEFAULT_SIZE, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ip: str) -> int | None:
        entry = self._entries.get(ip)
        if entry is None:
            return None
        index, expires = entry
        if self._clock() >= expires:
            del self._entries[ip]
            return None
        return index

    def put(self, ip: str, index: int) -> None:
        entries = self._entries
        if ip in entries:
            entries.move_to_end(ip)
        entries[ip] = (index, self._clock() + self.ttl)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Secret indices change on reload: every hint is void."""
        self._entries.clear()
