"""A listener's connections behind a load balancer (--proxy-protocol: HAProxy with send-proxy or
send-proxy-v2): each must open with a PROXY protocol header, from a trusted address, naming the real client.

This protocol runs first: admitted under the caps that need no client address, it reads the header
(protocol/proxyheader.py decides v1 or v2), then makes the ClientConnection for the client the header
names, admits it under the per-IP caps and hands the transport over; the bytes after the header are that
connection's first read. From there on the client's address is the peer everywhere (caps, hints, limits,
logs). Anything else (an untrusted source, a missing, broken, oversized or late header) is refused: logged
on a line the fail2ban filter does not count (the peer is the balancer), counted, and closed, never masked
(the bytes are not a client's). A LOCAL header (the balancer's health check), or a connection that closes
without a byte, is closed quietly and is no client."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import cast

from mtproxy.config import HostPort
from mtproxy.protocol import proxyheader
from mtproxy.protocol.errors import ProxyHeaderError, RejectReason

from .buffers import socket_fd
from .connection import ClientConnection
from .context import Context
from .logs import log_refused_connection

_HEADER_STARTS = (proxyheader.V1_PREFIX[0], proxyheader.V2_SIGNATURE[0])


class ProxiedConnection(asyncio.BufferedProtocol):
    """One accepted socket until its PROXY header is read."""

    __slots__ = ("_received", "_timer", "admitted", "ctx", "fd", "listener", "peer", "transport", "unauthenticated")

    def __init__(self, ctx: Context, listener: HostPort) -> None:
        self.ctx = ctx
        self.listener = listener
        self.transport: asyncio.Transport | None = None  # None again once closed or handed over
        self.fd = -1
        self.peer: tuple[str, int] = ("?", 0)  # the balancer
        self.admitted = False
        self.unauthenticated = False  # counted under the unauthenticated caps (Server.admit_pending)
        self._received = b""  # a header split over reads
        self._timer = -1  # the header's timeout on the loop's wheel (runtime/wheel.py), -1: none

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transport class is not a subclass
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        if not self._trusted():
            self._count(RejectReason.PROXY_UNTRUSTED, f"{self.peer[0]} is not a --trusted-proxy address")
            transport.abort()
            return
        self.fd = socket_fd(transport)
        if not ctx.admit_pending(self, self.fd):
            transport.abort()
            return
        self.transport = transport
        self.admitted = True
        self._timer = ctx.wheel.add(self, ctx.limits.handshake_timeout)

    def _trusted(self) -> bool:
        try:
            address = ipaddress.ip_address(self.peer[0])
        except ValueError:
            return False
        return any(address in network for network in self.ctx.trusted)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self.admitted:
            self.admitted = False
            self.ctx.release_pending(self)

    def close(self) -> None:
        transport, self.transport = self.transport, None
        self._received = b""
        if self._timer >= 0:
            self.ctx.wheel.discard(self, self._timer)
            self._timer = -1
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        """Drop at once (shutdown deadline)."""
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.ctx.buffers.recv_in

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None:
            return
        data = self._received + self.ctx.buffers.recv[:nbytes]
        try:
            header = proxyheader.parse(data)
        except ProxyHeaderError as exc:
            missing = data[0] not in _HEADER_STARTS
            self._refuse(RejectReason.PROXY_HEADER_MISSING if missing else RejectReason.PROXY_HEADER_MALFORMED,
                         str(exc))
            return
        if isinstance(header, proxyheader.NeedMore):
            self._received = data
            return
        if header.command is proxyheader.Command.LOCAL:  # the balancer's health check
            self.close()
            return
        self._hand_over(header, data[header.consumed:])

    def eof_received(self) -> bool:
        if self._received:
            self._refuse(RejectReason.PROXY_HEADER_MALFORMED,
                         f"closed after {len(self._received)} bytes of a PROXY header")
        else:
            self.close()  # a port check that connected and closed
        return False

    def expired(self) -> None:
        """The header's timeout (the wheel's)."""
        self._timer = -1
        self._refuse(RejectReason.PROXY_HEADER_TIMEOUT,
                     f"no complete PROXY header in {self.ctx.limits.handshake_timeout:g} s")

    def _count(self, reason: RejectReason, detail: str) -> None:
        ctx = self.ctx
        ctx.count_client()
        ctx.counters.reject(reason)
        log_refused_connection(self.peer, (self.listener.host, self.listener.port), reason, detail)

    def _refuse(self, reason: RejectReason, detail: str) -> None:
        self._count(reason, detail)
        self.close()

    def _hand_over(self, header: proxyheader.ProxyHeader, rest: bytes) -> None:
        """The client the header names (or, for an address-less header, the balancer's own) takes over."""
        ctx, transport = self.ctx, self.transport
        assert transport is not None
        client, destination = header.client, header.destination
        conn = ClientConnection(ctx, self.listener if destination is None else
                                HostPort(destination.host, destination.port))
        conn.peer = self.peer if client is None else (client.host, client.port)
        conn.fd = self.fd
        if not ctx.admit_proxied(self, conn):  # the client's per-IP caps (counted there)
            self.close()
            return
        self.admitted = False
        self.transport = None
        self._received = b""
        if self._timer >= 0:
            self.ctx.wheel.discard(self, self._timer)
            self._timer = -1
        transport.set_protocol(conn)
        conn.start(transport)
        if rest:  # the client's first bytes came with the header: its first read, from the shared buffer
            ctx.buffers.recv[:len(rest)] = rest
            conn.buffer_updated(len(rest))
