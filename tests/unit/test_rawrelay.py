"""The record relay: a run of n payload bytes read into its buffer's windows is framed as valid application-data
records, unframing leaves it ready for the next read, and a slow client gets every byte in well-formed records."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from mtproxy.protocol.faketls import MAX_RECORD_PAYLOAD, SHAPED_RECORD_PAYLOAD, TlsRecordReader, wrap_records
from mtproxy.runtime import rawrelay
from mtproxy.runtime.rawrelay import Pipe, Pool, RecordBuffer, RecordRelay, SpliceRelay

READ_SIZE = 256 * 1024
BOUND = 64 * 1024  # --buffer-size: what a relay reads at a time once its client fell behind


def _fill(buffer: RecordBuffer, payload: bytes) -> None:
    """What one readv() of `payload` into the windows does."""
    at = 0
    for window in buffer.windows:
        take = min(len(window), len(payload) - at)
        window[:take] = payload[at : at + take]
        at += take
    assert at == len(payload)


@pytest.mark.parametrize("n", [1, 100, MAX_RECORD_PAYLOAD - 1, MAX_RECORD_PAYLOAD, MAX_RECORD_PAYLOAD + 1,
                               3 * MAX_RECORD_PAYLOAD + 7, READ_SIZE - 1, READ_SIZE])
def test_a_read_is_framed_as_records_and_unframed_for_the_next(n: int) -> None:
    buffer = RecordBuffer(READ_SIZE)
    assert sum(len(w) for w in buffer.windows) == READ_SIZE
    pristine = bytes(buffer.data)
    for round_ in range(2):  # the second read reuses what the first left behind
        payload = os.urandom(n)
        _fill(buffer, payload)
        end = buffer.frame(n)
        framed = bytes(buffer.view[:end])
        full, tail = divmod(n, MAX_RECORD_PAYLOAD)
        assert end == n + 5 * (full + (1 if tail else 0)), round_
        assert TlsRecordReader().unwrap(framed) == payload
        sizes, at = [], 0
        while at < len(framed):
            assert framed[at : at + 3] == b"\x17\x03\x03"
            size = int.from_bytes(framed[at + 3 : at + 5], "big")
            sizes.append(size)
            at += 5 + size
        assert at == len(framed)
        assert sizes == [MAX_RECORD_PAYLOAD] * full + ([tail] if tail else [])
        buffer.unframe(n)
        headers = [bytes(buffer.data[i : i + 5]) for i in range(0, len(buffer.data), 5 + MAX_RECORD_PAYLOAD)]
        assert headers == [pristine[:5]] * len(headers)


@pytest.mark.parametrize("record", [MAX_RECORD_PAYLOAD, SHAPED_RECORD_PAYLOAD])
@pytest.mark.parametrize("extra", [1, 5, 16, 17, 100])
def test_a_shaped_read_moves_one_header_and_unframes(record: int, extra: int) -> None:
    """Shaped (--tls-records shaped), a tail under 17 bytes takes bytes from the full record before it; the
    framed bytes are what faketls.wrap_records builds, and unframing restores every header."""
    buffer = RecordBuffer(READ_SIZE, record)
    pristine = bytes(buffer.data)
    for n in (2 * record + extra, record - 1, 3 * record):
        payload = os.urandom(n)
        _fill(buffer, payload)
        end = buffer.frame(n, shaped=True)
        assert bytes(buffer.view[:end]) == wrap_records(payload, record, shaped=True)
        buffer.unframe(n)
        headers = [bytes(buffer.data[i : i + 5]) for i in range(0, len(buffer.data), 5 + record)]
        assert headers == [pristine[:5]] * len(headers)


async def _relay_through(payload_chunks: list[bytes], client_rcvbuf: int, read_pause: float) -> tuple[bytes, list[int]]:
    """A RecordRelay between two socket pairs: the "DC" writes the chunks, the "client" reads slowly through a
    small receive buffer (so the relay stalls and keeps residue), everything read is parsed as records."""
    loop = asyncio.get_running_loop()
    dc_far, dc_near = socket.socketpair()
    client_near, client_far = socket.socketpair()
    client_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
    client_near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_rcvbuf)
    for s in (dc_far, dc_near, client_near, client_far):
        s.setblocking(False)
    failed: list[str] = []
    moved: list[int] = []

    def dc_done() -> None:  # everything before the DC's EOF reached the client socket: end the client's stream
        relay.close()
        client_near.close()

    relay = RecordRelay(loop, Pool(lambda: RecordBuffer(READ_SIZE)), dc_near.fileno(), client_near.fileno(),
                        moved.append, dc_done, lambda: failed.append("relay failed"), BOUND)

    async def dc_side() -> None:
        for chunk in payload_chunks:
            await loop.sock_sendall(dc_far, chunk)
        dc_far.shutdown(socket.SHUT_WR)

    writer = asyncio.create_task(dc_side())
    stream = bytearray()
    total = sum(map(len, payload_chunks))
    try:
        async with asyncio.timeout(30):
            while chunk := await loop.sock_recv(client_far, 4096):
                stream += chunk
                await asyncio.sleep(read_pause)
            await writer
    finally:
        relay.close()
        for s in (dc_far, dc_near, client_near, client_far):
            s.close()
    assert not failed
    assert sum(moved) == total
    sizes, payload, at = [], bytearray(), 0
    while at < len(stream):
        assert stream[at : at + 3] == b"\x17\x03\x03", (at, bytes(stream[at : at + 5]))
        size = int.from_bytes(stream[at + 3 : at + 5], "big")
        sizes.append(size)
        payload += stream[at + 5 : at + 5 + size]
        at += 5 + size
    assert at == len(stream)
    return bytes(payload), sizes


@pytest.mark.parametrize("pause", [0.0, 0.001])
def test_record_relay_frames_everything_for_a_slow_client(pause: float) -> None:
    """Odd-sized DC writes against a client that takes 4 KiB at a time: the relay stalls with a short last
    record in its residue again and again; every record must still be well formed and nothing lost."""
    rng = random.Random(7)
    chunks = [os.urandom(rng.choice([1, 777, 16383, 16385, 70001, 200000])) for _ in range(40)]
    payload, sizes = asyncio.run(_relay_through(chunks, 8192, pause))
    assert payload == b"".join(chunks)
    assert all(0 < size <= MAX_RECORD_PAYLOAD for size in sizes)


def test_record_relay_survives_every_kind_of_short_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partial writes of every size and refusals, in a fixed pattern, so each path runs: all sent at once,
    a small residue, a large one (both copied out), and a refusal mid-drain."""
    real_write = os.write
    pattern = [None, 100, 300000, 5000, 0, 20000, 16000, 0, 70000]
    calls = [0]

    def short_write(fd: int, data: bytes | memoryview) -> int:
        limit = pattern[calls[0] % len(pattern)]
        calls[0] += 1
        if limit == 0:
            raise BlockingIOError
        return real_write(fd, data if limit is None else memoryview(data)[:limit])

    monkeypatch.setattr(os, "write", short_write)
    rng = random.Random(11)
    chunks = [os.urandom(rng.choice([1, 999, 16384, 30000, 100000, 262144])) for _ in range(60)]
    payload, sizes = asyncio.run(_relay_through(chunks, 1 << 22, 0.0))
    assert payload == b"".join(chunks)
    assert all(0 < size <= MAX_RECORD_PAYLOAD for size in sizes)
    assert calls[0] > len(chunks)


