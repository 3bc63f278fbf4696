"""Fake Telegram DCs (echo, sink, source) speaking the DC side of obfuscated2, and a mask-site stub."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mtproxy.protocol import obfs2
from mtproxy.protocol.cipher import Aes

from .client import PEER_AES

MASK_BANNER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nmask-site "


class _Listening:
    """What every stand-in server shares: listen on loopback, report the port, and on close end every
    connection it still serves (asyncio.Server.close leaves them open), all within a bound."""

    server: asyncio.Server | None
    _handlers: set[asyncio.Task[None]]
    _writers: set[asyncio.StreamWriter]

    async def _listen(self, handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                      host: str, port: int, **kwargs: Any) -> int:
        self._handlers, self._writers = set(), set()

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            self._writers.add(writer)
            try:
                await handle(reader, writer)
            finally:
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 2)
                self._handlers.discard(task)

        self.server = await asyncio.start_server(tracked, host, port, **kwargs)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self._writers):
            writer.close()  # the handler's next read sees the end; its finally closes the rest
        handlers = list(self._handlers)
        if handlers:
            _done, late = await asyncio.wait(handlers, timeout=2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)


@dataclass
class FakeDc(_Listening):
    """Accepts the proxy's obfuscated2 header (no secret on this leg) and then, by `mode`:
    echo (returns what it got), sink (counts), source (sends `source_bytes` then waits),
    stall (reads nothing more: a DC that stopped reading; ends on `release_stalled`, close, or after 60 s)."""

    mode: str = "echo"
    source_bytes: int = 0
    dc_ids: list[int] = field(default_factory=list)
    received: int = 0
    connections: int = 0
    peers: list[str] = field(default_factory=list)  # the address each connection came from
    server: asyncio.Server | None = None
    aes: Aes = PEER_AES
    _stalled: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        return await self._listen(self._handle, host, port)

    def release_stalled(self) -> None:
        """End every stalled connection now (from the loop's thread)."""
        self._stalled.set()
        self._stalled = asyncio.Event()

    async def close(self) -> None:
        self.release_stalled()
        await super().close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peers.append(str(writer.get_extra_info("peername")[0]))
        try:
            init = await asyncio.wait_for(reader.readexactly(obfs2.INIT_SIZE), 10)
            decoded = obfs2.decode_init(init, None, self.aes)
            if decoded is None:
                return
            self.dc_ids.append(decoded.dc_id)
            decrypt = decoded.from_initiator
            encrypt = decoded.to_initiator.new_cipher()
            if self.mode == "stall":
                await asyncio.wait_for(self._stalled.wait(), 60)
                return
            if self.mode == "source":
                block = bytes(range(256)) * 256
                left = self.source_bytes
                while left > 0:
                    chunk = block[: min(left, len(block))]
                    writer.write(encrypt.update(chunk))
                    await writer.drain()
                    left -= len(chunk)
            while True:
                data = await asyncio.wait_for(reader.read(1 << 18), 60)
                if not data:
                    return
                self.received += len(data)
                plain = decrypt.update(data)
                if self.mode == "echo":
                    writer.write(encrypt.update(plain))
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            writer.close()



@dataclass
class MaskStub(_Listening):
    """Stands in for the real web site: answers MASK_BANNER to the first bytes, records every byte until the
    peer half-closes, then sends the sha256 of what it got and closes. With `close_after_banner` it closes
    right after the banner, as a site answering one request with `Connection: close` does."""

    received: list[bytes] = field(default_factory=list)
    close_after_banner: bool = False
    server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        return await self._listen(self._handle, host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                if not chunk:
                    break
                if not data:
                    writer.write(MASK_BANNER)  # answer at once, as a site would; clients fail fast
                data += chunk
                if self.close_after_banner:
                    await writer.drain()
                    break
            if not data:
                writer.write(MASK_BANNER)
            if not self.close_after_banner:
                writer.write(hashlib.sha256(data).hexdigest().encode())
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            self.received.append(bytes(data))
            writer.close()



def expected_mask_reply(sent: bytes) -> bytes:
    return MASK_BANNER + hashlib.sha256(sent).hexdigest().encode()


def self_signed_context(host: str, extra_names: int = 0) -> ssl.SSLContext:
    """A TLS 1.3 server context with a fresh self-signed certificate; `extra_names` SANs grow the flight."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(host)] + [x509.DNSName(f"n{i}.{host}") for i in range(extra_names)]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


@dataclass
class TlsSite(_Listening):
    """A real TLS 1.3 web site stand-in, for learning the certificate flight size."""

    context: ssl.SSLContext
    handshakes: int = 0
    server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        return await self._listen(self._handle, host, port, ssl=self.context, ssl_handshake_timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()

