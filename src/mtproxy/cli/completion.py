"""Shell completion: the scripts for bash, zsh and fish, and completing a secret argument with the ids and
labels in the store of the root the command would use (--root, $MTPROXY_ROOT, the system's or your own)."""

from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem, get_completion_class

from ..paths import choose_root
from ..store import StoreError, read_store

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MTPROXY_COMPLETE"


def source(command: click.Command, shell: str, prog_name: str = "mtproxy") -> str:
    """The script a shell sources; at completion time it runs `mtproxy` with COMPLETE_VAR set."""
    completion_class = get_completion_class(shell)
    if completion_class is None:
        raise ValueError(f"no completion for the shell {shell!r}")
    return completion_class(command, {}, prog_name, COMPLETE_VAR).source()


def complete_secret_ref(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Secret ids and labels starting with what was typed, each with the other as its description.
    Nothing (never an error) when the store cannot be read, e.g. a 0600 store completed by another user."""
    root = ctx.find_root().params.get("root")
    try:
        data = read_store(choose_root(root, os.environ, os.geteuid()).paths.secrets_file)
    except (StoreError, OSError):
        return []
    items: list[CompletionItem] = []
    for record in data.secrets:
        state = "" if record.active else ", inactive"
        if record.id.startswith(incomplete):
            items.append(CompletionItem(record.id, help=f"{record.label or '-'} ({record.type}{state})"))
        if record.label and record.label.startswith(incomplete) and record.label != record.id:
            items.append(CompletionItem(record.label, help=f"{record.id} ({record.type}{state})"))
    return items
