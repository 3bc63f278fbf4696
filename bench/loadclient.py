"""Load client worker: opens sessions (raw, classic, dd or ee) to a target, then runs one phase
(bulk upload/download, latency pings, handshake churn, or idle hold) and prints JSON lines.
The orchestrator (bench.loadtool) starts several of these and steers them over stdin.

With `packet_size` in the job the sessions speak MTProto transport packets (the relay path: a middle proxy
forwards packets, not bytes; bench/wire.py): bulk goes as packets of that size, pings and the handshake's
echo as small packets, and everything received is decrypted and split into packets."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import sys
import time
from collections import deque
from typing import Any, cast

import uvloop

from bench import wire
from bench.fakedc import raise_nofile
from mtproxy.protocol import client, faketls, obfs2
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.secret import Secret

RECV = memoryview(bytearray(256 * 1024))  # one receive buffer per process: data is consumed synchronously
CHUNK = 256 * 1024
_RANDOM = os.urandom(CHUNK)
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: share source ports across destinations
PING_SIZE = 32
CONNECT_TIMEOUT = 30.0


def _framed_block() -> tuple[bytes, int]:
    """A block of client records (2878-byte payloads, like real clients) and its payload size."""
    records = CHUNK // (wire.CLIENT_RECORD_PAYLOAD + 5)
    payload = records * wire.CLIENT_RECORD_PAYLOAD
    return faketls.wrap_records(_RANDOM[:payload], wire.CLIENT_RECORD_PAYLOAD), payload


@functools.lru_cache(maxsize=8)
def _tail(size: int, framed: bool) -> bytes:
    """The last, short piece of an upload: every connection of a job ends with the same one, so it is
    framed once (framing it per connection cost the fake-TLS clients ~0.1 s/GB of their own CPU)."""
    tail = _RANDOM[:size]
    return faketls.wrap_records(tail, wire.CLIENT_RECORD_PAYLOAD) if framed else tail


class Conn(asyncio.BufferedProtocol):
    """One client connection. Received payload is either counted (bulk download, never decrypted) or
    collected and decrypted until `_need` bytes arrived (READY, DONE, echo replies)."""

    def __init__(self, session: wire.ClientSession, secret: Secret | None, tag: bytes | None = None,
                 opening: bytes = b"") -> None:
        self.session = session
        # the relay path: the transport's packets (`tag`), the first one (`opening`) carried the command
        self.tag = tag
        self.opening = opening
        self._reader = wire.PacketReader(tag) if tag is not None else None
        self._inbox: deque[bytes] = deque()
        self._packet_waiter: asyncio.Future[bytes] | None = None
        self._packets_to_send: list[int] = []
        self.secret = secret
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flight: bytearray | None = bytearray() if session.flight_expected else None
        self._stripper = wire.RecordStripper() if session.framed else None
        self._plain = bytearray()
        self._need = 0
        self._waiter: asyncio.Future[bytes] | None = None
        self._count_target = 0
        self._counted = 0
        self._counter: asyncio.Future[None] | None = None
        self._to_send = 0
        self._paused = False
        self._sent_done: asyncio.Future[None] | None = None
        self._block, self._block_payload = _framed_block() if session.framed else (_RANDOM, CHUNK)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.set_write_buffer_limits(1024 * 1024)
        transport.write(self.session.first)

    def get_buffer(self, sizehint: int) -> memoryview:
        return RECV

    def buffer_updated(self, nbytes: int) -> None:
        data = RECV[:nbytes]
        if self._flight is not None:
            self._flight += data
            try:
                size = client.server_flight_length(bytes(self._flight))
            except ProtocolError as exc:
                self._fail(exc)
                return
            if size is None:
                return
            assert self.secret is not None and self.transport is not None
            if not client.verify_server_flight(self.secret.key, self.session.hello_random, bytes(self._flight[:size])):
                self._fail(ValueError("server flight HMAC does not verify"))
                return
            rest = memoryview(bytes(self._flight[size:]))
            self._flight = None
            self.transport.write(self.session.after_flight)
            if not rest:
                return
            data = rest
        counting = self._counter is not None and not self._counter.done()
        collect = self._waiter is not None or not self._counter or self._reader is not None
        if self._stripper is not None:
            sink = bytearray() if collect else None
            try:
                n = self._stripper.feed(data, sink)
            except ValueError as exc:
                self._fail(exc)
                return
            if sink is not None:
                data = memoryview(sink)
        else:
            n = len(data)
        if self._reader is not None:
            self._take_packets(self.session.decrypt.update(data), counting)
        elif collect:
            self._plain += self.session.decrypt.update(data)
            self._check_waiter()
        else:
            self._counted += n
            if self._counted >= self._count_target and self._counter is not None and not self._counter.done():
                self._counter.set_result(None)

    def _take_packets(self, plain: bytes, counting: bool) -> None:
        assert self._reader is not None
        try:
            packets, done = self._reader.feed(plain, keep=not counting)
        except ValueError as exc:
            self._fail(exc)
            return
        if counting:
            self._counted += done
            if self._counted >= self._count_target and self._counter is not None and not self._counter.done():
                self._counter.set_result(None)
            return
        self._inbox.extend(packets)
        if self._inbox and self._packet_waiter is not None and not self._packet_waiter.done():
            self._packet_waiter.set_result(self._inbox.popleft())
            self._packet_waiter = None

    async def read_packet(self, timeout: float) -> bytes:
        if self._inbox:
            return self._inbox.popleft()
        waiter = self._packet_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(waiter, timeout)

    def send_packet(self, packet: bytes | memoryview) -> None:
        assert self.tag is not None
        self.send_plain(b"".join((wire.frame_header(self.tag, len(packet)), packet)))

    def send_packets(self, sizes: list[int]) -> None:
        """Upload bulk packets of these sizes with flow control (encrypted: the proxy splits the stream)."""
        self._packets_to_send = sizes[::-1]
        self._pump()

    def _check_waiter(self) -> None:
        if self._waiter is not None and len(self._plain) >= self._need and not self._waiter.done():
            got = bytes(self._plain[: self._need])
            del self._plain[: self._need]
            self._waiter.set_result(got)
            self._waiter = None

    def _fail(self, exc: Exception) -> None:
        for fut in (self._waiter, self._counter, self._sent_done, self._packet_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    async def read_plain(self, n: int, timeout: float) -> bytes:
        self._need = n
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._check_waiter()
        return await asyncio.wait_for(waiter, timeout)

    def send_plain(self, data: bytes) -> None:
        assert self.transport is not None
        enc = self.session.encrypt.update(data)
        self.transport.write(faketls.wrap_records(enc, wire.CLIENT_RECORD_PAYLOAD) if self.session.framed else enc)

    def expect_count(self, n: int) -> asyncio.Future[None]:
        self._count_target, self._counted = n, 0
        self._counter = asyncio.get_running_loop().create_future()
        return self._counter

    def send_bulk(self, n: int) -> None:
        """Upload n payload bytes (not encrypted: the sink never reads them) with flow control."""
        self._to_send = n
        self._pump()

    def _pump(self) -> None:
        while self._packets_to_send and not self._paused and self.transport is not None:
            self.send_packet(wire.packet_body(self._packets_to_send.pop()))
        while self._to_send > 0 and not self._paused and self.transport is not None:
            if self._to_send >= self._block_payload:
                self.transport.write(self._block)
                self._to_send -= self._block_payload
            else:
                self.transport.write(_tail(self._to_send, self.session.framed))
                self._to_send = 0

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)


class Worker:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.kind: str = job["kind"]
        key = bytes.fromhex(job.get("secret_key", "00" * 16))
        self.secret = wire.secret_for(self.kind, key, job.get("domain", "example.com"))
        self.target = (job["host"], job["port"])
        self.packet_size: int | None = job.get("packet_size")  # the relay path: packets of this size
        self.tag = wire.transport_tag(self.kind) if self.packet_size else None
        self.sources: list[str] = job.get("sources", ["127.0.0.1"])
        self._next_source = 0
        self.errors: dict[str, int] = {}

    def _error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    async def open(self, mode: int, count: int = 0, extra: bytes = b"") -> Conn:
        loop = asyncio.get_running_loop()
        opening = b""
        if self.tag is not None:
            assert self.packet_size is not None
            opening = wire.command_packet(mode, count, self.packet_size, *((extra,) if extra else ()))
            first = wire.frame_header(self.tag, len(opening)) + opening
        else:
            first = wire.command(mode, count) + extra
        session = wire.client_session(self.kind, self.secret, first)
        source = self.sources[self._next_source % len(self.sources)]
        self._next_source += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, self.target), CONNECT_TIMEOUT)
            _, conn = await loop.create_connection(lambda: Conn(session, self.secret, self.tag, opening), sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn

    async def establish(self, mode: int, count: int = 0) -> Conn:
        conn = await self.open(mode, count)
        await self.check_ready(conn, CONNECT_TIMEOUT)
        return conn

    async def check_ready(self, conn: Conn, timeout: float, extra: bytes = b"") -> None:
        """The DC's first answer: READY (and `extra` echoed behind it on the raw stream)."""
        if conn.tag is None:
            if await conn.read_plain(len(wire.READY) + len(extra), timeout) != wire.READY + extra:
                raise ValueError("DC reply did not decrypt to READY (and the echo)")
        elif not answers(conn.tag, wire.ready_answer(conn.opening), await conn.read_packet(timeout)):
            raise ValueError("DC's first packet is not READY and the command packet's echo")

    async def establish_many(self, n: int, mode: int, count: int, parallel: int) -> list[Conn]:
        sem = asyncio.Semaphore(parallel)
        conns: list[Conn] = []

        async def one() -> None:
            async with sem:
                try:
                    conns.append(await self.establish(mode, count))
                except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
                    self._error(exc)

        await asyncio.gather(*(one() for _ in range(n)))
        return conns


