"""The fake middle-proxy relay driven by a minimal scripted RPC client: nonce, handshake, RPC_PROXY_REQ to
the fake DC and RPC_PROXY_ANS back, and every fault switch as it shows on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import CipherContext

from mtproxy.testkit import rpcwire as w
from mtproxy.testkit.background import BackgroundRelays
from mtproxy.testkit.fakerelay import FakeRelay, Faults, quick_ack_token
from mtproxy.testkit.servers import FakeDc

from ..interop.fake_dc import REQ_PQ_MULTI, RES_PQ, FakeDC
from .conftest import run

SECRET = os.urandom(128)  # the size core.telegram.org/getProxySecret serves
QUIET = 0.4  # how long "nothing arrives" is watched


class Client:
    """Just enough of an RPC client (MTProxy net/net-tcp-rpc-client.c) to drive the relay."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes,
                 timeout: float = 5.0) -> None:
        self.reader, self.writer, self.secret, self.timeout = reader, writer, secret, timeout
        self.out_seq, self.in_seq, self.out_bytes = w.SEQ_NONCE, w.SEQ_NONCE, 0
        self.inbox = bytearray()
        self.encrypt: CipherContext | None = None
        self.decrypt: CipherContext | None = None

    def send(self, payload: bytes) -> None:
        frame = w.encode_frame(self.out_seq, payload)
        self.out_seq += 1
        if self.encrypt is not None:
            frame += w.pad_to_block(self.out_bytes + len(frame))
            self.out_bytes += len(frame)
            frame = self.encrypt.update(frame)
        self.writer.write(frame)

    async def recv(self, timeout: float | None = None) -> w.Frame:
        async def one() -> w.Frame:
            while True:
                frame = w.take_frame(self.inbox)
                if frame is not None:
                    return frame
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("relay closed")
                self.inbox += self.decrypt.update(data) if self.decrypt is not None else data
        return await asyncio.wait_for(one(), self.timeout if timeout is None else timeout)

    async def nothing_for(self, seconds: float = QUIET) -> bool:
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False

    async def nonce(self, key_select: int | None = None, timestamp: int | None = None) -> w.Nonce:
        mine = os.urandom(16)
        ts = int(time.time()) if timestamp is None else timestamp
        self.send(w.Nonce(w.key_signature(self.secret) if key_select is None else key_select,
                          w.RPC_CRYPTO_AES, ts, mine).encode())
        frame = await self.recv()
        assert frame.seq == -2
        theirs = w.parse_nonce(frame.payload)
        local, peer = self.writer.get_extra_info("sockname"), self.writer.get_extra_info("peername")
        keys = w.derive_keys(am_client=True, server_nonce=theirs.nonce, client_nonce=mine, client_timestamp=ts,
                             server=w.Endpoint.of(peer[0], peer[1]), client=w.Endpoint.of(local[0], local[1]),
                             secret=self.secret)
        self.decrypt, self.encrypt = w.cbc_pair(keys)
        return theirs

    def hello(self, peer_port: int | None = None) -> w.ProcessId:
        me = w.ProcessId(0, 0, os.getpid() & 0xFFFF, int(time.time()))
        port = self.writer.get_extra_info("peername")[1] if peer_port is None else peer_port
        self.send(w.Handshake(0, me, w.ProcessId(0, port, 0, 0)).encode())
        return me

    async def handshake(self) -> w.Handshake:
        me = self.hello()
        frame = await self.recv()
        assert frame.seq == -1
        answer = w.parse_handshake(frame.payload)
        assert answer.peer == me
        return answer

    def request(self, conn_id: int, data: bytes, flags: int = w.FLAG_EXT_SERVER | w.FLAG_MEDIUM,
                tag: bytes | None = None) -> None:
        extra = b""
        if tag is not None:
            flags |= w.FLAG_HAS_AD_TAG
            extra = w.ad_tag_extra(tag)
        self.send(w.ProxyRequest(flags, conn_id, ("203.0.113.5", 50000), ("192.0.2.1", 443), tag, extra,
                                 data).encode())

    def ping(self, ping_id: int) -> None:
        self.send(struct.pack("<Iq", w.RPC_PING, ping_id))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


Scenario = Callable[[FakeRelay, FakeDc, Callable[[], Awaitable[Client]]], Awaitable[None]]


