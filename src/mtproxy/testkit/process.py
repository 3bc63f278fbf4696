"""Start the real engine as a subprocess (`python -m mtproxy.runtime`) and wait, bounded, until it serves."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, for a process the test starts next. Chosen outside the kernel's ephemeral
    range: a port the kernel hands out (bind to port 0) may meanwhile become the source port of some
    connection, and then the server that was to bind it fails with "address already in use"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = _ephemeral_range()
    if low - 2000 >= 1000:  # by default 2000-32767; in a namespace the bench tuned (10000-65535), 2000-9999
        choices = range(2000, low)
    elif 65535 - high >= 1000:
        choices = range(high + 1, 65536)
    else:  # the kernel may hand out (nearly) every port: a random one is the next best
        choices = range(2000, 65536)
    for _ in range(200):
        port = random.choice(choices)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for {host} in {choices.start}-{choices.stop - 1} after 200 tries")


@contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port where connects are refused while the block runs: bound, never listening. Unlike a `free_port`
    left unbound, nothing the test starts next (a server on its own `free_port`) can take it and answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.bind((host, 0))
        yield int(holder.getsockname()[1])


class ProxyProcess:
    """One engine process; its stderr goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path, ready_lines: int = 1, cwd: Path | None = None,
                 root: Path | None = None, env: dict[str, str] | None = None) -> None:
        """`root` (MTPROXY_ROOT) defaults to a directory beside the log: the host's /opt/vless stays out."""
        self.args = args
        self.log_path = log_path
        self._ready_lines = ready_lines
        self.port = 0
        self.stats_port = 0
        self.out_path = log_path.with_suffix(".out")
        self._log = open(log_path, "wb")  # closed in stop()
        self._out = open(self.out_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtproxy.runtime", *args],
            stdout=self._out, stderr=self._log, cwd=cwd,
            env={**os.environ, "MTPROXY_QR": "0", "MTPROXY_ROOT": str(root or log_path.parent / "root"), **(env or {})},
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> ProxyProcess:
        deadline = time.monotonic() + timeout
        while self.log.count("ready:") < self._ready_lines:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the proxy did not get ready in {timeout} s:\n{self.log}")
            time.sleep(0.02)
        return self

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while self.log.count(text) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} did not appear {count} times in the log:\n{self.log}")
            time.sleep(0.02)
        return self.log

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._log.close()
        return self.proc.returncode
