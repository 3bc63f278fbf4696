"""The secrets store: versioned JSON schema, migration, a lock, and atomic 0600 writes.

The engine only calls `read_store`; the CLI changes the file through `update_store`, which holds an
exclusive lock on a sibling lock file (the data file itself is replaced by rename, so it cannot carry the
lock) for the whole read-modify-write, so concurrent commands never lose an update.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .accounts.limits import NO_LIMITS, Limits, LimitsError, parse_limits, parse_time
from .protocol.adtag import AdTagError, parse_ad_tag
from .protocol.errors import SecretFormatError
from .protocol.secret import Secret, SecretKind, parse_secret, validate_domain

STORE_VERSION = 4
FILE_MODE = 0o600
MAX_STORE_BYTES = 4 * 1024 * 1024  # thousands of secrets fit; anything bigger is not our file

# Store "type" token <-> protocol kind. "plain" is the plan's word for a classic secret.
TYPE_TO_KIND = {"plain": SecretKind.CLASSIC, "dd": SecretKind.PADDED, "ee": SecretKind.FAKE_TLS}
KIND_TO_TYPE = {kind: name for name, kind in TYPE_TO_KIND.items()}

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be used; the message names the file and says what went wrong."""

    def __init__(self, path: Path, problem: str, hint: str = "") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.hint = hint


class StoreFormatError(StoreError):
    """The file exists but is not a store we can read (malformed JSON, bad field, newer version)."""


class StoreAccessError(StoreError):
    """The operating system refused to read or write the file or its directory."""


def now_iso(clock: Callable[[], datetime] | None = None) -> str:
    """A UTC timestamp as the store writes it: 2026-11-25T21:30:00Z."""
    moment = clock() if clock is not None else datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SecretRecord:
    """One entry of the store. `value` is the secret as `Secret.to_hex()` writes it; never shown in repr."""

    id: str
    value: str = field(repr=False)
    type: str
    label: str = ""
    domain: str | None = None
    padding_enabled: bool = False
    created_at: str = ""
    created_by: str = ""
    description: str = ""
    # Its `enabled` is the entry's "active" in the file: the one switch for whether the engine serves it.
    limits: Limits = NO_LIMITS
    # `reset-usage` sets it: the usage ledger counts this secret's usage from then on (live, on reload)
    usage_reset_at: str = ""
    # ee with its own random host name (`add-secret --own-domain`): `regenerate` draws a new one under the
    # same base (the domain without its first label)
    own_domain: bool = False
    # Its clients' ad tag (32 lowercase hex digits), instead of the engine's global `-P`; "" = the global one
    ad_tag: str = ""

    @property
    def active(self) -> bool:
        """Served by the engine; `mtproxy disable` clears it (the file keeps it as "active")."""
        return self.limits.enabled

    def secret(self) -> Secret:
        return parse_secret(self.value)

    @property
    def name(self) -> str:
        """What tables show: the label, or the id when there is none."""
        return self.label or self.id

    def masked(self) -> str:
        return self.secret().masked()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "value": self.value,
            "type": self.type,
            "domain": self.domain,
            "padding_enabled": self.padding_enabled,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "active": self.active,
            "description": self.description,
            **({"limits": limits_to_store(self.limits)} if has_limits(self.limits) else {}),
            **({"usage_reset_at": self.usage_reset_at} if self.usage_reset_at else {}),
            **({"own_domain": True} if self.own_domain else {}),
            **({"ad_tag": self.ad_tag} if self.ad_tag else {}),
        }

    @classmethod
    def from_secret(
        cls,
        secret_id: str,
        secret: Secret,
        *,
        label: str = "",
        created_at: str = "",
        created_by: str = "",
        description: str = "",
        active: bool = True,
        limits: Limits = NO_LIMITS,
    ) -> SecretRecord:
        return cls(
            id=secret_id,
            value=secret.to_hex(),
            type=KIND_TO_TYPE[secret.kind],
            label=label,
            domain=secret.domain,
            padding_enabled=secret.kind is not SecretKind.CLASSIC,
            created_at=created_at,
            created_by=created_by,
            description=description,
            limits=replace(limits, enabled=active),
        )