@contextlib.asynccontextmanager
async def relay_and_dc(host: str = "127.0.0.1") -> AsyncIterator[tuple[FakeRelay, FakeDc, int]]:
    dc = FakeDc()
    dc_port = await dc.start()
    relay = FakeRelay(SECRET, ("127.0.0.1", dc_port), dc_id=3)
    port = await relay.start(host)
    try:
        yield relay, dc, port
    finally:
        await relay.stop()
        await dc.close()


def scenario(body: Scenario, host: str = "127.0.0.1") -> None:
    async def go() -> None:
        async with relay_and_dc(host) as (relay, dc, port):
            clients: list[Client] = []

            async def connect() -> Client:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                clients.append(Client(reader, writer, SECRET))
                return clients[-1]
            try:
                await body(relay, dc, connect)
            finally:
                for client in clients:
                    await client.close()
    run(go(), timeout=30)


PACKET = bytes(8) + os.urandom(40)  # auth_key_id 0, then a message: a key-exchange packet


def test_nonce_handshake_request_answer() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await connect()
        theirs = await client.nonce()
        assert theirs.key_select == w.key_signature(SECRET) and abs(theirs.timestamp - time.time()) < 5
        answer = await client.handshake()
        assert answer.flags == 0 and answer.sender.port == client.writer.get_extra_info("peername")[1]
        tag = os.urandom(16)
        client.request(0x1234, PACKET, tag=tag)
        frame = await client.recv()
        assert frame.seq == 0 and frame.op == w.RPC_PROXY_ANS
        assert frame.payload == w.proxy_answer(0x1234, PACKET)  # the echo DC's answer, as one packet
        client.ping(77)
        assert (await client.recv()).payload == struct.pack("<Iq", w.RPC_PONG, 77)
        [link] = relay.links
        assert link.record.peer == client.writer.get_extra_info("sockname")
        assert link.record.ready and link.record.pings == 1
        [seen] = relay.requests
        assert (seen.conn_id, seen.ad_tag, seen.size) == (0x1234, tag, len(PACKET))
        assert seen.remote == ("203.0.113.5", 50000) and seen.local == ("192.0.2.1", 443)
        assert seen.flags == w.FLAG_EXT_SERVER | w.FLAG_MEDIUM | w.FLAG_HAS_AD_TAG
        assert dc.dc_ids == [3] and dc.connections == 1
        # a second packet of the same conn id reuses its DC connection; a new conn id opens another
        client.request(0x1234, PACKET)
        client.request(0x99, PACKET[::-1])
        answers = {(await client.recv()).payload for _ in range(2)}
        assert answers == {w.proxy_answer(0x1234, PACKET), w.proxy_answer(0x99, PACKET[::-1])}
        assert dc.connections == 2
        # the proxy closes conn 0x99: the relay drops that DC connection and sends nothing back
        client.send(struct.pack("<Iq", w.RPC_CLOSE_CONN, 0x99))
        assert await relay.wait_for(lambda: list(relay.closes_from_proxy) == [(0, 0x99)])
        assert await client.nothing_for()
        assert relay.open_legs == 1
        # its client left: the proxy says RPC_CLOSE_CONN (docs/protocol.md), and that DC connection goes too
        client.send(struct.pack("<Iq", w.RPC_CLOSE_CONN, 0x1234))
        assert await relay.wait_for(lambda: list(relay.closes_from_proxy) == [(0, 0x99), (0, 0x1234)])
        assert relay.open_legs == 0 and not relay.errors
    scenario(body)


def test_ipv6_keys_use_the_sockets_addresses() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await connect()
        await client.nonce()
        await client.handshake()
        client.request(5, PACKET)
        assert (await client.recv()).payload == w.proxy_answer(5, PACKET)
        assert relay.links[0].record.peer[0] == "::1"
    scenario(body, host="::1")


def test_quick_ack_and_dc_close() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await connect()
        await client.nonce()
        await client.handshake()
        client.request(1, PACKET, flags=w.FLAG_EXT_SERVER | w.FLAG_COMPACT | w.FLAG_QUICKACK)
        frames = [await client.recv(), await client.recv()]
        assert {f.op for f in frames} == {w.RPC_SIMPLE_ACK, w.RPC_PROXY_ANS}
        ack = next(f for f in frames if f.op == w.RPC_SIMPLE_ACK)
        assert ack.payload == w.simple_ack(1, quick_ack_token(PACKET))
        await dc.close()  # the DC side ends: the relay tells the proxy with RPC_CLOSE_EXT
        frame = await client.recv()
        assert frame.payload == w.close_ext(1)
    scenario(body)


