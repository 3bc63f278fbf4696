"""The relay's writes never leave a shared buffer with a transport: what a slow peer has not taken is a copy
of exactly that, and a connection whose peer is behind reads only what fits under --buffer-size."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import uvloop

from mtproxy.runtime.buffers import MIN_READ, WRITE_LIMITS, Buffers, send, socket_fd

READ_SIZE = 1 << 20
BUFFER_SIZE = 256 * 1024


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


def test_offer_is_what_fits_under_the_buffer_size() -> None:
    buffers = Buffers(READ_SIZE, BUFFER_SIZE)
    assert len(buffers.recv_in) == READ_SIZE
    moved = BUFFER_SIZE  # past its first reads
    assert len(buffers.offer(1, -1, moved)) == BUFFER_SIZE - 1  # bytes queued: the socket takes nothing directly
    assert len(buffers.offer(BUFFER_SIZE - MIN_READ, -1, moved)) == MIN_READ
    assert len(buffers.offer(10 * BUFFER_SIZE, -1, moved)) == MIN_READ  # never a uselessly small read
    assert len(buffers.offer(1, -1, moved, framed=True)) < BUFFER_SIZE - 1  # record headers come on top
    small = Buffers(64 * 1024, 4 << 20)  # a buffer size above the read size: always a full read
    assert len(small.offer(1, -1, moved)) == 64 * 1024
    assert len(small.offer(0, -1, moved)) == 64 * 1024


def test_a_young_connection_reads_the_room_without_asking_the_kernel() -> None:
    """Less than --buffer-size moved: the room under --buffer-size, whatever the socket (-1: no socket to
    ask) would take; once past that, an empty socket's free space comes on top of the room."""
    buffers = Buffers(READ_SIZE, BUFFER_SIZE)
    assert len(buffers.offer(0, -1, 0)) == BUFFER_SIZE
    assert len(buffers.offer(0, -1, BUFFER_SIZE - 1)) == BUFFER_SIZE
    near, far = _tcp_pair(4096)
    try:
        assert len(buffers.offer(0, near.fileno(), BUFFER_SIZE - 1)) == BUFFER_SIZE
        assert len(buffers.offer(0, near.fileno(), BUFFER_SIZE)) > BUFFER_SIZE
    finally:
        near.close()
        far.close()


def _tcp_pair(rcvbuf: int) -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    far = socket.socket()
    far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    far.connect(listener.getsockname())
    near, _ = listener.accept()
    listener.close()
    return near, far


def test_a_peer_that_stops_reading_leaves_at_most_the_buffer_size_queued() -> None:
    """Full reads offered to a TCP peer that never reads, as long as the transport holds nothing (it pauses
    the source otherwise): once the socket is full, what it did not take of the last read is at most
    --buffer-size, although each read could be four times that. Before the offer asked the kernel, that
    residue was up to a whole --read-size."""

    async def scenario() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        near, far = _tcp_pair(4096)
        buffers = Buffers(READ_SIZE, BUFFER_SIZE)
        transport, _ = await loop.create_connection(_Sink, sock=near)
        transport.set_write_buffer_limits(**WRITE_LIMITS)
        fd = socket_fd(transport)
        most = reads = first = 0
        moved = BUFFER_SIZE  # past its first reads: the kernel is asked
        while not transport.get_write_buffer_size() and reads < 200:
            view = buffers.offer(transport.get_write_buffer_size(), fd, moved)
            first = first or len(view)
            send(transport, fd, view)
            moved += len(view)
            reads += 1
            most = max(most, transport.get_write_buffer_size())
        transport.abort()
        far.close()
        return most, reads, first

    most, reads, first = uvloop.run(scenario())
    assert first == READ_SIZE  # an empty socket takes a whole read: full reads while the peer keeps up
    assert reads < 200
    assert 0 < most <= BUFFER_SIZE


@pytest.mark.parametrize("first", ["empty", "behind"])
def test_send_hands_the_transport_a_copy_of_what_the_peer_did_not_take(first: str) -> None:
    """The peer reads nothing: the socket takes what fits, the rest goes to the transport as a copy. Reusing
    the shared buffer afterwards (the next read) must not change what the peer eventually receives."""

    async def scenario() -> tuple[bytes, bytes, int]:
        loop = asyncio.get_running_loop()
        near, far = socket.socketpair()
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        transport, _ = await loop.create_connection(_Sink, sock=near)
        transport.set_write_buffer_limits(high=BUFFER_SIZE, low=0)
        fd = socket_fd(transport)
        shared = bytearray(os.urandom(200_000))
        expected = bytes(shared)
        if first == "behind":
            transport.write(b"x" * 100_000)  # already queued: the transport is behind before the send
            expected = b"x" * 100_000 + expected
        send(transport, fd, memoryview(shared))
        held = transport.get_write_buffer_size()
        shared[:] = bytes(len(shared))  # the next read overwrites the shared buffer
        got = bytearray()
        far.setblocking(False)
        async with asyncio.timeout(10):
            while len(got) < len(expected):
                try:
                    got += far.recv(1 << 16)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
        transport.close()
        far.close()
        return bytes(got), expected, held

    got, expected, held = uvloop.run(scenario())
    assert held > 0, "the peer's socket should not have taken everything"
    assert got == expected


def test_send_with_a_peer_that_keeps_up_queues_nothing() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        near, far = socket.socketpair()
        transport, _ = await loop.create_connection(_Sink, sock=near)
        send(transport, socket_fd(transport), memoryview(b"hello"))
        held = transport.get_write_buffer_size()
        assert far.recv(16) == b"hello"
        transport.close()
        far.close()
        return held

    assert uvloop.run(scenario()) == 0


def test_send_says_how_much_the_peer_left() -> None:
    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        near, far = socket.socketpair()
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        transport, _ = await loop.create_connection(_Sink, sock=near)
        fd = socket_fd(transport)
        kept = send(transport, fd, memoryview(b"small"))
        behind = send(transport, fd, memoryview(bytes(1 << 20)))
        transport.abort()
        far.close()
        return kept, behind

    kept, behind = uvloop.run(scenario())
    assert kept == 0
    assert 0 < behind < 1 << 20
