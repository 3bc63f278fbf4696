"""add-secret, list-secrets, remove-secret, regenerate-secret: change the store, refresh links, reload live."""

from __future__ import annotations

import getpass
import os

import click

from ..accounts.limits import Limits, format_time
from ..operations import artifacts
from ..operations.apply import ChangeReport, resolve
from ..operations.context import Ops
from ..operations.proxy_control import ApplyOutcome
from ..operations.secrets import AddRequest, SecretView
from ..operations.secrets import add_secret as add_op
from ..operations.secrets import list_secrets as list_op
from ..operations.secrets import regenerate_secret as regenerate_op
from ..operations.secrets import remove_secret as remove_op
from ..operations.units import show_size
from ..operations.usage_source import LedgerAndEngine
from ..protocol.secret import SecretKind
from ..settings import Settings, read_settings
from ..store import read_store
from .completion import complete_secret_ref
from .env import Env
from .errors import CliError, ExitStatus
from .output import dump_json, human_bytes, table
from .validation import check_domain

__all__ = ["COMMANDS", "ChangeReport", "confirm", "load_settings", "ops_of", "proxy_line", "resolve"]

pass_env = click.make_pass_decorator(Env)

KIND_WORDS = {"plain": "classic", "dd": "dd (padded)", "ee": "ee (fake-TLS)"}


def load_settings(env: Env) -> Settings:
    return read_settings(env.paths.settings_file)


def ops_of(env: Env) -> Ops:
    """The operations' context for this command: the Env's paths, runner, clock and randomness."""
    return Ops(paths=env.paths, runner=env.runner, clock=env.clock, random16=env.random16,
               usage=LedgerAndEngine(env.paths), server_override=env.server_override, actor=_creator())


def proxy_line(env: Env, apply: ApplyOutcome) -> str:
    """The running proxy's part of a report; ✗ when it runs but cannot take the change."""
    return f"{env.ok_mark(False)} {apply.message}" if apply.failed else apply.message


def _creator() -> str:
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return f"cli:{user}"


