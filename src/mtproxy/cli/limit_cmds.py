"""set-limits, enable, disable, extend, reset-usage, set-ad-tag: per-secret settings, applied live through a
reload."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from ..accounts.limits import QuotaPeriod
from ..operations.apply import ChangeReport
from ..operations.limit_ops import KEEP, LimitsPatch, extend, reset_usage, set_ad_tag, set_enabled, set_limits
from ..operations.units import CLEAR_WORDS, UnitError, parse_duration, parse_rate, parse_size, parse_when
from ..store import read_store
from .completion import complete_secret_ref
from .env import Env
from .output import dump_json
from .secret_cmds import confirm, limits_summary, ops_of, proxy_line, resolve

pass_env = click.make_pass_decorator(Env)

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]
else:  # generic only in the type stubs of newer click releases
    _ParamType = click.ParamType


class _Unit(_ParamType):
    """A size, rate, count, duration or date as typed; `none` (or unlimited, never, off) clears it."""

    def __init__(self, name: str, parse: Any, clearable: bool = True) -> None:
        self.name = name
        self._parse = parse
        self._clearable = clearable

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        if self._clearable and value.strip().lower() in CLEAR_WORDS:
            return None
        try:
            return self._parse(value)
        except (UnitError, ValueError) as exc:
            self.fail(str(exc), param, ctx)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise UnitError(f"{text!r} is not a whole number (or `none`)")
    return int(text)


SIZE = _Unit("SIZE", parse_size)
RATE = _Unit("SIZE/s", parse_rate)
COUNT = _Unit("N", _count)
WHEN = _Unit("DATE", parse_when)
DURATION = _Unit("DURATION", parse_duration, clearable=False)


def _report(env: Env, kind: str, title: str, report: ChangeReport, as_json: bool) -> None:
    record = report.record
    assert record is not None
    if as_json:
        env.out(dump_json(kind, {
            "id": record.id, "label": record.label, "active": record.active, "limits": record.limits.to_json(),
            "usage_reset_at": record.usage_reset_at or None, "ad_tag": record.ad_tag or None,
            "dry_run": report.dry_run,
            "proxy": {"message": report.apply.message, "live": report.apply.live, "failed": report.apply.failed},
            "notes": report.notes}))
        return
    env.out(env.style("✓ ", fg="green") + title)
    env.out(f"  active:  {'yes' if record.active else 'no'}")
    env.out(f"  limits:  {limits_summary(record.limits)}")
    if record.ad_tag:
        env.out(f"  ad tag:  {record.ad_tag}")
    for note in report.notes:
        if not note.startswith("links and QR codes not written"):
            env.warn(note)
    env.out(f"  proxy:   {proxy_line(env, report.apply)}")


def _verb(report: ChangeReport, done: str, would: str) -> str:
    return would if report.dry_run else done


@click.command("set-limits", epilog="""\b
Examples:
  mtproxy set-limits phones --max-connections 5 --max-ips 3
  mtproxy set-limits phones --quota 10G --quota-period month --quota-anchor 15
  mtproxy set-limits phones --expires 2027-01-31 --rate 1M/s
  mtproxy set-limits phones --quota none --expires never        remove both
\b
Sizes: K, M, G, T (and KiB, MiB, GiB, TiB) are powers of 1024; KB, MB, GB, TB powers of 1000.
Durations: s, m, h, d, w (30d, 1d12h). Dates: ISO 8601 (2027-01-31, 2027-01-31T18:00:00+01:00), UTC
unless an offset is given. `none` clears a limit.
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--max-connections", type=COUNT, default=KEEP, help="Concurrent connections, all workers (or none).")
@click.option("--max-ips", type=COUNT, default=KEEP, help="Distinct client addresses within the IP window.")
@click.option("--ip-window", type=DURATION, default=KEEP, help="The window --max-ips counts over (default 1d).")
@click.option("--quota", type=SIZE, default=KEEP, help="Bytes both ways together per period (or none).")
@click.option("--quota-period", type=click.Choice(["day", "week", "month", "total"]), default=None,
              help="When the quota starts again; total: only reset-usage clears it.")
@click.option("--quota-anchor", type=click.IntRange(1, 28), default=None,
              help="month: the day (1-28) a period starts; week: the weekday (1 = Monday .. 7).")
@click.option("--quota-tz", metavar="ZONE", default=None, help="IANA time zone of the period's midnight (UTC).")
@click.option("--expires", type=WHEN, default=KEEP, help="When the secret stops working (or never).")
@click.option("--rate", type=RATE, default=KEEP, help="Bytes per second, each direction (or none).")
@click.option("--note", default=None, help="Free text kept with the limits.")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def set_limits_cmd(env: Env, ref: str, max_connections: Any, max_ips: Any, ip_window: Any, quota: Any,
                   quota_period: str | None, quota_anchor: int | None, quota_tz: str | None, expires: Any,
                   rate: Any, note: str | None, dry_run: bool, as_json: bool) -> None:
    """Set some of a secret's limits; the others stay. The running proxy applies them on reload."""
    if dry_run:
        env.runner.dry_run = True
    period: Any = KEEP if quota_period is None else (None if quota_period == "total" else QuotaPeriod(quota_period))
    patch = LimitsPatch(
        max_connections=max_connections, max_unique_ips=max_ips,
        unique_ip_window=int(ip_window.total_seconds()) if isinstance(ip_window, timedelta) else KEEP,
        quota_bytes=quota, quota_period=period, quota_anchor=KEEP if quota_anchor is None else quota_anchor,
        quota_timezone=KEEP if quota_tz is None else quota_tz, expires_at=expires, rate_limit=rate,
        note=KEEP if note is None else note)
    if patch.empty:
        raise click.UsageError("nothing to change: give at least one limit option")
    report = set_limits(ops_of(env), ref, patch)
    assert report.record is not None
    _report(env, "secret-limits", f"{_verb(report, 'set', 'would set')} limits of {report.record.name}", report,
            as_json)


