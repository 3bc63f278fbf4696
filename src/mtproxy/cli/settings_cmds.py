"""set-port, set-workers, set-server, set-secret-domain-base: validate, save the settings file, refresh links,
restart the proxy (where the setting needs it)."""

from __future__ import annotations

from typing import Any

import click

from ..host.runner import CommandError
from ..operations import artifacts
from ..operations.errors import OpError
from ..operations.haproxy_routes import follow, integration
from ..operations.proxy_control import ApplyOutcome, detect, restart
from ..settings import OWN_LABEL_LENGTH, Settings, check_secret_domain_base, update_settings
from ..store import StoreError, read_store
from .env import Env
from .errors import CliError, ExitStatus
from .secret_cmds import load_settings
from .validation import Checked, Invalid, check_port, check_server, check_workers

pass_env = click.make_pass_decorator(Env)


def _save(env: Env, **changes: Any) -> str:
    """Save the settings and rewrite every link and QR code (they carry the port and the server).

    Returns the `links:` line: what really happened to the link files, never more.
    """
    update_settings(env.paths.settings_file, **changes)
    try:
        refresh = artifacts.rewrite_all(env.paths, env.server_override)
    except (StoreError, OSError) as exc:
        # The setting is saved; stale links are worth a warning, not a failure of the whole command.
        env.warn(f"links and QR codes not rewritten: {exc}")
        return "NOT rewritten (see the warning); run `mtproxy show-config` once it is fixed"
    if not refresh.written:
        return "could not be rewritten: no server address — set one with `mtproxy set-server HOST`"
    return "rewritten; hand out the new ones (`mtproxy show-config`)"


def _warn_all(env: Env, checked: Checked[Any]) -> None:
    for warning in checked.warnings:
        env.warn(warning)


def _report(env: Env, title: str, outcome: ApplyOutcome) -> None:
    env.out(env.style("✓ ", fg="green") + title)
    env.out(f"  proxy:   {outcome.message}")


def _dry_run(env: Env, what: str, restarts: bool = False) -> None:
    """Say what would change; nothing is saved or rewritten, and the service manager is only asked."""
    env.out(f"dry run: would {what}; nothing was saved")
    if restarts:
        state = detect(env.runner, env.paths)
        env.out("  proxy:   " + (f"would restart the proxy ({state.manager})" if state.running
                                 else "no proxy is running: nothing to restart"))


SET_PORT_EPILOG = """\b
Examples:
  mtproxy set-port 2053
  mtproxy set-port 8444 --no-restart     save now, restart later
Behind HAProxy (`mtproxy setup --behind-haproxy`) it moves the proxy's loopback port and HAProxy's block with
it; links keep HAProxy's port (change that with `mtproxy setup --haproxy-port`).
Ports the VPN stack uses (22, 80, 443, Xray's inbounds), the stats port and ports already in use are refused.
"""


@click.command("set-port", epilog=SET_PORT_EPILOG)
@click.argument("port", type=int)
@click.option("--restart/--no-restart", "do_restart", default=True, help="Restart a running proxy (default: yes).")
@pass_env
def set_port_cmd(env: Env, port: int, do_restart: bool) -> None:
    """Move the proxy to another TCP port; links and QR codes are rewritten to match. Behind HAProxy: the
    proxy's loopback port, and HAProxy's block with it (links keep HAProxy's port)."""
    settings = load_settings(env)
    if integration(env.paths) is not None:
        _set_loopback_port(env, settings, port, do_restart)
        return
    if port == settings.port:
        env.out(f"the proxy already uses port {port}; nothing to do")
        return
    try:
        checked = check_port(port, env.paths.root, settings.stats_port)
    except Invalid as exc:
        free = exc.free_port
        raise exc.cli_error(f"pick a free port, e.g. `mtproxy set-port {free}`" if free else None) from None
    _warn_all(env, checked)
    if env.runner.dry_run:
        _dry_run(env, f"set the port to {port} (now {settings.port}) and rewrite the links", do_restart)
        env.out(f"  firewall: {_move_firewall_rule(env, settings.port, port)}")
        return
    links = _save(env, port=port)
    firewall = _move_firewall_rule(env, settings.port, port)
    outcome = restart(env.runner, env.paths) if do_restart else ApplyOutcome(_later(env), False)
    _report(env, f"port set to {port} (was {settings.port})", outcome)
    env.out(f"  links:   {links}")
    env.out(f"  firewall: {firewall}")


