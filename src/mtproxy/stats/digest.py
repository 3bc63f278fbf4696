"""One digest of a secret set, computed alike by the engine (what it loaded) and the CLI (what the store holds).

Over the ids and the values (kind, key, domain), so a secret regenerated under the same id changes it too.
Only a truncated SHA-256 leaves the process, served on the loopback stats endpoint: it reveals no key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from mtproxy.protocol.secret import Secret


def secrets_digest(entries: Iterable[tuple[str, Secret]]) -> str:
    lines = sorted(f"{sid}\0{s.kind.value}\0{s.key.hex()}\0{s.domain or ''}" for sid, s in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