def _parse_records(stream: bytes) -> bytes:
    payload, at = bytearray(), 0
    while at < len(stream):
        assert stream[at : at + 3] == b"\x17\x03\x03", at
        size = int.from_bytes(stream[at + 3 : at + 5], "big")
        assert 0 < size <= MAX_RECORD_PAYLOAD
        payload += stream[at + 5 : at + 5 + size]
        at += 5 + size
    assert at == len(stream)
    return bytes(payload)



def _small_client_pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """DC (far, near) and client (near, far) socketpairs, non-blocking, with 8 KiB client buffers, so a
    client that does not read backs up at once."""
    dc_far, dc_near = socket.socketpair()
    client_near, client_far = socket.socketpair()
    client_near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    for s in (dc_far, dc_near, client_near, client_far):
        s.setblocking(False)
    return dc_far, dc_near, client_near, client_far

@pytest.mark.parametrize("kind", ["splice", "records"])
def test_a_closing_relay_hands_over_what_the_client_has_not_taken(kind: str) -> None:
    """A session that ends while its client is backlogged passes the relay's pending bytes on (the engine
    writes them to the client transport, which flushes them): what the client got plus what was handed
    over is exactly what was read from the DC, and for fake-TLS whole records."""

    async def scenario() -> tuple[bytes, bytes, int, bytes]:
        loop = asyncio.get_running_loop()
        dc_far, dc_near, client_near, client_far = _small_client_pairs()
        moved: list[int] = []
        relay: SpliceRelay | RecordRelay
        if kind == "splice":
            relay = SpliceRelay(loop, Pool(Pipe), dc_near.fileno(), client_near.fileno(),
                                moved.append, lambda: None, lambda: None, BOUND)
        else:
            relay = RecordRelay(loop, Pool(lambda: RecordBuffer(READ_SIZE)), dc_near.fileno(), client_near.fileno(),
                                moved.append, lambda: None, lambda: None, BOUND)
        sent = os.urandom(1 << 20)
        try:
            dc_far.sendall(sent[:200_000])  # the client reads nothing yet: the relay stalls with residue
            async with asyncio.timeout(10):
                while not moved:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
            pending = relay.take_pending()
            relay.close()
            client_near.close()
            got = bytearray()
            while chunk := client_far.recv(1 << 16):
                got += chunk
            return bytes(got), pending, sum(moved), sent
        finally:
            relay.close()
            for s in (dc_far, dc_near, client_near, client_far):
                s.close()

    got, pending, moved, sent = asyncio.run(scenario())
    assert pending, "the relay should have been holding bytes for the backlogged client"
    stream = got + pending
    payload = _parse_records(stream) if kind == "records" else stream
    assert 0 < moved == len(payload)
    assert payload == sent[:moved]


