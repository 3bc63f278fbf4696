"""SOCKS5 upstreams for the tests: Debian's dante-server run as a process, and a small SOCKS5 server written
from RFC 1928 and RFC 1929 (CONNECT only, username/password required) for the authenticated case: dante
checks its username method against the system's users, which a test should not create. The no-auth case
and the refusals (authentication included) are tested against dante itself."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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


class Dante:
    """Debian's dante-server (`danted`) as a process of the test, with a config written here: listening on
    127.0.0.1:`port`, connecting out from `external` (another loopback address, so a target can tell the
    connection came through it). `username=True` requires RFC 1929 authentication, which dante checks
    against the system's users: with no such user every login is refused."""

    def __init__(self, directory: Path, port: int, external: str = "127.0.0.2", username: bool = False) -> None:
        self.port = port
        self.config = directory / f"danted-{port}.conf"
        self.log_path = directory / f"danted-{port}.log"
        method = "username" if username else "none"
        self.config.write_text(
            "logoutput: stderr\n"
            f"internal: 127.0.0.1 port = {port}\n"
            f"external: {external}\n"
            "clientmethod: none\n"
            f"socksmethod: {method}\n"
            "user.privileged: root\n"
            "user.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("danted") is not None

    def start(self, timeout: float = 10.0) -> Dante:
        danted = shutil.which("danted")
        if danted is None:
            raise RuntimeError("danted is not installed (apt-get install dante-server; scripts/install-test-deps)")
        with open(self.log_path, "wb") as log:
            # its own session: dante forks children, and stop() ends the whole group it made
            self.proc = subprocess.Popen([danted, "-f", str(self.config), "-N", "1"], stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"danted exited with {self.proc.returncode}:\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"danted did not listen on {self.port} in {timeout} s:\n{self.log}") from None
                time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