@click.command("enable", epilog="""\b
Examples:
  mtproxy enable phones
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def enable_cmd(env: Env, ref: str, dry_run: bool, as_json: bool) -> None:
    """Serve a disabled secret again (its links are the same as before)."""
    if dry_run:
        env.runner.dry_run = True
    report = set_enabled(ops_of(env), ref, True)
    assert report.record is not None
    _report(env, "secret-state", f"{_verb(report, 'enabled', 'would enable')} {report.record.name}", report,
            as_json)


@click.command("disable", epilog="""\b
Examples:
  mtproxy disable phones
  mtproxy disable phones --yes          even when it is the last active secret
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--yes", "-y", is_flag=True, help="Do not ask, even before disabling the last active secret.")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def disable_cmd(env: Env, ref: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Stop serving a secret without deleting it: its clients are cut off at the reload; `enable` undoes it."""
    if dry_run:
        env.runner.dry_run = True
    current = read_store(env.paths.secrets_file)
    target = resolve(current, ref)
    if target.active and not [rec for rec in current.active_records() if rec.id != target.id]:
        confirm(env, f"{target.name} is the last active secret; disable it and leave the proxy with none?", yes)
    report = set_enabled(ops_of(env), target.id, False)
    assert report.record is not None
    _report(env, "secret-state", f"{_verb(report, 'disabled', 'would disable')} {report.record.name}", report,
            as_json)


@click.command("extend", epilog="""\b
Examples:
  mtproxy extend phones 30d
  mtproxy extend phones 1w
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.argument("duration", metavar="DURATION", type=DURATION)
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def extend_cmd(env: Env, ref: str, duration: timedelta, dry_run: bool, as_json: bool) -> None:
    """Move a secret's expiry later: from its current expiry, or from now if that has passed."""
    if dry_run:
        env.runner.dry_run = True
    report = extend(ops_of(env), ref, duration)
    assert report.record is not None
    _report(env, "secret-limits", f"{_verb(report, 'extended', 'would extend')} {report.record.name}", report,
            as_json)


@click.command("reset-usage", epilog="""\b
Examples:
  mtproxy reset-usage phones --yes
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.option("--yes", "-y", is_flag=True, help="Do not ask (the usage counted so far is forgotten).")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def reset_usage_cmd(env: Env, ref: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Start counting a secret's usage (its quota) from zero, now; the running proxy takes it on reload."""
    if dry_run:
        env.runner.dry_run = True
    target = resolve(read_store(env.paths.secrets_file), ref)
    confirm(env, f"reset the usage of {target.name}? Its quota starts again from zero", yes)
    report = reset_usage(ops_of(env), target.id)
    assert report.record is not None
    _report(env, "secret-usage-reset", f"{_verb(report, 'reset', 'would reset')} the usage of "
            f"{report.record.name}", report, as_json)



@click.command("set-ad-tag", epilog="""\b
Examples:
  mtproxy set-ad-tag phones 0123456789abcdef0123456789abcdef
  mtproxy set-ad-tag phones --clear          back to the global -P
""")
@click.argument("ref", metavar="SECRET|ID|LABEL", shell_complete=complete_secret_ref)
@click.argument("tag", metavar="TAG", required=False)
@click.option("--clear", is_flag=True, help="Remove the secret's own tag: its clients get the global -P.")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def set_ad_tag_cmd(env: Env, ref: str, tag: str | None, clear: bool, dry_run: bool, as_json: bool) -> None:
    """Give a secret's clients their own ad tag (32 hex digits from @MTProxybot) instead of the global -P.

    The engine sends it through Telegram's middle proxies from its next reload (docs/engine.md)."""
    if (tag is None) == (not clear):
        raise click.UsageError("give a TAG, or --clear (not both)")
    if dry_run:
        env.runner.dry_run = True
    report = set_ad_tag(ops_of(env), ref, None if clear else tag)
    assert report.record is not None
    done = "cleared the ad tag of" if clear else "set the ad tag of"
    would = "would clear the ad tag of" if clear else "would set the ad tag of"
    _report(env, "secret-ad-tag", f"{_verb(report, done, would)} {report.record.name}", report, as_json)


COMMANDS = [set_limits_cmd, enable_cmd, disable_cmd, extend_cmd, reset_usage_cmd, set_ad_tag_cmd]
