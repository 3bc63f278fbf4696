"""add-secret, list-secrets, remove-secret, regenerate-secret: change the store, refresh links, reload live."""

from __future__ import annotations

import getpass
import os
import secrets as csprng
from collections.abc import Callable
from dataclasses import dataclass, replace

import click

from ..protocol.errors import SecretFormatError
from ..protocol.secret import SecretKind, generate_secret, parse_secret
from ..settings import Settings, read_settings
from ..store import SecretRecord, StoreData, now_iso, read_store, update_store
from . import artifacts
from .completion import complete_secret_ref
from .env import Env
from .errors import CliError, ExitStatus
from .output import dump_json, table
from .proxy_control import ApplyOutcome, reload_secrets
from .validation import check_domain

pass_env = click.make_pass_decorator(Env)

KIND_WORDS = {"plain": "classic", "dd": "dd (padded)", "ee": "ee (fake-TLS)"}


@dataclass(frozen=True)
class ChangeReport:
    record: SecretRecord | None
    notes: list[str]
    apply: ApplyOutcome
    server: artifacts.ServerChoice | None
    settings: Settings  # as read under the store's lock, so the links shown are the links written


def load_settings(env: Env) -> Settings:
    return read_settings(env.paths.settings_file)


def change_secrets(
    env: Env, change: Callable[[StoreData], tuple[StoreData, SecretRecord | None]]
) -> ChangeReport:
    """Change the store under its lock, rewrite links and QR codes, then get the running proxy to reload.

    The settings (port, server) are read again under the lock before the links are written: a `set-port`
    that finished while this command waited for the lock must not leave the links on the old port.
    """
    settings = load_settings(env)
    notes: list[str] = []
    written: list[StoreData] = []
    used: list[tuple[Settings, artifacts.ServerChoice | None]] = []

    def after(data: StoreData) -> None:
        written.append(data)
        current = load_settings(env)
        server = artifacts.choose_server(current, env.server_override)
        used.append((current, server))
        try:
            notes.extend(artifacts.write_all(env.paths, data, current, server))
        except OSError as exc:
            notes.append(f"links and QR codes not written to {env.paths.data_dir}: {exc.strerror}")

    if env.runner.dry_run:
        record = change(read_store(env.paths.secrets_file))[1]
        return ChangeReport(record, ["dry run: the store was not changed"],
                            ApplyOutcome("dry run: the proxy was not told", False),
                            artifacts.choose_server(settings, env.server_override), settings)
    record = update_store(env.paths.secrets_file, change, env.clock, after=after)
    settings, server = used[-1] if used else (settings, artifacts.choose_server(settings, env.server_override))
    outcome = reload_secrets(env.runner, env.paths, settings, written[-1] if written else
                             read_store(env.paths.secrets_file))
    if server is not None and server.warning:
        notes.append(server.warning)
    return ChangeReport(record, notes, outcome, server, settings)


def proxy_line(env: Env, apply: ApplyOutcome) -> str:
    """The running proxy's part of a report; ✗ when it runs but cannot take the change."""
    return f"{env.ok_mark(False)} {apply.message}" if apply.failed else apply.message


def resolve(data: StoreData, ref: str) -> SecretRecord:
    record = data.find(ref)
    if record is None:
        raise CliError(f"no secret matches {_safe_ref(ref)}",
                       "see `mtproxy list-secrets` for ids and labels", ExitStatus.NOT_FOUND)
    return record


def _safe_ref(ref: str) -> str:
    """Echo what the operator typed, unless it looks like a secret (which must not reach logs)."""
    try:
        return parse_secret(ref).masked()
    except SecretFormatError:
        return repr(ref[:64])


def _creator() -> str:
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return f"cli:{user}"


def _new_id(data: StoreData) -> str:
    taken = {rec.id for rec in data.secrets} | {rec.label for rec in data.secrets}
    while True:
        candidate = csprng.token_hex(4)
        if candidate not in taken:
            return candidate


def _check_label(data: StoreData, label: str, own_id: str | None = None) -> None:
    if not label.strip() or len(label) > 64 or not label.isprintable():
        raise CliError(f"label {label[:64]!r} is not usable", "use 1 to 64 printable characters", ExitStatus.USAGE)
    try:
        parse_secret(label)
    except SecretFormatError:
        pass
    else:
        raise CliError("a label must not look like a secret", "pick a name such as `phones`", ExitStatus.USAGE)
    for rec in data.secrets:
        if rec.id != own_id and (rec.label == label or rec.id == label):
            raise CliError(f"the label {label!r} is already used by secret {rec.id}",
                           "pick another label", ExitStatus.CONFLICT)


