"""Debian's HAProxy as a process of a test: master-worker mode on a config file the test wrote, its log beside
that file, every wait bounded. Used where the proxy meets the stack's balancer (PROXY protocol, SNI routing,
the block `mtproxy setup --behind-haproxy` writes)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

WAIT = 10.0


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


class HaproxyProcess:
    """`haproxy -W -db -f CONFIG`, started and loaded; `reload_argv` makes it re-read the file."""

    def __init__(self, config: Path, wait: float = WAIT) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy; scripts/install-test-deps)")
        self.wait = wait
        self.log = config.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-W", "-db", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        self.wait_loaded(1)

    def wait_loaded(self, times: int) -> None:
        """Until the master has said `Loading success.` `times` times (once per start or reload), bounded;
        no probe connection, which HAProxy would forward to a backend."""
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if self.proc.poll() is not None or "Loading failure" in log:
                raise AssertionError(f"HAProxy failed:\n{log}")
            if log.count("Loading success.") >= times:
                return
            time.sleep(0.05)
        raise AssertionError(f"HAProxy did not load its config {times} times:\n{self.log.read_text()}")

    @property
    def reload_argv(self) -> tuple[str, ...]:
        return ("kill", "-USR2", str(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(self.wait)