def test_a_read_is_never_more_than_the_client_takes_plus_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay asks the kernel how much the client's socket takes now and reads at most that plus
    --buffer-size: with less room it reads fewer windows, with none it reads the bound, with room for
    everything the whole buffer. What the kernel said is a credit spent by the writes that follow (the free
    space only grows meanwhile), so it asks again only when the credit runs short."""
    real_readv = os.readv
    windows_asked: list[int] = []
    spaces = iter([100_000, 0, 1 << 30] + [0] * 1000)
    queries: list[int] = []

    def counting_readv(fd: int, buffers: list[memoryview]) -> int:
        windows_asked.append(len(buffers))
        return real_readv(fd, buffers)

    def space(fd: int) -> int:
        queries.append(len(windows_asked))
        return next(spaces)

    monkeypatch.setattr(os, "readv", counting_readv)
    monkeypatch.setattr(rawrelay, "send_space", space)
    chunks = [os.urandom(READ_SIZE) for _ in range(8)]
    payload, _sizes = asyncio.run(_relay_through(chunks, 1 << 22, 0.0))
    assert payload == b"".join(chunks)
    slot = MAX_RECORD_PAYLOAD + 5
    full = READ_SIZE // MAX_RECORD_PAYLOAD
    assert windows_asked[:4] == [(BOUND + 100_000) // slot, BOUND // slot, full, full]
    assert queries[:3] == [0, 1, 2] and (len(queries) == 3 or queries[3] > 3)  # the 4th read spent the credit


def test_a_stalled_record_relay_copies_its_residue_and_then_reads_within_the_bound() -> None:
    """A client that stops reading: the relay's residue is a copy (the pool's shared buffer stays shared,
    so the session does not pin a whole read), and once stalled it holds at most one read's residue,
    later reads are bounded by --buffer-size."""

    async def scenario() -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        dc_far, dc_near, client_near, client_far = _small_client_pairs()
        pool = Pool(lambda: RecordBuffer(READ_SIZE))
        shared = pool.shared()
        relay = RecordRelay(loop, pool, dc_near.fileno(), client_near.fileno(), lambda n: None,
                            lambda: None, lambda: None, BOUND)
        try:
            writer = asyncio.create_task(loop.sock_sendall(dc_far, os.urandom(READ_SIZE)))
            async with asyncio.timeout(10):
                while not relay._residue:
                    await asyncio.sleep(0.01)
            first = len(relay._residue)
            # the client drains a little: the relay reads again, no more than the bound
            for _ in range(20):
                try:
                    client_far.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.02)
            writer.cancel()
            return pool.shared() is shared, first, len(relay._residue)
        finally:
            relay.close()
            for s in (dc_far, dc_near, client_near, client_far):
                s.close()

    still_shared, first, later = asyncio.run(scenario())
    assert still_shared
    assert 0 < first <= BOUND  # the first read's residue too: it was up to a whole READ_SIZE before
    assert later <= BOUND + 5 * (BOUND // MAX_RECORD_PAYLOAD)


def test_shaped_record_relay_holds_short_reads() -> None:
    """Shaped: bytes handed over held open the next record; a read under 17 bytes waits for more and, with
    nothing following, goes alone after SHORT_WAIT; one held at the DC's EOF still reaches the client first."""
    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        dc_far, dc_near = socket.socketpair()
        client_near, client_far = socket.socketpair()
        for s in (dc_far, dc_near, client_near, client_far):
            s.setblocking(False)
        ended = asyncio.Event()
        relay = RecordRelay(loop, Pool(lambda: RecordBuffer(READ_SIZE, SHAPED_RECORD_PAYLOAD)), dc_near.fileno(),
                            client_near.fileno(), lambda n: None, ended.set, lambda: None, BOUND,
                            shaped=True, held=b"ab")
        stream = bytearray()

        async def records(count: int) -> list[bytes]:
            got: list[bytes] = []
            while len(got) < count:
                while len(stream) >= 5 and len(stream) >= 5 + int.from_bytes(stream[3:5], "big"):
                    size = int.from_bytes(stream[3:5], "big")
                    got.append(bytes(stream[5 : 5 + size]))
                    del stream[: 5 + size]
                if len(got) < count:
                    stream.extend(await loop.sock_recv(client_far, 65536))
            return got

        try:
            async with asyncio.timeout(10):
                await loop.sock_sendall(dc_far, b"x" * 30)
                out = await records(1)
                started = loop.time()
                await loop.sock_sendall(dc_far, b"yyy")
                out += await records(1)
                waited = loop.time() - started
                await loop.sock_sendall(dc_far, b"zz")
                await asyncio.sleep(0.001)
                dc_far.shutdown(socket.SHUT_WR)
                await ended.wait()
                out += await records(1)
        finally:
            relay.close()
            for s in (dc_far, dc_near, client_near, client_far):
                s.close()
        assert waited >= rawrelay.SHORT_WAIT * 0.9  # the lone 3 bytes waited for more
        return out

    assert asyncio.run(scenario()) == [b"ab" + b"x" * 30, b"yyy", b"zz"]