def _print_change(env: Env, title: str, report: ChangeReport, as_json: bool = False) -> None:
    record, settings = report.record, report.settings
    assert record is not None
    if as_json:
        links = artifacts.links_for(record, settings, report.server) if report.server is not None else None
        files = artifacts.files_for(env.paths, record)
        env.out(dump_json("secret", {
            "id": record.id, "label": record.label, "type": record.type, "domain": record.domain,
            "secret": record.value, "tg": links.tg if links else None, "https": links.https if links else None,
            "qr_png": str(files.png), "qr_svg": str(files.svg), "dry_run": report.dry_run,
            "proxy": {"message": report.apply.message, "live": report.apply.live,
                      "failed": report.apply.failed}, "notes": report.notes,
            "haproxy": {"message": report.haproxy.note, "ok": report.haproxy.ok} if report.haproxy.note else None,
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
    _print_haproxy(env, report)


def _print_haproxy(env: Env, report: ChangeReport) -> None:
    """The HAProxy block's line, behind HAProxy only (a failure is also among the warnings above)."""
    if report.haproxy.note and report.haproxy.ok:
        env.out(f"  haproxy: {report.haproxy.note}")


# ------------------------------------------------------------------------------------------------- commands


@click.command("add-secret", epilog="""\b
Examples:
  mtproxy add-secret                              dd, or ee when a fake-TLS domain is configured
  mtproxy add-secret --fake-tls www.example.com --label phones
  mtproxy add-secret --own-domain --label alice   ee with its own host name, e.g. k3f9q2ab.users.example.com
  mtproxy add-secret --with-padding --label old-clients
  mtproxy add-secret --plain --description "for a legacy client"
""")
@click.option("--with-padding", "kind", flag_value="dd", help="A dd (padded) secret: 'dd' + 32 hex chars.")
@click.option("--plain", "kind", flag_value="plain", help="A classic secret: 32 hex chars.")
@click.option("--fake-tls", "domain", metavar="DOMAIN", help="A fake-TLS (ee) secret for this domain.")
@click.option("--own-domain", is_flag=True,
              help="A fake-TLS (ee) secret with its own random host name under the secret domain base"
                   " (`mtproxy set-secret-domain-base`).")
@click.option("--label", "-l", help="A short name to refer to the secret by (unique).")
@click.option("--description", "-d", default="", help="Free text kept in the store.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the secret).")
@pass_env
def add_secret(
    env: Env, kind: str | None, domain: str | None, own_domain: bool, label: str | None, description: str,
    as_json: bool
) -> None:
    """Create a secret from 16 bytes of the OS CSPRNG; print it, its links, and its QR files."""
    if (kind and (domain or own_domain)) or (domain and own_domain):
        raise CliError("--fake-tls, --own-domain, --plain and --with-padding choose the type: give one",
                       "choose one secret type", ExitStatus.USAGE)
    if domain is not None:
        domain = check_domain(domain, "--fake-tls")
    secret_kind = {"plain": SecretKind.CLASSIC, "dd": SecretKind.PADDED}.get(kind or "")
    report = add_op(ops_of(env), AddRequest(secret_kind, domain, label, description, own_domain=own_domain))
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
    """Show the configured secrets: id, label, masked secret, type, created, active, limits and usage."""
    listing = list_op(ops_of(env), include_inactive=show_all)
    if as_json:
        env.out(dump_json("secrets", {"secrets": [view.to_json() for view in listing.secrets],
                                      "last_modified": listing.last_modified}))
        return
    if not listing.secrets:
        env.out("no secrets yet — create one with `mtproxy add-secret`")
        return
    headers = ["ID", "LABEL", "SECRET", "TYPE", "DOMAIN", "CREATED", "ACTIVE", "STATE", "LIMITS", "USAGE",
               "AD TAG"]
    rows = [[view.record.id, view.record.label or "-", view.record.masked(), view.record.type,
             view.record.domain or "-", view.record.created_at.replace("T", " ").rstrip("Z") or "-",
             "yes" if view.record.active else "no", view.state, limits_summary(view.record.limits),
             usage_summary(view), view.record.ad_tag or "-"] for view in listing.secrets]
    env.out(table(headers, rows, [env.style(h, bold=True) for h in headers]))


def confirm(env: Env, question: str, yes: bool) -> None:
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
        confirm(env, f"{target.name} is the last active secret; remove it and leave the proxy with none?", yes)

    report = remove_op(ops_of(env), target.id)
    verb = "would remove" if env.runner.dry_run else "removed"
    env.out(env.style("✓ ", fg="green") + f"{verb} secret {target.name} ({target.masked()})")
    for note in report.notes:
        env.warn(note)
    env.out(f"  proxy:   {proxy_line(env, report.apply)}")
    _print_haproxy(env, report)


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
    confirm(env, f"regenerate {target.name}? Links already handed out stop working", yes)

    report = regenerate_op(ops_of(env), target.id)
    verb = "would regenerate" if env.runner.dry_run else "regenerated"
    _print_change(env, f"{verb} secret {target.name} (was {target.masked()})", report, as_json)


def limits_summary(limits: Limits) -> str:
    """The limits in a table cell: the ones set, shortest form (`5 conn, 10G/month, until 2027-01-31`)."""
    parts: list[str] = []
    if limits.max_connections is not None:
        parts.append(f"{limits.max_connections} conn")
    if limits.max_unique_ips is not None:
        parts.append(f"{limits.max_unique_ips} IPs")
    if limits.quota is not None:
        period = limits.quota.period.value if limits.quota.period else "total"
        parts.append(f"{show_size(limits.quota.limit_bytes)}/{period}")
    if limits.rate_limit is not None:
        parts.append(f"{show_size(limits.rate_limit)}/s")
    if limits.expires_at is not None:
        parts.append(f"until {format_time(limits.expires_at).replace('T00:00:00Z', '')}")
    return ", ".join(parts) or "-"


def usage_summary(view: SecretView) -> str:
    usage = view.usage
    if usage.source == "none" and usage.connections_active is None:
        return "-"
    quota = view.record.limits.quota
    text = human_bytes(usage.bytes_total if quota is None or usage.source != "ledger" else usage.period_bytes)
    if quota is not None:
        text += f" of {show_size(quota.limit_bytes)}"
    if usage.connections_active is not None:
        text += f", {usage.connections_active} conn"
    return text + (" (since start)" if usage.source == "engine" else "")


COMMANDS = [add_secret, list_secrets, remove_secret, regenerate_secret]