def answers(tag: bytes, sent: bytes, got: bytes) -> bool:
    """`got` is `sent` come back (a padded transport's answer may carry up to 3 bytes of padding, as the
    official proxy adds them)."""
    slack = 3 if tag == obfs2.TAG_PADDED else 0
    return got[: len(sent)] == sent and len(got) - len(sent) <= slack


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def phase_bulk(w: Worker) -> None:
    job = w.job
    up = job["direction"] == "up"
    per = int(job["bytes_per_conn"])
    mode = wire.MODE_SINK if up else wire.MODE_SOURCE
    sizes = wire.packet_sizes(per, w.packet_size) if w.packet_size else []
    # the relay path's sink counts what the relay sends it: every packet in an intermediate frame
    count = wire.relay_wire_bytes(sizes) if sizes and up else per
    conns = await w.establish_many(job["conns"], mode, count, job.get("parallel", 200))
    emit("ready", sessions=len(conns), errors=w.errors)
    await wait_line()
    start = time.monotonic()
    done_at: list[float] = []

    async def run(c: Conn) -> None:
        try:
            if up and c.tag is not None:
                waiter = asyncio.ensure_future(c.read_packet(job["timeout"]))
                c.send_packets(sizes)
                if not answers(c.tag, wire.DONE_PACKET, await waiter):
                    raise ValueError("sink's answer is not the DONE packet")
            elif up:
                waiter = asyncio.ensure_future(c.read_plain(len(wire.DONE), job["timeout"]))
                c.send_bulk(per)
                if await waiter != wire.DONE:
                    raise ValueError("sink reply did not decrypt to DONE")
            elif c.tag is not None:  # counts packets: a padded transport's may carry padding
                fut = c.expect_count(len(sizes))
                c.send_packet(wire.GO_PACKET)
                await asyncio.wait_for(fut, job["timeout"])
            else:
                fut = c.expect_count(per)
                c.send_plain(wire.GO)
                await asyncio.wait_for(fut, job["timeout"])
            done_at.append(time.monotonic())
        except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
            w._error(exc)
        finally:
            if c.transport is not None:
                c.transport.close()

    await asyncio.gather(*(run(c) for c in conns))
    end = max(done_at) if done_at else time.monotonic()
    emit("result", start=start, end=end, ok=len(done_at), bytes=per * len(done_at), errors=w.errors)


