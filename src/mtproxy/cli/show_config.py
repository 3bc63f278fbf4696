"""show-config: the links, QR file paths and a terminal QR code of one secret or of every active one."""

from __future__ import annotations

import click

from ..operations import artifacts
from ..qr import terminal_text
from ..store import StoreAccessError, read_store
from .completion import complete_secret_ref
from .env import Env
from .output import dump_json
from .secret_cmds import load_settings, resolve

pass_env = click.make_pass_decorator(Env)


@click.command("show-config", epilog="""\b
Examples:
  mtproxy show-config                 every active secret
  mtproxy show-config phones          one secret, by label, id or value
  mtproxy show-config --no-qr --json  links only, for scripts
""")
@click.argument("ref", metavar="[SECRET|ID|LABEL]", required=False, shell_complete=complete_secret_ref)
@click.option("--qr/--no-qr", "draw", default=True, help="Draw the QR code in the terminal (default: yes).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the secrets).")
@pass_env
def show_config(env: Env, ref: str | None, draw: bool, as_json: bool) -> None:
    """Print each secret's tg:// and t.me links, where its QR files are, and the QR code itself."""
    settings = load_settings(env)
    data = read_store(env.paths.secrets_file)
    records = [resolve(data, ref)] if ref is not None else data.active_records()
    server = artifacts.require_server(settings, env.server_override)
    if not env.runner.dry_run:
        _refresh_files(env)
    items = []
    for rec in records:
        links = artifacts.links_for(rec, settings, server)
        files = artifacts.files_for(env.paths, rec)
        items.append((rec, links, files))
    if as_json:
        env.out(dump_json("config", {
            "server": server.address, "server_source": server.source, "port": settings.port,
            "secrets": [{"id": rec.id, "label": rec.label, "type": rec.type, "active": rec.active,
                         "secret": rec.value, "tg": links.tg, "https": links.https,
                         "qr_png": str(files.png), "qr_svg": str(files.svg)}
                        for rec, links, files in items],
        }))
        return
    if not items:
        env.out("no active secrets — create one with `mtproxy add-secret`")
        return
    env.out(f"server {server.address} ({server.source}), port {settings.port}")
    if server.warning:
        env.warn(server.warning)
    for rec, links, files in items:
        env.out("")
        title = f"{rec.name}  [{rec.type}{', ' + rec.domain if rec.domain else ''}]"
        env.out(env.style(title, bold=True) + ("" if rec.active else env.style("  (inactive)", fg="yellow")))
        env.out(f"  secret:  {rec.value}")
        env.out(f"  tg:      {links.tg}")
        env.out(f"  https:   {links.https}")
        if rec.active:
            env.out(f"  QR:      {files.png}")
            env.out(f"           {files.svg}")
        if draw:
            env.out(terminal_text(links.tg))


def _refresh_files(env: Env) -> None:
    """Make sure the files shown exist and match; a read-only root is only worth a warning here."""
    try:
        artifacts.rewrite_all(env.paths, env.server_override)
    except (StoreAccessError, OSError) as exc:
        env.warn(f"could not refresh the QR files: {exc}")


COMMANDS = [show_config]
