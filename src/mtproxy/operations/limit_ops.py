"""Per-secret operations: set-limits, enable, disable, extend, reset-usage, set-ad-tag, and the API's update.

A `LimitsPatch` names only what changes (`KEEP` elsewhere); the merged limits are checked by
accounts/limits.py's own parser, so the CLI, the API and the store accept exactly the same values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from ..accounts.limits import Limits, LimitsError, QuotaPeriod, format_time, parse_limits, parse_time
from ..protocol.adtag import AdTagError, parse_ad_tag
from ..store import SecretRecord, StoreData, now_iso
from .apply import ChangeReport, change_secrets, check_label, resolve
from .context import Ops
from .errors import Failure, OpError


class Keep(enum.Enum):
    KEEP = "keep"


KEEP = Keep.KEEP
_QUOTA_FIELDS = {"quota_bytes": "limit_bytes", "quota_period": "period", "quota_anchor": "anchor_day",
                 "quota_timezone": "timezone"}


@dataclass(frozen=True)
class LimitsPatch:
    """What to change; None clears a limit (no limit), KEEP leaves it as it is."""

    enabled: bool | Literal[Keep.KEEP] = KEEP
    expires_at: datetime | Literal[Keep.KEEP] | None = KEEP
    max_connections: int | Literal[Keep.KEEP] | None = KEEP
    max_unique_ips: int | Literal[Keep.KEEP] | None = KEEP
    unique_ip_window: int | Literal[Keep.KEEP] = KEEP
    rate_limit: int | Literal[Keep.KEEP] | None = KEEP
    note: str | Literal[Keep.KEEP] = KEEP
    quota_bytes: int | Literal[Keep.KEEP] | None = KEEP  # None removes the quota
    quota_period: QuotaPeriod | Literal[Keep.KEEP] | None = KEEP  # None: a total, cleared only by reset-usage
    quota_anchor: int | Literal[Keep.KEEP] = KEEP
    quota_timezone: str | Literal[Keep.KEEP] = KEEP

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is KEEP for f in fields(self))

    def apply(self, limits: Limits, where: str = "limits") -> Limits:
        """The limits with this patch applied, checked as the store checks them (LimitsError if not)."""
        doc = limits.to_json()
        for f in fields(self):
            value = getattr(self, f.name)
            if value is KEEP or f.name in _QUOTA_FIELDS:
                continue
            doc[f.name] = format_time(value) if isinstance(value, datetime) else value
        quota_given = {k: getattr(self, k) for k in _QUOTA_FIELDS if getattr(self, k) is not KEEP}
        if quota_given.get("quota_bytes", KEEP) is None:
            doc["quota"] = None
        elif quota_given:
            quota = dict(doc["quota"] or {})
            if not quota and "quota_bytes" not in quota_given:
                raise LimitsError(f"{where}.quota: there is no quota to change; give its size first")
            for name, value in quota_given.items():
                quota[_QUOTA_FIELDS[name]] = value.value if isinstance(value, QuotaPeriod) else value
            doc["quota"] = quota
        return parse_limits(doc, where)

    @classmethod
    def from_json(cls, doc: Any, where: str = "limits") -> LimitsPatch:
        """A partial limits object (the JSON form of Limits; "quota" whole, or null) as a patch."""
        if not isinstance(doc, dict):
            raise LimitsError(f"{where} must be an object")
        full = parse_limits(doc, where)  # checks every field given; the rest are defaults and unused
        given: dict[str, Any] = {name: getattr(full, name) for name in doc if name != "quota"}
        if "quota" in doc:
            quota = full.quota
            given["quota_bytes"] = quota.limit_bytes if quota else None
            if quota is not None:
                given.update(quota_period=quota.period, quota_anchor=quota.anchor_day,
                             quota_timezone=quota.timezone)
        return cls(**given)


def _invalid(exc: LimitsError) -> OpError:
    return OpError(str(exc), "see `mtproxy set-limits --help`", Failure.INVALID)


def _change_limits(ops: Ops, ref: str, edit: Any) -> ChangeReport:
    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        old = resolve(data, ref)
        record = edit(old)
        return (data, old) if record == old else (data.with_record(record), record)

    return change_secrets(ops, change)


def set_limits(ops: Ops, ref: str, patch: LimitsPatch) -> ChangeReport:
    """Change some of a secret's limits; the engine applies them on the reload that follows."""

    def edit(old: SecretRecord) -> SecretRecord:
        try:
            return replace(old, limits=patch.apply(old.limits))
        except LimitsError as exc:
            raise _invalid(exc) from None

    return _change_limits(ops, ref, edit)


@dataclass(frozen=True)
class SecretUpdate:
    """The API's PATCH: label, description and limits, each optional."""

    label: str | Literal[Keep.KEEP] = KEEP
    description: str | Literal[Keep.KEEP] = KEEP
    limits: LimitsPatch = LimitsPatch()


def update_secret(ops: Ops, ref: str, update: SecretUpdate) -> ChangeReport:
    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        old = resolve(data, ref)
        record = old
        if update.label is not KEEP:
            if update.label:
                check_label(data, update.label, old.id)
            record = replace(record, label=update.label)
        if update.description is not KEEP:
            record = replace(record, description=update.description)
        try:
            record = replace(record, limits=update.limits.apply(record.limits))
        except LimitsError as exc:
            raise _invalid(exc) from None
        return (data, old) if record == old else (data.with_record(record), record)

    return change_secrets(ops, change)


def set_enabled(ops: Ops, ref: str, enabled: bool) -> ChangeReport:
    """enable/disable: the entry's "active" switch; a disabled secret is not served, its links stay valid."""
    return set_limits(ops, ref, LimitsPatch(enabled=enabled))


def extend(ops: Ops, ref: str, by: timedelta) -> ChangeReport:
    """Move the expiry later by `by`: from the current expiry, or from now when it has already passed."""
    if by <= timedelta(0):
        raise OpError("the duration must be positive", "e.g. 30d, 12h or 1w", Failure.INVALID)

    def edit(old: SecretRecord) -> SecretRecord:
        current = old.limits.expires_at
        if current is None:
            raise OpError(f"secret {old.name} never expires, so there is nothing to extend",
                          f"set an expiry with `mtproxy set-limits {old.name} --expires DATE`", Failure.CONFLICT)
        start = max(current, ops.clock())
        return replace(old, limits=replace(old.limits, expires_at=parse_time(format_time(start + by), "expiry")))

    return _change_limits(ops, ref, edit)


def reset_usage(ops: Ops, ref: str) -> ChangeReport:
    """Stamp the entry's usage_reset_at: the engine's ledger counts from then on, live on the reload."""

    def edit(old: SecretRecord) -> SecretRecord:
        return replace(old, usage_reset_at=now_iso(ops.clock))

    return _change_limits(ops, ref, edit)


def set_ad_tag(ops: Ops, ref: str, tag: str | None) -> ChangeReport:
    """Give a secret's clients their own ad tag instead of the engine's global `-P`; None clears it.
    Stored and validated now; the engine sends it once its middle-proxy path serves the secret."""
    if tag is None:
        wanted = ""
    else:
        try:
            wanted = parse_ad_tag(tag)
        except AdTagError as exc:
            raise OpError(str(exc), "copy the tag @MTProxybot gave you for this proxy", Failure.INVALID) from None

    def edit(old: SecretRecord) -> SecretRecord:
        return replace(old, ad_tag=wanted)

    return _change_limits(ops, ref, edit)
