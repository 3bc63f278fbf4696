"""One client connection: drive the sans-IO handshake, then relay to the DC or hand everything to the mask."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, cast

from mtproxy.config import HostPort
from mtproxy.crypto import ctr
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.cipher import Keystream
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import Authenticated, AuthResult, Handshake, NeedMore, Rejected, SecretTable

from .buffers import WRITE_LIMITS, send, socket_fd
from .guard import OutOfDescriptors
from .logs import log_reject
from .upstream import DcProtocol, MaskProtocol, open_upstream

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mtproxy.connection")

LINGER = 5.0  # seconds a closed connection may spend flushing to a slow peer


def half_close(transport: asyncio.Transport | None) -> None:
    """Pass an EOF on, never to a transport that is already closing. A shutdown request racing the
    handle's close is the suspected cause of the uvloop "double free" aborts the bench's plain relay hit
    when it propagated half-closes; the engine never reproduced them, this keeps it out of that path."""
    if transport is not None and not transport.is_closing() and transport.can_write_eof():
        transport.write_eof()


class Phase(enum.IntEnum):
    HANDSHAKE = 0
    CONNECTING = 1
    RELAY = 2
    MASK = 3
    CLOSED = 4


class ClientConnection(asyncio.BufferedProtocol):
    """Reads into one preallocated buffer; the handshake sees copies, the relay transforms in place."""

    # slots: tens of thousands of these live at once; no per-object dict
    __slots__ = ("_answered", "_buffers", "_counted", "_eof_in", "_eof_out", "_from_client", "_handshake",
                 "_seen_activity", "_table", "_task", "_timer", "_tls_reader", "_to_dc", "activity", "admitted", "fd",
                 "listener", "peer", "phase", "server", "session", "transport", "unauthenticated", "upstream")

    def __init__(self, server: Server, listener: HostPort) -> None:
        self.server = server
        self.listener = listener
        self.phase = Phase.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # the client socket, which the relay writes directly while its transport holds nothing
        self.peer: tuple[str, int] = ("?", 0)
        self.admitted = False
        self.unauthenticated = False  # counted under the unauthenticated caps (set by Server.admit)
        self.session: AuthResult | None = None
        self.upstream: DcProtocol | MaskProtocol | None = None
        self.activity = 0  # bytes moved either way; the idle timer compares it between ticks
        self._seen_activity = -1
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffers = server.buffers
        self._handshake: Handshake | None = None
        self._table: SecretTable | None = None
        self._tls_reader: faketls.TlsRecordReader | None = None
        self._from_client: Keystream  # both set when the DC leg opens, before any relaying
        self._to_dc: Keystream
        self._eof_in = False  # client sent EOF
        self._eof_out = False  # upstream sent EOF
        self._answered = False
        self._counted = False  # in the `total` counter (see Server.count_client)

    # ----------------------------------------------------------------- lifecycle

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transport class is not a subclass
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        self.fd = socket_fd(transport)
        if not self.server.admit(self, self.fd):
            self.phase = Phase.CLOSED
            transport.abort()
            return
        self.admitted = True
        transport.set_write_buffer_limits(**WRITE_LIMITS)
        self._handshake, self._table = self.server.new_handshake(self.peer[0])
        self._timer = self.server.loop.call_later(
            self.server.cfg.limits.handshake_timeout, self._on_handshake_timeout
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self.admitted:
            self.admitted = False
            self.server.release(self)

    def close(self) -> None:
        """Close both legs; pending writes are flushed by the transports."""
        if self.phase == Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.upstream is not None:
            self.upstream.stop_raw()  # first: a raw relay hands what it still holds to the client transport
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()
        self.server.session_ended(self)
        # close() flushes; a peer that never reads would keep the socket forever, so bound the linger
        up = self.upstream.transport if self.upstream is not None else None
        if (self.transport is not None and self.transport.get_write_buffer_size()) or (
            up is not None and up.get_write_buffer_size()
        ):
            self.server.loop.call_later(LINGER, self._hard_close)

    def _hard_close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()

    def abort(self) -> None:
        """Drop without flushing (removed secret, shutdown deadline)."""
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()
        self.close()

    # ----------------------------------------------------------------- reading

    def get_buffer(self, sizehint: int) -> memoryview:
        up = self.upstream
        if up is not None and up.transport is not None:  # relaying: no more than the DC (or mask) can take
            return self._buffers.offer(up.transport.get_write_buffer_size(), up.fd)
        return self._buffers.recv_in

    def buffer_updated(self, nbytes: int) -> None:
        self.activity += nbytes
        phase = self.phase
        buffers = self._buffers
        if phase == Phase.RELAY:
            self._relay_to_dc(memoryview(buffers.recv)[:nbytes])
        elif phase == Phase.MASK:
            up = self.upstream
            assert up is not None and up.transport is not None
            send(up.transport, up.fd, memoryview(buffers.recv)[:nbytes])
        elif phase == Phase.HANDSHAKE:
            self._feed_handshake(bytes(buffers.recv[:nbytes]))

    def eof_received(self) -> bool:
        self._eof_in = True
        if self.phase == Phase.HANDSHAKE:
            assert self._handshake is not None
            received = self._handshake.received
            if not received:
                self.close()
                return False
            # A probe that sent a short request and half-closed expects the site's answer now.
            self._reject(RejectReason.HANDSHAKE_EOF, received, maskable=not self._answered)
            return True
        if self.upstream is not None:
            half_close(self.upstream.transport)
        if self._eof_out or self.phase not in (Phase.RELAY, Phase.MASK, Phase.CONNECTING):
            self.close()
            return False
        self._half_closed()
        return True

    # ----------------------------------------------------------------- backpressure (client side is full)

    # (never while a raw relay runs: the client's transport buffer is not written then, and the DC
    # transport must stay paused because the raw relay reads that socket)
    def pause_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not getattr(up, "raw", None):
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.upstream
        if up is None or up.transport is None or self.phase == Phase.CLOSED or getattr(up, "raw", None):
            return
        # the low-water mark is 0: the buffer is empty now, the moment a bulk session can switch to a raw relay
        if isinstance(up, DcProtocol) and self.transport is not None and up.client_drained(self.transport):
            return
        up.transport.resume_reading()

    # ----------------------------------------------------------------- handshake

    def _feed_handshake(self, data: bytes) -> None:
        assert self._handshake is not None and self.transport is not None
        if not self._counted:
            self._counted = True
            self.server.count_client()
        step = self._handshake.feed(data, self.server.clock())
        if isinstance(step, NeedMore):
            if step.send:
                self._answered = True  # we spoke as a proxy: from now on never hand over to the mask
                self.transport.write(step.send)
            return
        if isinstance(step, Rejected):
            self._reject(step.reason, step.received, step.maskable)
            return
        assert isinstance(step, Authenticated)
        if step.send:
            self.transport.write(step.send)
        self._authenticated(step.auth)

    def _on_handshake_timeout(self) -> None:
        if self.phase != Phase.HANDSHAKE:
            return
        assert self._handshake is not None
        self._reject(RejectReason.HANDSHAKE_TIMEOUT, self._handshake.received, maskable=not self._answered)

    def _reject(self, reason: RejectReason, received: bytes, maskable: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handshake = self._table = None  # what it buffered is not needed any more
        if not self._counted:  # a silent connection that timed out
            self._counted = True
            self.server.count_client()
        self.server.counters.reject(reason)
        log_reject(self.peer, (self.listener.host, self.listener.port), reason)
        mask = self.server.mask
        if not maskable or mask is None or self.transport is None:
            self.close()
            return
        self.phase = Phase.MASK
        self.server.counters.masked += 1
        self.transport.pause_reading()
        self._task = self.server.loop.create_task(self._open_mask(mask, received))

    async def _open_mask(self, mask: HostPort, received: bytes) -> None:
        try:
            proto = await open_upstream(self.server, [mask], lambda: MaskProtocol(self))
        except OutOfDescriptors:
            self.server.guard.out_of_fds()
            self.close()
            return
        if proto is None or self.phase == Phase.CLOSED:
            self.server.counters.mask_failed += 1
            log.warning("mask %s unreachable; closing the unauthenticated connection", mask)
            self.close()
            return
        assert proto.transport is not None and self.transport is not None
        if proto.transport.get_extra_info("peername")[:2] == self.transport.get_extra_info("sockname")[:2]:
            log.error("the mask %s is this proxy itself; refusing to loop", mask)
            self.server.counters.mask_failed += 1
            proto.transport.abort()
            self.close()
            return
        self.upstream = proto
        if received:
            proto.transport.write(received)
        if self._eof_in:
            half_close(proto.transport)
        else:
            self.transport.resume_reading()
        self._start_idle_timer()

    def _authenticated(self, session: AuthResult) -> None:
        assert self.transport is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._table is not None
        table, self._handshake, self._table = self._table, None, None
        if not self.server.still_live(table, session.secret_index, session.secret_id):
            log.info("secret %s was removed during the handshake; closing", session.secret_id)
            self.close()
            return
        self.session = session
        self.server.session_authenticated(self)
        self.phase = Phase.CONNECTING
        self.transport.pause_reading()
        self._task = self.server.loop.create_task(self._open_dc(session))

    async def _open_dc(self, session: AuthResult) -> None:
        server = self.server
        target = server.dc_table.lookup(session.dc_id)
        try:
            proto = await open_upstream(server, list(target.addresses), lambda: DcProtocol(self))
        except OutOfDescriptors:
            server.guard.out_of_fds()  # our shortage, not the DC's: neither an upstream failure nor its warning
            self.close()
            return
        if proto is None or self.phase == Phase.CLOSED:
            server.counters.upstream_failed += 1
            log.warning("DC %d unreachable at %s", target.dc, ", ".join(map(str, target.addresses)))
            self.close()
            return
        assert proto.transport is not None and self.transport is not None
        link = obfs2.dc_link(session.to_client_keys, session.tag, session.dc_id, server.random_bytes,
                             fast=server.cfg.fast_mode)
        self._from_client = session.from_client
        self._to_dc = link.to_dc
        self._tls_reader = session.tls_reader
        proto.start(link, session.fake_tls)
        self.upstream = proto
        self.phase = Phase.RELAY
        pending = session.pending
        if pending:
            # what the client sent along with its handshake goes out with the DC header: one send, not two
            proto.transport.write(link.header + self._to_dc.update(self._from_client.update(pending)))
            server.count_in(self, len(pending))
        else:
            proto.transport.write(link.header)
        if self._eof_in:
            half_close(proto.transport)
        else:
            self.transport.resume_reading()
        self._start_idle_timer()

    # ----------------------------------------------------------------- relay

    def _relay_to_dc(self, data: memoryview) -> None:
        """`data` is a view of the receive buffer; the payload is decrypted and re-encrypted in that buffer."""
        up = self.upstream
        assert up is not None and up.transport is not None
        if self._tls_reader is not None:
            try:
                layout = self._tls_reader.layout(data)
            except faketls.TlsFormatError:
                log.info("client %s broke TLS framing; closing", self.peer[0])
                self.close()
                return
        else:
            layout = faketls.plain_layout(len(data))
        buffers = self._buffers
        buf = buffers.recv
        n = ctr.transform_upload(self._from_client, self._to_dc, buf, layout)
        if not n:
            return
        send(up.transport, up.fd, memoryview(buf)[:n])
        self.server.count_in(self, n)

    # ----------------------------------------------------------------- idle

    def _start_idle_timer(self) -> None:
        limits = self.server.cfg.limits
        # once either side has said it is done, the other gets a short while to finish, not the idle timeout
        timeout = limits.halfclose_timeout if self._eof_in or self._eof_out else limits.idle_timeout
        self._seen_activity = self.activity
        self._timer = self.server.loop.call_later(timeout, self._idle_tick)

    def _idle_tick(self) -> None:
        if self.phase == Phase.CLOSED:
            return
        if self.activity == self._seen_activity:
            if self._eof_in or self._eof_out:
                self.server.counters.halfclose_released += 1
                log.debug("closing half-closed connection from %s", self.peer[0])
            else:
                log.debug("closing idle connection from %s", self.peer[0])
            self.close()
            return
        self._start_idle_timer()

    def _half_closed(self) -> None:
        """Re-arm a running idle timer with the half-close timeout (none runs yet while a leg is dialled)."""
        if self._timer is not None and self.phase in (Phase.RELAY, Phase.MASK):
            self._timer.cancel()
            self._start_idle_timer()

    def upstream_eof(self) -> None:
        self._eof_out = True
        half_close(self.transport)
        if self._eof_in:
            self.close()
        else:
            self._half_closed()
