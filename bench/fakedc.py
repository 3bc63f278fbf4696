"""A fake Telegram DC for benchmarks: reads the obfuscated2 header and the bench command, then sinks,
sources or echoes; also a tiny mask site. Runs as its own process(es) so its CPU is not the proxy's.

Two kinds of client stream: the raw one (the command right after the header, then bytes), and the relay
path's (a fake middle-proxy relay in between): intermediate frames, the first carrying the command
(bench/wire.py `command_packet`); answers then go back as frames too, bulk ones in packets."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import sys
from typing import cast

import uvloop

from bench import wire
from mtproxy.protocol import obfs2
from mtproxy.protocol.cipher import Keystream

HEAD_SIZE = obfs2.INIT_SIZE + wire.COMMAND_SIZE
RECV_SIZE = 256 * 1024
SOURCE_CHUNK = 256 * 1024
_SOURCE_BUFFER = memoryview(os.urandom(SOURCE_CHUNK))
HIGH_WATER = 1024 * 1024
# One receive buffer for the whole process: data is consumed inside buffer_updated, and a buffer per
# connection would cost 256 KB x 50,000 idle sessions.
_RECV = memoryview(bytearray(RECV_SIZE))


class DcProtocol(asyncio.BufferedProtocol):
    """One upstream connection. Bulk bytes are never decrypted: only the header, the command, the GO
    byte and echo traffic are, so the fake DC stays cheap beside the proxy under test."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._head_need = HEAD_SIZE
        self._head_plain = bytearray()
        self._init: obfs2.DecodedInit | None = None
        self._framed = False  # the relay path: intermediate frames
        self._packet_size = 0
        self._packets: list[int] = []
        self._transport: asyncio.Transport | None = None
        self._mode = 0
        self._count = 0
        self._seen = 0
        self._decrypt: Keystream | None = None
        self._encrypt: Keystream | None = None
        self._to_send = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport.set_write_buffer_limits(HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV

    def buffer_updated(self, nbytes: int) -> None:
        data = _RECV[:nbytes]
        if self._mode == 0:
            rest = self._read_head(data)
            if rest is None or not rest:
                return
            data = rest
        if self._mode == wire.MODE_SINK:
            self._seen += len(data)
            if self._seen >= self._count and self._count:
                self._count = 0  # report once
                self._write(self._encrypt_bytes(self._frame(wire.DONE_PACKET) if self._framed else wire.DONE))
        elif self._mode == wire.MODE_ECHO:
            assert self._decrypt is not None
            self._write(self._encrypt_bytes(self._decrypt.update(data)))
        elif self._mode == wire.MODE_SOURCE and self._decrypt is not None:
            if self._framed:  # the GO packet: any byte starts the packets (its frame is not decrypted)
                self._decrypt = None
                self._packets = wire.packet_sizes(self._count, self._packet_size)[::-1]
                self._pump_packets()
            elif self._decrypt.update(data[:1]) == wire.GO:
                self._decrypt = None
                self._to_send = self._count
                self._pump()

    def _read_head(self, data: memoryview) -> memoryview | None:
        """Collect the header and the command (raw: 16 bytes; framed: the whole first frame); the bytes after
        it, or None while it is incomplete or when it was bad (the connection is then aborted)."""
        while True:
            take = self._head_need - len(self._head)
            self._head += data[:take]
            data = data[take:]
            if len(self._head) < self._head_need:
                return None
            if self._init is None:
                self._init = obfs2.decode_init(bytes(self._head[: obfs2.INIT_SIZE]), None, wire.LOAD_SIDE_AES)
                if self._init is None:
                    self._bad()
                    return None
            start = obfs2.INIT_SIZE + len(self._head_plain)
            self._head_plain += self._init.from_initiator.update(bytes(self._head[start:]))
            plain = self._head_plain
            if plain[:4] == wire.MAGIC:
                parsed = wire.parse_command(bytes(plain[: wire.COMMAND_SIZE]))
                reply = wire.READY
            else:  # the relay path: an intermediate frame whose packet starts with the command
                length = int.from_bytes(plain[:4], "little")
                if not wire.MIN_PACKET <= length <= 4096 or length % 4:
                    self._bad()
                    return None
                if len(plain) < 4 + length:
                    self._head_need = obfs2.INIT_SIZE + 4 + length
                    continue
                packet = bytes(plain[4 : 4 + length])
                parsed = wire.parse_command(packet[: wire.COMMAND_SIZE])
                self._framed = True
                self._packet_size = wire.PACKET_SIZE_FIELD.unpack_from(packet, wire.COMMAND_SIZE)[0]
                reply = self._frame(wire.ready_answer(packet))
            if parsed is None:
                self._bad()
                return None
            self._mode, self._count = parsed
            self._decrypt = self._init.from_initiator
            self._encrypt = self._init.to_initiator.new_cipher()
            self._write(self._encrypt_bytes(reply))
            return data

    def _bad(self) -> None:
        assert self._transport is not None
        print("fakedc: bad header or command (the proxy's DC leg is wrong)", file=sys.stderr, flush=True)
        self._transport.abort()
        self._mode = -1

    @staticmethod
    def _frame(packet: bytes) -> bytes:
        return len(packet).to_bytes(4, "little") + packet

    def _encrypt_bytes(self, data: bytes) -> bytes:
        assert self._encrypt is not None
        return self._encrypt.update(data)

    def _write(self, data: bytes | memoryview) -> None:
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.write(data)

    def _pump(self) -> None:
        assert self._transport is not None
        while self._to_send > 0 and not self._paused and not self._transport.is_closing():
            n = min(self._to_send, SOURCE_CHUNK)
            self._transport.write(_SOURCE_BUFFER[:n])
            self._to_send -= n

    def _pump_packets(self) -> None:
        """Source mode on the relay path: each packet in an intermediate frame, encrypted (the relay reads
        the frames), so unlike the raw stream this costs the fake DC an AES pass."""
        assert self._transport is not None and self._encrypt is not None
        while self._packets and not self._paused and not self._transport.is_closing():
            size = self._packets.pop()
            self._transport.write(self._encrypt.update(size.to_bytes(4, "little")))
            self._transport.write(self._encrypt.update(wire.packet_body(size)))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._framed:
            self._pump_packets()
        else:
            self._pump()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class MaskProtocol(asyncio.Protocol):
    """Stands in for the real site behind the proxy: answers any request with a small HTTP page."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        body = b"<html>mask</html>"
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self._transport.close()


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listening_socket(host: str, port: int) -> socket.socket:
    # SO_REUSEPORT lets several fake DC processes share one port, so 50,000 sessions fit under the
    # per-process descriptor limit.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int, mask_port: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    servers = [await loop.create_server(DcProtocol, sock=listening_socket(host, port))]
    if mask_port is not None:
        servers.append(await loop.create_server(MaskProtocol, sock=listening_socket(host, mask_port)))
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mask-port", type=int)
    args = parser.parse_args(argv)
    raise_nofile()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, args.mask_port))


if __name__ == "__main__":
    main()
