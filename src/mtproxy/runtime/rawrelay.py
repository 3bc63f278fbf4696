"""DC -> client relays on raw sockets, for fast-mode sessions once they carry bulk data.

In fast mode the DC's bytes are already what the client expects, so Python never needs to see them:
- classic/dd: `SpliceRelay` moves them socket -> pipe -> socket with os.splice (zero copy);
- fake-TLS: `RecordRelay` reads the DC with one readv() straight into the payload windows of a buffer laid
  out as back-to-back full-size records (16,384 bytes, 16,401 shaped) with their headers already in place,
  and sends the filled part with one write(): the same two syscalls as a plain relay, no copy in Python.

uvloop refuses add_reader/add_writer on a descriptor a transport owns, so the relays work on dup()s of the
two sockets: the DC transport stops reading (it still writes the upload direction) and the client transport
keeps reading but is no longer written to.

Pipes and record buffers come from per-loop pools. A relay borrows the pool's shared one for one read and
normally empties it again at once. When the client cannot take everything, a record relay copies the rest
out (the buffer stays shared) and a splice relay keeps its pipe (the pool makes another for everyone else).
Neither reads more than the client's socket is sure to take now plus --buffer-size (buffers.send_space), so
a client that stops reading leaves at most --buffer-size behind (see docs/engine.md, Limits)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from mtproxy.protocol import faketls

from .buffers import send_space

log = logging.getLogger("mtproxy.rawrelay")

PIPE_SIZE = 1 << 20  # bytes per splice; the kernel caps it at /proc/sys/fs/pipe-max-size
RAW_AFTER = 64 * 1024  # DC->client bytes before a session switches: short sessions never pay the setup
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SPARE = 4  # drained pipes/buffers kept for reuse
_HEADER = faketls.RECORD_HEADER_SIZE
# --tls-records shaped: how long a DC read too short for a TLS 1.3 record waits for more before it goes out
# alone (a short record); what follows within it joins it. Only such reads (a 4-byte quick ack, a transport
# error code, a packet cut by the network) ever wait; see docs/undetectability.md
SHORT_WAIT = 0.010

SPLICE_AVAILABLE = hasattr(os, "splice")
RECORDS_AVAILABLE = hasattr(os, "readv")

_NOTHING, _DC, _CLIENT = 0, 1, 2  # what a relay waits for (see _RawRelay._watch)


class ShortHold:
    """--tls-records shaped: a read too short for a record of its own (under faketls.MIN_AEAD_RECORD, already
    enciphered) is held for the front of the next one; `flush` sends it alone when nothing follows within
    SHORT_WAIT. The transport path (session.py) and the record relay hold them alike."""

    __slots__ = ("_flush", "_loop", "_timer", "held")

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        self._loop = loop
        self._flush = flush
        self.held = b""
        self._timer: asyncio.TimerHandle | None = None

    def hold(self, short: bytes) -> None:
        self.held = short
        if self._timer is None:
            self._timer = self._loop.call_later(SHORT_WAIT, self._flush)

    def take(self) -> bytes:
        """What is held (b"" if nothing), no longer held."""
        held, self.held = self.held, b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return held


class _Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=_Closable)


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


class Pool(Generic[T]):
    """The loop's shared pipe (or record buffer) plus a few spare ones; all empty whenever they are in here."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._shared: T | None = None
        self._spare: list[T] = []

    def shared(self) -> T:
        if self._shared is None:
            self._shared = self._spare.pop() if self._spare else self._make()
        return self._shared

    def lend(self, item: T) -> None:
        """`item` holds a relay's residue now: it leaves the pool until given back."""
        if item is self._shared:
            self._shared = None

    def give_back(self, item: T) -> None:
        if item is self._shared:
            return
        if len(self._spare) < _SPARE:
            self._spare.append(item)
        else:
            item.close()


