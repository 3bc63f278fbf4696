"""Fixtures: the real engine as a subprocess on loopback, with a fake echo DC and a mask-site stub."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import open_client, send_raw
from mtproxy.testkit.process import ProxyProcess, free_port

T = TypeVar("T")
HERE = Path(__file__).parent
DOMAIN = "example.com"


def only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.fspath)).parents]
    isolated = only_loopback()
    skip = pytest.mark.skip(reason="engine integration tests run only in a private network namespace")
    for item in ours:
        item.add_marker(pytest.mark.netns)
        if not isolated:
            item.add_marker(skip)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a client scenario on a fresh loop, bounded."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def peers() -> Iterator[BackgroundPeers]:
    p = BackgroundPeers().start()
    yield p
    p.stop()


@pytest.fixture
def secret() -> Secret:
    return Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, peers: BackgroundPeers) -> Iterator[ProxyFactory]:
    """start_proxy(*flags, port=None, stats=True, env=None) -> a ready ProxyProcess with .port and .stats_port."""
    started: list[ProxyProcess] = []

    def start(*flags: str, port: int | None = None, stats: bool = True, ready: int = 1,
              base: bool = True, wait: bool = True, env: dict[str, str] | None = None) -> ProxyProcess:
        port = port or free_port()
        stats_port = free_port() if stats else 0
        args = list(flags)
        if base:
            args += ["--listen", f"127.0.0.1:{port}", "--dc-override", f"*=127.0.0.1:{peers.dc_port}",
                     "--mask", f"127.0.0.1:{peers.mask_port}", "--cert-size", "2345",
                     "--state-file", str(tmp_path / "state.json")]
        args += ["-p", str(stats_port)]
        proc = ProxyProcess(args, tmp_path / f"proxy{len(started)}.log", ready_lines=ready, env=env)
        proc.port, proc.stats_port = port, stats_port
        started.append(proc)
        return proc.wait_ready() if wait else proc

    yield start
    for proc in started:
        proc.stop()


def served_once(start_proxy: ProxyFactory, secret: Secret, tmp_path: Path) -> ProxyProcess:
    """An engine whose store holds `secret` as id s-42, after one 1000-byte echo session and one garbage
    probe (a rejected handshake): the traffic the stats and metrics tests read back."""
    store = tmp_path / "secrets.json"
    write_store(store, StoreData((SecretRecord.from_secret("s-42", secret),)))
    proxy = start_proxy("--secrets-file", str(store))

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        await client.send(b"z" * 1000)
        assert await client.recv_exactly(1000) == b"z" * 1000
        await client.close()
        await send_raw("127.0.0.1", proxy.port, os.urandom(100))

    run(scenario())
    proxy.wait_log("rejected handshake")
    return proxy

