"""Where the live secret set comes from: -S flags, the secrets store, or one generated and kept in a state file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mtproxy.accounts.limits import NO_LIMITS, Limits, parse_time
from mtproxy.config import EngineConfig
from mtproxy.protocol.adtag import ad_tag_bytes
from mtproxy.protocol.errors import SecretFormatError
from mtproxy.protocol.secret import Secret, SecretKind, generate_secret, parse_secret
from mtproxy.store import SecretRecord, StoreError, read_store, write_atomic

log = logging.getLogger("mtproxy.secrets")

DEFAULT_TLS_DOMAIN = "www.google.com"
GENERATED_ID = "generated"


class SecretsError(Exception):
    """The secrets file could not be used; the previous set stays live."""


@dataclass(frozen=True)
class SecretSet:
    """One complete, validated set of (id, secret) pairs; reload swaps whole sets.

    `limits`, `resets` and `labels` cover every entry of the store, disabled ones too (their limits say so;
    the usage ledger keeps their figures while they are off); ids from -S or the generated secret have none,
    which means no limits. `ad_tags` holds the store's per-secret ad tags (16 bytes each); an id without one
    gets the engine's global `-P` (`ad_tag_for`)."""

    entries: tuple[tuple[str, Secret], ...]
    limits: Mapping[str, Limits] = field(default_factory=dict, compare=False)
    resets: Mapping[str, datetime | None] = field(default_factory=dict, compare=False)
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    ad_tags: Mapping[str, bytes] = field(default_factory=dict, compare=False)

    def ad_tag_for(self, secret_id: str, global_tag: bytes | None) -> bytes | None:
        """The ad tag a client of `secret_id` is relayed with: its own, else the global one, else none."""
        return self.ad_tags.get(secret_id, global_tag)

    def all_limits(self) -> dict[str, Limits]:
        """Every id the engine accounts: the served ones (no limits unless the store gives some) and the
        store's disabled ones."""
        return {**{sid: NO_LIMITS for sid, _ in self.entries}, **self.limits}

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(s.domain for _, s in self.entries if s.domain)

    def fingerprint(self) -> dict[str, tuple[bytes, str]]:
        """id -> what identifies the secret; a changed value under the same id counts as removal."""
        return {sid: (s.key, s.kind.value) for sid, s in self.entries}


def read_records(path: Path) -> tuple[SecretRecord, ...]:
    """Every entry of the JSON store, active or not. Raises SecretsError naming the file on any problem."""
    try:
        return read_store(path).secrets
    except StoreError as exc:
        raise SecretsError(f"{exc} — {exc.hint}" if exc.hint else str(exc)) from None
    except SecretFormatError as exc:
        raise SecretsError(str(exc)) from None


def load_secret_set(cfg: EngineConfig, secrets_file: Path | None,
                    generated: list[tuple[str, Secret]]) -> SecretSet:
    """Build the whole set; raises SecretsError when the file is broken (caller keeps the old set)."""
    entries: list[tuple[str, Secret]] = list(zip(cfg.secret_ids, cfg.secrets, strict=True)) + generated
    limits: dict[str, Limits] = {}
    resets: dict[str, datetime | None] = {}
    labels: dict[str, str] = {}
    ad_tags: dict[str, bytes] = {}
    if secrets_file is not None:
        taken = {sid for sid, _ in entries}  # an id given with -S wins over the store's, limits included
        try:
            for rec in read_records(secrets_file):
                if rec.id in taken:
                    continue
                if rec.active:
                    entries.append((rec.id, rec.secret()))
                limits[rec.id] = rec.limits
                resets[rec.id] = parse_time(rec.usage_reset_at, "usage_reset_at") if rec.usage_reset_at else None
                labels[rec.id] = rec.label
                if rec.ad_tag:
                    ad_tags[rec.id] = ad_tag_bytes(rec.ad_tag)  # the store validated it
        except SecretFormatError as exc:
            raise SecretsError(str(exc)) from None
    unique: dict[str, Secret] = {}
    for sid, secret in entries:
        unique.setdefault(sid, secret)
    return SecretSet(tuple(unique.items()), limits, resets, labels, ad_tags)


def generated_secret(state_file: Path, domain: str | None, random_bytes: Callable[[int], bytes]) -> Secret:
    """The ee secret used when the operator gave none; created once, then read back so links survive restarts."""
    try:
        doc = json.loads(state_file.read_text(encoding="utf-8"))
        secret = parse_secret(str(doc["secret"]))
        if domain is None or secret.domain == domain:
            return secret
        log.warning("the fake-TLS domain changed to %s: generating a new secret", domain)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, SecretFormatError) as exc:
        log.warning("state file %s is unreadable (%s): generating a new secret", state_file, exc)
    secret = generate_secret(random_bytes(16), SecretKind.FAKE_TLS, domain or DEFAULT_TLS_DOMAIN)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(state_file, json.dumps({"version": 1, "secret": secret.to_hex()}).encode() + b"\n")
    return secret
