"""Secret operations: add, list, get, remove, regenerate; each a change of the store plus a live reload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..accounts.limits import NO_LIMITS, Limits, format_time
from ..protocol.errors import SecretFormatError
from ..protocol.secret import SecretKind, generate_secret, validate_domain
from ..settings import OWN_LABEL_LENGTH, Settings
from ..store import SecretRecord, StoreData, now_iso, read_store
from .apply import ChangeReport, change_secrets, check_label, load_settings, new_id, resolve
from .context import Ops
from .errors import Failure, OpError
from .usage_source import UsageReport

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_LETTERS_DIGITS = _LETTERS + "0123456789"


@dataclass(frozen=True)
class AddRequest:
    """What the operator asked for; what is left out is decided by `choose_type`, the one rule for the CLI
    and the management API alike."""

    kind: SecretKind | None = None  # None: ee with the configured fake-TLS domain if there is one, else dd
    domain: str | None = None  # fake-TLS only
    label: str | None = None
    description: str = ""
    limits: Limits = NO_LIMITS
    own_domain: bool = False  # ee with its own random host name under the settings' secret_domain_base


@dataclass(frozen=True)
class SecretType:
    """What a new secret will be: its kind and domain (for `own_domain`, the base its host name goes
    under), and what the operator should hear about the choice."""

    kind: SecretKind
    domain: str | None = None
    own_domain: bool = False
    notes: tuple[str, ...] = ()


def choose_type(request: AddRequest, settings: Settings) -> SecretType:
    """The one rule for a new secret's type: an explicit domain or `own_domain` means ee; an explicit type
    is kept; with neither, ee with the configured fake-TLS domain if there is one, else dd. Raises OpError
    (invalid) for a combination that cannot be served."""
    kind = request.kind
    if request.own_domain:
        if kind not in (None, SecretKind.FAKE_TLS) or request.domain is not None:
            raise OpError("a secret with its own domain is ee, under the configured secret domain base",
                          "leave out the type and the domain", Failure.INVALID)
        if settings.secret_domain_base is None:
            raise OpError("no secret domain base is configured",
                          "set one first: `mtproxy set-secret-domain-base users.example.com`", Failure.INVALID)
        return SecretType(SecretKind.FAKE_TLS, settings.secret_domain_base, own_domain=True)
    if request.domain is not None:
        if kind not in (None, SecretKind.FAKE_TLS):
            raise OpError("a domain is for ee (fake-TLS) secrets only", "leave out the domain or the type",
                          Failure.INVALID)
        return SecretType(SecretKind.FAKE_TLS, _checked_domain(request.domain))
    if kind is None:
        kind = SecretKind.FAKE_TLS if settings.domain else SecretKind.PADDED
    if kind is SecretKind.FAKE_TLS:
        if settings.domain is None:
            raise OpError("an ee (fake-TLS) secret needs a domain and none is configured",
                          "give the host name of a real HTTPS site", Failure.INVALID)
        return SecretType(kind, settings.domain)
    notes: tuple[str, ...] = ()
    if settings.domain and not settings.extra.get("allow_classic"):
        notes = ("a fake-TLS domain is configured, so the proxy accepts only ee clients unless allow_classic is"
                 " set in the settings file; this secret will be refused until then",)
    return SecretType(kind, notes=notes)


def _checked_domain(domain: str) -> str:
    try:
        return validate_domain(domain.strip().lower())
    except SecretFormatError as exc:
        raise OpError(f"domain: {exc}", "give the host name of a real HTTPS site", Failure.INVALID) from None


def own_domain_label(random_bytes: Callable[[], bytes], taken: Callable[[str], bool]) -> str:
    """A random first label for a per-secret host name that `taken` does not refuse: a letter, then
    letters and digits, drawn without bias from the given randomness (bytes past a multiple of the alphabet
    are skipped)."""
    while True:
        chosen: list[str] = []
        while len(chosen) < OWN_LABEL_LENGTH:
            for byte in random_bytes():
                alphabet = _LETTERS if not chosen else _LETTERS_DIGITS
                if byte < 256 - 256 % len(alphabet):
                    chosen.append(alphabet[byte % len(alphabet)])
                    if len(chosen) == OWN_LABEL_LENGTH:
                        break
        label = "".join(chosen)
        if not taken(label):
            return label


@dataclass(frozen=True)
class SecretView:
    """One secret as listings show it: the entry (its value masked on output), its usage, and its state."""

    record: SecretRecord
    usage: UsageReport
    state: str  # "active", "disabled", "expired", "over quota"

    def to_json(self) -> dict[str, Any]:
        rec = self.record
        return {"id": rec.id, "label": rec.label, "masked": rec.masked(), "type": rec.type, "domain": rec.domain,
                "own_domain": rec.own_domain, "padding_enabled": rec.padding_enabled, "created_at": rec.created_at,
                "created_by": rec.created_by, "active": rec.active, "description": rec.description, "state": self.state,
                "limits": rec.limits.to_json(), "usage_reset_at": rec.usage_reset_at or None,
                "ad_tag": rec.ad_tag or None,
                "usage": self.usage.to_json()}


def state_of(record: SecretRecord, usage: UsageReport, now: datetime) -> str:
    limits = record.limits
    if not limits.enabled:
        return "disabled"
    if limits.expires_at is not None and limits.expires_at <= now:
        return "expired"
    if limits.quota is not None and usage.period_bytes >= limits.quota.limit_bytes and usage.source == "ledger":
        return "over quota"
    return "active"


def views(ops: Ops, data: StoreData, records: list[SecretRecord]) -> list[SecretView]:
    usage = ops.usage.usage(data) if records else {}
    now = ops.clock()
    return [SecretView(rec, usage.get(rec.id, UsageReport()), state_of(rec, usage.get(rec.id, UsageReport()), now))
            for rec in records]


@dataclass(frozen=True)
class Listing:
    secrets: list[SecretView]
    last_modified: str


def list_secrets(ops: Ops, include_inactive: bool = True) -> Listing:
    data = read_store(ops.paths.secrets_file)
    records = list(data.secrets) if include_inactive else data.active_records()
    return Listing(views(ops, data, records), data.last_modified)


def get_secret(ops: Ops, ref: str) -> SecretView:
    data = read_store(ops.paths.secrets_file)
    return views(ops, data, [resolve(data, ref)])[0]


def _fresh(ops: Ops, data: StoreData, kind: SecretKind, domain: str | None, own_domain: bool = False
           ) -> SecretRecord:
    """A new value (and, with `own_domain`, a new host name under the base `domain`) unlike any in the store."""
    if own_domain:
        assert domain is not None
        used = {rec.domain for rec in data.secrets}
        domain = f"{own_domain_label(ops.random16, lambda label: f'{label}.{domain}' in used)}.{domain}"
    while True:
        secret = generate_secret(ops.random16(), kind, domain)
        if all(rec.secret().key != secret.key for rec in data.secrets):
            return replace(SecretRecord.from_secret("", secret), own_domain=own_domain)


def add_secret(ops: Ops, request: AddRequest) -> ChangeReport:
    """A new secret from 16 bytes of the OS CSPRNG (or the context's randomness), of the type `choose_type`
    picks; its notes join the report's."""
    chosen = choose_type(request, load_settings(ops))

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        if request.label is not None:
            check_label(data, request.label)
        fresh = _fresh(ops, data, chosen.kind, chosen.domain, chosen.own_domain)
        record = replace(fresh, id=new_id(data), label=request.label or "", created_at=now_iso(ops.clock),
                         created_by=ops.actor, description=request.description, limits=request.limits)
        return data.with_record(record), record

    report = change_secrets(ops, change)
    return replace(report, notes=[*chosen.notes, *report.notes])


def remove_secret(ops: Ops, ref: str) -> ChangeReport:
    """Remove the entry; its clients are disconnected when the proxy reloads."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        record = resolve(data, ref)
        return data.without(record.id), record

    return change_secrets(ops, change)


def regenerate_secret(ops: Ops, ref: str) -> ChangeReport:
    """A new random value; id, label, type, domain and limits stay (a secret with its own host name gets a
    new random one under the same base)."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        old = resolve(data, ref)
        # a secret with its own host name gets a new one under the same base: the old name is no one's now
        base = old.domain.split(".", 1)[1] if old.own_domain and old.domain else old.domain
        fresh = _fresh(ops, data, old.secret().kind, base, old.own_domain)
        record = replace(old, value=fresh.value, domain=fresh.domain, created_at=now_iso(ops.clock),
                         created_by=ops.actor)
        return data.with_record(record), record

    return change_secrets(ops, change)


def describe_expiry(limits: Limits) -> str:
    return format_time(limits.expires_at) if limits.expires_at else "never"
