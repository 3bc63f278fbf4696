"""The mtproxy(1) man page, generated from the click commands (their help, options and examples), so it
never disagrees with `mtproxy --help`. The setup wizard installs it (`man mtproxy`)."""

from __future__ import annotations

import inspect

import click

from .. import __version__
from ..host.fail2ban import JAIL
from ..host.templates import LOG_NAME

SECTION = "1"


def _escape(text: str) -> str:
    """roff: backslashes doubled, a leading dot or quote made literal, hyphens kept as minus signs."""
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    """click's help text: `\\b` blocks are kept as typed (examples), the rest is filled."""
    out: list[str] = []
    for block in inspect.cleandoc(text).split("\n\n"):
        if block.startswith("\b"):
            out.append(".PP\n.nf\n" + _escape(block.lstrip("\b").strip("\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _escape(" ".join(block.split())))
    return "\n".join(out)


def _options(ctx: click.Context, command: click.Command) -> str:
    out: list[str] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out.append(f".TP\n.B {_escape(names)}\n{_escape(help_text)}")
    return "\n".join(out)


def render(group: click.Group, prog_name: str = "mtproxy") -> str:
    """The whole page: name, synopsis, description, global options, each command, environment, files."""
    ctx = click.Context(group, info_name=prog_name)
    parts = [
        f'.TH {prog_name.upper()} {SECTION} "" "mtproxy {__version__}" "User Commands"',
        ".SH NAME",
        f"{prog_name} \\- {_escape(group.get_short_help_str(200))}",
        ".SH SYNOPSIS",
        f".B {prog_name}\n[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _paragraphs(group.help or ""),
        ".SH GLOBAL OPTIONS",
        _options(ctx, group),
        ".SH COMMANDS",
    ]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        usage = " ".join(command.collect_usage_pieces(sub))
        parts.append(f".SS {_escape(name)}\n.B {prog_name} {_escape(name)}\n{_escape(usage)}")
        parts.append(_paragraphs(command.help or command.short_help or ""))
        options = _options(sub, command)
        if options and command.add_help_option is not False:
            parts.append(".RS\n" + options + "\n.RE")
        if command.epilog:
            parts.append(_paragraphs(command.epilog))
    if group.epilog:
        parts += [".SH EXAMPLES", _paragraphs(group.epilog)]
    parts += [
        ".SH ENVIRONMENT",
        ".TP\n.B MTPROXY_ROOT\nThe installation root when \\fB\\-\\-root\\fR is not given (default /opt/vless).",
        ".TP\n.B MTPROXY_DEBUG\nSet to 1 to show tracebacks of internal errors.",
        ".SH FILES",
        ".TP\n.I <root>/config/mtproxy/mtproxy_secrets.json\nThe secrets store (mode 0600).",
        ".TP\n.I <root>/config/mtproxy/mtproxy_config.json\nThe settings: port, workers, domain, server, stats port.",
        f".TP\n.I <root>/logs/mtproxy/{LOG_NAME}\nThe engine's log; fail2ban's jail \\fB{JAIL}\\fR reads it.",
        ".TP\n.I <root>/mtproxy/install.json\nWhat mtproxy\\-setup installed (mtproxy\\-uninstall removes that).",
        ".SH SEE ALSO",
        "\\fBmtproxy\\-setup \\-\\-help\\fR, \\fBmtproxy\\-uninstall \\-\\-help\\fR, docs/cli.md and docs/deploy.md.",
    ]
    return "\n".join(p for p in parts if p) + "\n"
