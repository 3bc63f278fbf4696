"""Find the running proxy (Docker container, systemd service, or just its stats port) and apply changes to it."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from ..host.runner import CommandError, Runner
from ..host.service import restart_proxy
from ..paths import Paths

CONTAINER = "vless_mtproxy"
COMPOSE_SERVICE = "vless_mtproxy"
SYSTEMD_UNIT = "mtproxy"
STATS_TIMEOUT = 2.0


@dataclass(frozen=True)
class Deployment:
    """How the proxy is installed on this host, and whether it runs."""

    manager: str  # "docker", "systemd" or "none"
    state: str  # the manager's word: running, exited, active, failed, … or "not installed"
    running: bool
    health: str = ""  # Docker's healthcheck status when the image defines one


def detect(runner: Runner) -> Deployment:
    """Ask Docker, then systemd; read-only queries, so they also run under --dry-run."""
    if runner.available("docker"):
        result = runner.run(
            ["docker", "inspect", "--format",
             "{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}", CONTAINER],
            check=False, mutates=False, timeout=15,
        )
        if result.ok:
            status, _, health = result.stdout.strip().partition("|")
            return Deployment("docker", status, status == "running", health)
    if runner.available("systemctl"):
        load = runner.run(["systemctl", "show", "--property=LoadState", "--value", SYSTEMD_UNIT],
                          check=False, mutates=False, timeout=15)
        if load.ok and load.stdout.strip() not in ("", "not-found"):
            active = runner.run(["systemctl", "is-active", SYSTEMD_UNIT], check=False, mutates=False, timeout=15)
            state = active.stdout.strip() or "unknown"
            return Deployment("systemd", state, state == "active")
    return Deployment("none", "not installed", False)


def fetch_stats(port: int, timeout: float = STATS_TIMEOUT) -> dict[str, str] | None:
    """The engine's /stats as a dict, or None when nothing answers on 127.0.0.1:<port>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=timeout) as response:
            body = response.read(1 << 20).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    stats: dict[str, str] = {}
    for line in body.splitlines():
        key, sep, value = line.partition("\t")
        if sep and key:
            stats[key.strip()] = value.strip()
    return stats


def stat_int(stats: dict[str, str] | None, key: str) -> int | None:
    """A counter if the engine reported it; missing or garbled keys are None, never an exception."""
    if not stats or key not in stats:
        return None
    try:
        return int(float(stats[key]))
    except ValueError:
        return None


@dataclass(frozen=True)
class ApplyOutcome:
    """What happened to the running proxy, as one sentence for the operator."""

    message: str
    live: bool  # True when the change is in effect (or confirmed reloaded) in a running proxy


def reload_secrets(
    runner: Runner,
    stats_port: int,
    before: dict[str, str] | None,
    wait: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ApplyOutcome:
    """The engine watches the file; also send SIGHUP through the manager so it reloads now, then confirm.

    `before` is /stats read before the change: a rise of reloads_ok afterwards confirms the reload.
    """
    deployment = detect(runner)
    signalled = False
    if deployment.running:
        argv = (["docker", "kill", "--signal", "HUP", CONTAINER] if deployment.manager == "docker"
                else ["systemctl", "kill", "--kill-whom=main", "--signal=HUP", SYSTEMD_UNIT])
        signalled = runner.run(argv, check=False, timeout=15).ok
        if runner.dry_run:
            return ApplyOutcome(f"would signal the proxy to reload ({' '.join(argv)})", False)
    if before is None and not deployment.running:
        return ApplyOutcome("no proxy is running: the store is saved and is read when the proxy starts", False)
    start_reloads = stat_int(before, "reloads_ok")
    if start_reloads is not None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = fetch_stats(stats_port)
            reloads = stat_int(now, "reloads_ok")
            if reloads is not None and reloads > start_reloads:
                return ApplyOutcome(
                    f"the running proxy reloaded the secrets ({stat_int(now, 'secrets_loaded')} live)", True
                )
            sleep(0.1)
    how = "signalled it and it" if signalled else "it"
    return ApplyOutcome(f"a proxy is running; {how} picks up the file within a few seconds (no restart)", False)


def restart(runner: Runner, paths: Paths) -> ApplyOutcome:
    """Restart the proxy so a new port or worker count takes effect; a stopped proxy stays stopped."""
    deployment = detect(runner)
    if not deployment.running:
        if deployment.manager == "none":
            return ApplyOutcome("no proxy is running: saved, and used when the proxy starts", False)
        return ApplyOutcome(f"the proxy is {deployment.state}: saved, and used when it starts", False)
    try:
        restart_proxy(runner, paths)  # rewrites our Compose file or unit, moves the UFW rule and jail
    except CommandError as exc:
        from .errors import CliError, ExitStatus

        raise CliError(
            f"saved, but restarting the proxy failed: {exc.problem}",
            f"restart it by hand ({exc.result.display}) and check its logs",
            ExitStatus.FAILURE,
        ) from None
    if runner.dry_run:
        return ApplyOutcome("would restart the proxy", False)
    return ApplyOutcome(f"restarted the proxy ({deployment.manager})", True)
