"""Authenticated clients in every mode reach the fake DC and get megabytes back intact."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mtproxy.crypto import backend, native
from mtproxy.protocol import obfs2
from mtproxy.protocol.secret import Secret
from mtproxy.testkit.client import PEER_AES, ProxyClient, open_client, secret_for_mode

from .conftest import ProxyFactory, run

SIZE = 3 * 1024 * 1024


async def round_trip(client: ProxyClient, data: bytes, chunk: int = 50_000) -> bytes:
    """Send while receiving, so neither side's buffers have to hold everything."""
    async def sender() -> None:
        for i in range(0, len(data), chunk):
            await client.send(data[i : i + chunk])

    task = asyncio.create_task(sender())
    got = await client.recv_exactly(len(data))
    await task
    return got


@pytest.mark.parametrize(
    ("mode", "tag"),
    [
        ("classic", obfs2.TAG_ABRIDGED),
        ("classic", obfs2.TAG_INTERMEDIATE),
        ("dd", obfs2.TAG_PADDED),
        ("ee", None),
    ],
)
def test_megabytes_round_trip(start_proxy: ProxyFactory, secret: Secret, mode: str, tag: bytes | None) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    data = os.urandom(SIZE)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode), tag=tag)
        try:
            return await round_trip(client, data)
        finally:
            await client.close()

    got = run(scenario())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_many_secrets_and_dc_ids(start_proxy: ProxyFactory, peers, secret: Secret) -> None:  # type: ignore[no-untyped-def]
    others = [Secret(os.urandom(16), secret.kind, secret.domain) for _ in range(20)]
    flags = [x for s in others for x in ("-S", s.to_hex())]
    proxy = start_proxy(*flags, "-S", secret.to_hex(), "--allow-classic")
    # negative (media), test (+10000), CDN and nonsense ids must all relay, never crash
    dc_ids = [1, -2, 10003, 203, 999, -32768]

    async def scenario() -> None:
        for i, dc in enumerate(dc_ids):
            mode = ("classic", "dd", "ee")[i % 3]
            client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode), dc_id=dc)
            payload = os.urandom(1000 + i)
            await client.send(payload)
            assert await client.recv_exactly(len(payload)) == payload
            await client.close()

    run(scenario())
    assert proxy.proc.poll() is None
    for dc in dc_ids:
        assert dc in peers.dc.dc_ids


