"""Half-closes, resets and slow readers around the relay (the transport path, and the raw relays that take
over DC->client for bulk sessions: splice for classic/dd, record-framed reads for fake-TLS):
the engine keeps serving, delivers everything before an EOF, and frees every session."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import time

import pytest

from mtproxy.protocol import faketls
from mtproxy.protocol.secret import Secret
from mtproxy.testkit.client import ProxyClient, open_client, secret_for_mode

from .conftest import ProxyFactory, run
from .test_lifecycle import stats_of

BIG = 2 * 1024 * 1024  # well past the point where a fast-mode session switches to a raw relay


def _reset_on_close(client: ProxyClient) -> None:
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _read_to_eof(client: ProxyClient, limit: int) -> bytes:
    got = bytearray()
    while len(got) <= limit:
        chunk = await asyncio.wait_for(client.reader.read(1 << 18), client.timeout)
        if not chunk:
            break
        got += client.conn.decrypt(chunk)
    return bytes(got)


def _wait_idle(port: int, timeout: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        stats = stats_of(port)
        if stats.get("active_connections") == "0" or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def test_half_close_delivers_everything_then_eof(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    data = os.urandom(BIG)

    async def one(mode: str) -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            sender = asyncio.create_task(client.send(data))
            reader = asyncio.create_task(_read_to_eof(client, BIG + 1))
            await sender
            client.writer.write_eof()
            return await reader
        finally:
            await client.close()

    for mode in ("classic", "dd", "ee"):
        got = run(one(mode))
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), mode
    stats = _wait_idle(proxy.stats_port)
    assert stats["active_connections"] == "0"
    assert int(stats["bytes_dc_to_client"]) >= 3 * BIG  # raw-relayed bytes are counted too


@pytest.mark.parametrize("records", ["shaped", "plain"])
def test_fake_tls_download_stays_framed_as_tls_records(start_proxy: ProxyFactory, secret: Secret,
                                                       records: str) -> None:
    """Past the switch to the record relay the stream must still be application-data records of full size
    (16,401 bytes shaped, as a TLS 1.3 server's; 16,384 plain) with the content intact."""
    proxy = start_proxy("-S", secret.to_hex(), "--tls-records", records)
    data = os.urandom(BIG)

    async def scenario() -> tuple[list[int], bytes]:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, "ee"))
        sizes: list[int] = []
        plain = bytearray()  # nothing comes before the DC answers what we send
        stream = bytearray()
        try:
            sender = asyncio.create_task(client.send(data))
            while len(plain) < len(data):
                chunk = await asyncio.wait_for(client.reader.read(1 << 18), client.timeout)
                assert chunk, "closed early"
                plain += client.conn.decrypt(chunk)
                stream += chunk
                while len(stream) >= 5:
                    assert stream[:3] == b"\x17\x03\x03", bytes(stream[:5])
                    size = int.from_bytes(stream[3:5], "big")
                    if len(stream) < 5 + size:
                        break
                    sizes.append(size)
                    del stream[: 5 + size]
            await sender
            assert not stream
            return sizes, bytes(plain)
        finally:
            await client.close()

    sizes, got = run(scenario(), timeout=60)
    assert got == data
    full = faketls.SHAPED_RECORD_PAYLOAD if records == "shaped" else faketls.MAX_RECORD_PAYLOAD
    assert all(0 < size <= full for size in sizes)
    assert sizes.count(full) > len(data) // full // 2  # bulk goes out in full-size records


@pytest.mark.parametrize("mode", ["classic", "ee"])
def test_slow_reader_on_the_raw_relay_gets_everything(start_proxy: ProxyFactory, secret: Secret, mode: str) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", "--buffer-size", "65536")
    data = os.urandom(4 * 1024 * 1024)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            sender = asyncio.create_task(client.send(data))
            got = bytearray()
            while len(got) < len(data):
                await asyncio.sleep(0.002)  # read slower than the DC echoes: the proxy must hold back
                chunk = await asyncio.wait_for(client.reader.read(32768), client.timeout)
                assert chunk, "closed early"
                got += client.conn.decrypt(chunk)
            await sender
            return bytes(got)
        finally:
            await client.close()

    got = run(scenario(), timeout=60)
    assert got == data


