"""doctor: every check `status` makes and the ones it cannot (clock, DNS of the fake-TLS domain, the mask
site, Telegram's DCs, who holds the port, fail2ban and Docker), each with its fix. The checks are
operations/doctor.py's."""

from __future__ import annotations

import click

from ..operations.doctor import DEFAULT_TIMEOUT, GROUPS, Diagnosis, Probes, diagnose
from ..operations.doctor_rules import Finding, Severity
from .env import Env
from .output import dump_json

pass_env = click.make_pass_decorator(Env)

_MARKS = {Severity.OK: ("✓", "green"), Severity.WARNING: ("!", "yellow"), Severity.ERROR: ("✗", "red"),
          Severity.SKIPPED: ("-", "")}


def _mark(env: Env, severity: Severity) -> str:
    text, colour = _MARKS[severity]
    return env.style(text, fg=colour, bold=severity is Severity.ERROR) if colour else text


def _summary(diagnosis: Diagnosis) -> str:
    counts = diagnosis.counts()
    if not counts["error"] and not counts["warning"]:
        return "MTProxy doctor: nothing wrong found"
    parts = [f"{counts[w]} {w}{'s' if counts[w] != 1 else ''}" for w in ("error", "warning") if counts[w]]
    return "MTProxy doctor: " + ", ".join(parts)


def _human(env: Env, diagnosis: Diagnosis) -> None:
    worst = max((f.severity for f in diagnosis.findings), default=Severity.OK)
    colour = "red" if worst is Severity.ERROR else "yellow" if worst is Severity.WARNING else "green"
    env.out(env.style(_summary(diagnosis), bold=True, fg=colour))
    for group in GROUPS:
        members = [f for f in diagnosis.findings if f.group == group]
        if not members:
            continue
        env.out(group)
        for finding in members:
            env.out(f"  {_mark(env, finding.severity)} {finding.name}: {finding.message}")
            if finding.fix:
                env.out(f"      fix: {finding.fix}")


def _as_json(finding: Finding) -> dict[str, str]:
    return {"group": finding.group, "name": finding.name, "severity": finding.severity.word,
            "message": finding.message, "fix": finding.fix}


@click.command("doctor", epilog="""\b
Examples:
  mtproxy doctor
  mtproxy doctor --offline          no network contact at all
  mtproxy doctor --json | jq '.findings[] | select(.severity != "ok")'
Exit status: 0 when nothing is wrong, 1 with warnings only, 2 with an error.
""")
@click.option("--offline", is_flag=True, help="Contact nothing, not even the local port: network checks are skipped.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds each network check may take.")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@pass_env
def doctor(env: Env, offline: bool, timeout: float, json_out: bool) -> int:
    """Find what is wrong with this installation and say how to fix each thing."""
    probes = Probes(clock=env.clock, resolve=env.resolve, timeout=timeout, offline=offline)
    diagnosis = diagnose(env.paths, env.runner, env.server_override, probes)
    if json_out:
        env.out(dump_json("doctor", {"offline": offline, "exit_status": diagnosis.exit_status,
                                     "counts": diagnosis.counts(),
                                     "findings": [_as_json(f) for f in diagnosis.findings]}))
    else:
        _human(env, diagnosis)
    return diagnosis.exit_status


COMMANDS = [doctor]
