"""Run tdlib_driver.py as a bounded subprocess and collect what TDLib reported."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .fake_dc import FakeDC

DRIVER = Path(__file__).resolve().with_name("tdlib_driver.py")


@dataclass
class TdlibRun:
    """What one TDLib process said (its events) and whether the fake DC saw its key exchange go on."""

    events: list[dict[str, Any]] = field(default_factory=list)
    dh_params: bool = False
    stderr_tail: str = ""

    @property
    def ping_seconds(self) -> list[float]:
        return [e["seconds"] for e in self.events if e["event"] == "ping"]

    @property
    def ping_errors(self) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "ping_error"]


def _pump(stream: IO[str], out: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith("{"):
            out.put(json.loads(line))


def run_tdlib(
    port: int,
    secret: str,
    dc: FakeDC | None,
    db_parent: Path,
    *,
    timeout: float = 25.0,
    pings: int = 3,
    need_dh: bool = True,
    server: str = "127.0.0.1",
) -> TdlibRun:
    """Point TDLib at `server`:`port` with `secret`, the proxy enabled for its main session, and ping it.
    Stops as soon as a ping answered and (if `need_dh`) the fake DC saw req_DH_params, or after `timeout`,
    or once every ping failed."""
    command = [
        sys.executable, str(DRIVER), "--server", server, "--port", str(port), "--secret", secret,
        "--seconds", str(timeout), "--pings", str(pings), "--enable", "--db", str(db_parent),
    ]  # fmt: skip
    result = TdlibRun()
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, events), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout + 10
        try:
            while time.monotonic() < deadline:
                try:
                    result.events.append(events.get(timeout=0.1))
                except queue.Empty:
                    pass
                result.dh_params = dc is not None and dc.wait_for("req_DH_params", 0) is not None
                finished = any(e["event"] == "done" for e in result.events)
                pinged = bool(result.ping_seconds)
                if finished or (pinged and (result.dh_params or not need_dh)):
                    break
                if len(result.ping_errors) >= pings:
                    break
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            reader.join(2)
            result.stderr_tail = proc.stderr.read()[-2000:]
    while not events.empty():
        result.events.append(events.get_nowait())
    return result