def test_refusals_at_nonce_and_handshake() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        wrong_key = await connect()
        wrong_key.send(w.Nonce(w.key_signature(SECRET) ^ 1, 1, int(time.time()), bytes(16)).encode())
        with pytest.raises(EOFError):
            await wrong_key.recv()
        late = await connect()
        late.send(w.Nonce(w.key_signature(SECRET), 1, int(time.time()) - 31, bytes(16)).encode())
        with pytest.raises(EOFError):
            await late.recv()
        wrong_pid = await connect()
        await wrong_pid.nonce()
        wrong_pid.hello(peer_port=1)
        error = await wrong_pid.recv()
        assert (error.seq, error.op) == (-1, w.RPC_HANDSHAKE_ERROR)
        assert struct.unpack_from("<i", error.payload, 4)[0] == -4
        skipped = await connect()  # a data packet before the handshake: wrong packet number
        await skipped.nonce()
        skipped.out_seq = 0
        skipped.ping(1)
        with pytest.raises(EOFError):
            await skipped.recv()
        assert await relay.wait_for(lambda: len(relay.errors) == 4)
        assert "key selector" in relay.errors[0] and "-31 s off" in relay.errors[1]
        assert "refused (-4)" in relay.errors[2] and "expected -1" in relay.errors[3]
    scenario(body)


async def ready_client(connect: Callable[[], Awaitable[Client]]) -> Client:
    client = await connect()
    await client.nonce()
    await client.handshake()
    return client


def test_fault_stall_then_release() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await ready_client(connect)
        relay.faults.stall = True
        client.ping(1)
        assert await client.nothing_for()  # no answer, and no EOF either: the socket is kept
        relay.faults.stall = False
        assert (await client.recv()).payload == struct.pack("<Iq", w.RPC_PONG, 1)
    scenario(body)


def test_fault_reset() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await ready_client(connect)
        relay.faults.reset = True
        client.ping(1)
        with pytest.raises(ConnectionResetError):
            await client.recv()
        assert relay.links[0].record.ended == "reset"
    scenario(body)


def test_fault_slow() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await ready_client(connect)
        relay.faults.slow = 0.5
        started = time.monotonic()
        client.ping(1)
        await client.recv()
        assert time.monotonic() - started >= 0.5
    scenario(body)


def test_fault_drop_handshake() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        relay.faults.drop_handshake = True
        client = await connect()
        await client.nonce()  # the nonce is still answered
        client.hello()
        assert await client.nothing_for()
        assert relay.links[0].record.handshake is not None and not relay.links[0].record.ready
    scenario(body)


@pytest.mark.parametrize("fault", ["bad_crc", "wrong_seq"])
def test_fault_corrupt_frames(fault: str) -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        client = await ready_client(connect)
        setattr(relay.faults, fault, True)
        client.ping(1)
        if fault == "bad_crc":
            with pytest.raises(w.RpcWireError, match="crc32"):
                await client.recv()
        else:
            assert (await client.recv()).seq == 1000  # the first packet after the handshake is number 0
    scenario(body)


def test_fault_close_ext_and_per_connection_faults() -> None:
    async def body(relay: FakeRelay, dc: FakeDc, connect: Callable[[], Awaitable[Client]]) -> None:
        first, second = await ready_client(connect), await ready_client(connect)
        relay.links[0].faults = Faults(close_ext=True)  # only the first connection
        first.request(8, PACKET)
        second.request(8, PACKET)
        assert (await first.recv()).payload == w.close_ext(8)
        assert (await second.recv()).payload == w.proxy_answer(8, PACKET)
        assert dc.connections == 1
        await relay.links[1].close_ext(8)  # the immediate action, on an open conn id
        assert (await second.recv()).payload == w.close_ext(8)
        assert [(s.link, s.op, s.conn_id) for s in relay.sent] == [(0, "close_ext", 8), (1, "ans", 8),
                                                                   (1, "close_ext", 8)]
        relay.links[1].reset()
        with pytest.raises(ConnectionResetError):
            await second.recv()
    scenario(body)