class RecordBuffer:
    """Back-to-back fake-TLS application-data records of full size (`record` payload bytes: 16,384, or 16,401
    shaped), shared by the loop's record relays; `windows` are their payloads, the iovecs one readv() fills in
    order, so whatever it read is already a contiguous run of records."""

    __slots__ = ("data", "full_header", "record", "slot", "view", "windows")

    def __init__(self, read_size: int, record: int = faketls.MAX_RECORD_PAYLOAD) -> None:
        self.record = record
        self.slot = slot = _HEADER + record
        self.full_header = faketls.record_header(record)
        slots = max(1, read_size // record)
        self.data = bytearray(self.full_header + bytes(record)) * slots
        self.view = memoryview(self.data)
        self.windows = [self.view[i * slot + _HEADER : (i + 1) * slot] for i in range(slots)]

    def frame(self, n: int, shaped: bool = False) -> int:
        """The length of the records carrying the n payload bytes just read; the last one may be short
        (`shaped`: never under faketls.MIN_AEAD_RECORD when a full one precedes it, see faketls.record_cuts)."""
        record, slot, data = self.record, self.slot, self.data
        full, last_full, tail = faketls.record_cuts(n, record, shaped)
        if not tail:
            return full * slot
        if last_full != record:  # the tail takes the last full record's end: its header moves in front of it
            moved = record - last_full
            at = (full - 1) * slot
            data[at + 3 : at + 5] = last_full.to_bytes(2, "big")
            cut = at + _HEADER + last_full
            data[cut + _HEADER : cut + _HEADER + moved] = data[cut : cut + moved]
            data[cut : cut + _HEADER] = faketls.record_header(tail)
            return cut + _HEADER + tail
        at = full * slot + 3
        data[at : at + 2] = tail.to_bytes(2, "big")
        return at + 2 + tail

    def unframe(self, n: int) -> None:
        """Undo frame(n)'s headers: all full records again for the next read (the payload windows are
        overwritten by that read, so only the headers matter)."""
        full = n // self.record
        slot = self.slot
        for i in range(max(0, full - 1), min(full + 1, len(self.windows))):
            self.data[i * slot : i * slot + _HEADER] = self.full_header

    def close(self) -> None:
        """Holds no descriptor: dropping it is enough."""


class _RawRelay:
    """DC -> client for one session. `on_bytes(n)` counts what was moved, `on_eof()` is called once the
    DC half-closed and everything before it reached the client, `on_error()` when either socket failed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dc_fd: int, client_fd: int,
                 on_bytes: Callable[[int], None], on_eof: Callable[[], None], on_error: Callable[[], None]) -> None:
        self._loop = loop
        self._dc = os.dup(dc_fd)
        try:
            self._client = os.dup(client_fd)
        except OSError:
            os.close(self._dc)
            raise
        self._on_bytes = on_bytes
        self._on_eof = on_eof
        self._on_error = on_error
        self._watching = _NOTHING
        self.closed = False
        try:
            self._watch(_DC)
        except BaseException:  # the dups must not outlive a relay that never started
            os.close(self._dc)
            os.close(self._client)
            raise

    # ---------------------------------------------------------------- readiness

    def _watch(self, what: int) -> None:
        """Wait for the DC to be readable, or for the client to be writable, or for nothing: a relay never
        needs both at once, since it reads only while it holds nothing for the client."""
        if what == self._watching:
            return
        if self._watching == _DC:
            self._loop.remove_reader(self._dc)
        elif self._watching == _CLIENT:
            self._loop.remove_writer(self._client)
        self._watching = _NOTHING
        if what == _DC:
            self._loop.add_reader(self._dc, self._readable)
        elif what == _CLIENT:
            self._loop.add_writer(self._client, self._drain)
        self._watching = what

    def _stalled(self) -> None:
        """The client is slow: keep the residue, stop reading the DC until it drains (backpressure)."""
        self._watch(_CLIENT)

    def _drained(self) -> None:
        if self._watching == _CLIENT:
            self._watch(_DC)

    def _dc_closed(self) -> None:
        self._watch(_NOTHING)
        self._on_eof()

    # ---------------------------------------------------------------- subclass work

    def _readable(self) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def take_pending(self) -> bytes:
        """The bytes read from the DC that the client has not taken yet, removed from the relay: a session
        that closes hands them to the client's transport, which flushes them (bounded by the linger)."""
        raise NotImplementedError

    def _fail(self) -> None:
        self.close()
        self._on_error()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._watch(_NOTHING)
        # unregister before closing: an epoll entry keyed on a closed dup would outlive it
        os.close(self._dc)
        os.close(self._client)
        self._release()


class SpliceRelay(_RawRelay):
    """Classic/dd: the DC's bytes go to the client through a pipe, never through user space."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Pool[Pipe], dc_fd: int, client_fd: int,
                 on_bytes: Callable[[int], None], on_eof: Callable[[], None], on_error: Callable[[], None],
                 bound: int) -> None:
        self._pool = pool
        self._pipe: Pipe | None = None  # set while it holds bytes the client has not taken
        self._queued = 0
        self._bound = bound  # --buffer-size: what may stay in the pipe for the client
        super().__init__(loop, dc_fd, client_fd, on_bytes, on_eof, on_error)

    def _readable(self) -> None:
        try:
            pipe = self._pool.shared()  # may need a new pipe: EMFILE must fail the session, not spin
            size = pipe.size
            if size > self._bound:  # what the client cannot take now stays in the pipe: at most the bound
                size = min(size, self._bound + send_space(self._client))
            n = os.splice(self._dc, pipe.w, size, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("splice from the DC failed: %s", exc)
            self._fail()
            return
        if n == 0:
            self._dc_closed()
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
            self._pool.lend(pipe)
            self._stalled()
            return
        except OSError as exc:
            log.debug("splice to the client failed: %s", exc)
            self._fail()
            return
        self._pipe = None
        self._pool.give_back(pipe)
        self._drained()

    def take_pending(self) -> bytes:
        pipe, parts = self._pipe, []
        try:
            while pipe is not None and self._queued > 0:
                chunk = os.read(pipe.r, self._queued)
                if not chunk:
                    break
                parts.append(chunk)
                self._queued -= len(chunk)
        except OSError as exc:
            log.debug("could not take the pending bytes out of the pipe: %s", exc)
        return b"".join(parts)

    def _release(self) -> None:
        if self._pipe is not None:
            if self._queued:  # residue for a client that is gone: that pipe must never be read again
                self._pool.lend(self._pipe)
                self._pipe.close()
            else:
                self._pool.give_back(self._pipe)
            self._pipe = None


class RecordRelay(_RawRelay):
    """Fake-TLS: the DC's bytes land in the payload windows of ready-made records (one readv) and the
    filled records go out in one write; only a short last record's length is patched. When the client
    cannot take everything, the residue is copied out: the shared buffer is never kept by one session, and a
    read is never larger than what the client takes now plus --buffer-size, so the copy is within the bound.

    `shaped` (--tls-records shaped): no record shorter than faketls.MIN_AEAD_RECORD. A read that short is held
    (`held`, at most 16 bytes, kept by the relay, not in the shared buffer) and goes out at the front of the
    next read's first record; if nothing follows within SHORT_WAIT it goes out alone, short."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Pool[RecordBuffer], dc_fd: int, client_fd: int,
                 on_bytes: Callable[[int], None], on_eof: Callable[[], None], on_error: Callable[[], None],
                 bound: int, shaped: bool = False, held: bytes = b"") -> None:
        self._pool = pool
        self._residue = memoryview(b"")  # framed records the client has not taken yet
        self._bound = bound  # --buffer-size: what may be copied out for the client
        # bytes the client's socket is still sure to take: what the kernel last said, less what was written
        # since (its free space only grows meanwhile), so the kernel is asked again only when that runs short
        self._credit = 0
        self._shaped = shaped
        self._short = ShortHold(loop, self._send_held)
        self._eof_pending = False  # the DC closed while the residue still held the last short record
        super().__init__(loop, dc_fd, client_fd, on_bytes, on_eof, on_error)
        if held:
            self._short.hold(held)

    def _send_held(self) -> None:
        """Nothing followed the held bytes in time: they go out as they are, one short record."""
        held = self._short.take()
        if not held or self.closed:
            return
        self._residue = memoryview(faketls.record_header(len(held)) + held)
        self._drain()
        if self._residue and not self.closed:
            self._stalled()

    def _readable(self) -> None:
        buffer = self._pool.shared()
        windows = buffer.windows
        full = len(windows) * buffer.slot
        if full > self._bound:  # records the client cannot take now are copied: at most the bound
            if self._credit + self._bound < full:
                self._credit = send_space(self._client)
            if self._credit + self._bound < full:
                windows = windows[: max(1, (self._credit + self._bound) // buffer.slot)]
        held = len(self._short.held)
        if held:  # the held bytes open the first record; the read goes in behind them
            buffer.view[_HEADER : _HEADER + held] = self._short.held
            windows = [windows[0][held:], *windows[1:]]
        try:
            n = os.readv(self._dc, windows)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("read from the DC failed: %s", exc)
            self._fail()
            return
        if n == 0:
            if held:  # the held bytes go first; the EOF follows once the client has them (_drain)
                self._eof_pending = True
                self._send_held()
                return
            self._dc_closed()
            return
        self._on_bytes(n)
        n += held
        if held:
            self._short.take()
        if self._shaped and n < faketls.MIN_AEAD_RECORD:
            self._short.hold(bytes(buffer.view[_HEADER : _HEADER + n]))
            return
        end = buffer.frame(n, self._shaped)
        sent = self._write(buffer.view[:end])
        self._credit = self._credit - sent if sent == end and self._credit > sent else 0
        if sent == end or self.closed:
            buffer.unframe(n)
            return
        self._residue = memoryview(bytes(buffer.view[sent:end]))  # framed: copied before unframe()
        buffer.unframe(n)
        self._stalled()

    def _drain(self) -> None:
        if self.closed:
            return
        sent = self._write(self._residue)
        self._residue = self._residue[sent:]
        if not self._residue and not self.closed:
            if self._eof_pending:
                self._dc_closed()
            else:
                self._drained()

    def _write(self, data: memoryview) -> int:
        """Write as much as the client takes now; fails the relay on a socket error."""
        sent, end = 0, len(data)
        try:
            while sent < end:
                sent += os.write(self._client, data[sent:])
        except BlockingIOError:
            pass
        except OSError as exc:
            log.debug("write to the client failed: %s", exc)
            self._fail()
        return sent

    def take_pending(self) -> bytes:
        pending = bytes(self._residue)
        self._residue = memoryview(b"")
        held = self._short.take()
        if held:  # the session closes: what was held goes out as it is
            pending += faketls.record_header(len(held)) + held
        return pending

    def _release(self) -> None:
        self._residue = memoryview(b"")
        self._short.take()
