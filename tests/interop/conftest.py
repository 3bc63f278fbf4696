"""Fixtures for interop tests: a loopback-only guard and a running fake DC."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtproxy.testkit.process import ProxyProcess, free_port

from .fake_dc import FakeDC

DOMAIN = "www.example.com"


def only_loopback() -> bool:
    """True inside `unshare -n` (lo only): real clients here may try to reach Telegram on their own."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if only_loopback():
        return
    skip = pytest.mark.skip(reason="interop tests run only in a private network namespace (./scripts/test)")
    for item in items:
        if "interop" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_dc() -> Iterator[FakeDC]:
    with FakeDC() as dc:
        yield dc


@dataclass
class RunningProxy:
    """The real engine, started on loopback with every DC pointed at the test's fake DC."""

    port: int
    process: ProxyProcess
    keys: dict[str, str]  # kind ("classic", "dd", "ee") → the secret as a client is given it


@pytest.fixture
def proxy(fake_dc: FakeDC, tmp_path: Path) -> Iterator[RunningProxy]:
    """`python -m mtproxy.runtime` serving one classic, one dd and one ee secret (distinct keys)."""
    keys = {
        "classic": os.urandom(16).hex(),
        "dd": "dd" + os.urandom(16).hex(),
        "ee": "ee" + os.urandom(16).hex() + DOMAIN.encode("ascii").hex(),
    }
    port = free_port()
    args = [
        "--listen", f"127.0.0.1:{port}",
        "--dc-override", f"*={fake_dc.address}",
        # No mask site in these tests; a fixed certificate record size instead of one learned from it.
        "--no-mask", "--cert-size", "4096",
        "-p", "0",
        "--state-file", str(tmp_path / "state.json"),
    ]  # fmt: skip
    for secret in keys.values():
        args += ["-S", secret]
    process = ProxyProcess(args, tmp_path / "proxy.log")
    try:
        process.wait_ready(timeout=20)
        yield RunningProxy(port, process, keys)
    finally:
        process.stop()
