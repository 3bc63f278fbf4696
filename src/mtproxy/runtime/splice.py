"""Zero-copy DC -> client relay for fast-mode classic/dd: socket -> pipe -> socket with os.splice.

In fast mode the DC's bytes are already what the client expects, so the kernel can move them without
Python ever seeing them. uvloop refuses add_reader/add_writer on a descriptor a transport owns, so the
relay works on dup()s of the two sockets: the DC transport stops reading (it still writes the upload
direction) and the client transport keeps reading but is no longer written to.

Pipes come from a per-loop pool. A relay borrows the pool's pipe for one read and normally empties it
again at once; only when the client cannot take everything does the relay keep that pipe (with its
residue) until it drains, and the pool makes a fresh one for everyone else."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable

log = logging.getLogger("mtproxy.splice")

PIPE_SIZE = 1 << 20  # bytes per splice; the kernel caps it at /proc/sys/fs/pipe-max-size
SPLICE_AFTER = 64 * 1024  # DC->client bytes before a session switches: short sessions never pay the setup
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SPARE = 4  # drained pipes kept for reuse

AVAILABLE = hasattr(os, "splice") and os.environ.get("MTPROXY_SPLICE", "1") != "0"


class Pipe:
    __slots__ = ("r", "size", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """The loop's shared pipe plus a few spare ones; all empty whenever they are in here."""

    def __init__(self) -> None:
        self._shared: Pipe | None = None
        self._spare: list[Pipe] = []

    def shared(self) -> Pipe:
        if self._shared is None:
            self._shared = self._spare.pop() if self._spare else Pipe()
        return self._shared

    def lend(self, pipe: Pipe) -> None:
        """`pipe` holds a relay's residue now: it leaves the pool until given back."""
        if pipe is self._shared:
            self._shared = None

    def give_back(self, pipe: Pipe) -> None:
        if pipe is self._shared:
            return
        if len(self._spare) < _SPARE:
            self._spare.append(pipe)
        else:
            pipe.close()


class SpliceRelay:
    """DC -> client for one session. `on_bytes(n)` counts what was moved, `on_eof()` is called once the
    DC half-closed and everything before it reached the client, `on_error()` when either socket failed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: PipePool, dc_fd: int, client_fd: int,
                 on_bytes: Callable[[int], None], on_eof: Callable[[], None], on_error: Callable[[], None]) -> None:
        self._loop = loop
        self._pool = pool
        self._dc = os.dup(dc_fd)
        try:
            self._client = os.dup(client_fd)
        except OSError:
            os.close(self._dc)
            raise
        self._on_bytes = on_bytes
        self._on_eof = on_eof
        self._on_error = on_error
        self._pipe: Pipe | None = None  # set while it holds bytes the client has not taken
        self._queued = 0
        self._reading = False
        self._writing = False
        self.closed = False
        self._read_on()

    # ---------------------------------------------------------------- readiness switches

    def _read_on(self) -> None:
        if not self._reading:
            self._loop.add_reader(self._dc, self._readable)
            self._reading = True

    def _read_off(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._dc)
            self._reading = False

    def _write_on(self) -> None:
        if not self._writing:
            self._loop.add_writer(self._client, self._drain)
            self._writing = True

    def _write_off(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._client)
            self._writing = False

    # ---------------------------------------------------------------- moving bytes

    def _readable(self) -> None:
        try:
            pipe = self._pool.shared()  # may need a new pipe: EMFILE must fail the session, not spin
            n = os.splice(self._dc, pipe.w, pipe.size, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("splice from the DC failed: %s", exc)
            self._fail()
            return
        if n == 0:
            self._read_off()
            self._on_eof()
            return
        self._queued = n
        self._on_bytes(n)
        self._pipe = pipe
        self._drain()

    def _drain(self) -> None:
        pipe = self._pipe
        if pipe is None or self.closed:
            return
        try:
            while self._queued:
                self._queued -= os.splice(pipe.r, self._client, self._queued, flags=_FLAGS)
        except BlockingIOError:
            # the client is slow: keep the residue, stop reading the DC until it drains (backpressure)
            self._pool.lend(pipe)
            self._read_off()
            self._write_on()
            return
        except OSError as exc:
            log.debug("splice to the client failed: %s", exc)
            self._fail()
            return
        self._pipe = None
        self._pool.give_back(pipe)
        if self._writing:
            self._write_off()
            self._read_on()

    def _fail(self) -> None:
        self.close()
        self._on_error()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._read_off()
        self._write_off()
        # unregister before closing: an epoll entry keyed on a closed dup would outlive it
        os.close(self._dc)
        os.close(self._client)
        if self._pipe is not None:
            if self._queued:  # residue for a client that is gone: that pipe must never be read again
                self._pool.lend(self._pipe)
                self._pipe.close()
            else:
                self._pool.give_back(self._pipe)
            self._pipe = None
