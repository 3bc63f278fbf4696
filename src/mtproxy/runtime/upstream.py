"""The proxy's outgoing legs: the DC (fast mode: bytes forwarded untouched) and the mask site (verbatim)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from mtproxy.config import HostPort
from mtproxy.protocol import faketls
from mtproxy.protocol.cipher import Keystream
from mtproxy.protocol.obfs2 import DcLink

from . import rawrelay
from .buffers import WRITE_LIMITS, send, socket_fd
from .guard import OutOfDescriptors, is_fd_exhaustion

if TYPE_CHECKING:
    from .connection import ClientConnection
    from .server import Server

log = logging.getLogger("mtproxy.upstream")

_HEADER = faketls.RECORD_HEADER_SIZE
_MAX_RECORD = faketls.MAX_RECORD_PAYLOAD

P = TypeVar("P", bound="_Leg")


async def open_upstream(server: Server, addresses: list[HostPort], factory: Callable[[], P]) -> P | None:
    """Dial the addresses in order, each bounded by the connect timeout; None when none answers.
    Raises OutOfDescriptors when this process has none left: no address is to blame for that."""
    for address in addresses:
        try:
            async with asyncio.timeout(server.cfg.limits.connect_timeout):  # no extra task, unlike wait_for
                _, proto = await server.loop.create_connection(factory, address.host, address.port)
        except TimeoutError as exc:
            log.debug("connect to %s failed: %s", address, exc)
            continue
        except OSError as exc:
            if is_fd_exhaustion(exc):
                raise OutOfDescriptors(str(exc)) from None
            log.debug("connect to %s failed: %s", address, exc)
            continue
        return proto
    return None


class _Leg(asyncio.BufferedProtocol):
    """Shared plumbing of an outgoing leg tied to one client connection."""

    __slots__ = ("_buffers", "client", "fd", "transport")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # this leg's socket, written directly while its transport holds nothing (buffers.send)
        self._buffers = client.server.buffers

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transport class is not a subclass
        self.transport = transport
        self.fd = socket_fd(transport)
        transport.set_write_buffer_limits(**WRITE_LIMITS)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_raw()
        self.transport = None
        self.client.close()

    def stop_raw(self) -> None:
        """Only the DC leg has a raw relay; see DcProtocol."""

    def close(self) -> None:
        self.stop_raw()
        if self.transport is not None:
            # keep reading (and dropping) so a peer blocked on writing to us can take our last bytes
            self.transport.resume_reading()
            self.transport.close()

    def eof_received(self) -> bool:
        self.client.upstream_eof()
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        client = self.client.transport
        if client is not None:  # no more than the client can take
            return self._buffers.offer(client.get_write_buffer_size(), self.client.fd, self._framed())
        return self._buffers.recv_in

    def _framed(self) -> bool:
        """Whether what is read here reaches the client as fake-TLS records (a header per 16 KiB)."""
        return False

    # Backpressure: this leg's write buffer is full, so stop reading the client.
    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.resume_reading()


class MaskProtocol(_Leg):
    """Mask site -> client, byte for byte."""

    __slots__ = ()

    def buffer_updated(self, nbytes: int) -> None:
        client = self.client.transport
        if client is None or client.is_closing():
            return
        self.client.activity += nbytes
        send(client, self.client.fd, memoryview(self._buffers.recv)[:nbytes])


class DcProtocol(_Leg):
    """DC -> client. Fast mode forwards the DC's bytes (already encrypted for the client) untouched;
    fake-TLS only wraps them into application-data records of at most 16384 bytes."""

    __slots__ = ("_from_dc", "_relayed", "_tls", "_to_client", "raw")

    def __init__(self, client: ClientConnection) -> None:
        super().__init__(client)
        self._from_dc: Keystream | None = None
        self._to_client: Keystream | None = None
        self._tls = False
        self._relayed = 0  # DC->client bytes through the transport, until a raw relay takes over
        self.raw: rawrelay.SpliceRelay | rawrelay.RecordRelay | None = None

    def _framed(self) -> bool:
        return self._tls

    def start(self, link: DcLink, tls: bool) -> None:
        self._from_dc = link.from_dc
        self._to_client = link.to_client
        self._tls = tls

    def buffer_updated(self, nbytes: int) -> None:
        client = self.client.transport
        if client is None or client.is_closing():
            return
        self.client.activity += nbytes
        buffers = self._buffers
        data = memoryview(buffers.recv)[:nbytes]
        if self._from_dc is not None:
            # not fast mode: decrypt what the DC sent, re-encrypt for the client below
            self._from_dc.update_into(data, buffers.tmp)
            data = memoryview(buffers.tmp)[:nbytes]
        if self._tls:
            pos = 0
            view = memoryview(buffers.out)
            for start in range(0, nbytes, _MAX_RECORD):
                chunk = data[start : start + _MAX_RECORD]
                size = len(chunk)
                view[pos : pos + 3] = faketls.APPLICATION_DATA
                view[pos + 3 : pos + 5] = size.to_bytes(2, "big")
                pos += _HEADER
                if self._to_client is not None:
                    self._to_client.update_into(chunk, view[pos:])
                else:
                    view[pos : pos + size] = chunk
                pos += size
            send(client, self.client.fd, view[:pos])
            if self._to_client is None:
                self._count_towards_raw(client, nbytes)
        elif self._to_client is not None:
            self._to_client.update_into(data, buffers.out)
            send(client, self.client.fd, memoryview(buffers.out)[:nbytes])
        else:  # fast mode: the DC's bytes are already what the client expects
            send(client, self.client.fd, data)
            self._count_towards_raw(client, nbytes)
        self.client.server.count_out(self.client, nbytes)

    # ---------------------------------------------------------------- raw relay (fast mode)

    def _count_towards_raw(self, client: asyncio.Transport, nbytes: int) -> None:
        self._relayed += nbytes
        self.client_drained(client)

    def client_drained(self, client: asyncio.Transport) -> bool:
        """Switch to a raw relay if this fast-mode session is due and the client's transport holds nothing
        (a backlogged client gets here from resume_writing once its buffer is empty). True if switched."""
        if self.raw is not None or self._relayed < rawrelay.RAW_AFTER or client.get_write_buffer_size():
            return False
        if not (rawrelay.RECORDS_AVAILABLE if self._tls else rawrelay.SPLICE_AVAILABLE):
            return False
        self._start_raw(client)
        return self.raw is not None

    def _start_raw(self, client: asyncio.Transport) -> None:
        """A bulk session: hand DC->client to a raw relay (splice, or record-framed reads for fake-TLS).
        Only with the client's write buffer empty, since from now on the client socket is written beside
        its transport."""
        assert self.transport is not None
        server = self.client.server
        dc_fd = self.fd
        client_fd = self.client.fd
        try:
            bound = server.cfg.limits.buffer_size
            if self._tls:
                self.raw = rawrelay.RecordRelay(server.loop, server.record_buffers, dc_fd, client_fd,
                                                self._raw_bytes, self.client.upstream_eof, self.client.close, bound)
            else:
                self.raw = rawrelay.SpliceRelay(server.loop, server.pipes, dc_fd, client_fd,
                                                self._raw_bytes, self.client.upstream_eof, self.client.close, bound)
        except OSError as exc:  # out of descriptors: the transport path goes on
            log.debug("raw relay unavailable: %s", exc)
            self._relayed = -(1 << 62)
            return
        self.transport.pause_reading()

    def _raw_bytes(self, n: int) -> None:
        self.client.activity += n
        self.client.server.count_out(self.client, n)

    def stop_raw(self) -> None:
        raw, self.raw = self.raw, None
        if raw is None:
            return
        client = self.client.transport
        if client is not None and not client.is_closing():
            pending = raw.take_pending()  # whole records (fake-TLS) the client is still owed
            if pending:
                client.write(pending)
        raw.close()
