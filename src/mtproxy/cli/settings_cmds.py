"""set-port, set-workers, set-server: validate, save the settings file, refresh links, restart the proxy."""

from __future__ import annotations

import os
from typing import Any

import click

from ..host.runner import CommandError
from ..settings import MAX_WORKERS, check_server, update_settings
from ..store import StoreError
from . import artifacts
from .env import Env
from .errors import CliError, ExitStatus
from .ports import RESERVED, bind_error, suggest_free, vpn_ports
from .proxy_control import ApplyOutcome, detect, restart
from .secret_cmds import load_settings

pass_env = click.make_pass_decorator(Env)


def _save(env: Env, **changes: Any) -> None:
    if env.runner.dry_run:
        return
    _old, new = update_settings(env.paths.settings_file, **changes)
    server = artifacts.choose_server(new, env.server_override)

    try:  # links carry the port and server, so every link file and QR code is rewritten
        artifacts.rewrite_all(env.paths, new, server)
    except (StoreError, OSError) as exc:
        # The setting is saved; stale links are worth a warning, not a failure of the whole command.
        env.warn(f"links and QR codes not rewritten: {exc}")


def _report(env: Env, title: str, outcome: ApplyOutcome) -> None:
    env.out(env.style("✓ ", fg="green") + title)
    env.out(f"  proxy:   {outcome.message}")


SET_PORT_EPILOG = """\b
Examples:
  mtproxy set-port 2053
  mtproxy set-port 8444 --no-restart     save now, restart later
Ports the VPN stack uses (443, Xray's inbounds) and ports already in use are refused.
"""


@click.command("set-port", epilog=SET_PORT_EPILOG)
@click.argument("port", type=int)
@click.option("--restart/--no-restart", "do_restart", default=True, help="Restart a running proxy (default: yes).")
@pass_env
def set_port_cmd(env: Env, port: int, do_restart: bool) -> None:
    """Move the proxy to another TCP port; links and QR codes are rewritten to match."""
    settings = load_settings(env)
    if not 1 <= port <= 65535:
        raise CliError(f"port {port} is out of range", "give a port from 1 to 65535", ExitStatus.USAGE)
    if port == settings.port:
        env.out(f"the proxy already uses port {port}; nothing to do")
        return
    taken = {**RESERVED, **vpn_ports(env.paths.root), settings.stats_port: "the proxy's stats endpoint"}
    if port in taken:
        raise CliError(f"port {port} is reserved for {taken[port]}", _suggestion(set(taken)), ExitStatus.CONFLICT)
    problem = bind_error(port)
    if problem is not None:
        raise CliError(f"port {port} cannot be used: {problem}", _suggestion(set(taken)), ExitStatus.CONFLICT)
    if port < 1024:
        env.warn(f"port {port} is privileged: the proxy needs CAP_NET_BIND_SERVICE (the image grants it)")
    _save(env, port=port)
    firewall = _move_firewall_rule(env, settings.port, port)
    outcome = restart(env.runner, env.paths) if do_restart else ApplyOutcome(_later(env), False)
    _report(env, f"port set to {port} (was {settings.port})", outcome)
    env.out("  links:   rewritten; hand out the new ones (`mtproxy show-config`)")
    env.out(f"  firewall: {firewall}")


def _move_firewall_rule(env: Env, old: int, new: int) -> str:
    """Move what setup installed for the old port (its UFW rule, only if setup added it, and the fail2ban
    jail) to the new one, whether or not the proxy restarts now."""
    manual = f"allow the new port, e.g. `ufw limit {new}/tcp comment 'MTProxy'`"
    from ..host.layout import HostLayout
    from ..host.record import ownership
    from ..host.service import follow_port

    layout = HostLayout.resolve(env.paths.root)
    record = ownership(env.paths, layout).record  # another root's record moves nothing of ours
    if record is None:
        return manual
    try:
        return follow_port(env.runner, env.paths, layout, record, new)
    except (CommandError, OSError) as exc:
        env.warn(f"could not move the UFW rule and the jail: {exc}")
        return manual


def _later(env: Env) -> str:
    state = detect(env.runner, env.paths)
    if state.running:
        return "saved; the running proxy keeps the old value until it restarts"
    return "no proxy is running: saved, and used when the proxy starts"


def _suggestion(taken: set[int]) -> str:
    free = suggest_free(taken)
    return f"pick a free port, e.g. `mtproxy set-port {free}`" if free else "pick another port"


@click.command("set-workers", epilog="""\b
Examples:
  mtproxy set-workers 2        one worker per CPU core is the usual choice
""")
@click.argument("workers", type=int)
@click.option("--restart/--no-restart", "do_restart", default=True, help="Restart a running proxy (default: yes).")
@pass_env
def set_workers(env: Env, workers: int, do_restart: bool) -> None:
    """Set the number of worker processes sharing the port (1 to 64)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise CliError(f"{workers} workers is out of range", f"give 1 to {MAX_WORKERS}", ExitStatus.USAGE)
    settings = load_settings(env)
    if workers == settings.workers:
        env.out(f"the proxy already runs {workers} worker(s); nothing to do")
        return
    cores = os.cpu_count() or 1
    if workers > cores:
        env.warn(f"{workers} workers on {cores} CPU core(s): more workers than cores only adds overhead")
    _save(env, workers=workers)
    outcome = restart(env.runner, env.paths) if do_restart else ApplyOutcome(_later(env), False)
    _report(env, f"workers set to {workers} (was {settings.workers})", outcome)


@click.command("set-server", epilog="""\b
Examples:
  mtproxy set-server proxy.example.com   a domain: move hosts without reissuing links
  mtproxy set-server 203.0.113.5
  mtproxy set-server --guess             forget it and guess from the default route again
""")
@click.argument("server", required=False)
@click.option("--guess", is_flag=True, help="Remove the configured address; links use the routing guess.")
@pass_env
def set_server(env: Env, server: str | None, guess: bool) -> None:
    """Set the address or domain written into links (no restart needed)."""
    if (server is None) == (not guess):
        raise CliError("give either SERVER or --guess", "see `mtproxy set-server --help`", ExitStatus.USAGE)
    value = None
    if server is not None:
        try:
            value = check_server(server)
        except ValueError as exc:
            raise CliError(str(exc), "give a host name or an IP address only", ExitStatus.USAGE) from None
    _save(env, server=value)
    settings = load_settings(env)
    shown = artifacts.choose_server(settings, None)
    env.out(env.style("✓ ", fg="green") + f"links now use {shown.address if shown else '(no address)'}"
            + (f" ({shown.source})" if shown else ""))
    env.out("  links:   rewritten; hand out the new ones (`mtproxy show-config`)")


COMMANDS = [set_port_cmd, set_workers, set_server]