def has_limits(limits: Limits) -> bool:
    """Anything beyond the on/off switch (which the entry keeps as "active")."""
    return replace(limits, enabled=True) != NO_LIMITS


def limits_to_store(limits: Limits) -> dict[str, Any]:
    """The entry's "limits" object: Limits.to_json without "enabled", which the entry holds as "active"."""
    doc = limits.to_json()
    del doc["enabled"]
    return doc


@dataclass(frozen=True)
class Migration:
    """One upgrade of the file's schema, kept in metadata.migrations so the operator can see it happened."""

    from_version: str
    to_version: int
    at: str = ""  # stamped when the migrated file is first written

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_version, "to": self.to_version, "at": self.at}


@dataclass(frozen=True)
class StoreData:
    """The whole store as read from disk; immutable, so the engine can swap it in one step."""

    secrets: tuple[SecretRecord, ...] = ()
    last_modified: str = ""
    version: int = STORE_VERSION
    migrations: tuple[Migration, ...] = ()

    def active_secrets(self) -> list[tuple[str, Secret]]:
        """(id, Secret) for every active entry, in file order: what the engine serves."""
        return [(rec.id, rec.secret()) for rec in self.secrets if rec.active]

    def active_records(self) -> list[SecretRecord]:
        return [rec for rec in self.secrets if rec.active]

    def default_record(self) -> SecretRecord | None:
        """The plan's "default secret" (mtproxy_link.txt): the first active entry."""
        active = self.active_records()
        return active[0] if active else None

    def find(self, ref: str) -> SecretRecord | None:
        """Look an entry up by id, then label, then secret value (any spelling parse_secret accepts)."""
        ref = ref.strip()
        for rec in self.secrets:
            if rec.id == ref:
                return rec
        for rec in self.secrets:
            if rec.label and rec.label == ref:
                return rec
        try:
            wanted = parse_secret(ref)
        except SecretFormatError:
            return None
        for rec in self.secrets:
            if rec.secret() == wanted:
                return rec
        for rec in self.secrets:
            # A link's secret may be given in another form than the stored one (e.g. plain hex of a dd key).
            if rec.secret().key == wanted.key:
                return rec
        return None

    def with_record(self, record: SecretRecord) -> StoreData:
        """Replace the entry with the same id, or append a new one."""
        items = list(self.secrets)
        for index, rec in enumerate(items):
            if rec.id == record.id:
                items[index] = record
                break
        else:
            items.append(record)
        return replace(self, secrets=tuple(items))

    def without(self, secret_id: str) -> StoreData:
        return replace(self, secrets=tuple(rec for rec in self.secrets if rec.id != secret_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "secrets": [rec.to_json() for rec in self.secrets],
            "metadata": {"last_modified": self.last_modified, "version": self.version,
                         **({"migrations": [m.to_json() for m in self.migrations]} if self.migrations else {})},
        }


# ---------------------------------------------------------------------------------------------- parsing


def _field(entry: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    value = entry.get(name, default)
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {name!r} must be {_type_name(kind)}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "a number", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# The plan's own file carries its release number as a string; it is version 0's layout under another name.
PLAN_VERSION = "6.0.0"


def _migrate(doc: dict[str, Any]) -> dict[str, Any]:
    """Bring an older document up to STORE_VERSION, in memory; the next write saves the new form.

    Version 1 -> 2 only adds optional per-entry fields: "limits" (accounts/limits.py; absent = none) and
    "usage_reset_at" (when `reset-usage` last cleared the secret's usage).
    Version 2 -> 3 only adds the optional per-entry "own_domain" (absent = false): an ee secret whose domain
    is its own random host name under a base.
    Version 3 -> 4 only adds the optional per-entry "ad_tag" (absent = the engine's global `-P`).
    Version 0 is the plan's original file: no metadata (or the plan's own `"version": "6.0.0"`), entries with
    "secret" instead of "value", possibly no id or label, and a bare 16-byte key whose `padding_enabled`
    says whether clients get it as dd. Any other version string is refused, not guessed at. The migration is
    recorded in metadata.migrations (stamped when the file is next written).
    """
    metadata = doc.get("metadata")
    version = metadata.get("version", 0) if isinstance(metadata, dict) else 0
    if version == PLAN_VERSION:
        version = 0
    elif isinstance(version, str):
        raise ValueError(f"metadata.version {version!r} is not a schema this mtproxy knows"
                         f" (a number up to {STORE_VERSION}, or the plan's {PLAN_VERSION!r})")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError("metadata.version must be a non-negative integer")
    if version > STORE_VERSION:
        raise ValueError(
            f"schema version {version} was written by a newer mtproxy (this one reads up to {STORE_VERSION})"
        )
    if version == 0:
        entries = doc.get("secrets", [])
        if not isinstance(entries, list):
            raise ValueError("'secrets' must be a list")
        migrated = [_migrate_v0_entry(entry, index) for index, entry in enumerate(entries)]
        last = metadata.get("last_modified", "") if isinstance(metadata, dict) else ""
        found = metadata.get("version", 0) if isinstance(metadata, dict) else 0
        doc = {"secrets": migrated, "metadata": {
            "last_modified": last or "", "version": 1,
            "migrations": [{"from": str(found), "to": 1, "at": ""}]}}
        metadata, version = doc["metadata"], 1
    if version == 1:
        # v2 adds an optional "limits" object per entry; a v1 entry has none, so only the version moves.
        assert isinstance(metadata, dict)
        steps = metadata.get("migrations", [])
        if not isinstance(steps, list):
            raise ValueError("metadata.migrations must be a list")
        doc = {**doc, "metadata": {**metadata, "version": 2,
                                   "migrations": [*steps, {"from": "1", "to": 2, "at": ""}]}}
        metadata, version = doc["metadata"], 2
    if version == 2:
        # v3 adds an optional "own_domain" flag per entry; a v2 entry has none, so only the version moves.
        assert isinstance(metadata, dict)
        steps = metadata.get("migrations", [])
        if not isinstance(steps, list):
            raise ValueError("metadata.migrations must be a list")
        doc = {**doc, "metadata": {**metadata, "version": 3,
                                   "migrations": [*steps, {"from": "2", "to": 3, "at": ""}]}}
        metadata, version = doc["metadata"], 3
    if version == 3:
        # v4 adds an optional "ad_tag" per entry; a v3 entry has none, so only the version moves.
        assert isinstance(metadata, dict)
        steps = metadata.get("migrations", [])
        if not isinstance(steps, list):
            raise ValueError("metadata.migrations must be a list")
        doc = {**doc, "metadata": {**metadata, "version": 4,
                                   "migrations": [*steps, {"from": "3", "to": 4, "at": ""}]}}
    return doc


def _migrate_v0_entry(item: Any, index: int) -> dict[str, Any]:
    if isinstance(item, str):
        item = {"value": item}
    if not isinstance(item, dict):
        raise ValueError(f"secrets[{index}] must be an object")
    entry: dict[str, Any] = {str(key): value for key, value in item.items()}
    if "value" not in entry and "secret" in entry:
        entry["value"] = entry.pop("secret")
    entry.setdefault("id", f"s{index + 1}")
    if "type" not in entry and isinstance(entry.get("value"), str):
        with contextlib.suppress(SecretFormatError):
            kind = parse_secret(entry["value"]).kind
            if kind is SecretKind.CLASSIC and entry.get("padding_enabled") is True:
                kind = SecretKind.PADDED  # the plan kept the bare key and handed it out with the dd prefix
            entry["type"] = KIND_TO_TYPE[kind]
    return entry


def parse_store(text: str | bytes, path: Path) -> StoreData:
    """Validate a whole document; any problem raises StoreFormatError naming the file and the entry."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreFormatError(
            path, f"not valid JSON ({exc})", "fix the file by hand or restore it from a backup"
        ) from None
    try:
        if not isinstance(doc, dict):
            raise ValueError("the top level must be an object with 'secrets' and 'metadata'")
        doc = _migrate(doc)
        return _parse_document(doc)
    except ValueError as exc:
        raise StoreFormatError(path, str(exc), "fix the file by hand or restore it from a backup") from None


def _parse_document(doc: dict[str, Any]) -> StoreData:
    entries = doc.get("secrets", [])
    if not isinstance(entries, list):
        raise ValueError("'secrets' must be a list")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be an object")
    last_modified = metadata.get("last_modified") or ""
    if not isinstance(last_modified, str):
        raise ValueError("metadata.last_modified must be a string")
    records: list[SecretRecord] = []
    seen_ids: set[str] = set()
    seen_labels: set[str] = set()
    seen_keys: set[bytes] = set()
    for index, entry in enumerate(entries):
        where = f"secrets[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        record = _parse_entry(entry, where)
        if record.id in seen_ids:
            raise ValueError(f"{where}: id {record.id!r} appears twice")
        if record.label and record.label in seen_labels:
            raise ValueError(f"{where}: label {record.label!r} appears twice")
        key = record.secret().key
        if key in seen_keys:
            raise ValueError(f"{where}: the same secret key appears twice (id {record.id!r})")
        seen_ids.add(record.id)
        if record.label:
            seen_labels.add(record.label)
        seen_keys.add(key)
        records.append(record)
    return StoreData(secrets=tuple(records), last_modified=last_modified, version=STORE_VERSION,
                     migrations=_parse_migrations(metadata.get("migrations", [])))


def _parse_migrations(value: Any) -> tuple[Migration, ...]:
    if not isinstance(value, list):
        raise ValueError("metadata.migrations must be a list")
    migrations: list[Migration] = []
    for index, item in enumerate(value):
        where = f"metadata.migrations[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        migrations.append(Migration(str(_field(item, "from", (str, int), where, "")),
                                    _field(item, "to", int, where, STORE_VERSION),
                                    _field(item, "at", str, where, "")))
    return tuple(migrations)


_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _parse_entry(entry: dict[str, Any], where: str) -> SecretRecord:
    secret_id = _field(entry, "id", str, where, None)
    # Ids name the per-secret link and QR files, so they must be safe as one path component.
    if not isinstance(secret_id, str) or not _ID_PATTERN.fullmatch(secret_id):
        raise ValueError(f"{where}: 'id' must be 1 to 64 of A-Z, a-z, 0-9, '_' or '-'")
    value = _field(entry, "value", str, where, None)
    try:
        secret = parse_secret(value)
    except SecretFormatError as exc:
        # The message describes the shape only; the value itself is never echoed.
        raise ValueError(f"{where} (id {secret_id!r}): 'value' is not a valid secret: {exc}") from None
    type_name = _field(entry, "type", str, where, KIND_TO_TYPE[secret.kind])
    if type_name not in TYPE_TO_KIND:
        raise ValueError(f"{where} (id {secret_id!r}): 'type' must be plain, dd or ee, not {type_name!r}")
    kind = TYPE_TO_KIND[type_name]
    if kind is not secret.kind:
        if kind is SecretKind.FAKE_TLS:
            raise ValueError(f"{where} (id {secret_id!r}): type is ee but the value has no ee prefix")
        # A bare 32-hex key with type dd (or a dd value with type plain) is the same key: the type wins.
        secret = Secret(secret.key, kind)
    domain = _field(entry, "domain", (str, type(None)), where, secret.domain)
    if kind is SecretKind.FAKE_TLS:
        try:
            validate_domain(domain or "")
        except SecretFormatError as exc:
            raise ValueError(f"{where} (id {secret_id!r}): {exc}") from None
        if domain != secret.domain:
            raise ValueError(f"{where} (id {secret_id!r}): 'domain' does not match the domain in 'value'")
    else:
        domain = None
    return SecretRecord(
        id=secret_id,
        value=secret.to_hex(),
        type=type_name,
        label=_field(entry, "label", (str, type(None)), where, "") or "",
        domain=domain,
        padding_enabled=_field(entry, "padding_enabled", bool, where, kind is not SecretKind.CLASSIC),
        created_at=_field(entry, "created_at", (str, type(None)), where, "") or "",
        created_by=_field(entry, "created_by", (str, type(None)), where, "") or "",
        description=_field(entry, "description", (str, type(None)), where, "") or "",
        limits=_parse_entry_limits(entry, f"{where} (id {secret_id!r})"),
        usage_reset_at=_reset_time(entry, f"{where} (id {secret_id!r})"),
        own_domain=_own_domain(entry, kind, domain, f"{where} (id {secret_id!r})"),
        ad_tag=_ad_tag(entry, f"{where} (id {secret_id!r})"),
    )


def _ad_tag(entry: dict[str, Any], where: str) -> str:
    text = _field(entry, "ad_tag", (str, type(None)), where, "") or ""
    if not text:
        return ""
    try:
        return parse_ad_tag(str(text))
    except AdTagError as exc:
        raise ValueError(f"{where}: 'ad_tag': {exc}") from None


def _own_domain(entry: dict[str, Any], kind: SecretKind, domain: str | None, where: str) -> bool:
    own = bool(_field(entry, "own_domain", bool, where, False))
    if own and (kind is not SecretKind.FAKE_TLS or domain is None or domain.count(".") < 2):
        raise ValueError(f"{where}: 'own_domain' is for an ee secret whose domain is a label under a base domain")
    return own


def _reset_time(entry: dict[str, Any], where: str) -> str:
    text = _field(entry, "usage_reset_at", str, where, "")
    if text:
        try:
            parse_time(text, "usage_reset_at")
        except LimitsError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return str(text)


def _parse_entry_limits(entry: dict[str, Any], where: str) -> Limits:
    active = _field(entry, "active", bool, where, True)
    raw = entry.get("limits")
    try:
        limits = parse_limits(raw, f"{where}: limits")
    except LimitsError as exc:
        raise ValueError(str(exc)) from None
    # "active" is the switch; a hand-written limits.enabled may repeat it but not contradict it.
    if isinstance(raw, dict) and "enabled" in raw and limits.enabled != active:
        raise ValueError(f"{where}: limits.enabled contradicts 'active' (the entry's 'active' is the switch)")
    return replace(limits, enabled=active)


# ---------------------------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist; OS errors become StoreAccessError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StoreAccessError(path, "is a directory, not a file", "move it away") from None
    except PermissionError:
        raise StoreAccessError(
            path, "permission denied while reading",
            "run as root or as the file's owner, or choose another root with --root DIR",
        ) from None
    except OSError as exc:
        raise StoreAccessError(path, f"cannot read: {exc.strerror}", "check the disk and the path") from None
    if len(data) > MAX_STORE_BYTES:
        raise StoreFormatError(path, f"larger than {MAX_STORE_BYTES} bytes", "this is not a secrets store")
    return data


def read_store(path: str | os.PathLike[str]) -> StoreData:
    """Read and validate the store without locking (a reader only ever sees a whole file, thanks to rename).

    A missing file is an empty store. Raises StoreFormatError or StoreAccessError otherwise.
    """
    file = Path(path)
    data = _read_bytes(file)
    if data is None:
        return StoreData()
    if not data.strip():
        # An empty file is what `touch` leaves; treat it as an empty store rather than malformed JSON.
        return StoreData()
    return parse_store(data, file)


# ---------------------------------------------------------------------------------------------- writing


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _access_error(path: Path, exc: OSError, doing: str) -> StoreAccessError:
    if exc.errno == errno.EROFS:
        return StoreAccessError(path, f"read-only file system while {doing}", "remount it read-write or use --root")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreAccessError(
            path, f"permission denied while {doing}",
            "run as root, choose another root with --root DIR, or fix the directory's permissions",
        )
    if exc.errno == errno.ENOSPC:
        return StoreAccessError(path, f"disk full while {doing}", "free some space and try again")
    return StoreAccessError(path, f"{exc.strerror or exc} while {doing}", "check the path and the disk")


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], timeout: float = 60.0) -> Iterator[None]:
    """Hold the store's exclusive lock. Waits at most `timeout` seconds for another command."""
    import time

    file = Path(path)
    lock_file = _lock_path(file)
    try:
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise _access_error(lock_file, exc, "opening the lock file") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreAccessError(
                        file, f"still locked by another command after {timeout:.0f} s",
                        "wait for it to finish, or look for a stuck mtproxy process",
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _temp_name_parts(file: Path) -> tuple[str, str]:
    """`write_atomic`'s temp files are `.<name>.<random>.tmp` beside the file; `remove_stale_temps`
    removes exactly those."""
    return f".{file.name}.", ".tmp"


def remove_stale_temps(file: Path) -> None:
    """Temp files left by a writer killed mid-write; call it only with the file's writers excluded (the
    store's lock held), so none is live."""
    prefix, suffix = _temp_name_parts(file)
    with contextlib.suppress(OSError):
        for entry in file.parent.iterdir():
            if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                with contextlib.suppress(OSError):
                    entry.unlink()


def write_atomic(path: Path, payload: bytes, mode: int = FILE_MODE) -> None:
    """Write a whole file so that readers see the old or the new bytes, never a mix, and a crash keeps
    one of them: a temp file in the same directory, mode (and, as root, the old owner) set before any
    byte is written, fsync, rename over the file, fsync of the directory. The one way the package writes
    a file (the store, settings, links, QR codes, host files through `host.files.write_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    owner: tuple[int, int] | None = None
    with contextlib.suppress(OSError):
        st = path.stat()
        owner = (st.st_uid, st.st_gid)
    prefix, suffix = _temp_name_parts(path)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                # Keep the owner the engine's container user was given, so it can still read the file.
                with contextlib.suppress(OSError):
                    os.fchown(handle.fileno(), *owner)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def serialize(data: StoreData) -> bytes:
    return (json.dumps(data.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_store(
    path: str | os.PathLike[str], data: StoreData, clock: Callable[[], datetime] | None = None
) -> StoreData:
    """Stamp and write the store; caller holds the lock (see `update_store`). Returns what was written."""
    file = Path(path)
    moment = now_iso(clock)
    migrations = tuple(m if m.at else replace(m, at=moment) for m in data.migrations)
    stamped = replace(data, last_modified=moment, version=STORE_VERSION, migrations=migrations)
    payload = serialize(stamped)
    # What is written must read back: a duplicate label or a bad id is refused before the file changes.
    parse_store(payload, file)
    try:
        write_atomic(file, payload)
    except OSError as exc:
        raise _access_error(file, exc, "writing") from None
    return stamped


def update_store(
    path: str | os.PathLike[str],
    change: Callable[[StoreData], tuple[StoreData, T]],
    clock: Callable[[], datetime] | None = None,
    after: Callable[[StoreData], None] | None = None,
) -> T:
    """Read, change and write the store under the lock. `change` returns (new data, result).

    If `change` returns the very same object, nothing is written. A malformed file raises before any write,
    so it is left untouched. `after` runs with the lock still held and the data as written (the CLI
    regenerates link and QR files there, so two commands never interleave those either).
    """
    file = Path(path)
    with locked(file):
        remove_stale_temps(file)
        current = read_store(file)
        new, result = change(current)
        if new is not current:
            new = write_store(file, new, clock)
        if after is not None:
            after(new)
        return result
