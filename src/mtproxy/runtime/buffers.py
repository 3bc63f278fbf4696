"""Process-wide scratch buffers for the relay, and the one way the relay writes them: no per-connection or
per-chunk allocation on the hot path, and no session ever holds on to a shared buffer.

Sharing is safe because the event loop runs one callback at a time and every read is consumed inside
its `buffer_updated` call. The hazard is a peer that does not take everything at once: a transport given
a view of a shared buffer would keep the whole buffer (a whole read size) alive for as long as that peer
is behind. So `send` writes the view to the socket itself while the transport holds nothing, and hands
the transport only a copy of what the socket did not take. What that copy can be is bounded before the
read: `offer` never reads more from a source than its destination's socket is sure to take now plus the
room left under --buffer-size, so a direction never holds more than --buffer-size, whatever the read size
(docs/engine.md, Limits).

A transport that holds anything pauses its source until it is empty again (WRITE_LIMITS): uvloop keeps
each object it was given whole until all of it is sent (a partly sent one, and every buffer of a write
request in flight), so what it reports as queued understates what it holds by up to a request; an empty
transport holds nothing. The socket's own buffer keeps the peer busy meanwhile."""

from __future__ import annotations

import array
import asyncio
import ctypes
import fcntl
import os
import socket
import termios
from collections.abc import Callable

from mtproxy.protocol import faketls

SLACK = 16  # update_into wants len(data) + block_size - 1 bytes of room
HEADER = faketls.RECORD_HEADER_SIZE
MAX_RECORD = faketls.MAX_RECORD_PAYLOAD
MIN_READ = 16 * 1024  # the least a connection reads (only a write racing a pause leaves less room)
WRITE_LIMITS = {"high": 0, "low": 0}  # for every relay transport: any queued byte pauses the source (above)
_SO_MEMINFO = 55  # getsockopt: the socket's memory counters (linux/sock_diag.h), one syscall for all of them
_WMEM_ALLOC, _SNDBUF, _WMEM_QUEUED = 2, 3, 5


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
        # + one record: shaped fake-TLS (--tls-records) may put a held short read in front of a full one
        shaped_extra = HEADER + faketls.MIN_AEAD_RECORD
        self.out = bytearray(read_size + -(-read_size // MAX_RECORD) * HEADER + SLACK + shaped_extra)
        self.out_view = memoryview(self.out)
        self.min_room = max(1, min(MIN_READ, buffer_size // 2))

    def offer(self, held: int, fd: int, moved: int, framed: bool = False) -> memoryview:
        """Where to read for a connection whose peer (socket `fd`) has `held` bytes queued in its transport:
        at most what that socket takes now plus the room left under --buffer-size, so whatever `send` has to
        copy for the transport stays within the bound. The kernel is asked only when a full read could
        exceed the room (never for reads no larger than --buffer-size); with bytes already queued the socket
        takes nothing directly (they go first), so only the room counts. Nor is it asked for a connection
        that has `moved` less than --buffer-size so far: its reads are a handshake's few bytes and EOFs,
        and the room is a full read for them (the ask cost ~1.4 µs, three times per short session).
        `framed`: fake-TLS adds a header per record to what is read here."""
        room = self.buffer_size - held
        if self.read_size <= room:
            return self.recv_in
        size = room if held or moved < self.buffer_size else room + send_space(fd)
        if framed:
            size = size * MAX_RECORD // (MAX_RECORD + HEADER)
        return self.recv_in[: max(self.min_room, min(self.read_size, size))]


_getsockopt: Callable[..., int] | None = None
_meminfo = (ctypes.c_uint32 * 9)()
_meminfo_len = ctypes.c_uint32()
_MEMINFO_ADDRESS = ctypes.addressof(_meminfo)
_MEMINFO_LEN_ADDRESS = ctypes.addressof(_meminfo_len)


def send_space(fd: int) -> int:
    """Payload bytes the socket `fd` is sure to accept now. The kernel counts its send buffer with each
    packet buffer's overhead, and how much payload a buffer carries depends on the peer: over loopback 70 %,
    over a NIC with segmentation offload ~98 %, but a peer advertising a tiny window (a client that stopped
    reading, on purpose) gets small segments and far less. So the free memory (one getsockopt(SO_MEMINFO)
    through a preallocated buffer) is scaled by the payload share of what is queued now (SIOCOUTQ: payload
    bytes, one ioctl), less a quarter; with nothing queued, by half. 0 where that is unavailable: reads are
    then bounded by the room alone."""
    global _getsockopt
    if _getsockopt is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).getsockopt
        except (OSError, AttributeError):
            function = None
        if function is None:
            _getsockopt = _no_getsockopt
        else:
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            function.restype = ctypes.c_int
            _getsockopt = function
    _meminfo_len.value = 36
    if _getsockopt(fd, socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO_ADDRESS, _MEMINFO_LEN_ADDRESS) != 0:
        return 0
    info = _meminfo
    used = info[_WMEM_QUEUED] if info[_WMEM_QUEUED] > info[_WMEM_ALLOC] else info[_WMEM_ALLOC]  # TCP; AF_UNIX
    free = info[_SNDBUF] - used
    if free <= 0:
        return 0
    if not used:
        return free // 2
    try:
        fcntl.ioctl(fd, termios.TIOCOUTQ, _outq, True)
    except OSError:
        return 0
    return free * min(_outq[0], used) * 3 // (used * 4)


_outq = array.array("i", [0])


def _no_getsockopt(*_args: object) -> int:
    return -1


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
