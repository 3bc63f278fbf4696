"""An asyncio MTProxy client (classic, dd, ee) over the sans-IO client core; bounded waits everywhere."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass

from mtproxy.crypto.backend import openssl_ctr
from mtproxy.protocol import client as core
from mtproxy.protocol.cipher import Aes
from mtproxy.protocol.secret import Secret, SecretKind

DEFAULT_TIMEOUT = 10.0
# The test peers' AES: OpenSSL's CTR through `cryptography` (it opens no library), an independent control for
# whichever backend the engine under test chose.
PEER_AES = openssl_ctr(why="the test peers run OpenSSL's CTR")


class ProxyClientError(Exception):
    """The proxy did not behave like an MTProxy for this secret (closed, bad flight, timeout)."""


@dataclass
class ProxyClient:
    """A connected, authenticated client; `send`/`recv_exactly` carry plaintext payload."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: core.ClientConnection
    timeout: float
    _inbox: bytearray

    async def send(self, payload: bytes) -> None:
        self.writer.write(self.conn.encrypt(payload))
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def recv_exactly(self, n: int) -> bytes:
        while len(self._inbox) < n:
            chunk = await asyncio.wait_for(self.reader.read(1 << 18), self.timeout)
            if not chunk:
                raise ProxyClientError(f"closed after {len(self._inbox)} of {n} bytes")
            self._inbox += self.conn.decrypt(chunk)
        out = bytes(self._inbox[:n])
        del self._inbox[:n]
        return out

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), self.timeout)
        except (OSError, TimeoutError):
            pass


def secret_for_mode(secret: Secret, mode: str, domain: str | None = None) -> Secret:
    """The same 16-byte key presented as a classic, dd or ee secret."""
    if mode == "classic":
        return Secret(secret.key, SecretKind.CLASSIC)
    if mode == "dd":
        return Secret(secret.key, SecretKind.PADDED)
    return Secret(secret.key, SecretKind.FAKE_TLS, domain or secret.domain or "example.com")


async def open_client(
    host: str,
    port: int,
    secret: Secret,
    *,
    dc_id: int = 2,
    tag: bytes | None = None,
    now: float | None = None,
    domain: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rcvbuf: int | None = None,
    source: str | None = None,
    aes: Aes = PEER_AES,
) -> ProxyClient:
    """Connect and authenticate. For ee, waits for and verifies the server flight. `rcvbuf` sets the socket's
    receive buffer before connecting (a small one makes a slow mobile-like reader: the proxy backlogs);
    `source` the client's own address (another loopback address is another client as the proxy sees it)."""
    conn = core.ClientConnection(secret, os.urandom, time.time() if now is None else now, aes=aes,
                                 tag=tag, dc_id=dc_id, domain=domain)
    if rcvbuf is None and source is None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            if source is not None:
                sock.bind((source, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
    writer.write(conn.first_bytes())
    inbox = bytearray()
    try:
        while not conn.ready:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                raise ProxyClientError("the proxy closed during the handshake")
            inbox += conn.feed_handshake(chunk)
    except BaseException:
        writer.close()
        raise
    return ProxyClient(reader, writer, conn, timeout, inbox)


async def send_raw(host: str, port: int, data: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                   half_close: bool = True) -> bytes:
    """Send bytes as a prober would, optionally half-close, and return everything the server answers."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), timeout)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
