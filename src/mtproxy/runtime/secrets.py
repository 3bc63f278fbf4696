"""Where the live secret set comes from: -S flags, the secrets store, or one generated and kept in a state file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtproxy.config import EngineConfig
from mtproxy.protocol.errors import SecretFormatError
from mtproxy.protocol.secret import Secret, SecretKind, generate_secret, parse_secret
from mtproxy.store import StoreError, read_store, write_atomic

log = logging.getLogger("mtproxy.secrets")

DEFAULT_TLS_DOMAIN = "www.google.com"
GENERATED_ID = "generated"


class SecretsError(Exception):
    """The secrets file could not be used; the previous set stays live."""


@dataclass(frozen=True)
class SecretSet:
    """One complete, validated set of (id, secret) pairs; reload swaps whole sets."""

    entries: tuple[tuple[str, Secret], ...]

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(s.domain for _, s in self.entries if s.domain)

    def fingerprint(self) -> dict[str, tuple[bytes, str]]:
        """id -> what identifies the secret; a changed value under the same id counts as removal."""
        return {sid: (s.key, s.kind.value) for sid, s in self.entries}


def read_secrets_file(path: Path) -> list[tuple[str, Secret]]:
    """Active secrets of the JSON store. Raises SecretsError naming the file on any problem."""
    try:
        data = read_store(path)
        return data.active_secrets()
    except StoreError as exc:
        raise SecretsError(f"{exc} — {exc.hint}" if exc.hint else str(exc)) from None
    except SecretFormatError as exc:
        raise SecretsError(str(exc)) from None


def load_secret_set(cfg: EngineConfig, secrets_file: Path | None,
                    generated: list[tuple[str, Secret]]) -> SecretSet:
    """Build the whole set; raises SecretsError when the file is broken (caller keeps the old set)."""
    entries: list[tuple[str, Secret]] = list(zip(cfg.secret_ids, cfg.secrets, strict=True)) + generated
    if secrets_file is not None:
        entries += read_secrets_file(secrets_file)
    unique: dict[str, Secret] = {}
    for sid, secret in entries:
        unique.setdefault(sid, secret)
    return SecretSet(tuple(unique.items()))


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
