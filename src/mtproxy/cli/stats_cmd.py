"""stats: the local stats endpoint in human units, as JSON, or redrawn every few seconds."""

from __future__ import annotations

import time
from typing import Any

import click

from ..host.record import ownership
from ..operations.proxy_control import engine_of_root, fetch_engine, fetch_stats, stat_int, stats_port
from ..operations.secrets import SecretView, list_secrets
from ..store import StoreError
from .env import Env
from .errors import CliError, ExitStatus
from .output import dump_json, human_bytes, human_count, human_duration, table
from .secret_cmds import limits_summary, load_settings, ops_of, usage_summary

pass_env = click.make_pass_decorator(Env)

_SECRET_FIELDS = ("bytes_in", "bytes_out", "active", "total")


def split_stats(stats: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, int | None]]]:
    """Separate per-secret keys (secret_<id>_<field>) from the rest; ids may contain underscores."""
    general: dict[str, str] = {}
    per_secret: dict[str, dict[str, int | None]] = {}
    for key, value in stats.items():
        if key.startswith("secret_"):
            for field in _SECRET_FIELDS:
                if key.endswith("_" + field) and len(key) > len("secret_") + len(field) + 1:
                    sid = key[len("secret_") : -len(field) - 1]
                    per_secret.setdefault(sid, {})[field] = stat_int(stats, key)
                    break
            else:
                general[key] = value
        else:
            general[key] = value
    return general, per_secret


def _views(env: Env) -> dict[str, SecretView]:
    """Each secret's limits, usage and state, by id (the same figures `list-secrets` shows)."""
    try:
        return {view.record.id: view for view in list_secrets(ops_of(env)).secrets}
    except StoreError:
        return {}  # stats stay useful even when the store is broken; status reports that


def render(env: Env, stats: dict[str, str], endpoint: str) -> str:
    general, per_secret = split_stats(stats)
    g = general

    def num(key: str) -> int | None:
        return stat_int(g, key)

    lines = [env.style(f"mtproxy stats — {endpoint}", bold=True)
             + f", up {human_duration(num('uptime'))}, {human_count(num('workers'))} worker(s)"]
    lines.append(f"  connections:  {human_count(num('active_connections'))} active, "
                 f"{human_count(num('total_connections'))} total, "
                 f"{human_count(num('handshakes_ok'))} handshakes ok")
    lines.append(f"  traffic:      client→DC {human_bytes(num('bytes_client_to_dc'))}, "
                 f"DC→client {human_bytes(num('bytes_dc_to_client'))}")
    modes = {k[5:-12]: stat_int(g, k) for k in g if k.startswith("mode_") and k.endswith("_connections")}
    if modes:
        lines.append("  modes:        " + ", ".join(f"{k} {human_count(v)}" for k, v in sorted(modes.items())))
    lines.append(f"  masked:       {human_count(num('masked_connections'))} "
                 f"(mask unreachable {human_count(num('mask_failed'))})")
    rejects = {k[len("handshake_failures_"):]: stat_int(g, k) for k in g if k.startswith("handshake_failures_")}
    shown = ", ".join(f"{k} {human_count(v)}" for k, v in sorted(rejects.items()) if v) or "none"
    lines.append(f"  rejected:     {shown}")
    lines.append(f"  upstream:     {human_count(num('upstream_failed'))} DC connections failed, "
                 f"{human_count(num('refused_by_limit'))} refused by limits")
    if "ext_connections" in g:  # the engine runs the middle proxy (engine.md, "Middle proxy and ad tag")
        lines.append(f"  middle proxy: {human_count(num('ext_connections'))} clients over relays, "
                     f"{human_count(num('total_ready_targets'))} of {human_count(num('total_declared_targets'))}"
                     f" relays ready, DCs down: {g.get('middle_proxy_dcs_down', '-')}, "
                     f"{human_count(num('relay_fallback_direct'))} went direct")
    lines.append(f"  secrets:      {human_count(num('secrets_loaded'))} loaded, reloads "
                 f"{human_count(num('reloads_ok'))} ok / {human_count(num('reloads_failed'))} failed")
    if per_secret:
        views = _views(env)
        headers = ["SECRET", "ACTIVE", "TOTAL", "CLIENT→DC", "DC→CLIENT", "STATE", "LIMITS", "USAGE"]
        rows = [[(views[sid].record.label if sid in views else "") or sid, human_count(f.get("active")),
                 human_count(f.get("total")), human_bytes(f.get("bytes_in")), human_bytes(f.get("bytes_out")),
                 views[sid].state if sid in views else "-",
                 limits_summary(views[sid].record.limits) if sid in views else "-",
                 usage_summary(views[sid]) if sid in views else "-"]
                for sid, f in sorted(per_secret.items())]
        lines.append("")
        lines.append(table(headers, rows, [env.style(h, bold=True) for h in headers]))
    return "\n".join(lines)


def as_json(env: Env, stats: dict[str, str], endpoint: str) -> str:
    general, per_secret = split_stats(stats)
    views = _views(env)
    values: dict[str, Any] = {}
    for key, value in general.items():
        number = stat_int(general, key)
        values[key] = number if number is not None else value
    return dump_json("stats", {
        "endpoint": endpoint,
        "stats": values,
        "secrets": {sid: {"label": views[sid].record.label if sid in views else "", **fields,
                          **({"state": views[sid].state, "limits": views[sid].record.limits.to_json(),
                              "usage": views[sid].usage.to_json()} if sid in views else {})}
                    for sid, fields in sorted(per_secret.items())},
    })


@click.command("stats", epilog="""\b
Examples:
  mtproxy stats
  mtproxy stats --live              redraw every 5 s until Ctrl-C
  mtproxy stats --json | jq .stats.active_connections
""")
@click.option("--live", is_flag=True, help="Redraw every few seconds until Ctrl-C.")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=5.0, show_default=True,
              help="Seconds between redraws with --live.")
@click.option("--count", type=click.IntRange(1), default=None, hidden=True)
@pass_env
def stats(env: Env, live: bool, json_out: bool, interval: float, count: int | None) -> None:
    """Show traffic, connections and handshake counters of the running proxy (from 127.0.0.1:<stats_port>)."""
    own = ownership(env.paths)
    port = stats_port(own, load_settings(env))
    endpoint = f"http://127.0.0.1:{port}/stats"
    engine = fetch_engine(port)
    if engine is not None and not engine_of_root(engine, own, env.paths):  # one root, one installation
        raise CliError(f"{endpoint} answers for another installation (it reads {engine.get('store')})",
                       "use that installation's --root, or give this root its own stats_port", ExitStatus.UNAVAILABLE)
    if not live:
        data = fetch_stats(port)
        if data is None:
            raise CliError(f"no proxy answers on {endpoint}",
                           "start the proxy, or see `mtproxy status` for what is wrong", ExitStatus.UNAVAILABLE)
        env.out(as_json(env, data, endpoint) if json_out else render(env, data, endpoint))
        return
    drawn = 0
    try:
        while count is None or drawn < count:
            data = fetch_stats(port)
            if not json_out:
                env.clear_screen()  # redraw in place on a terminal, coloured or not
            if data is None:
                env.out(f"no proxy answers on {endpoint} (retrying every {interval:g} s, Ctrl-C to stop)")
            else:
                env.out(as_json(env, data, endpoint) if json_out else render(env, data, endpoint))
            env.out("", nl=False)  # flush now, so a pipe reader sees each frame
            drawn += 1
            if count is None or drawn < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        env.out("")


COMMANDS = [stats]