async def phase_latency(w: Worker) -> None:
    job = w.job
    conns = await w.establish_many(job["conns"], wire.MODE_ECHO, 0, 50)
    emit("ready", sessions=len(conns), errors=w.errors)
    await wait_line()
    rtts: list[float] = []

    async def run(c: Conn) -> None:
        try:
            for _ in range(job["pings"]):
                ping = os.urandom(job.get("size", 64))
                t0 = time.perf_counter()
                if c.tag is not None:  # a packet: a non-zero auth key id first
                    ping = b"\x01" * 8 + ping[8:]
                    c.send_packet(ping)
                    echoed = answers(c.tag, ping, await c.read_packet(10))
                else:
                    c.send_plain(ping)
                    echoed = await c.read_plain(len(ping), 10) == ping
                rtts.append(time.perf_counter() - t0)
                if not echoed:
                    raise ValueError("echo mismatch")
        except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
            w._error(exc)
        finally:
            if c.transport is not None:
                c.transport.close()

    await asyncio.gather(*(run(c) for c in conns))
    emit("result", rtts=rtts, errors=w.errors)


async def phase_handshake(w: Worker) -> None:
    """Each handshake: connect, handshake, one small echo (sent with the init), close. `total` handshakes,
    or as many as fit in `duration` seconds when the job gives one."""
    job = w.job
    emit("ready", sessions=0, errors=w.errors)
    await wait_line()
    total, parallel = job["total"], job["parallel"]
    durations: list[float] = []
    remaining = total
    until = time.monotonic() + job["duration"] if job.get("duration") else None

    async def loop_one() -> None:
        nonlocal remaining
        while remaining > 0 if until is None else time.monotonic() < until:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                ping = os.urandom(PING_SIZE)
                c = await w.open(wire.MODE_ECHO, 0, ping)
                await w.check_ready(c, 10, ping)  # the relay path: the ping rides in the command packet
                durations.append(time.perf_counter() - t0)
                assert c.transport is not None
                c.transport.close()
                await c.closed
            except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
                w._error(exc)

    start = time.monotonic()
    await asyncio.gather(*(loop_one() for _ in range(parallel)))
    emit("result", start=start, end=time.monotonic(), ok=len(durations), durations=durations, errors=w.errors)