def _print_change(env: Env, title: str, report: ChangeReport, as_json: bool = False) -> None:
    record, settings = report.record, report.settings
    assert record is not None
    if as_json:
        links = artifacts.links_for(record, settings, report.server) if report.server is not None else None
        files = artifacts.files_for(env.paths, record)
        env.out(dump_json("secret", {
            "id": record.id, "label": record.label, "type": record.type, "domain": record.domain,
            "secret": record.value, "tg": links.tg if links else None, "https": links.https if links else None,
            "qr_png": str(files.png), "qr_svg": str(files.svg), "dry_run": env.runner.dry_run,
            "proxy": {"message": report.apply.message, "live": report.apply.live,
                      "failed": report.apply.failed}, "notes": report.notes,
        }))
        return
    env.out(env.style("✓ ", fg="green") + title)
    kind = KIND_WORDS.get(record.type, record.type)
    if record.domain:
        kind += f", domain {record.domain}"
    env.out(f"  type:    {kind}")
    env.out(f"  secret:  {record.value}")
    if report.server is not None:
        links = artifacts.links_for(record, settings, report.server)
        files = artifacts.files_for(env.paths, record)
        env.out(f"  tg:      {links.tg}")
        env.out(f"  https:   {links.https}")
        if not env.runner.dry_run and record.active:
            env.out(f"  QR:      {files.png}  (SVG: {files.svg.name})")
        env.out(f"  server:  {report.server.address} ({report.server.source})")
    for note in report.notes:
        env.warn(note)
    env.out(f"  proxy:   {proxy_line(env, report.apply)}")


# ------------------------------------------------------------------------------------------------- commands


@click.command("add-secret", epilog="""\b
Examples:
  mtproxy add-secret                              dd, or ee when a fake-TLS domain is configured
  mtproxy add-secret --fake-tls www.example.com --label phones
  mtproxy add-secret --with-padding --label old-clients
  mtproxy add-secret --plain --description "for a legacy client"
""")
@click.option("--with-padding", "kind", flag_value="dd", help="A dd (padded) secret: 'dd' + 32 hex chars.")
@click.option("--plain", "kind", flag_value="plain", help="A classic secret: 32 hex chars.")
@click.option("--fake-tls", "domain", metavar="DOMAIN", help="A fake-TLS (ee) secret for this domain.")
@click.option("--label", "-l", help="A short name to refer to the secret by (unique).")
@click.option("--description", "-d", default="", help="Free text kept in the store.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the secret).")
@pass_env
def add_secret(
    env: Env, kind: str | None, domain: str | None, label: str | None, description: str, as_json: bool
) -> None:
    """Create a secret from 16 bytes of the OS CSPRNG; print it, its links, and its QR files."""
    if kind and domain:
        raise CliError("--fake-tls cannot be combined with --plain or --with-padding",
                       "choose one secret type", ExitStatus.USAGE)
    settings = load_settings(env)
    if domain is None and kind is None and settings.domain:
        domain = settings.domain
    if domain is not None:
        secret_kind, domain = SecretKind.FAKE_TLS, check_domain(domain, "--fake-tls")
    else:
        secret_kind = SecretKind.CLASSIC if kind == "plain" else SecretKind.PADDED

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        if label is not None:
            _check_label(data, label)
        while True:
            secret = generate_secret(env.random16(), secret_kind, domain)
            if all(rec.secret().key != secret.key for rec in data.secrets):
                break
        record = SecretRecord.from_secret(
            _new_id(data), secret, label=label or "", created_at=now_iso(env.clock),
            created_by=_creator(), description=description,
        )
        return data.with_record(record), record

    if settings.domain and secret_kind is not SecretKind.FAKE_TLS and not settings.extra.get("allow_classic"):
        env.warn("a fake-TLS domain is configured, so the proxy accepts only ee clients unless "
                 "allow_classic is set in the settings file; this secret will be refused until then")
    report = change_secrets(env, change)
    assert report.record is not None
    verb = "would add" if env.runner.dry_run else "added"
    _print_change(env, f"{verb} secret {report.record.name}", report, as_json)


