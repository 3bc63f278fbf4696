"""A small SOCKS5 server written from RFC 1928 and RFC 1929 (CONNECT only, username/password required),
for the tests' authenticated upstream: Debian's dante checks its username method against the system's
users, which a test should not create. The no-auth case and the refusals are tested against dante itself."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass

from .servers import _Listening

_TIMEOUT = 10.0


@dataclass
class SocksServer(_Listening):
    """Accepts `username`/`password` (method 2) only; dials the target from `source` (a loopback address
    other than the client's, so the target can tell who connected) and relays both ways."""

    username: bytes
    password: bytes
    source: str = "127.0.0.3"
    connects: int = 0
    rejected: int = 0
    server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        return await self._listen(self._handle, host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.wait_for(self._serve(reader, writer), 60)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read(n: int) -> bytes:
            return await asyncio.wait_for(reader.readexactly(n), _TIMEOUT)

        version, count = await read(2)
        methods = await read(count)
        if version != 5 or 2 not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(b"\x05\x02")
        auth_version, ulen = await read(2)
        username = await read(ulen)
        password = await read((await read(1))[0])
        if auth_version != 1 or (username, password) != (self.username, self.password):
            self.rejected += 1
            writer.write(b"\x01\x01")
            return
        writer.write(b"\x01\x00")
        _version, command, _reserved, atyp = await read(4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(await read(4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(await read(16)))
        else:
            host = (await read((await read(1))[0])).decode()
        port = int.from_bytes(await read(2), "big")
        if command != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            return
        try:
            target_reader, target_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(self.source, 0)), _TIMEOUT)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            return
        self.connects += 1
        bound_host, bound_port = target_writer.get_extra_info("sockname")[:2]
        writer.write(b"\x05\x00\x00\x01" + ipaddress.IPv4Address(bound_host).packed + bound_port.to_bytes(2, "big"))
        try:
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        finally:
            target_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