async def phase_idle(w: Worker) -> None:
    job = w.job
    conns = await w.establish_many(job["conns"], wire.MODE_ECHO, 0, job.get("parallel", 200))
    emit("ready", sessions=len(conns), errors=w.errors)
    await wait_line()
    alive = sum(1 for c in conns if c.transport is not None and not c.transport.is_closing())
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    emit("result", alive=alive, errors=w.errors)


def garbage_bytes(kind: str, domain: str) -> bytes:
    """What a client of no secret sends: 64 random bytes (never a word the proxy recognises without a scan),
    or for fake-TLS a well-formed hello signed with a key the proxy does not have."""
    if kind == "ee":
        return client.build_client_hello(os.urandom(16), domain, os.urandom, time.time())
    return b"\x01" + os.urandom(63)


async def phase_garbage(w: Worker) -> None:
    """`rate` connections a second for `duration` seconds, each from the next source address, sending garbage
    and waiting for whatever answers (the mask site) or the close; counts how each ended."""
    job = w.job
    emit("ready", sessions=0, errors=w.errors)
    await wait_line()
    loop = asyncio.get_running_loop()
    rate, duration, wait = float(job["rate"]), float(job["duration"]), float(job.get("wait", 20.0))
    ended = {"answered": 0, "closed": 0, "timeout": 0, "failed": 0}

    async def one(source: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, w.target), CONNECT_TIMEOUT)
            await loop.sock_sendall(sock, garbage_bytes(w.kind, job.get("domain", "example.com")))
            answer = await asyncio.wait_for(loop.sock_recv(sock, 4096), wait)
            ended["answered" if answer else "closed"] += 1
        except TimeoutError:
            ended["timeout"] += 1
        except OSError as exc:
            ended["failed"] += 1
            w._error(exc)
        finally:
            sock.close()

    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    while (now := time.monotonic()) - start < duration:
        due = start + len(tasks) / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.ensure_future(one(w.sources[len(tasks) % len(w.sources)])))
    sent_until = time.monotonic()
    await asyncio.gather(*tasks)
    emit("result", start=start, end=sent_until, sent=len(tasks), **ended, errors=w.errors)


PHASES = {"bulk": phase_bulk, "latency": phase_latency, "handshake": phase_handshake, "idle": phase_idle,
          "garbage": phase_garbage}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", help="the job as JSON")
    args = parser.parse_args(argv)
    job = json.loads(args.job)
    raise_nofile()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(PHASES[job["phase"]](Worker(job)))


if __name__ == "__main__":
    main()
