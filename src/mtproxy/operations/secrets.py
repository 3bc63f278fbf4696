"""Secret operations: add, list, get, remove, regenerate; each a change of the store plus a live reload."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..accounts.limits import NO_LIMITS, Limits, format_time
from ..protocol.secret import SecretKind, generate_secret
from ..store import SecretRecord, StoreData, now_iso, read_store
from .apply import ChangeReport, change_secrets, check_label, new_id, resolve
from .context import Ops
from .usage_source import UsageReport


@dataclass(frozen=True)
class AddRequest:
    kind: SecretKind
    domain: str | None = None  # fake-TLS only, already checked
    label: str | None = None
    description: str = ""
    limits: Limits = NO_LIMITS


@dataclass(frozen=True)
class SecretView:
    """One secret as listings show it: the entry (its value masked on output), its usage, and its state."""

    record: SecretRecord
    usage: UsageReport
    state: str  # "active", "disabled", "expired", "over quota"

    def to_json(self) -> dict[str, Any]:
        rec = self.record
        return {"id": rec.id, "label": rec.label, "masked": rec.masked(), "type": rec.type, "domain": rec.domain,
                "padding_enabled": rec.padding_enabled, "created_at": rec.created_at, "created_by": rec.created_by,
                "active": rec.active, "description": rec.description, "state": self.state,
                "limits": rec.limits.to_json(), "usage_reset_at": rec.usage_reset_at or None,
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


def _fresh(ops: Ops, data: StoreData, kind: SecretKind, domain: str | None) -> SecretRecord:
    while True:
        secret = generate_secret(ops.random16(), kind, domain)
        if all(rec.secret().key != secret.key for rec in data.secrets):
            return SecretRecord.from_secret("", secret)


def add_secret(ops: Ops, request: AddRequest) -> ChangeReport:
    """A new secret from 16 bytes of the OS CSPRNG (or the context's randomness)."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        if request.label is not None:
            check_label(data, request.label)
        fresh = _fresh(ops, data, request.kind, request.domain)
        record = replace(fresh, id=new_id(data), label=request.label or "", created_at=now_iso(ops.clock),
                         created_by=ops.actor, description=request.description, limits=request.limits)
        return data.with_record(record), record

    return change_secrets(ops, change)


def remove_secret(ops: Ops, ref: str) -> ChangeReport:
    """Remove the entry; its clients are disconnected when the proxy reloads."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        record = resolve(data, ref)
        return data.without(record.id), record

    return change_secrets(ops, change)


def regenerate_secret(ops: Ops, ref: str) -> ChangeReport:
    """A new random value; id, label, type, domain and limits stay."""

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        old = resolve(data, ref)
        fresh = _fresh(ops, data, old.secret().kind, old.domain)
        record = replace(old, value=fresh.value, created_at=now_iso(ops.clock), created_by=ops.actor)
        return data.with_record(record), record

    return change_secrets(ops, change)


def describe_expiry(limits: Limits) -> str:
    return format_time(limits.expires_at) if limits.expires_at else "never"