def test_client_that_does_not_read_is_bounded(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Backpressure: a client sending to an echo DC without reading must not grow the proxy's memory."""
    proxy = start_proxy("-S", secret.to_hex(), "--buffer-size", "65536")

    def rss_kb() -> int:
        with open(f"/proc/{proxy.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    async def scenario() -> int:
        client = await open_client("127.0.0.1", proxy.port, secret)
        before = rss_kb()
        block = os.urandom(256 * 1024)
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                client.writer.write(client.conn.encrypt(block))
                await asyncio.wait_for(client.writer.drain(), 0.5)
                sent += len(block)
        except TimeoutError:
            pass  # the proxy stopped reading us: backpressure reached the client
        grown = rss_kb() - before
        client.writer.transport.abort()
        assert sent < 64 * 1024 * 1024, "the proxy kept reading although nobody read the echo"
        return grown

    grown = run(scenario())
    assert grown < 32 * 1024, f"proxy RSS grew by {grown} KB"


def _pipes(pid: int) -> int:
    """Pipes the process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except FileNotFoundError:  # closed meanwhile
            pass
    return count


@pytest.mark.parametrize("splice", ["1", "0"])
def test_bulk_downloads_take_a_spliced_pipe_unless_mtproxy_splice_is_0(start_proxy: ProxyFactory, secret: Secret,
                                                                      splice: str) -> None:
    """A classic fast-mode download past rawrelay.RAW_AFTER moves to splice(), whose pipe stays in the worker's
    pool; MTPROXY_SPLICE=0 (read at start-up) keeps it on the transport path: no pipe, the same bytes."""
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", "--workers", "1", env={"MTPROXY_SPLICE": splice})
    before = _pipes(proxy.proc.pid)
    data = os.urandom(1024 * 1024)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, "classic"))
        try:
            return await round_trip(client, data)
        finally:
            await client.close()

    assert run(scenario()) == data
    assert (_pipes(proxy.proc.pid) > before) == (splice == "1")


@pytest.mark.parametrize("mode", ["classic", "dd", "ee"])
def test_without_fast_mode(start_proxy: ProxyFactory, secret: Secret, mode: str) -> None:
    """--no-fast-mode decrypts the DC's stream and re-encrypts it for the client: same bytes arrive."""
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", "--no-fast-mode")
    data = os.urandom(512 * 1024)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            return await round_trip(client, data)
        finally:
            await client.close()

    assert run(scenario()) == data


@pytest.mark.parametrize(("records", "longest"), [("plain", 16384), ("shaped", 16401)])
def test_fake_tls_server_records_are_application_data_of_bounded_length(start_proxy: ProxyFactory, secret: Secret,
                                                                        records: str, longest: int) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--tls-records", records)
    data = os.urandom(1024 * 1024)

    async def scenario() -> tuple[list[tuple[int, int]], bytes]:
        client = await open_client("127.0.0.1", proxy.port, secret)
        sender = asyncio.create_task(client.send(data))
        raw = bytearray()
        records: list[tuple[int, int]] = []
        plain = bytearray()
        while len(plain) < len(data):
            chunk = await asyncio.wait_for(client.reader.read(1 << 18), 10)
            assert chunk, "closed early"
            raw += chunk
            while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
                size = int.from_bytes(raw[3:5], "big")
                records.append((raw[0], size))
                assert bytes(raw[1:3]) == b"\x03\x03"
                plain += client.conn.decrypt(bytes(raw[: 5 + size]))
                del raw[: 5 + size]
        await sender
        await client.close()
        return records, bytes(plain)

    records, plain = run(scenario())
    assert plain == data
    assert {kind for kind, _ in records} == {0x17}
    assert max(size for _, size in records) == longest  # 1 MiB of echo fills records


@pytest.mark.parametrize("mode", ["dd", "ee"])
def test_handshake_split_across_segments(start_proxy: ProxyFactory, secret: Secret, mode: str) -> None:
    import time

    from mtproxy.protocol import client as core

    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")

    async def scenario() -> bytes:
        conn = core.ClientConnection(secret_for_mode(secret, mode), os.urandom, time.time(), aes=PEER_AES)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        first = conn.first_bytes()
        for i in range(0, len(first), 37):  # many small TCP segments (asyncio sets TCP_NODELAY)
            writer.write(first[i : i + 37])
            await writer.drain()
            await asyncio.sleep(0.001)
        inbox = b""
        while not conn.ready:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk
            inbox += conn.feed_handshake(chunk)
        wire = conn.encrypt(b"split-payload!")
        for i in range(len(wire)):  # the init (and for ee the first record) one byte at a time
            writer.write(wire[i : i + 1])
            await writer.drain()
        got = bytearray(inbox)
        while len(got) < 14:
            got += conn.decrypt(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()
        return bytes(got)

    assert run(scenario()) == b"split-payload!"


def _plain_ctr_streams(client: ProxyClient) -> None:
    """Swap the test client's streams for cryptography's plain AES-CTR, positioned where the client's own
    streams are, so the proxy's keystream is checked against an independent implementation."""
    conn = client.conn
    to_server, from_server = obfs2.derive_keys(conn._init, conn._key, PEER_AES)
    conn._to_server = Cipher(algorithms.AES(to_server.key), modes.CTR(to_server.iv)).encryptor()
    conn._to_server.update(bytes(obfs2.INIT_SIZE))  # the init already went out
    conn._from_server = Cipher(algorithms.AES(from_server.key), modes.CTR(from_server.iv)).encryptor()


@pytest.mark.parametrize("keystream", ["native", "native-aesni", "gcm", "ctr"])
@pytest.mark.parametrize("mode", ["classic", "ee"])
def test_bulk_upload_keystream_matches_plain_ctr(start_proxy: ProxyFactory, secret: Secret, mode: str,
                                                 keystream: str) -> None:
    """The engine on each keystream it can run: the native library (its fused gather and two passes, with VAES
    and with AES-NI as CPUs without VAES run them), the GCM keystream (past ACCELERATE_AFTER), and OpenSSL's
    CTR as the control. The client and the fake DC (which runs in this process) run the test kit's own
    backend (PEER_AES, OpenSSL's CTR), and the client's streams are swapped for cryptography's, so the
    engine's keystream is checked against an independent implementation on both legs."""
    lib = native.open_library()
    if keystream.startswith("native") and lib is None:
        pytest.skip("the native library is not built here")
    if keystream == "native" and lib is not None and lib.mtp_walk() != native.WALK_VAES:
        pytest.skip("this CPU has no VAES: native-aesni is what it runs")
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", env={"MTPROXY_KEYSTREAM": keystream})
    assert f"AES-CTR runs on {backend.KEYSTREAMS[keystream]} (MTPROXY_KEYSTREAM={keystream})" in proxy.log
    data = os.urandom(SIZE)

    async def scenario() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        _plain_ctr_streams(client)
        try:
            return await round_trip(client, data, chunk=200_000)
        finally:
            await client.close()

    got = run(scenario())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
