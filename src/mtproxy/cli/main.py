"""Entry points and the error edge: every failure becomes `mtproxy: what — what to do` and an ExitStatus."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

import click

from .. import __version__
from .edge import run_at_edge
from .entry import version_asked
from .env import Env
from .errors import CliError, ExitStatus
from .validation import Invalid, check_server

ROOT_HELP = ("Installation root (default: $MTPROXY_ROOT, else /opt/vless when installed there or run as root,"
             " else ~/.local/state/mtproxy).")
# These parse their own flags and choose the root themselves (the engine says where it keeps things).
_OWN_ROOT = frozenset({"run", "setup", "uninstall", "healthcheck", "completion"})
_ROOT_KEY = "mtproxy.root"

EPILOG = """\b
Examples:
  mtproxy add-secret --label phones       new secret, prints its links and QR files
  mtproxy list-secrets                    what is configured
  mtproxy show-config phones              links and QR code of one secret
  mtproxy set-port 2053                   move the proxy to another port
  mtproxy status                          is it healthy? (exit status 0 when it is)
  mtproxy doctor                          what is wrong, and how to fix each thing
  mtproxy --root /tmp/test list-secrets   work on another installation

\b
Shell completion (bash, zsh, fish):
  eval "$(mtproxy completion bash)"
"""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
    invoke_without_command=True,
)
@click.option("--root", type=click.Path(file_okay=False), envvar="MTPROXY_ROOT", help=ROOT_HELP)
@click.option("--server", metavar="HOST", help="Address or domain for links (default: config, then a guess).")
@click.option("--color/--no-color", "colour", default=None, help="Colours (default: only on a terminal).")
@click.option("--dry-run", is_flag=True, help="Show host commands (docker, systemctl) instead of running them.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, prog_name="mtproxy", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context, root: str | None, server: str | None, colour: bool | None, dry_run: bool, debug: bool
) -> None:
    """Manage the MTProxy server: secrets, links and QR codes, port and workers, stats and health."""
    ctx.meta[_ROOT_KEY] = root  # `mtproxy --root X run|setup|uninstall`: handed on as their own --root
    if ctx.obj is None:
        ctx.obj = Env.from_process(root, colour=colour, dry_run=dry_run, server=server, debug=debug)
        if ctx.obj.root_note and ctx.invoked_subcommand not in _OWN_ROOT:
            ctx.obj.err(f"mtproxy: {ctx.obj.root_note}")
    else:  # an Env given by a test: the flags still apply on top of it
        ctx.obj.runner.dry_run = ctx.obj.runner.dry_run or dry_run
        ctx.obj.server_override = server or ctx.obj.server_override
    if ctx.obj.server_override:
        ctx.obj.server_override = _checked_server(ctx.obj.server_override, given=server is not None)
    if ctx.invoked_subcommand is None:  # `mtproxy` alone: the help, and that is not an error
        click.echo(ctx.get_help())
        ctx.exit(0)


def _checked_server(value: str, given: bool) -> str:
    """--server / MTPROXY_SERVER is refused on the same grounds as `set-server`'s argument. Its warnings
    (a private address) are left to `set-server` and setup, which keep the value; this one is per command."""
    try:
        return check_server(value).value
    except Invalid as exc:
        raise CliError(f"{'--server' if given else 'MTPROXY_SERVER'}: {exc.what}", exc.todo, exc.status) from None


def _lazy(module: str, function: str, prog: str) -> Callable[[list[str]], int]:
    """Import the engine's command only when it runs, so the operator commands work without it."""

    def call(argv: list[str]) -> int:
        if version_asked(prog, argv):
            return 0
        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError):
            raise CliError(
                f"this installation has no `{module}.{function}`",
                "reinstall mtproxy (the package is incomplete)",
                ExitStatus.UNAVAILABLE,
            ) from None
        return int(target(argv))

    return call


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command("run", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run the proxy (flags as the official mtproto-proxy: -H, -S, -D, -p, -M …; see `mtproxy run --help`)."""
    raise SystemExit(_lazy("mtproxy.cli.run", "run_command", "mtproxy run")(_with_root(ctx, list(args))))


@cli.command("healthcheck", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def healthcheck_cmd(args: tuple[str, ...]) -> None:
    """Exit 0 only when the local proxy answers (for container health checks)."""
    raise SystemExit(_lazy("mtproxy.cli.healthcheck", "healthcheck_command", "mtproxy healthcheck")(list(args)))


def _with_root(ctx: click.Context, argv: list[str]) -> list[str]:
    """The global `mtproxy --root X` (or MTPROXY_ROOT) reaches run/setup/uninstall, which parse their own
    flags, as their --root; one they are given themselves comes later and wins."""
    root = ctx.meta.get(_ROOT_KEY)
    return ["--root", str(root), *argv] if root else argv


def _with_dry_run(ctx: click.Context, argv: list[str]) -> list[str]:
    """The global `mtproxy --dry-run` (and --root) reach setup/uninstall, which parse their own flags."""
    argv = _with_root(ctx, argv)
    env = ctx.find_object(Env)
    if env is not None and env.runner.dry_run and "--dry-run" not in argv:
        return [*argv, "--dry-run"]
    return argv


@cli.command("setup", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def setup_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Install the proxy on this host (the same as `mtproxy-setup`)."""
    raise SystemExit(_lazy_main("mtproxy.cli.setup", _with_dry_run(ctx, list(args)), "mtproxy setup"))


@cli.command("uninstall", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def uninstall_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Remove the proxy from this host (the same as `mtproxy-uninstall`)."""
    raise SystemExit(_lazy_main("mtproxy.cli.uninstall", _with_dry_run(ctx, list(args)), "mtproxy uninstall"))


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script.

    \b
    Examples:
      eval "$(mtproxy completion bash)"                      in ~/.bashrc
      mtproxy completion fish > ~/.config/fish/completions/mtproxy.fish
    """
    from .completion import source

    click.echo(source(cli, shell))


def _register() -> None:
    # Imported here so each subcommand lives in its own module and main stays the edge.
    from . import api_cmd, doctor_cmd, limit_cmds, secret_cmds, settings_cmds, show_config, stats_cmd, status_cmd

    for module in (secret_cmds, limit_cmds, settings_cmds, show_config, stats_cmd, status_cmd, doctor_cmd,
                   api_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _lazy_main(module: str, argv: list[str], prog: str) -> int:
    """setup and uninstall: their `main` runs its work through the same edge (cli/edge.py) as the rest."""
    if version_asked(prog, argv):
        return 0
    try:
        entry = importlib.import_module(module).main
    except (ImportError, AttributeError):
        raise CliError(f"this installation has no {module}", "reinstall mtproxy", ExitStatus.UNAVAILABLE) from None
    return int(entry(argv) or 0)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    """`mtproxy`: run a command and map every outcome to an ExitStatus; never a traceback without --debug.

    Tests pass `argv` and their own `env` (paths, a runner that sees no docker, …) and get the status back.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MTPROXY_DEBUG") == "1"
    status = run_at_edge(lambda: _click_main(args, env), typed=args, debug=debug)
    if argv is None:
        sys.exit(status)
    return status


def _click_main(args: list[str], env: Env | None) -> int:
    """click's own outcomes as the edge knows them: usage errors are ExitStatus.USAGE with a hint."""
    try:
        result = cli.main(args=args, prog_name="mtproxy", standalone_mode=False, obj=env)
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "mtproxy"
        raise CliError(exc.format_message(), f"see `{command} --help`", ExitStatus.USAGE) from None
    return int(result) if isinstance(result, int) else 0


def setup_main() -> None:
    """`mtproxy-setup`: the deployment wizard."""
    argv = sys.argv[1:]
    sys.exit(run_at_edge(lambda: _lazy_main("mtproxy.cli.setup", argv, "mtproxy-setup"), typed=argv))


def uninstall_main() -> None:
    """`mtproxy-uninstall`."""
    argv = sys.argv[1:]
    sys.exit(run_at_edge(lambda: _lazy_main("mtproxy.cli.uninstall", argv, "mtproxy-uninstall"), typed=argv))


if __name__ == "__main__":
    main()
