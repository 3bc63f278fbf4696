"""A fake Telegram middle-proxy relay for tests: the server side of the TCP-RPC protocol (nonce, AES-256-CBC,
handshake, RPC_PROXY_*), a fake DC behind it, switchable faults, and a record of what it saw.

What the real relay does with RPC_PROXY_REQ is not public (the relays are Telegram's). The request carries
one MTProto transport packet of one client connection (MTProxy mtproto/mtproto-proxy.c forward_tcp_query:
the client's frame without its transport length), and RPC_PROXY_ANS carries one packet back, which the proxy
frames again for its client. The fake stands in for the relay's path to the DC with the plainest equivalent:
one obfuscated2 connection per (relay connection, conn id) to the configured fake DC, intermediate framing,
each request's packet sent as one frame and each frame the DC sends back returned as one RPC_PROXY_ANS.
RPC_SIMPLE_ACK: a real DC computes the quick-ack token from the auth key; the fake answers a request flagged
for quick ack (0x80000000) itself, token = first 4 bytes of SHA-256(packet), little-endian, | 0x80000000
(`quick_ack_token`), and forwards any quick-ack word the DC sends. When the DC closes, RPC_CLOSE_EXT; when
the proxy sends RPC_CLOSE_CONN (its client left, or an id it does not know: MTProxy mtproto-proxy.c
`_notify_remote_closed`), that conn id's DC connection is closed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import CipherContext

from mtproxy.protocol import obfs2
from mtproxy.protocol.cipher import Keystream

from . import rpcwire as w
from .client import PEER_AES

READ_SIZE = 1 << 16
POLL = 0.02
MAX_LINKS = 1024  # open at once
MAX_LEGS = 4096  # DC connections per relay connection


@dataclass
class Faults:
    """Switches read live at every event: set fields of `FakeRelay.faults` (one object shared by every
    connection, so change its fields, do not replace it), or give one connection its own `Faults`
    (`RelayLink.faults`). `stall`: read and send nothing, keep the socket (until cleared, `max_stall` or
    stop). `reset`: end with a TCP RST at the next event. `slow`: seconds before each frame sent.
    `drop_handshake`: never answer the handshake. `bad_crc`, `wrong_seq`: every frame sent while set has a
    wrong CRC / a packet number 1000 ahead. `close_ext`: answer each RPC_PROXY_REQ with
    RPC_CLOSE_EXT (closing that conn id's DC connection) instead of forwarding it."""

    stall: bool = False
    reset: bool = False
    slow: float = 0.0
    drop_handshake: bool = False
    bad_crc: bool = False
    wrong_seq: bool = False
    close_ext: bool = False


@dataclass
class LinkRecord:
    """One connection the relay accepted, with the addresses as the relay saw them."""

    number: int
    peer: tuple[str, int]
    local: tuple[str, int]
    key_select: int | None = None
    client_timestamp: int | None = None
    handshake: w.Handshake | None = None
    ready: bool = False  # handshake answered
    pings: int = 0
    ended: str | None = None  # why the relay's side ended, None while open


@dataclass(frozen=True)
class RequestRecord:
    link: int
    conn_id: int
    flags: int
    remote: tuple[str, int]  # the client's address as the proxy reported it
    local: tuple[str, int]  # the proxy's address as it reported it
    ad_tag: bytes | None
    size: int  # bytes of MTProto packet carried


@dataclass(frozen=True)
class Sent:
    """A frame the relay sent after the handshake, other than a pong: op name, conn id, payload size."""

    link: int
    op: str
    conn_id: int
    size: int


def quick_ack_token(packet: bytes) -> int:
    return int.from_bytes(hashlib.sha256(packet).digest()[:4], "little") | 0x80000000


class _Ended(Exception):
    """This relay connection is over (reason in the record)."""


class FakeRelay:
    """Listen with `await start()` (returns the port), end with `await stop()`. `secret` is the proxy-secret
    the relay holds; `dc` the fake DC (loopback) the relay forwards to; `dc_id` goes in that leg's header."""

    def __init__(self, secret: bytes, dc: tuple[str, int], *, dc_id: int = 2,
                 clock: Callable[[], float] = time.time, random_bytes: Callable[[int], bytes] = os.urandom,
                 idle_timeout: float = 60.0, dc_timeout: float = 5.0, max_stall: float = 60.0,
                 check_peer_pid: bool = True, max_records: int = 100_000) -> None:
        if not w.MIN_SECRET <= len(secret) <= w.MAX_SECRET:
            raise ValueError(f"a proxy secret is {w.MIN_SECRET}..{w.MAX_SECRET} bytes")
        self.secret = secret
        self.dc = dc
        self.dc_id = dc_id
        self.clock = clock
        self.random_bytes = random_bytes
        self.idle_timeout = idle_timeout
        self.dc_timeout = dc_timeout
        self.max_stall = max_stall
        self.check_peer_pid = check_peer_pid
        self.faults = Faults()
        # the records keep the latest `max_records` of each kind, so a soak's memory stays bounded
        self.links: deque[RelayLink] = deque(maxlen=max_records)  # `number` counts every one accepted
        self.requests: deque[RequestRecord] = deque(maxlen=max_records)
        self.closes_from_proxy: deque[tuple[int, int]] = deque(maxlen=max_records)  # (link, conn id)
        self.sent: deque[Sent] = deque(maxlen=max_records)
        self.errors: deque[str] = deque(maxlen=max_records)  # what the relay rejected, one line each
        self.accepted = 0
        self._open: set[RelayLink] = set()
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def open_links(self) -> int:
        return len(self._open)

    @property
    def open_legs(self) -> int:
        """DC connections open: conn ids neither side has closed yet."""
        return sum(len(link._legs) for link in self._open)

    @property
    def ad_tags(self) -> list[bytes | None]:
        return [r.ad_tag for r in self.requests]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """True once `condition()` holds (checked whenever the relay records something), False at `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
        return True

    def note(self) -> None:
        self._changed.set()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self._open):
            link.abort("stopped")
        tasks = list(self._tasks)
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=3)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._open) >= MAX_LINKS:
                self.errors.append("too many relay connections")
                return
            link = RelayLink(self, self.accepted, reader, writer)
            self.accepted += 1
            self.links.append(link)
            self._open.add(link)
            self.note()
            try:
                await link.serve()
            finally:
                self._open.discard(link)
        finally:
            writer.close()
            self._tasks.discard(task)
            self.note()


@dataclass
class _Leg:
    """One conn id's connection to the fake DC."""

    conn_id: int
    writer: asyncio.StreamWriter
    to_dc: Keystream
    task: asyncio.Task[None] | None = None


class RelayLink:
    """One accepted connection: parses, answers and forwards; `faults` may be replaced for this one."""

    def __init__(self, relay: FakeRelay, number: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.relay = relay
        self.faults = relay.faults
        self.reader = reader
        self.writer = writer
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        self.record = LinkRecord(number, (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])))
        self.pid = w.ProcessId(w.Endpoint.of(*self.record.local).ipv4, self.record.local[1],
                               os.getpid() & 0xFFFF, int(relay.clock()))
        self._in = bytearray()
        self._in_seq = w.SEQ_NONCE
        self._out_seq = w.SEQ_NONCE
        self._out_bytes = 0
        self._decrypt: CipherContext | None = None
        self._encrypt: CipherContext | None = None
        self._legs: dict[int, _Leg] = {}

    # -- faults and endings
    def reset(self) -> None:
        """End this connection now with a TCP RST."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort("reset")

    def abort(self, why: str) -> None:
        if self.record.ended is None:
            self.record.ended = why
        self.writer.transport.abort()
        for leg in list(self._legs.values()):
            self._drop_leg(leg)
        self.relay.note()

    def _end(self, why: str) -> _Ended:
        if self.record.ended is None:
            self.record.ended = why
        self.relay.note()
        return _Ended(why)

    async def _check_faults(self) -> None:
        if self.faults.reset:
            self.reset()
            raise _Ended("reset")
        if self.faults.stall:
            deadline = time.monotonic() + self.relay.max_stall
            while self.faults.stall and self.record.ended is None:
                if time.monotonic() > deadline:
                    raise self._end("stalled too long")
                await asyncio.sleep(POLL)
            if self.record.ended is not None:
                raise _Ended(self.record.ended)

    # -- the relay connection
    async def serve(self) -> None:
        try:
            while True:
                await self._check_faults()
                frame = await self._next_frame()
                await self._check_faults()
                await self._handle(frame)
        except _Ended:
            pass
        except w.RpcWireError as exc:
            self.relay.errors.append(f"link {self.record.number}: {exc}")
            self._end(f"wire error: {exc}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._end(f"socket: {exc!r}")
        finally:
            for leg in list(self._legs.values()):
                self._drop_leg(leg)

    async def _next_frame(self) -> w.Frame:
        while True:
            frame = w.take_frame(self._in)
            if frame is not None:
                if frame.seq != self._in_seq:
                    raise w.RpcWireError(f"got packet num {frame.seq}, expected {self._in_seq}")
                self._in_seq += 1
                return frame
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.relay.idle_timeout)
            except TimeoutError:
                raise self._end("idle") from None
            if not data:
                raise self._end("closed by peer")
            self._in += self._decrypt.update(data) if self._decrypt is not None else data

    async def _handle(self, frame: w.Frame) -> None:
        if frame.seq == w.SEQ_NONCE:
            await self._on_nonce(frame.payload)
        elif frame.seq == w.SEQ_HANDSHAKE:
            await self._on_handshake(frame.payload)
        elif frame.op == w.RPC_PING:
            self.record.pings += 1
            answer = w.pong(frame.payload)
            if answer is not None:
                await self.send(answer, log=False)
        elif frame.op == w.RPC_PROXY_REQ:
            await self._on_request(w.parse_proxy_request(frame.payload))
        elif frame.op == w.RPC_CLOSE_CONN:
            conn_id = w.parse_conn_id(frame.payload, w.RPC_CLOSE_CONN)
            self.relay.closes_from_proxy.append((self.record.number, conn_id))
            leg = self._legs.get(conn_id)
            if leg is not None:
                self._drop_leg(leg)
        else:
            self.relay.errors.append(f"link {self.record.number}: unknown op {frame.op:08x} ignored")
        self.relay.note()

    async def _on_nonce(self, payload: bytes) -> None:
        nonce = w.parse_nonce(payload)
        self.record.key_select, self.record.client_timestamp = nonce.key_select, nonce.timestamp
        if nonce.key_select != w.key_signature(self.relay.secret):
            raise w.RpcWireError(f"key selector {nonce.key_select:08x} is not our secret's")
        now = int(self.relay.clock())
        if abs(nonce.timestamp - now) > w.TIMESTAMP_WINDOW:
            raise w.RpcWireError(f"nonce timestamp {nonce.timestamp} is {nonce.timestamp - now:+d} s off")
        ours = self.relay.random_bytes(16)
        # the relay's view: its accepted socket's local address is the server end, the peer the client end
        keys = w.derive_keys(am_client=False, server_nonce=ours, client_nonce=nonce.nonce,
                             client_timestamp=nonce.timestamp, server=w.Endpoint.of(*self.record.local),
                             client=w.Endpoint.of(*self.record.peer), secret=self.relay.secret)
        answer = w.Nonce(w.key_signature(self.relay.secret), w.RPC_CRYPTO_AES, now, ours).encode()
        await self.send(answer, log=False)  # plain: tcp_rpc_conn_send_data_init bypasses the cipher
        self._decrypt, self._encrypt = w.cbc_pair(keys)
        if self._in:  # nothing can follow the nonce before our answer; decrypt whatever did
            self._in = bytearray(self._decrypt.update(bytes(self._in)))

    async def _on_handshake(self, payload: bytes) -> None:
        hello = w.parse_handshake(payload)
        self.record.handshake = hello
        error = 0
        if self.relay.check_peer_pid and not self.pid.matched_by(hello.peer):
            error = -4
        elif hello.flags & 0xFF:
            error = -7
        if error:
            await self.send(w.handshake_error(error, self.pid), log=False)
            raise w.RpcWireError(f"handshake refused ({error})")
        if self.faults.drop_handshake:
            self.relay.errors.append(f"link {self.record.number}: handshake answer dropped (fault)")
            return
        # CRC32C is never offered back, so both directions keep CRC32 (tcp_rpcs_process_handshake_packet)
        await self.send(w.Handshake(0, self.pid, hello.sender).encode(), log=False)
        self.record.ready = True

    async def _on_request(self, request: w.ProxyRequest) -> None:
        self.relay.requests.append(RequestRecord(self.record.number, request.conn_id, request.flags,
                                                 request.remote, request.local, request.ad_tag,
                                                 len(request.data)))
        if self.faults.close_ext:
            await self.close_ext(request.conn_id)
            return
        leg = self._legs.get(request.conn_id)
        if leg is None:
            leg = await self._open_leg(request.conn_id)
            if leg is None:
                await self.send(w.close_ext(request.conn_id))
                return
        leg.writer.write(leg.to_dc.update(struct.pack("<I", len(request.data)) + request.data))
        try:
            await asyncio.wait_for(leg.writer.drain(), self.relay.dc_timeout)
        except (OSError, TimeoutError) as exc:
            self.relay.errors.append(f"link {self.record.number} conn {request.conn_id}: DC write: {exc!r}")
            await self.close_ext(request.conn_id)
            return
        if request.flags & w.FLAG_QUICKACK:
            await self.send(w.simple_ack(request.conn_id, quick_ack_token(request.data)))

    async def close_ext(self, conn_id: int) -> None:
        """Tell the proxy this conn id is closed on the relay's side, and drop its DC connection."""
        leg = self._legs.get(conn_id)
        if leg is not None:
            self._drop_leg(leg)
        await self.send(w.close_ext(conn_id))

    async def send(self, payload: bytes, *, log: bool = True) -> None:
        """Frame, pad, encrypt and write one packet, with the faults in force."""
        await self._check_faults()
        if self.faults.slow > 0:
            await asyncio.sleep(self.faults.slow)
            await self._check_faults()
        seq = self._out_seq + (1000 if self.faults.wrong_seq else 0)
        self._out_seq += 1
        frame = w.encode_frame(seq, payload, corrupt_crc=self.faults.bad_crc)
        if self._encrypt is not None:
            frame += w.pad_to_block(self._out_bytes + len(frame))
            self._out_bytes += len(frame)
            frame = self._encrypt.update(frame)
        if self.record.ended is not None or self.writer.is_closing():
            raise _Ended(self.record.ended or "closing")
        self.writer.write(frame)
        if log:
            op = int.from_bytes(payload[:4], "little")
            conn_id = int.from_bytes(payload[8:16] if op == w.RPC_PROXY_ANS else payload[4:12], "little",
                                     signed=True)
            self.relay.sent.append(Sent(self.record.number, _OP_NAMES.get(op, hex(op)), conn_id, len(payload)))
            self.relay.note()
        try:
            await asyncio.wait_for(self.writer.drain(), self.relay.idle_timeout)
        except TimeoutError:
            raise self._end("write stalled") from None

    # -- the DC side
    async def _open_leg(self, conn_id: int) -> _Leg | None:
        if len(self._legs) >= MAX_LEGS:
            self.relay.errors.append(f"link {self.record.number}: too many conn ids")
            return None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.relay.dc), self.relay.dc_timeout)
        except (OSError, TimeoutError) as exc:
            self.relay.errors.append(f"link {self.record.number}: DC unreachable: {exc!r}")
            return None
        built = obfs2.build_init(os.urandom, obfs2.TAG_INTERMEDIATE, self.relay.dc_id, None, PEER_AES)
        writer.write(built.wire)
        leg = _Leg(conn_id, writer, built.to_acceptor)
        self._legs[conn_id] = leg
        leg.task = asyncio.create_task(self._from_dc(leg, reader, built.from_acceptor.new_cipher()))
        self.relay._tasks.add(leg.task)
        leg.task.add_done_callback(self.relay._tasks.discard)
        return leg

    async def _from_dc(self, leg: _Leg, reader: asyncio.StreamReader, decrypt: Keystream) -> None:
        inbox = bytearray()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self.relay.idle_timeout)
                if not data:
                    break
                inbox += decrypt.update(data)
                while len(inbox) >= 4:
                    (word,) = struct.unpack_from("<I", inbox)
                    if word & 0x80000000:  # a quick-ack word from the DC, not a length
                        del inbox[:4]
                        await self.send(w.simple_ack(leg.conn_id, word))
                        continue
                    if word % 4 or word > w.MAX_FRAME:
                        raise w.RpcWireError(f"DC frame of {word} bytes")
                    if len(inbox) < 4 + word:
                        break
                    packet = bytes(inbox[4 : 4 + word])
                    del inbox[: 4 + word]
                    await self.send(w.proxy_answer(leg.conn_id, packet))
        except (_Ended, asyncio.CancelledError):
            return
        except (OSError, TimeoutError, w.RpcWireError) as exc:
            self.relay.errors.append(f"link {self.record.number} conn {leg.conn_id}: DC side: {exc!r}")
        finally:
            leg.writer.close()
        if self._legs.get(leg.conn_id) is leg:
            del self._legs[leg.conn_id]
            with contextlib.suppress(_Ended, OSError):
                await self.send(w.close_ext(leg.conn_id))

    def _drop_leg(self, leg: _Leg) -> None:
        if self._legs.get(leg.conn_id) is leg:
            del self._legs[leg.conn_id]
        leg.writer.close()
        if leg.task is not None and leg.task is not asyncio.current_task():
            leg.task.cancel()


_OP_NAMES = {w.RPC_PROXY_ANS: "ans", w.RPC_SIMPLE_ACK: "ack", w.RPC_CLOSE_EXT: "close_ext"}