@click.command("list-secrets", epilog="""\b
Examples:
  mtproxy list-secrets
  mtproxy list-secrets --json | jq '.secrets[].id'
""")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (secrets masked).")
@click.option("--all/--active", "show_all", default=True, help="Include inactive secrets (default) or not.")
@pass_env
def list_secrets(env: Env, as_json: bool, show_all: bool) -> None:
    """Show the configured secrets: id, label, masked secret, type, created, active."""
    data = read_store(env.paths.secrets_file)
    records = list(data.secrets) if show_all else data.active_records()
    if as_json:
        items = [{**{k: v for k, v in rec.to_json().items() if k != "value"}, "masked": rec.masked()}
                 for rec in records]
        env.out(dump_json("secrets", {"secrets": items, "last_modified": data.last_modified}))
        return
    if not records:
        env.out("no secrets yet — create one with `mtproxy add-secret`")
        return
    headers = ["ID", "LABEL", "SECRET", "TYPE", "DOMAIN", "CREATED", "ACTIVE"]
    rows = [[rec.id, rec.label or "-", rec.masked(), rec.type, rec.domain or "-",
             rec.created_at.replace("T", " ").rstrip("Z") or "-", "yes" if rec.active else "no"]
            for rec in records]
    env.out(table(headers, rows, [env.style(h, bold=True) for h in headers]))


def _confirm(env: Env, question: str, yes: bool) -> None:
    if yes or env.runner.dry_run:
        return
    if not env.interactive:
        raise CliError(f"{question.rstrip('?')}: refusing to ask without a terminal",
                       "pass --yes to confirm", ExitStatus.CONFLICT)
    if not click.confirm(question, default=False, err=True):
        raise CliError("cancelled", "nothing was changed", ExitStatus.FAILURE)


@click.command("remove-secret", epilog="""\b
Examples:
  mtproxy remove-secret phones
  mtproxy remove-secret 3f2a9c1d --yes
  mtproxy remove-secret dd1a2b…  (the full secret, as in a link)
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--yes", "-y", is_flag=True, help="Do not ask, even before removing the last active secret.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, change nothing.")
@pass_env
def remove_secret(env: Env, ref: str, yes: bool, dry_run: bool) -> None:
    """Remove a secret; clients using it are disconnected when the proxy reloads."""
    if dry_run:
        env.runner.dry_run = True
    current = read_store(env.paths.secrets_file)
    target = resolve(current, ref)
    others_active = [rec for rec in current.active_records() if rec.id != target.id]
    if target.active and not others_active:
        _confirm(env, f"{target.name} is the last active secret; remove it and leave the proxy with none?", yes)

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        record = resolve(data, target.id)
        return data.without(record.id), record

    report = change_secrets(env, change)
    verb = "would remove" if env.runner.dry_run else "removed"
    env.out(env.style("✓ ", fg="green") + f"{verb} secret {target.name} ({target.masked()})")
    for note in report.notes:
        env.warn(note)
    env.out(f"  proxy:   {proxy_line(env, report.apply)}")


@click.command("regenerate-secret", epilog="""\b
Examples:
  mtproxy regenerate-secret phones --yes
  mtproxy regenerate-secret 3f2a9c1d
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--yes", "-y", is_flag=True, help="Do not ask (the old links stop working).")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the new secret).")
@pass_env
def regenerate_secret(env: Env, ref: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Give a secret a new random value, keeping its id, label, type and domain; print the new links."""
    if dry_run:
        env.runner.dry_run = True
    current = read_store(env.paths.secrets_file)
    target = resolve(current, ref)
    _confirm(env, f"regenerate {target.name}? Links already handed out stop working", yes)

    def change(data: StoreData) -> tuple[StoreData, SecretRecord]:
        old = resolve(data, target.id)
        kind = old.secret().kind
        while True:
            secret = generate_secret(env.random16(), kind, old.domain)
            if all(rec.secret().key != secret.key for rec in data.secrets):
                break
        record = replace(old, value=secret.to_hex(), created_at=now_iso(env.clock), created_by=_creator())
        return data.with_record(record), record

    report = change_secrets(env, change)
    verb = "would regenerate" if env.runner.dry_run else "regenerated"
    _print_change(env, f"{verb} secret {target.name} (was {target.masked()})", report, as_json)


COMMANDS = [add_secret, list_secrets, remove_secret, regenerate_secret]
