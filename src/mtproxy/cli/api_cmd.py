"""api, api-token: serve the management API on loopback, and create its bearer token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from .env import Env
from .errors import CliError, ExitStatus
from .secret_cmds import ops_of

pass_env = click.make_pass_decorator(Env)


@click.command("api-token", epilog="""\b
Examples:
  mtproxy api-token
  mtproxy api-token --rotate            a new token; the old one stops working at the API's next start
""")
@click.option("--rotate", is_flag=True, help="Replace an existing token.")
@pass_env
def api_token(env: Env, rotate: bool) -> None:
    """Create the management API's bearer token (mode 0600); prints where it is, never the token."""
    from ..api.token import create_token

    path = env.paths.api_token_file
    written = create_token(path, rotate)
    env.out(env.style("✓ ", fg="green") + (f"wrote a new API token to {path} (mode 0600)" if written else
                                          f"an API token already exists in {path} (--rotate replaces it)"))


@click.command("api", epilog="""\b
Examples:
  mtproxy api                                   http://127.0.0.1:8899/api/v1
  mtproxy api --read-only --port 9000
  curl -H "Authorization: Bearer $(cat TOKEN_FILE)" http://127.0.0.1:8899/api/v1/secrets
""")
@click.option("--listen", "host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8899, show_default=True, help="0: any free port.")
@click.option("--read-only", is_flag=True, help="Refuse every change (403); reads still work.")
@click.option("--allow-remote", is_flag=True, help="Allow binding a non-loopback address (put TLS in front).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bearer token file (default: <root>/config/mtproxy/api_token).")
@pass_env
def api(env: Env, host: str, port: int, read_only: bool, allow_remote: bool, token_file: Path | None) -> None:
    """Serve the management API (JSON, bearer token) until Ctrl-C or SIGTERM. Off unless you run it."""
    from ..api.server import BindRefused, check_bind, serve
    from ..api.token import TokenError, read_token

    try:
        check_bind(host, allow_remote)
    except BindRefused as exc:
        raise CliError(str(exc), "bind 127.0.0.1 (the default), or pass --allow-remote behind a TLS proxy",
                       ExitStatus.USAGE) from None
    try:
        token = read_token(token_file or env.paths.api_token_file)
    except TokenError as exc:
        raise CliError(str(exc), "", ExitStatus.PERMISSION) from None
    ops = ops_of(env)
    ops.actor = "api"
    mode = " (read-only)" if read_only else ""

    def ready(url: str) -> None:
        env.out(f"ready: management API on {url}{mode}", nl=False)
        env.out("")

    try:
        asyncio.run(serve(ops, token, host, port, read_only, allow_remote, ready))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port",
                       ExitStatus.CONFLICT) from None


COMMANDS = [api, api_token]
