"""Process-wide scratch buffers for the relay, and the one way the relay writes them: no per-connection or
per-chunk allocation on the hot path, and no session ever holds on to a shared buffer.

Sharing is safe because the event loop runs one callback at a time and every read is consumed inside
its `buffer_updated` call. The hazard is a peer that does not take everything at once: a transport given
a view of a shared buffer would keep the whole buffer (a whole read size) alive for as long as that peer
is behind. So `send` writes the view to the socket itself while the transport holds nothing, and hands
the transport only a copy of what the socket did not take; and a connection whose peer is behind reads
no more than the room left under --buffer-size (`room`), so those copies stay within that bound. A read
that left more than --buffer-size unsent makes the next reads of that direction --buffer-size, doubling
back to full reads while the peer keeps up: a slow phone holds about what it can take, not a whole read
each time its socket fills, and a peer that is only briefly behind keeps its full reads."""

from __future__ import annotations

import asyncio
import os

from mtproxy.protocol import faketls

SLACK = 16  # update_into wants len(data) + block_size - 1 bytes of room
HEADER = faketls.RECORD_HEADER_SIZE
MAX_RECORD = faketls.MAX_RECORD_PAYLOAD
MIN_READ = 16 * 1024  # a peer at its --buffer-size is paused; a read racing that pause takes at most this


class Buffers:
    """`recv` takes every socket read (through `recv_in`, which leaves the slack `update_into` needs, so
    the upload direction is decrypted and re-encrypted in place); `tmp` holds decrypted bytes; `out` what
    is written (with room for fake-TLS record headers)."""

    def __init__(self, read_size: int, buffer_size: int) -> None:
        self.read_size = read_size
        self.buffer_size = buffer_size
        self.recv = bytearray(read_size + SLACK)
        self.recv_in = memoryview(self.recv)[:read_size]
        self.tmp = bytearray(read_size + SLACK)
        self.out = bytearray(read_size + -(-read_size // MAX_RECORD) * HEADER + SLACK)
        self.slow_read = min(read_size, buffer_size)  # what a reader reads once its peer fell behind

    def room(self, held: int) -> memoryview:
        """Where to read for a connection whose peer still has `held` bytes queued: only what fits under
        --buffer-size (the copy `send` makes of it is then bounded too). Framing adds at most a header per
        record to what is read here."""
        return self.recv_in[: max(MIN_READ, min(self.read_size, self.buffer_size - held))]

    def capped(self, cap: int) -> memoryview:
        return self.recv_in[:cap]


def send(transport: asyncio.Transport, fd: int, data: memoryview) -> int:
    """Write `data`, a view of a shared buffer, towards `transport` (whose socket is `fd`) without the
    transport keeping that buffer. A transport with bytes queued gets a copy behind them (ordering); one
    with nothing queued is bypassed: the socket takes what it can now, as the transport would have done
    itself, and only the rest is copied. With a peer that keeps up nothing is ever copied. Returns how many
    bytes it left queued (0: the peer keeps up)."""
    if transport.get_write_buffer_size():
        transport.write(bytes(data))
        return len(data)
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(bytes(data))  # a broken socket: let the transport meet the error and close its way
        return len(data)
    if sent < len(data):
        transport.write(bytes(data[sent:]))
        return len(data) - sent
    return 0


def socket_fd(transport: asyncio.BaseTransport) -> int:
    return int(transport.get_extra_info("socket").fileno())
