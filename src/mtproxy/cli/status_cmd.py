"""status: the block `vless status` shows — service state, port, connections, uptime — and a health exit code.

The checks themselves are operations/health.py's (doctor builds on them too).
"""

from __future__ import annotations

from typing import Any

import click

from ..operations.health import collect
from ..settings import Settings
from .env import Env
from .errors import ExitStatus
from .output import dump_json, human_count, human_duration
from .status_section import check_line, section_lines

pass_env = click.make_pass_decorator(Env)


def _engine_int(engine: dict[str, Any] | None, key: str) -> int | None:
    value = engine.get(key) if engine is not None else None
    return value if isinstance(value, int) else None


@click.command("status", epilog="""\b
Examples:
  mtproxy status
  mtproxy status --json
  mtproxy status >/dev/null && echo healthy
  mtproxy status --section        the block for `vless status`
Exit status: 0 when every check passes, 8 when one fails.
""")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@click.option("--section", is_flag=True, help="One ✓/✗ block for the host's status report (`vless status`).")
@pass_env
def status(env: Env, json_out: bool, section: bool) -> int:
    """Check the service, the stats endpoint, the port, the secrets store and the firewall rule."""
    health = collect(env.paths, env.runner)
    checks, settings, engine = health.checks, health.settings, health.engine
    healthy = all(c.ok is not False for c in checks)
    port = (settings or Settings()).port  # the port in links: HAProxy's when behind it
    bound = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in (settings or Settings()).bound if h]
    active = _engine_int(engine, "active")
    total = _engine_int(engine, "total")
    uptime = _engine_int(engine, "uptime")
    if section:
        summary = f"{port}/tcp, {human_count(active)} active, {human_count(total)} total, up {human_duration(uptime)}"
        env.out("\n".join(section_lines(checks, env.ok_mark, summary)))
    elif json_out:
        env.out(dump_json("status", {
            "healthy": healthy, "port": port, "listen": bound or None, "uptime_seconds": uptime,
            "connections": {"active": active, "total": total},
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks],
        }))
    else:
        title = "MTProxy: healthy" if healthy else "MTProxy: NOT healthy"
        env.out(env.style(title, bold=True, fg="green" if healthy else "red"))
        for c in checks:
            env.out(check_line(c, env.ok_mark))
        env.out(f"    port:        {port}/tcp" + (f" (in links; the proxy listens on {', '.join(bound)})"
                                                    if bound else ""))
        env.out(f"    connections: {human_count(active)} active, {human_count(total)} total")
        env.out(f"    uptime:      {human_duration(uptime)}")
    return int(ExitStatus.OK if healthy else ExitStatus.UNHEALTHY)


COMMANDS = [status]
