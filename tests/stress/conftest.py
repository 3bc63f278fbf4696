"""The stress suite: the real engine against hostile peers on loopback, each scenario bounded in time and
asserting the engine's limits. Small by default (part of the normal suite, under two minutes in all);
`MTPROXY_STRESS=full` runs the sizes of BENCHMARKS.md ("Hostile peers")."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..integration.conftest import (  # noqa: F401  (fixtures, re-exported for this directory)
    ProxyFactory,
    only_loopback,
    peers,
    run,
    secret,
    start_proxy,
)

HERE = Path(__file__).parent
FULL = os.environ.get("MTPROXY_STRESS", "small") == "full"


@dataclass(frozen=True)
class Sizes:
    stalled_sessions: int  # sessions whose client (or DC) stops reading
    slowloris: int  # connections trickling a handshake, then ignoring our FIN once masked
    flood_seconds: float  # garbage flood length
    burst: int  # slow connections in the memory-return burst
    secrets: int  # secrets in the unhinted flood
    unhinted: int  # handshakes with unknown keys against them


SIZES = Sizes(stalled_sessions=200, slowloris=5000, flood_seconds=30.0, burst=5000, secrets=10000,
              unhinted=500) if FULL else \
    Sizes(stalled_sessions=24, slowloris=300, flood_seconds=4.0, burst=600, secrets=2000, unhinted=150)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="stress tests run only in a private network namespace")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.netns)
            if not only_loopback():
                item.add_marker(skip)


def stats(port: int) -> dict[str, str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5).read().decode()
    return dict(line.split("\t", 1) for line in body.splitlines())


def stat(port: int, key: str) -> int:
    return int(stats(port)[key])


def rss(pid: int) -> int:
    """Resident bytes of the engine process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def settled_rss(pid: int, timeout: float = 10.0) -> int:
    """RSS once it stops moving (two readings 0.5 s apart within 1 %), or the last reading."""
    deadline = time.monotonic() + timeout
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pid)
        if abs(now - last) <= last // 100:
            return now
        last = now
    return last


def report(name: str, **figures: object) -> None:
    """One line per scenario in the output (pytest -s, or the report of a failure): BENCHMARKS.md's figures."""
    print(f"\nstress {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def gather_bounded(coros: list, limit: int = 200) -> list:  # type: ignore[type-arg]
    """Run coroutines with at most `limit` at once (the client side has descriptors and a loop too)."""
    gate = asyncio.Semaphore(limit)

    async def one(coro):  # type: ignore[no-untyped-def]
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