def _set_loopback_port(env: Env, settings: Settings, port: int, do_restart: bool) -> None:
    """Behind HAProxy `port` in the settings is HAProxy's (in links) and the proxy binds a loopback port
    (`listen`): set-port moves the loopback port, the restart, and HAProxy's server line, in that order, so
    HAProxy is pointed at the new port only once the proxy listens there."""
    old = settings.bound_port
    if port == old:
        env.out(f"the proxy already listens on 127.0.0.1:{port} behind HAProxy; nothing to do")
        return
    if not do_restart:
        raise CliError("behind HAProxy, set-port moves the proxy's loopback port and HAProxy's block together, "
                       "which needs the restart", "run it without --no-restart", ExitStatus.USAGE)
    try:
        checked = check_port(port, env.paths.root, settings.stats_port)
    except Invalid as exc:
        free = exc.free_port
        raise exc.cli_error(f"pick a free port, e.g. `mtproxy set-port {free}`" if free else None) from None
    _warn_all(env, checked)
    what = (f"move the proxy's loopback port 127.0.0.1:{old} to 127.0.0.1:{port} and HAProxy's block with it "
            f"(links keep HAProxy's port {settings.port})")
    if env.runner.dry_run:
        _dry_run(env, what, restarts=True)
        return
    extra = {**settings.extra, "listen": [f"127.0.0.1:{port}"]}
    _, new = update_settings(env.paths.settings_file, extra=extra)
    _move_firewall_rule(env, old, port)  # the recorded port and the jail; no UFW rule of ours behind HAProxy
    try:
        outcome = restart(env.runner, env.paths)
    except OpError as exc:
        # HAProxy keeps the old port, where the old process may still serve: it follows only a proxy that restarted
        raise OpError(exc.what, f"{exc.todo}; HAProxy still routes to 127.0.0.1:{old}: once the proxy runs, "
                                "`mtproxy setup -n` points it at the new port", exc.failure) from None
    _report(env, f"loopback port set to {port} (was {old}); links keep HAProxy's port {settings.port}", outcome)
    env.out("  links:   unchanged (HAProxy's port)")
    env.out("  firewall: none needed (the proxy listens on loopback only)")
    _follow_haproxy(env, new)


def _move_firewall_rule(env: Env, old: int, new: int) -> str:
    """Move what setup installed for the old port (its UFW rule, only if setup added it, and the fail2ban
    jail) to the new one, whether or not the proxy restarts now."""
    manual = f"allow the new port: `ufw limit {new}/tcp comment 'MTProxy'` (or your firewall's equivalent)"
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


@click.command("set-workers", epilog="""\b
Examples:
  mtproxy set-workers 2        one worker per CPU core is the usual choice
""")
@click.argument("workers", type=int)
@click.option("--restart/--no-restart", "do_restart", default=True, help="Restart a running proxy (default: yes).")
@pass_env
def set_workers(env: Env, workers: int, do_restart: bool) -> None:
    """Set the number of worker processes sharing the port (1 to 64)."""
    checked = check_workers(workers)
    settings = load_settings(env)
    if workers == settings.workers:
        env.out(f"the proxy already runs {workers} worker(s); nothing to do")
        return
    _warn_all(env, checked)
    if env.runner.dry_run:
        _dry_run(env, f"set the workers to {workers} (now {settings.workers})", do_restart)
        return
    update_settings(env.paths.settings_file, workers=workers)
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
        checked = check_server(server)
        _warn_all(env, checked)
        value = checked.value
    if env.runner.dry_run:
        _dry_run(env, f"set the link server to {value}" if value else "forget the link server")
        return
    links = _save(env, server=value)
    shown = artifacts.choose_server(load_settings(env), None)
    env.out(env.style("✓ ", fg="green") + f"links now use {shown.address if shown else '(no address)'}"
            + (f" ({shown.source})" if shown else ""))
    env.out(f"  links:   {links}")


@click.command("set-secret-domain-base", epilog="""\b
Examples:
  mtproxy set-secret-domain-base users.example.com   then: mtproxy add-secret --own-domain
  mtproxy set-secret-domain-base --clear
\b
Needs wildcard DNS (*.users.example.com) pointing at this server and, at the mask site, a wildcard
certificate for *.users.example.com, so a prober that sends a secret's own host name gets a real site.
""")
@click.argument("base", required=False)
@click.option("--clear", is_flag=True, help="Remove the base; existing secrets keep their host names.")
@pass_env
def set_secret_domain_base(env: Env, base: str | None, clear: bool) -> None:
    """Set the domain under which `add-secret --own-domain` gives each new ee secret its own host name."""
    if (base is None) == (not clear):
        raise CliError("give either BASE or --clear", "see `mtproxy set-secret-domain-base --help`",
                       ExitStatus.USAGE)
    value = None
    if base is not None:
        try:
            value = check_secret_domain_base(base)
        except ValueError as exc:
            raise CliError(str(exc), "give a domain with wildcard DNS, e.g. users.example.com",
                           ExitStatus.USAGE) from None
    if env.runner.dry_run:
        _dry_run(env, f"set the secret domain base to {value}" if value else "remove the secret domain base")
        return
    old, new = update_settings(env.paths.settings_file, secret_domain_base=value)
    was = f" (was {old.secret_domain_base})" if old.secret_domain_base else ""
    if value is None:
        env.out(env.style("✓ ", fg="green") + f"secret domain base removed{was}; existing secrets keep their"
                " host names")
    else:
        env.out(env.style("✓ ", fg="green") + f"secret domain base set to {value}{was}")
        env.out(f"  new secrets: `mtproxy add-secret --own-domain` gives each a host name like"
                f" {'a' * OWN_LABEL_LENGTH}.{value}")
        env.out(f"  needs:   wildcard DNS for *.{value} to this server, and a certificate for *.{value} at the"
                " mask site")
    _follow_haproxy(env, new)


def _follow_haproxy(env: Env, settings: Settings) -> bool:
    """Behind HAProxy, bring the block up to date (the one path the secret commands take too); False when
    it could not be (the saved change stands, and the warning says how to re-apply)."""
    routed = follow(env.paths, env.runner, settings, read_store(env.paths.secrets_file))
    if not routed.ok:
        env.warn(f"HAProxy {routed.note}")
    elif routed.note:
        env.out(f"  haproxy: {routed.note}")
    return routed.ok


COMMANDS = [set_port_cmd, set_workers, set_server, set_secret_domain_base]
