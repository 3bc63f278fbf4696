"""One accepted client socket from accept to close: admission, the sans-IO handshake fed what arrives, its
timeout, the reject; once authenticated the same object is the session (session.py, the base class). Only
a rejected client's transport goes over (set_protocol) to the mask (mask.py), and this object is dropped."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from mtproxy.config import HostPort
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import (
    AuthResult,
    Handshake,
    NeedMore,
    Rejected,
    ScanNeeded,
    SecretTable,
    Step,
)

from .buffers import WRITE_LIMITS, socket_fd
from .context import Context
from .logs import log_reject
from .mask import EarlyMask, MaskRelay
from .pair import Phase
from .scans import Admission
from .session import Session

log = logging.getLogger("mtproxy.connection")

# what a client waiting for its secret scan may send meanwhile before it is no longer read: an obfuscated2
# client's first requests, a fake-TLS client's records are far less
_MAX_WAITING_BYTES = 64 * 1024


class ClientConnection(Session):
    """The handshake sees copies of what is read into the loop's shared receive buffer. Phase.HANDSHAKE until
    it is over; then a session's phases (or CLOSED, also when the mask took the transport)."""

    # slots: tens of thousands of these live at once; no per-object dict
    __slots__ = ("_answered", "_counted", "_early_mask", "_handshake", "_table", "_timer", "_waiting", "listener")

    def __init__(self, ctx: Context, listener: HostPort) -> None:
        self.ctx = ctx
        self.listener = listener
        self.phase = Phase.CLOSED  # until admitted (start)
        self.up = None
        self.fd = -1
        self.peer = ("?", 0)
        self.admitted = False
        self.unauthenticated = False  # counted under the unauthenticated caps (set by Server.admit)
        self._buffers = ctx.buffers
        self._handshake: Handshake | None = None
        self._table: SecretTable | None = None
        self._timer = -1  # the handshake timeout's tick on the loop's wheel (runtime/wheel.py), -1: none
        self._answered = False
        self._counted = False  # in the `total` counter (see Server.count_client)
        self._waiting = False  # in the scan queue (scans.py)
        self._early_mask: EarlyMask | None = None  # the mask, dialled while the handshake waits for more bytes

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transport class is not a subclass
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        self.fd = socket_fd(transport)
        if not ctx.admit(self, self.fd):
            transport.abort()
            return
        self.start(transport)

    def start(self, transport: asyncio.Transport) -> None:
        """Admitted (by connection_made, or behind a balancer by proxied.py once the PROXY header named
        `peer`): the handshake and its timeout begin."""
        ctx = self.ctx
        self.transport = transport
        self.admitted = True
        self.phase = Phase.HANDSHAKE
        transport.set_write_buffer_limits(**WRITE_LIMITS)
        self._handshake, self._table = ctx.new_handshake(self.peer[0])
        self._timer = ctx.wheel.add(self, ctx.limits.handshake_timeout)

    def close(self) -> None:
        if self.phase != Phase.HANDSHAKE:
            super().close()  # a session's (nothing once closed)
            return
        self.phase = Phase.CLOSED
        self._handshake_over()
        self.transport.close()

    def _handshake_over(self) -> None:
        self._handshake = self._table = None
        self._drop_early_mask()
        self._leave_queue()
        if self._timer >= 0:
            self.ctx.wheel.discard(self, self._timer)
            self._timer = -1

    def _drop_early_mask(self) -> None:
        if self._early_mask is not None:
            self._early_mask.cancel()
            self._early_mask = None

    def _site_ended(self) -> None:
        """The site closed (or spoke on) the leg dialled early, the handshake still undecided: a client of the
        site would see that now, so it is handed over now, as at our own timeout."""
        if self.phase == Phase.HANDSHAKE and self._handshake is not None and self._early_mask is not None:
            self._reject(RejectReason.HANDSHAKE_TIMEOUT, self._handshake.received, maskable=not self._answered,
                         eof_in=False)

    def _before_relay(self, nbytes: int) -> None:
        if self.phase != Phase.HANDSHAKE:
            super()._before_relay(nbytes)  # the DC is dialled: held
            return
        handshake = self._handshake
        assert handshake is not None
        transport = self.transport
        if not self._counted:
            self._counted = True
            self.ctx.count_client()
        step = handshake.feed(bytes(self._buffers.recv[:nbytes]), self.ctx.clock())
        if self._waiting and handshake.buffered > _MAX_WAITING_BYTES:
            transport.pause_reading()  # kept for after the scan; the handshake timeout still bounds the wait
        self._step(handshake, transport, step)

    def _step(self, handshake: Handshake, transport: asyncio.Transport, step: Step) -> None:
        if isinstance(step, NeedMore):
            if step.send:
                self._answered = True  # we spoke as a proxy: from now on never hand over to the mask
                self._drop_early_mask()
                transport.write(step.send)
            elif self._early_mask is None and not self._answered:
                # undecided after what came: a real client's rest is right behind (we only dialled for
                # nothing), a prober's may never come, and the site it would be handed to starts its clock now
                mask = self.ctx.mask()
                if mask is not None:
                    self._early_mask = EarlyMask(self.ctx, mask, self._site_ended)
                    self._early_mask.start()
            return
        if isinstance(step, Rejected):
            self._reject(step.reason, step.received, step.maskable, eof_in=False)
            return
        if isinstance(step, ScanNeeded):
            self._scan_needed(handshake, transport, step.cost)
            return
        if step.send:
            transport.write(step.send)
        self._authenticated(step.auth)

    def _scan_needed(self, handshake: Handshake, transport: asyncio.Transport, cost: int) -> None:
        scans = self.ctx.scans
        admission = scans.admit(self, cost)
        if admission is Admission.NOW:
            now = self.ctx.clock()
            self._step(handshake, transport, scans.run(lambda: handshake.scan(now), cost))
        elif admission is Admission.QUEUED:
            self._waiting = True
        else:  # as if no secret matched: the prober sees the mask's answer to what it sent
            self._reject(RejectReason.SCAN_BUSY, handshake.received, maskable=True, eof_in=False)

    def scan_granted(self) -> None:
        """The scheduler's turn for this handshake (scans.py)."""
        self._waiting = False
        handshake, transport = self._handshake, self.transport
        if handshake is None or self.phase != Phase.HANDSHAKE:
            return
        transport.resume_reading()
        self._step(handshake, transport, handshake.scan(self.ctx.clock()))

    def _leave_queue(self) -> None:
        if self._waiting:
            self._waiting = False
            self.ctx.scans.leave(self)

    def eof_received(self) -> bool:
        if self.phase != Phase.HANDSHAKE:
            return super().eof_received()
        assert self._handshake is not None
        received = self._handshake.received
        if not received:
            self.close()
            return False
        # A probe that sent a short request and half-closed expects the site's answer now.
        self._reject(RejectReason.HANDSHAKE_EOF, received, maskable=not self._answered, eof_in=True)
        return True

    def expired(self) -> None:
        """The handshake timeout (the wheel's)."""
        self._timer = -1
        if self.phase == Phase.HANDSHAKE and self._handshake is not None:
            # still waiting for its scan: the budget ran out for it, not the client's bytes
            reason = RejectReason.SCAN_BUSY if self._waiting else RejectReason.HANDSHAKE_TIMEOUT
            self._reject(reason, self._handshake.received, maskable=not self._answered, eof_in=False)

    def _reject(self, reason: RejectReason, received: bytes, maskable: bool, *, eof_in: bool) -> None:
        ctx = self.ctx
        if not self._counted:  # a silent connection that timed out
            self._counted = True
            ctx.count_client()
        ctx.counters.reject(reason)
        log_reject(self.peer, (self.listener.host, self.listener.port), reason)
        mask = ctx.mask()
        if not maskable or mask is None or self.phase != Phase.HANDSHAKE:
            self.close()
            return
        ctx.counters.masked += 1
        # the rare path: the mask relay becomes the socket's protocol (paused until its leg is up) and its
        # entry in the registry; this object is done
        transport = self.transport
        relay = MaskRelay(ctx, transport, self.fd, self.peer, eof_in)
        transport.pause_reading()
        transport.set_protocol(relay)
        ctx.hand_over(self, relay)
        self.admitted = False
        self.phase = Phase.CLOSED
        early, self._early_mask = self._early_mask, None
        self._handshake_over()
        relay.open(mask, received, self.listener, early)

    def _our_address(self) -> tuple[str, int]:
        # behind a balancer the PROXY header's destination (proxied.py made it the listener): the address the
        # client really connected to, not the loopback hop
        listener = self.listener
        if listener.host not in ("", "0.0.0.0", "::"):
            return listener.host, listener.port
        return super()._our_address()

    def _authenticated(self, auth: AuthResult) -> None:
        """From here on this is the session: the same protocol, the same registry entry, still read."""
        ctx = self.ctx
        table = self._table
        assert table is not None
        if not ctx.still_live(table, auth.secret_index, auth.secret_id):
            log.info("secret %s was removed during the handshake; closing", auth.secret_id)
            self.close()
            return
        grant = ctx.enforcer.open(auth.secret_id, self.peer, (self.listener.host, self.listener.port))
        if grant is None:  # the secret's limits refuse it (logged and counted by the enforcer)
            self.close()
            return
        self._handshake_over()
        self._open(auth, grant)
        ctx.authenticated(self, auth)
        self.connect(auth)