def test_stop_ends_everything_bounded() -> None:
    async def go() -> None:
        async with relay_and_dc() as (relay, _dc, port):
            relay.faults.stall = True
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = Client(reader, writer, SECRET)
            client.send(w.Nonce(w.key_signature(SECRET), 1, int(time.time()), bytes(16)).encode())
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await relay.stop()
            assert time.monotonic() - started < 2
            with pytest.raises((EOFError, ConnectionResetError)):
                await client.recv(2)
            await client.close()
    run(go(), timeout=20)


def test_relay_in_front_of_the_mtproto_fake_dc() -> None:
    """The chain the interop tests use: a req_pq_multi through the relay reaches the MTProto fake DC, and its
    resPQ comes back as one RPC_PROXY_ANS packet, the client's nonce in it."""
    async def go() -> None:
        with FakeDC() as mtproto_dc:
            relay = FakeRelay(SECRET, ("127.0.0.1", mtproto_dc.port), dc_id=2)
            port = await relay.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = Client(reader, writer, SECRET)
            try:
                await client.nonce()
                await client.handshake()
                nonce = os.urandom(16)
                body = struct.pack("<I", REQ_PQ_MULTI) + nonce
                message = bytes(8) + struct.pack("<QI", int(time.time()) << 32, len(body)) + body
                client.request(42, message, flags=w.FLAG_EXT_SERVER | w.FLAG_MEDIUM | w.FLAG_NOT_ENCRYPTED)
                frame = await client.recv()
                assert frame.op == w.RPC_PROXY_ANS
                answer = frame.payload[16:]
                assert answer[:8] == bytes(8)  # an unencrypted message
                assert struct.unpack_from("<I", answer, 20)[0] == RES_PQ and answer[24:40] == nonce
                init = mtproto_dc.wait_for("init", 0)  # already there: the answer came through it
                assert init is not None and init.detail == {"transport": "intermediate", "dc_id": 2}
                assert mtproto_dc.kinds().count("req_pq_multi") == 1
            finally:
                await client.close()
                await relay.stop()
    run(go(), timeout=20)


def test_background_relays_serve_another_threads_client(tmp_path: Path) -> None:
    """The shape an engine test takes: relays on a background loop, named in the files the engine reads,
    faults switched from the test's thread."""
    relays = BackgroundRelays(SECRET, (2, 4)).start()
    try:
        files = relays.write_files(tmp_path)
        assert files.secret.read_bytes() == SECRET
        assert f"proxy_for 4 127.0.0.1:{relays.ports[4]};" in files.config.read_text()
        relays.relay(4).faults.stall = True

        async def talk(dc_id: int) -> bytes | None:
            reader, writer = await asyncio.open_connection("127.0.0.1", relays.ports[dc_id])
            client = Client(reader, writer, SECRET, timeout=1.0)
            try:
                await client.nonce()
                await client.handshake()
                client.request(1, PACKET)
                return (await client.recv()).payload
            except TimeoutError:
                return None
            finally:
                await client.close()

        assert run(talk(2)) == w.proxy_answer(1, PACKET)
        assert run(talk(4)) is None  # stalled: the nonce is never answered
        stalled = relays.relay(4).links[0].record
        assert stalled.key_select is None and stalled.ended is None  # nothing read, the socket kept
        relays.relay(4).faults.stall = False  # now it reads: the nonce, then the client's close
        assert relays.wait(lambda: stalled.ended is not None)  # closed by peer, or reset by it
        assert stalled.key_select == w.key_signature(SECRET)
        assert relays.dc.dc_ids == [2]
    finally:
        relays.stop()


def test_records_are_bounded_for_a_soak() -> None:
    async def go() -> None:
        dc = FakeDc()
        relay = FakeRelay(SECRET, ("127.0.0.1", await dc.start()), max_records=3)
        port = await relay.start()
        try:
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                client = Client(reader, writer, SECRET)
                await client.nonce()
                await client.close()
            assert await relay.wait_for(lambda: relay.accepted == 5 and relay.open_links == 0)
            assert [link.record.number for link in relay.links] == [2, 3, 4]
        finally:
            await relay.stop()
            await dc.close()
    run(go(), timeout=20)
