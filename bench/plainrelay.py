"""Baseline: a plain TCP relay with no crypto, written the way the engine is (uvloop, asyncio.Protocol,
pause/resume backpressure). Its CPU per GB is the floor of relaying bytes through a Python process."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import uvloop

from bench.fakedc import listening_socket, raise_nofile

HIGH_WATER = 256 * 1024
PENDING_LIMIT = 1024 * 1024  # client bytes held while the upstream connect is in flight


class Half(asyncio.Protocol):
    """One side of a relayed pair; what it receives is written to `peer`'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    # Backpressure: our write buffer is full, so stop reading from the peer that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        # Close both legs on EOF instead of passing the half-close on: with write_eof() propagated both
        # ways, uvloop 0.23 aborted ("double free or corruption") in 3 of 7 runs of 3,000 handshakes
        # (client closes right after its echo); without it, 0 of 6. The bench never half-closes.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class ClientSide(Half):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self._upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(loop.create_connection(Half, *self._upstream), 10)
        except (OSError, TimeoutError):
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending.clear()
        self.transport.resume_reading()


async def serve(host: str, port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(lambda: ClientSide(upstream), sock=listening_socket(host, port))
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the fake DC")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    raise_nofile()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, (host, int(port))))


if __name__ == "__main__":
    main()
