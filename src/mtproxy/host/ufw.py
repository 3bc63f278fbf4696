"""UFW: the one rule that opens (and rate-limits) the proxy's port; present whether UFW is active or not.

`ufw limit` refuses a source address's 6th and later new connections within 30 seconds (ufw's hitcount 6
counts the new one; tests/deploy measure it). Telegram apps open several
connections at once and mobile carriers put many users behind one address, so the wizard explains this
and offers a plain `allow`. UFW rules live in the INPUT chain: they govern the proxy because it runs in the
host's network namespace (host networking or the systemd unit), see docs/deploy.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .runner import Runner

COMMENT = "MTProxy"
MODES = ("limit", "allow")


@dataclass(frozen=True)
class UfwState:
    active: bool | None  # None: unknown (`ufw status` failed), never taken for "inactive"
    rules: tuple[str, ...]  # `ufw show added` lines, e.g. "ufw limit 8443/tcp comment 'MTProxy'"
    error: str = ""  # why `ufw status` failed


def rule_args(port: int, mode: str) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"ufw mode must be one of {MODES}, not {mode!r}")
    return [mode, f"{port}/tcp"]


def state(runner: Runner) -> UfwState:
    if not runner.available("ufw"):
        return UfwState(False, ())  # nothing to read: no rules, and none enforced
    status = runner.run(["ufw", "status"], check=False, mutates=False, timeout=30)
    active: bool | None = None
    if status.ok and "Status: active" in status.stdout:
        active = True
    elif status.ok and "Status: inactive" in status.stdout:
        active = False
    error = "" if active is not None else (status.last_error_line() if not status.ok
                                            else "`ufw status` printed no status line")
    added = runner.run(["ufw", "show", "added"], check=False, mutates=False, timeout=30)
    rules = tuple(line.strip() for line in added.stdout.splitlines() if line.strip().startswith("ufw "))
    return UfwState(active, rules, error)


def port_rules(ufw: UfwState, port: int) -> list[str]:
    """Our rules for this port (any mode): only those carrying our comment, never the operator's own."""
    pattern = re.compile(rf"^ufw (limit|allow) {port}/tcp comment '{COMMENT}'$")
    return [r for r in ufw.rules if pattern.match(r)]


def foreign_rules(ufw: UfwState, port: int) -> list[str]:
    """Rules for this port that are not ours (no MTProxy comment): never replaced or deleted."""
    # The shapes ufw treats as the same match as ours (it would "update" them in place).
    pattern = re.compile(rf"^ufw (?:limit|allow|deny|reject) {port}(?:/tcp)?(?: |$)")
    ours = set(port_rules(ufw, port))
    return [r for r in ufw.rules if r not in ours and pattern.match(r)]


def has_rule(runner: Runner, port: int, mode: str | None = None) -> bool:
    rules = port_rules(state(runner), port)
    return any(r.startswith(f"ufw {mode} ") for r in rules) if mode else bool(rules)


def add_rule(runner: Runner, port: int, mode: str = "limit") -> bool:
    """Add our rule unless it is there already; True when something changed. Works with UFW inactive
    (the rule is stored and takes effect when UFW is enabled). When the operator has a rule of their own
    for the port, it is left alone and nothing is added (ufw would overwrite theirs with ours)."""
    current = state(runner)
    existing = port_rules(current, port)
    wanted = f"ufw {mode} {port}/tcp"
    if any(r.startswith(wanted + " ") for r in existing):
        return False
    if foreign_rules(current, port):
        return False
    for rule in existing:  # our rule in the other mode for the same port: replace it
        remove_rule(runner, port, rule.split()[1])
    runner.run(["ufw", *rule_args(port, mode), "comment", COMMENT], timeout=60)
    return True


def remove_rule(runner: Runner, port: int, mode: str | None = None) -> bool:
    """Delete our tagged rule(s) for the port; True when something was removed."""
    removed = False
    for rule in port_rules(state(runner), port):
        rule_mode = rule.split()[1]
        if mode is None or rule_mode == mode:
            runner.run(["ufw", "delete", *rule_args(port, rule_mode)], timeout=60)
            removed = True
    return removed