def test_storm_of_half_closes_and_resets(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Many short sessions that half-close, and sessions reset mid-transfer (some while splicing)."""
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    rng = random.Random(5)
    counts = {"echoed": 0, "reset": 0}

    async def short(mode: str) -> None:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            payload = os.urandom(rng.choice([1, 300, 5000, 70000]))
            await client.send(payload)
            if rng.random() < 0.7:
                client.writer.write_eof()
            assert await client.recv_exactly(len(payload)) == payload
            counts["echoed"] += 1
            if rng.random() < 0.3:
                _reset_on_close(client)
        finally:
            await client.close()

    async def abrupt(mode: str) -> None:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            blob = os.urandom(65536)
            for _ in range(rng.randint(1, 12)):
                client.writer.write(client.conn.encrypt(blob))
                if rng.random() < 0.5:
                    try:
                        await asyncio.wait_for(client.reader.read(65536), 0.02)
                    except TimeoutError:
                        pass
            if rng.random() < 0.5:
                client.writer.write_eof()
            _reset_on_close(client)
            counts["reset"] += 1
        finally:
            await client.close()

    async def scenario() -> None:
        gate = asyncio.Semaphore(32)

        async def guarded(i: int) -> None:
            async with gate:
                mode = ("classic", "dd", "ee")[i % 3]
                await (abrupt(mode) if i % 4 == 3 else short(mode))

        await asyncio.gather(*(guarded(i) for i in range(240)))

    run(scenario(), timeout=120)
    assert counts == {"echoed": 180, "reset": 60}
    assert proxy.proc.poll() is None

    async def still_serving() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, "dd"))
        await client.send(b"ping")
        assert await client.recv_exactly(4) == b"ping"
        await client.close()

    run(still_serving())
    stats = _wait_idle(proxy.stats_port)
    assert stats["active_connections"] == "0"
    assert "internal error" not in proxy.log


@pytest.mark.parametrize("kind", ["classic", "ee"])
def test_removed_secret_closes_a_raw_relayed_session(start_proxy: ProxyFactory, tmp_path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A raw relay holds dup()s of both sockets: closing the session must still end the connection."""
    from mtproxy.protocol.secret import SecretKind
    from mtproxy.store import SecretRecord, StoreData, write_store

    key = secret_for_mode(Secret(os.urandom(16), SecretKind.CLASSIC), kind)
    store = tmp_path / "mtproxy_secrets.json"
    write_store(store, StoreData((SecretRecord.from_secret("s1", key),)))
    proxy = start_proxy("--secrets-file", str(store), "--reload-interval", "0.1", "--allow-classic")
    data = os.urandom(512 * 1024)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, key)
        try:
            sender = asyncio.create_task(client.send(data))
            assert await client.recv_exactly(len(data)) == data  # past the switch point: raw relay now
            await sender
            write_store(store, StoreData((SecretRecord.from_secret("s1", key, active=False),)))
            await asyncio.get_running_loop().run_in_executor(None, proxy.wait_log, "secrets reloaded")
            try:
                return await asyncio.wait_for(client.reader.read(1024), 5)  # EOF, not a hang
            except ConnectionResetError:
                return b""
        finally:
            await client.close()

    assert run(scenario()) == b""
    assert _wait_idle(proxy.stats_port)["active_connections"] == "0"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("mode", ["classic", "ee"])
def test_a_backlogged_bulk_session_still_switches_to_the_raw_relay(
        start_proxy: ProxyFactory, secret: Secret, mode: str) -> None:
    """A client with a small window that reads slower than the DC sends (a phone on a slow link) keeps the
    proxy's write buffer backlogged; the session must still move to the raw relay (which may also happen
    when that buffer drains: resume_writing) and deliver everything (the relay holds dups of both
    sockets: +2 descriptors)."""
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", "--buffer-size", "65536")
    data = os.urandom(2 * 1024 * 1024)

    async def scenario() -> tuple[int, int, bytes]:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode), rcvbuf=4096)
        try:
            await client.send(b"ping")
            assert await client.recv_exactly(4) == b"ping"
            before = _open_fds(proxy.proc.pid)
            sender = asyncio.create_task(client.send(data))
            got = bytearray()
            while len(got) < len(data):
                await asyncio.sleep(0.003)
                chunk = await asyncio.wait_for(client.reader.read(16384), client.timeout)
                assert chunk, "closed early"
                got += client.conn.decrypt(chunk)
                if len(got) > len(data) // 2 and sender.done():
                    break
            during = _open_fds(proxy.proc.pid)
            got += await client.recv_exactly(len(data) - len(got))
            await sender
            return before, during, bytes(got)
        finally:
            await client.close()

    before, during, got = run(scenario(), timeout=90)
    assert got == data
    assert during >= before + 2, (before, during)

