"""Process plumbing for the load tool: start and stop servers (fake DC, baselines, the proxy under test)
and groups of load-client workers, and measure the proxy's CPU and memory around each phase."""

from __future__ import annotations

import ctypes
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGKILL it when the load tool dies, so no server or client outlives
    # an interrupted run (they sit in their own sessions, out of reach of the terminal's signals).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def child_env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


class BenchError(RuntimeError):
    """The setup failed (a server did not start, a worker died): no number from this run is valid."""


@dataclass
class Service:
    """A server process group we started and must stop."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def wait_line(proc: subprocess.Popen[bytes], want: str, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.decode().strip() == want:
                return
        elif proc.poll() is not None:
            break
    raise BenchError(f"process {proc.args!r} did not print {want!r}")


def wait_port(host: str, port: int, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"server exited with status {p.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def start_module(name: str, module: str, args: list[str], copies: int = 1, questions: bool = False) -> Service:
    """Start `copies` processes of one of our bench servers; each prints `ready` once listening. With
    `questions`, their stdin is a pipe the caller writes to."""
    service = Service(name)
    try:
        for _ in range(copies):
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE if questions else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=child_env(),
                cwd=REPO,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            service.procs.append(proc)
            wait_line(proc, "ready", READY_TIMEOUT)
    except BaseException:
        service.stop()
        raise
    return service


def start_command(name: str, argv: list[str], host: str, port: int, log: Path) -> Service:
    """Start the proxy under test from its expanded command template; ready once its port accepts."""
    service = Service(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        service.procs.append(
            subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=REPO,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        )
    try:
        wait_port(host, port, READY_TIMEOUT, service.procs)
    except BaseException:
        service.stop()
        raise
    return service


def expand_template(template: str, values: dict[str, str], lists: dict[str, list[str]]) -> list[str]:
    """Split the template like a shell would, then fill {placeholders}; a word that is exactly a list
    placeholder (e.g. {secret_args}) becomes several words."""
    argv: list[str] = []
    for word in shlex.split(template):
        key = word.strip("{}")
        if word == "{" + key + "}" and key in lists:
            argv.extend(lists[key])
        else:
            argv.append(word.format(**values))
    return argv


@dataclass
class PhaseResult:
    results: list[dict[str, Any]]
    ready: list[dict[str, Any]]
    cpu: float  # proxy CPU seconds between "go" and the last result
    wall: float
    memory: procstat.Memory | None  # proxy memory while all sessions were open (before "go")
    cpu_setup: float  # proxy CPU seconds while the sessions were being opened
    client_cpu: float  # the load clients' CPU seconds between "go" and the last result
    helper_cpu: float = 0.0  # the same for the helper beside the subject (the fake middle-proxy relay)
    settle_wall: float = 0.0  # seconds waited after the last result for `settle` (included in the CPU figures)


def pin(roots: list[int], cpus: set[int] | None) -> None:
    """Confine the processes and all their descendants to `cpus` (None: leave them where they are)."""
    if cpus is None:
        return
    for pid in procstat.tree(roots):
        try:
            os.sched_setaffinity(pid, cpus)
        except (ProcessLookupError, PermissionError):
            pass


def run_phase(job: dict[str, Any], workers: int, proxy_pids: list[int], timeout: float,
              client_cpus: set[int] | None = None, helper_pids: list[int] | None = None,
              settle: Callable[[], None] | None = None) -> PhaseResult:
    """Run one phase over `workers` client processes: they open their sessions and report ready, then
    all are told to go together; proxy CPU is sampled around the measured part only, and so is the CPU of
    `helper_pids` (a server the subject needs that is not the subject, counted apart). `settle`, when given,
    returns once the subject has finished the phase's work that outlasts the clients (closing sessions), so
    that work is in the CPU figures too."""
    helpers = helper_pids or []
    procs: list[subprocess.Popen[bytes]] = []
    cpu_start = procstat.cpu_seconds(proxy_pids)
    try:
        for i in range(workers):
            worker_job = dict(job)
            per = job.get("conns")
            if per is not None:
                worker_job["conns"] = per // workers + (1 if i < per % workers else 0)
            if "total" in job:
                worker_job["total"] = job["total"] // workers
                worker_job["parallel"] = max(1, job["parallel"] // workers)
            # Distinct loopback source addresses per worker keep every (src, dst) pair well below the
            # ephemeral port range.
            base = job.get("ip_base", 0) + i + 1
            worker_job["sources"] = [f"127.{base}.{j // 250}.{j % 250 + 1}" for j in range(job.get("ips", 4))]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.loadclient", json.dumps(worker_job)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=child_env(),
                    cwd=REPO,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
        pin([p.pid for p in procs], client_cpus)
        ready = [read_event(p, "ready", timeout) for p in procs]
        memory = procstat.memory(proxy_pids) if proxy_pids else None
        cpu_go = procstat.cpu_seconds(proxy_pids)
        client_pids = [p.pid for p in procs]
        client_go = procstat.cpu_seconds(client_pids)
        helper_go = procstat.cpu_seconds(helpers) if helpers else 0.0
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [read_event(p, "result", timeout) for p in procs]
        wall = time.monotonic() - t0
        if settle is not None:
            settle()
        settle_wall = time.monotonic() - t0 - wall
        cpu = procstat.cpu_seconds(proxy_pids) - cpu_go
        client_cpu = procstat.cpu_seconds(client_pids) - client_go
        helper_cpu = procstat.cpu_seconds(helpers) - helper_go if helpers else 0.0
        for p in procs:
            p.wait(30)
        return PhaseResult(results, ready, cpu, wall, memory, cpu_go - cpu_start, client_cpu, helper_cpu,
                           settle_wall)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def read_event(proc: subprocess.Popen[bytes], event: str, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            msg: dict[str, Any] = json.loads(line)
            if msg.get("event") == event:
                return msg
        elif proc.poll() is not None:
            break
    raise BenchError(f"load client did not report {event!r} (exit status {proc.poll()})")
