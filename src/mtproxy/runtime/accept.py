"""Accepting that pauses while the process is out of descriptors and resumes once some are free again: the
connections that arrive meanwhile wait in the kernel's listen backlog instead of being accepted and closed.

uvloop has no way to pause a server, and it owns (and closes) the socket it serves. So each listener keeps
a duplicate of its listening socket: pausing closes uvloop's server (the duplicate keeps the socket
listening, its backlog intact, the port never lost), resuming starts a new server on another duplicate.

Where the next connection would land is the lowest free descriptor (the kernel hands them out lowest
first), so the protocol factory, called for each connection uvloop has just accepted, duplicates the kept
socket and closes it again (two syscalls, well under the cost of an accept). When the next one would land
in the reserve that admitted sessions need (guard.FD_RESERVE), the factory raises AcceptPaused: uvloop
then hands the exception to the loop's handler (which ignores it) without taking the connection, and libuv,
holding a connection nobody took, stops accepting at once; closing that server right after closes the
connection in hand, which the reserve would have refused anyway. A connection accepted in the same burst
never spills over, and nothing is accepted into the EMFILE path (where libuv accepts and drops the whole
backlog). While paused, the open descriptors are counted every PAUSE_CHECK seconds (or less often, so
that counting costs under 5 % of a core); accepting resumes once RESUME_GAP more are free than the reserve
(the low-water mark; less when the limit leaves little room above what the process holds anyway)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from mtproxy.config import HostPort

from .guard import FD_RESERVE, NOTICE_INTERVAL, fd_limit
from .logs import Notice

log = logging.getLogger("mtproxy.accept")

LISTEN_BACKLOG = 1024
PAUSE_CHECK = 0.25  # seconds between two looks at the descriptors while paused
RESUME_GAP = 16  # descriptors free below the reserve before accepting resumes


class AcceptPaused(OSError):
    """Raised by the protocol factory to stop uvloop accepting (see above)."""


def open_descriptors() -> int | None:
    """How many descriptors this process has open (None without /proc)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return None


class Listener:
    """One listening socket served by uvloop, paused and resumed around descriptor exhaustion.
    `on_refused` is called for the connection in hand when a pause begins (it is closed)."""

    def __init__(self, address: HostPort, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 on_refused: Callable[[], None], read_limit: Callable[[], int] = fd_limit) -> None:
        self.address = address
        self._sock: socket.socket | None = sock  # handed to the first server, which owns it from then on
        self._keep = os.dup(sock.fileno())  # keeps the socket listening while no server holds it
        self._factory = factory
        self._on_refused = on_refused
        self._read_limit = read_limit  # the descriptor limit, read now (the guard keeps it for the admission)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._closed_server: asyncio.Server | None = None  # the last one, awaited at shutdown
        self._timer: asyncio.TimerHandle | None = None
        self._paused_at = 0.0
        self._base = 0  # descriptors open when serving began: what the process holds anyway
        self.closed = False
        self._notice = Notice(NOTICE_INTERVAL, self._report)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock, self._sock = self._sock, None
        assert sock is not None
        self._base = open_descriptors() or self._lowest_free()
        await self._serve(sock)

    async def _serve(self, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            self._server = await self._loop.create_server(self._accepted, sock=sock, backlog=LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise

    def _lowest_free(self) -> int:
        """Where the next descriptor would land (a huge number when there is none)."""
        try:
            lowest = os.dup(self._keep)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            return 1 << 30
        os.close(lowest)
        return lowest

    def _accepted(self) -> asyncio.BaseProtocol:
        """uvloop's protocol factory: a connection was just accepted, its descriptor is taken."""
        if self._lowest_free() > self._read_limit() - FD_RESERVE:
            self._pause()
            raise AcceptPaused(errno.EMFILE, "accepting paused")
        return self._factory()

    def _pause(self) -> None:
        assert self._loop is not None
        server, self._server = self._server, None
        if server is not None:  # its socket is closed already; this releases the object (after the callback)
            self._loop.call_soon(server.close)
        self._paused_at = self._loop.time()
        self._on_refused()
        self._notice.hit()
        self._timer = self._loop.call_later(PAUSE_CHECK, self._try_resume)

    def _try_resume(self) -> None:
        """Resume once the open descriptors are below the low-water mark (counted, not the lowest free
        one: closing the old server frees a low number, which says nothing about how many are free)."""
        self._timer = None
        assert self._loop is not None
        if self.closed:
            return
        started = time.monotonic()  # not loop.time(): uvloop's clock stands still within a callback
        count = open_descriptors()
        if count is None:
            count = self._lowest_free()
        pause_mark = fd_limit() - FD_RESERVE
        if count > pause_mark - min(RESUME_GAP, max(1, (pause_mark - self._base) // 4)):
            spent = time.monotonic() - started
            self._timer = self._loop.call_later(max(PAUSE_CHECK, 20 * spent), self._try_resume)
            return
        try:
            fd = os.dup(self._keep)
        except OSError:
            self._timer = self._loop.call_later(PAUSE_CHECK, self._try_resume)
            return
        self._loop.create_task(self._resume(socket.socket(fileno=fd)))

    async def _resume(self, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._serve(sock)
        except OSError as exc:
            log.debug("could not resume accepting on %s: %s", self.address, exc)
            if not self.closed:
                self._timer = self._loop.call_later(PAUSE_CHECK, self._try_resume)
            return
        if self.closed:  # shut down meanwhile
            self.close()
            return
        log.info("descriptors free again: accepting on %s resumed after %.1f s", self.address,
                 self._loop.time() - self._paused_at)

    def _report(self, count: int) -> None:
        log.warning("out of file descriptors (limit %d): accepting on %s paused %d times, new connections wait "
                    "in the listen backlog", fd_limit(), self.address, count)

    def close(self) -> None:
        """Stop accepting for good (shutdown); the kept duplicate is closed, and with it the socket."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._server is not None:
            self._server.close()
            self._closed_server, self._server = self._server, None
        if self._keep >= 0:
            os.close(self._keep)
            self._keep = -1
        self._notice.close()

    async def wait_closed(self) -> None:
        """Connections of servers closed by a pause are aborted by the shutdown like all others."""
        if self._closed_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._closed_server.wait_closed(), 1.0)
