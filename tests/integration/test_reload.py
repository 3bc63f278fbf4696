"""Live reload of the secrets file: added secrets serve, removed ones are closed, a broken file changes nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import ProxyClient, ProxyClientError, open_client

from .conftest import DOMAIN, ProxyFactory, run


def new_secret() -> Secret:
    return Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)


def write(path: Path, entries: list[tuple[str, Secret, bool]]) -> None:
    write_store(path, StoreData(tuple(SecretRecord.from_secret(i, s, active=a) for i, s, a in entries)))


async def echo_once(port: int, secret: Secret) -> bool:
    """True when a session with this secret reaches the DC; False when the proxy masks it (the mask's answer
    is no server flight of ours, or it closes). Any other exception is a bug in the test or the kit: raised."""
    try:
        client = await open_client("127.0.0.1", port, secret, timeout=3)
    except (ProxyClientError, ProtocolError, OSError, TimeoutError):
        return False
    try:
        await client.send(b"hello!!!")
        return await client.recv_exactly(8) == b"hello!!!"
    except (ProxyClientError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def wait_until(predicate, timeout: float = 8.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mtproxy_secrets.json"


def test_reload_adds_and_removes_live(start_proxy: ProxyFactory, peers: BackgroundPeers, store: Path) -> None:
    a, b = new_secret(), new_secret()
    write(store, [("alice", a, True)])
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "0.1")
    assert run(echo_once(proxy.port, a))
    assert not run(echo_once(proxy.port, b))

    async def open_a() -> ProxyClient:
        client = await open_client("127.0.0.1", proxy.port, a)
        await client.send(b"1234")
        assert await client.recv_exactly(4) == b"1234"
        return client

    import asyncio

    async def scenario() -> None:
        held = await open_a()  # an established session of the secret about to be deactivated
        write(store, [("alice", a, False), ("bob", b, True)])
        await asyncio.get_running_loop().run_in_executor(None, proxy.wait_log, "secrets reloaded")
        with pytest.raises((ProxyClientError, OSError)):  # the session of the removed secret is closed
            await held.send(b"5678")
            await held.recv_exactly(4)
        await held.close()

    run(scenario())
    assert run(echo_once(proxy.port, b))
    assert not run(echo_once(proxy.port, a))


def test_unchanged_secret_keeps_its_sessions(start_proxy: ProxyFactory, store: Path) -> None:
    a, b = new_secret(), new_secret()
    write(store, [("alice", a, True)])
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "0.1")

    async def scenario() -> None:
        import asyncio

        client = await open_client("127.0.0.1", proxy.port, a)
        write(store, [("alice", a, True), ("bob", b, True)])
        await asyncio.get_running_loop().run_in_executor(None, proxy.wait_log, "secrets reloaded")
        await client.send(b"still-here")
        assert await client.recv_exactly(10) == b"still-here"
        await client.close()

    run(scenario())


def test_broken_file_keeps_previous_set(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("alice", a, True)])
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "0.1")
    store.write_text('{"secrets": [ {"id": "x", "value": "not hex"')  # a half-written file
    log = proxy.wait_log("secrets reload failed")
    assert "alice" not in log and a.key.hex() not in log
    assert run(echo_once(proxy.port, a))
    assert proxy.proc.poll() is None


def test_sighup_reloads(start_proxy: ProxyFactory, store: Path) -> None:
    a, b = new_secret(), new_secret()
    write(store, [("alice", a, True)])
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "3600")
    st = os.stat(store)
    write(store, [("alice", a, True), ("bob", b, True)])
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns))  # looks unchanged to polling, not to SIGHUP
    proxy.signal(signal.SIGHUP)
    proxy.wait_log("secrets reloaded")
    assert run(echo_once(proxy.port, b))


def test_secrets_from_flags_and_file_together(start_proxy: ProxyFactory, store: Path) -> None:
    a, b = new_secret(), new_secret()
    write(store, [("alice", a, True)])
    proxy = start_proxy("--secrets-file", str(store), "-S", b.to_hex())
    assert run(echo_once(proxy.port, a)) and run(echo_once(proxy.port, b))
