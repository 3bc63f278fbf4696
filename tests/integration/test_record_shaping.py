"""--tls-records: the server's fake-TLS records as a client reads them off its socket. Shaped (the default),
no record is shorter than a TLS 1.3 AEAD record can be (17 bytes) except a short DC read that nothing followed
within rawrelay.SHORT_WAIT, and full records are 16,401 bytes as a TLS 1.3 server's; plain, every DC read is
its own record (16,384 at most), as before."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mtproxy.protocol import faketls
from mtproxy.protocol.secret import Secret
from mtproxy.testkit.client import ProxyClient, open_client

from .conftest import ProxyFactory, run

BULK = 1024 * 1024  # past rawrelay.RAW_AFTER: the raw relay carries the end of it


class RecordReader:
    """Reads the client's socket record by record: (arrival time, payload length), payload deciphered."""

    def __init__(self, client: ProxyClient) -> None:
        self.client = client
        self.raw = bytearray()
        self.records: list[tuple[float, int]] = []
        self.plain = bytearray()

    async def until(self, total: int) -> None:
        while len(self.plain) < total:
            chunk = await asyncio.wait_for(self.client.reader.read(1 << 18), 10)
            assert chunk, "closed early"
            now = time.monotonic()
            self.raw += chunk
            while len(self.raw) >= 5 and len(self.raw) >= 5 + int.from_bytes(self.raw[3:5], "big"):
                size = int.from_bytes(self.raw[3:5], "big")
                assert bytes(self.raw[:3]) == faketls.APPLICATION_DATA
                self.records.append((now, size))
                self.plain += self.client.conn.decrypt(bytes(self.raw[: 5 + size]))
                del self.raw[: 5 + size]


async def _session(port: int, secret: Secret) -> tuple[RecordReader, list[int], bytes]:
    """Small pieces each followed at once by more, a lone short piece, a bulk download with small pieces
    inside; returns the records, the indexes of the records that carried a lone piece, and what was sent."""
    client = await open_client("127.0.0.1", port, secret)
    reader = RecordReader(client)
    sent = bytearray()
    lone: list[int] = []
    try:
        for _ in range(20):  # a quick-ack-sized piece, then an answer 1 ms later (two echoes from the DC)
            for piece in (os.urandom(4), os.urandom(60)):
                await client.send(piece)
                sent += piece
                await asyncio.sleep(0.001)
            await reader.until(len(sent))
        for _ in range(3):  # a short piece nothing follows: the wait runs out and it goes alone
            piece = os.urandom(4)
            await client.send(piece)
            sent += piece
            await reader.until(len(sent))
            lone.append(len(reader.records) - 1)
            await asyncio.sleep(0.05)
        bulk = os.urandom(BULK)
        sender = asyncio.create_task(client.send(bulk))
        sent += bulk
        await reader.until(len(sent) - BULK // 2)
        await sender
        for _ in range(10):  # short pieces while the raw relay runs, each followed by more
            for piece in (os.urandom(3), os.urandom(30_000)):
                await client.send(piece)
                sent += piece
                await asyncio.sleep(0.001)
        await reader.until(len(sent))
    finally:
        await client.close()
    return reader, lone, bytes(sent)


def test_shaped_records_are_never_shorter_than_tls13(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex())  # shaped is the default
    reader, lone, sent = run(_session(proxy.port, secret), timeout=60)
    assert bytes(reader.plain) == sent
    sizes = [size for _, size in reader.records]
    assert max(sizes) == faketls.SHAPED_RECORD_PAYLOAD  # a full TLS 1.3 AEAD record: 16,384 + 17
    short = [i for i, size in enumerate(sizes) if size < faketls.MIN_AEAD_RECORD]
    assert short == lone, f"short records {[(i, sizes[i]) for i in short]}, lone pieces at {lone}"
    assert all(sizes[i] == 4 for i in lone)
    assert sizes.count(faketls.SHAPED_RECORD_PAYLOAD) >= BULK // faketls.SHAPED_RECORD_PAYLOAD // 2


@pytest.mark.parametrize("flag", ["--no-fast-mode", None])
def test_plain_records_follow_the_dc_reads(start_proxy: ProxyFactory, secret: Secret, flag: str | None) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--tls-records", "plain", *([flag] if flag else []))
    reader, lone, sent = run(_session(proxy.port, secret), timeout=60)
    assert bytes(reader.plain) == sent
    sizes = [size for _, size in reader.records]
    assert max(sizes) == faketls.MAX_RECORD_PAYLOAD
    assert all(sizes[i] == 4 for i in lone)
    # the quick-ack-sized pieces come as the DC read them: 4-byte records, not joined to what followed
    assert sum(1 for size in sizes if size < faketls.MIN_AEAD_RECORD) > len(lone)


def test_shaped_without_fast_mode(start_proxy: ProxyFactory, secret: Secret) -> None:
    """Re-enciphered for the client, the held bytes are enciphered before what follows: still intact."""
    proxy = start_proxy("-S", secret.to_hex(), "--no-fast-mode")
    reader, lone, sent = run(_session(proxy.port, secret), timeout=60)
    assert bytes(reader.plain) == sent
    sizes = [size for _, size in reader.records]
    assert [i for i, size in enumerate(sizes) if size < faketls.MIN_AEAD_RECORD] == lone
    assert max(sizes) <= faketls.SHAPED_RECORD_PAYLOAD
