"""The middle-proxy client codec (protocol/middleproxy.py) against the fake relay (testkit/fakerelay.py):
two implementations written independently from Telegram's MTProxy sources, each checking the other on the
wire — nonce, key derivation from both ends' addresses, handshake, framing, the ad tag, answers, pings,
the relay closing a client, and refusals."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time

import pytest

from mtproxy.crypto.backend import openssl_cbc
from mtproxy.protocol import obfs2
from mtproxy.protocol.errors import MiddleProxyError
from mtproxy.protocol.middleproxy import RelayConnection, RelayEndpoints
from mtproxy.protocol.middleproxy_messages import CloseExt, Pong, ProxyAnswer
from mtproxy.protocol.proxyconfig import parse_proxy_secret
from mtproxy.testkit.fakerelay import FakeRelay
from mtproxy.testkit.servers import FakeDc

from .conftest import run

SECRET = os.urandom(128)  # the size core.telegram.org/getProxySecret serves
PACKET = bytes(8) + os.urandom(40)  # auth_key_id 0, then a message: a key-exchange packet
CLIENT = (ipaddress.ip_address("203.0.113.5"), 50000)  # the Telegram client's address, as our proxy reports it
OURS = (ipaddress.ip_address("192.0.2.1"), 443)  # where that client connected


class Link:
    """One relay connection driven by the codec over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: RelayConnection) -> None:
        self.reader, self.writer, self.codec = reader, writer, codec
        self.events: list[object] = []

    @classmethod
    async def open(cls, port: int, secret: bytes = SECRET, host: str = "127.0.0.1") -> Link:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        endpoints = RelayEndpoints(ipaddress.ip_address(local[0]), local[1], ipaddress.ip_address(peer[0]), peer[1])
        codec = RelayConnection(parse_proxy_secret(secret), endpoints, openssl_cbc, now=int(time.time()),
                                nonce=os.urandom(16), pid=os.getpid() & 0xFFFF, start_time=int(time.time()))
        link = cls(reader, writer, codec)
        writer.write(codec.start())
        return link

    async def until(self, wanted: type, timeout: float = 5.0) -> object:
        async def one() -> object:
            while True:
                for event in self.events:
                    if isinstance(event, wanted):
                        self.events.remove(event)
                        return event
                data = await self.reader.read(1 << 16)
                if not data:
                    raise EOFError("the relay closed")
                received = self.codec.receive(data)
                if received.send:
                    self.writer.write(received.send)
                self.events.extend(received.events)
        return await asyncio.wait_for(one(), timeout)

    async def ready(self) -> None:
        while not self.codec.ready:
            await self.until(object)

    async def close(self) -> None:
        self.writer.close()


async def relay_and_dc(host: str = "127.0.0.1") -> tuple[FakeRelay, FakeDc, int]:
    dc = FakeDc()
    relay = FakeRelay(SECRET, ("127.0.0.1", await dc.start()), dc_id=2)
    return relay, dc, await relay.start(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_request_with_ad_tag_comes_back_as_an_answer(host: str) -> None:
    async def go() -> None:
        relay, dc, port = await relay_and_dc(host)
        try:
            link = await Link.open(port, host=host)
            await link.ready()
            tag = os.urandom(16)
            for conn_id in (1, 2):
                link.writer.write(link.codec.proxy_request(conn_id, CLIENT, OURS, obfs2.TAG_INTERMEDIATE, PACKET,
                                                           ad_tag=tag))
                answer = await link.until(ProxyAnswer)
                assert isinstance(answer, ProxyAnswer) and (answer.conn_id, answer.data) == (conn_id, PACKET)
            link.writer.write(link.codec.ping(99))
            pong = await link.until(Pong)
            assert isinstance(pong, Pong) and pong.ping_id == 99
            [seen, _] = relay.requests
            assert (seen.conn_id, seen.ad_tag, seen.size) == (1, tag, len(PACKET))
            assert (seen.remote, seen.local) == (('203.0.113.5', 50000), ('192.0.2.1', 443))
            assert relay.links[0].record.ready and not relay.errors
            await link.close()
        finally:
            await relay.stop()
            await dc.close()
    run(go(), timeout=30)


def test_the_relay_closing_a_client_reaches_the_codec() -> None:
    async def go() -> None:
        relay, dc, port = await relay_and_dc()
        try:
            link = await Link.open(port)
            await link.ready()
            relay.faults.close_ext = True
            link.writer.write(link.codec.proxy_request(7, CLIENT, OURS, obfs2.TAG_PADDED, PACKET))
            closed = await link.until(CloseExt)
            assert isinstance(closed, CloseExt) and closed.conn_id == 7
            await link.close()
        finally:
            await relay.stop()
            await dc.close()
    run(go(), timeout=30)


@pytest.mark.parametrize("fault", ["bad_crc", "wrong_seq"])
def test_a_corrupt_frame_from_the_relay_fails_the_connection(fault: str) -> None:
    async def go() -> None:
        relay, dc, port = await relay_and_dc()
        try:
            link = await Link.open(port)
            await link.ready()
            setattr(relay.faults, fault, True)
            link.writer.write(link.codec.ping(1))
            with pytest.raises(MiddleProxyError) as failed:
                await link.until(Pong)
            assert failed.value.reason == ("bad-crc" if fault == "bad_crc" else "bad-seq")
            await link.close()
        finally:
            await relay.stop()
            await dc.close()
    run(go(), timeout=30)


def test_a_wrong_proxy_secret_is_refused_by_the_relay() -> None:
    async def go() -> None:
        relay, dc, port = await relay_and_dc()
        try:
            link = await Link.open(port, secret=os.urandom(128))
            with pytest.raises((EOFError, MiddleProxyError)):
                await link.ready()
            assert not link.codec.ready and relay.errors
            await link.close()
        finally:
            await relay.stop()
            await dc.close()
    run(go(), timeout=30)
