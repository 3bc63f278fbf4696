"""Process-wide scratch buffers for the relay: no per-connection or per-chunk allocation on the hot path.

Sharing is safe because the event loop runs one callback at a time and every read is consumed inside
its `buffer_updated` call. The one hazard is a transport that could not send everything at once: it
keeps a reference to the buffer it was given. Whoever writes a shared buffer calls `lent_*` when the
transport still holds data, and the pool replaces that buffer instead of reusing it."""

from __future__ import annotations

from mtproxy.protocol import faketls

SLACK = 16  # update_into wants len(data) + block_size - 1 bytes of room
HEADER = faketls.RECORD_HEADER_SIZE
MAX_RECORD = faketls.MAX_RECORD_PAYLOAD


class Buffers:
    """`recv` takes every socket read (through `recv_in`, which leaves the slack `update_into` needs, so
    the upload direction is decrypted and re-encrypted in place); `tmp` holds decrypted bytes; `out` what
    is written (with room for fake-TLS record headers)."""

    def __init__(self, read_size: int) -> None:
        self.read_size = read_size
        self.recv = bytearray(read_size + SLACK)
        self.recv_in = memoryview(self.recv)[:read_size]
        self.tmp = bytearray(read_size + SLACK)
        self._out_size = read_size + -(-read_size // MAX_RECORD) * HEADER + SLACK
        self.out = bytearray(self._out_size)

    def lent_recv(self) -> None:
        self.recv = bytearray(self.read_size + SLACK)
        self.recv_in = memoryview(self.recv)[: self.read_size]

    def lent_out(self) -> None:
        self.out = bytearray(self._out_size)
