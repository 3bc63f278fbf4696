"""Docker for the deployment: engine check, image build and removal, Compose up/down, container state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .runner import CommandError, Runner

CONTAINER = "vless_mtproxy"
PROJECT = "vless_mtproxy"
DEFAULT_IMAGE = "mtproxy:local"


@dataclass(frozen=True)
class ContainerState:
    status: str  # created, running, restarting, exited, …
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    restart_count: int
    pid: int
    started_at: str


def engine_problem(runner: Runner) -> str | None:
    """None when a Docker engine answers; otherwise what is wrong, in words."""
    if not runner.available("docker"):
        return "the docker command is not installed"
    result = runner.run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, mutates=False,
                        timeout=30)
    return None if result.ok else f"the Docker engine does not answer ({result.last_error_line()})"


def compose_argv(runner: Runner, compose_file: Path) -> list[str]:
    """`docker compose` (v2 plugin) when present, else the v1 `docker-compose` program."""
    base: list[str]
    if runner.run(["docker", "compose", "version"], check=False, mutates=False, timeout=30).ok:
        base = ["docker", "compose"]
    elif runner.available("docker-compose"):
        base = ["docker-compose"]
    else:
        raise CommandError(
            runner.run(["docker", "compose", "version"], check=False, mutates=False, timeout=30),
            "neither `docker compose` nor `docker-compose` is installed",
        )
    return [*base, "-p", PROJECT, "-f", str(compose_file)]


def compose_up(runner: Runner, compose_file: Path) -> None:
    runner.run([*compose_argv(runner, compose_file), "up", "-d", "--force-recreate"], timeout=300)


def compose_down(runner: Runner, compose_file: Path) -> None:
    runner.run([*compose_argv(runner, compose_file), "down", "--remove-orphans"], timeout=300)


def image_exists(runner: Runner, image: str) -> bool:
    return runner.run(["docker", "image", "inspect", image], check=False, mutates=False, timeout=30).ok


def remove_image(runner: Runner, image: str) -> bool:
    if not image_exists(runner, image):
        return False
    runner.run(["docker", "image", "rm", image], timeout=120)
    return True


def state(runner: Runner, name: str = CONTAINER) -> ContainerState | None:
    """The container's state, or None when there is no such container."""
    result = runner.run(["docker", "inspect", "--format", "{{json .State}}|{{.RestartCount}}", name],
                        check=False, mutates=False, timeout=30)
    if not result.ok:
        return None
    raw, _, restarts = result.stdout.strip().rpartition("|")
    doc = json.loads(raw)
    health = (doc.get("Health") or {}).get("Status", "")
    return ContainerState(doc.get("Status", ""), health, int(restarts or 0), int(doc.get("Pid") or 0),
                          doc.get("StartedAt", ""))


def remove_container(runner: Runner, name: str = CONTAINER) -> bool:
    if state(runner, name) is None:
        return False
    runner.run(["docker", "rm", "-f", name], timeout=120)
    return True


def wait_healthy(
    runner: Runner,
    name: str = CONTAINER,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ContainerState:
    """Poll until Docker calls the container healthy; raises TimeoutError with the last state seen."""
    deadline = clock() + timeout
    last = None
    while clock() < deadline:
        last = state(runner, name)
        if last is not None and last.health == "healthy":
            return last
        if last is not None and last.status in ("exited", "dead"):
            break
        sleep(0.5)
    raise TimeoutError(f"{name} is not healthy (last state: {last})")


def logs_tail(runner: Runner, name: str = CONTAINER, lines: int = 20) -> str:
    result = runner.run(["docker", "logs", "--tail", str(lines), name], check=False, mutates=False, timeout=30)
    return (result.stdout + result.stderr).strip()
