"""Change the store under its lock, keep the link and QR files in step, and get the running proxy to reload."""

from __future__ import annotations

import secrets as csprng
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.errors import SecretFormatError
from ..protocol.secret import parse_secret
from ..settings import Settings, read_settings
from ..store import SecretRecord, StoreData, read_store, update_store
from . import artifacts
from .context import Ops
from .errors import Failure, OpError
from .haproxy_routes import NOT_BEHIND, Followed, follow
from .proxy_control import ApplyOutcome, reload_secrets


@dataclass(frozen=True)
class ChangeReport:
    """What a change did: the entry as written, notes for the operator, and what the running proxy did."""

    record: SecretRecord | None
    notes: list[str]
    apply: ApplyOutcome
    server: artifacts.ServerChoice | None
    settings: Settings  # as read under the store's lock, so the links shown are the links written
    dry_run: bool = False
    haproxy: Followed = NOT_BEHIND  # the HAProxy block brought up to date (behind HAProxy only)


def load_settings(ops: Ops) -> Settings:
    return read_settings(ops.paths.settings_file)


def change_secrets(ops: Ops, change: Callable[[StoreData], tuple[StoreData, SecretRecord | None]]) -> ChangeReport:
    """Change the store under its lock, rewrite links and QR codes, get the running proxy to reload, then
    (behind HAProxy) bring the block's SNI rules up to date; a failure there is a note, the change stands.

    The settings (port, server) are read again under the lock before the links are written: a `set-port`
    that finished while this command waited for the lock must not leave the links on the old port.
    """
    settings = load_settings(ops)
    notes: list[str] = []
    written: list[StoreData] = []
    used: list[tuple[Settings, artifacts.ServerChoice | None]] = []

    def after(data: StoreData) -> None:
        written.append(data)
        current = load_settings(ops)
        server = artifacts.choose_server(current, ops.server_override)
        used.append((current, server))
        try:
            notes.extend(artifacts.write_all(ops.paths, data, current, server))
        except OSError as exc:
            notes.append(f"links and QR codes not written to {ops.paths.data_dir}: {exc.strerror}")

    if ops.dry_run:
        after_data, record = change(read_store(ops.paths.secrets_file))
        return ChangeReport(record, ["dry run: the store was not changed"],
                            ApplyOutcome("dry run: the proxy was not told", False),
                            artifacts.choose_server(settings, ops.server_override), settings, dry_run=True,
                            haproxy=follow(ops.paths, ops.runner, settings, after_data))
    record = update_store(ops.paths.secrets_file, change, ops.clock, after=after)
    settings, server = used[-1] if used else (settings, artifacts.choose_server(settings, ops.server_override))
    data = written[-1] if written else read_store(ops.paths.secrets_file)
    outcome = reload_secrets(ops.runner, ops.paths, settings, data)
    if server is not None and server.warning:
        notes.append(server.warning)
    # after the engine reloaded: a name HAProxy starts routing is then one the engine already knows
    routed = follow(ops.paths, ops.runner, settings, data)
    if not routed.ok:
        notes.append(f"HAProxy {routed.note}")
    return ChangeReport(record, notes, outcome, server, settings, haproxy=routed)


def resolve(data: StoreData, ref: str) -> SecretRecord:
    """The entry `ref` names (id, label or value); OpError NOT_FOUND otherwise."""
    record = data.find(ref)
    if record is None:
        raise OpError(f"no secret matches {safe_ref(ref)}", "see `mtproxy list-secrets` for ids and labels",
                      Failure.NOT_FOUND)
    return record


def safe_ref(ref: str) -> str:
    """Echo what was asked for, unless it looks like a secret (which must not reach logs)."""
    try:
        return parse_secret(ref).masked()
    except SecretFormatError:
        return repr(ref[:64])


def new_id(data: StoreData) -> str:
    taken = {rec.id for rec in data.secrets} | {rec.label for rec in data.secrets}
    while True:
        candidate = csprng.token_hex(4)
        if candidate not in taken:
            return candidate


def check_label(data: StoreData, label: str, own_id: str | None = None) -> None:
    if not label.strip() or len(label) > 64 or not label.isprintable():
        raise OpError(f"label {label[:64]!r} is not usable", "use 1 to 64 printable characters", Failure.INVALID)
    try:
        parse_secret(label)
    except SecretFormatError:
        pass
    else:
        raise OpError("a label must not look like a secret", "pick a name such as `phones`", Failure.INVALID)
    for rec in data.secrets:
        if rec.id != own_id and (rec.label == label or rec.id == label):
            raise OpError(f"the label {label!r} is already used by secret {rec.id}", "pick another label",
                          Failure.CONFLICT)
