"""Fixtures for interop tests: a loopback-only guard, a running fake DC and the real engine in front of it."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtproxy.protocol.secret import SecretKind, generate_secret
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

    host: str
    port: int
    process: ProxyProcess
    keys: dict[str, str]  # kind ("classic", "dd", "ee") → the secret as a client is given it


def default_keys() -> dict[str, str]:
    """One classic, one dd and one ee secret, each with its own key."""
    return {
        "classic": generate_secret(os.urandom(16), SecretKind.CLASSIC).to_hex(),  # never dd…/ee… (Telethon)
        "dd": "dd" + os.urandom(16).hex(),
        "ee": "ee" + os.urandom(16).hex() + DOMAIN.encode("ascii").hex(),
    }


StartProxy = Callable[..., RunningProxy]


@pytest.fixture
def start_proxy(fake_dc: FakeDC, tmp_path: Path) -> Iterator[StartProxy]:
    """start_proxy(keys, *flags, host="127.0.0.1", secrets=None, ready=1, mask=None, dc=None) → a ready
    `python -m mtproxy.runtime`. `secrets` are the -S values (default: the values of `keys`); `ready` is how
    many processes (workers) must report ready; `mask` (HOST:PORT) is a mask site to learn the flight from;
    `dc` the DC every direct connection goes to (default: the test's fake DC)."""
    started: list[ProxyProcess] = []

    def start(
        keys: dict[str, str],
        *flags: str,
        host: str = "127.0.0.1",
        secrets: list[str] | None = None,
        ready: int = 1,
        mask: str | None = None,
        dc: FakeDC | None = None,
    ) -> RunningProxy:
        port = free_port(host)
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        args = [
            "--listen", listen,
            "--dc-override", f"*={(dc or fake_dc).address}",
            # No mask site in most tests; a fixed certificate record size instead of one learned from it.
            *(["--no-mask", "--cert-size", "4096"] if mask is None else ["--mask", mask]),
            "-p", "0",
            "--state-file", str(tmp_path / f"state{len(started)}.json"),
            *flags,
        ]  # fmt: skip
        for secret in keys.values() if secrets is None else secrets:
            args += ["-S", secret]
        process = ProxyProcess(args, tmp_path / f"proxy{len(started)}.log", ready_lines=ready)
        started.append(process)
        process.wait_ready(timeout=20)
        return RunningProxy(host, port, process, keys)

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def proxy(start_proxy: StartProxy) -> RunningProxy:
    """The engine serving `default_keys()`."""
    return start_proxy(default_keys())
