"""The runtime's relay pool (runtime/relays.py, runtime/relaylink.py) on uvloop against the fake relay and a
fake DC: answers routed to the right client over shared links, and each relay fault ending in the outcome
the pool promises (clients told with a reason, within the stall bound; reconnect; the DC's down/up
transitions), plus a short soak with random faults ending with every client accounted for and empty tables."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from mtproxy.crypto.backend import openssl_cbc
from mtproxy.protocol import obfs2
from mtproxy.protocol.proxyconfig import Relay, parse_proxy_secret
from mtproxy.runtime.relaylink import LinkIdentity, RelayTimings
from mtproxy.runtime.relays import RelayClient, RelayCounters, RelayPool, RelayUnavailable
from mtproxy.testkit.fakerelay import FakeRelay, quick_ack_token
from mtproxy.testkit.servers import FakeDc

T = TypeVar("T")
SECRET = os.urandom(128)
CLIENT = (ipaddress.ip_address("203.0.113.5"), 50000)
OURS = (ipaddress.ip_address("192.0.2.1"), 443)
FAST = RelayTimings(connect_timeout=1.0, ping_interval=0.1, stall_after=0.4, backoff_first=0.05,
                    backoff_max=0.4, backoff_jitter=0.5)
STALL_BOUND = FAST.stall_after + FAST.ping_interval + 0.3  # detection bound plus scheduling slack


def packet() -> bytes:
    return bytes(8) + os.urandom(40)  # auth_key_id 0 and a 40-byte message: a key-exchange packet


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails the test at `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Sink:
    """A client session's side, recording what the pool told it."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.acks: list[bytes] = []
        self.closed: str | None = None
        self.closed_at = 0.0
        self.paused = 0
        self.resumed = 0
        self.events_after_close = 0

    def relay_answer(self, data: bytes, flags: int) -> None:
        self.events_after_close += self.closed is not None
        self.answers.append(data)

    def relay_quick_ack(self, confirm: bytes) -> None:
        self.acks.append(confirm)

    def relay_closed(self, reason: str) -> None:
        assert self.closed is None, "told twice"
        self.closed, self.closed_at = reason, time.monotonic()

    def relay_pause_writing(self) -> None:
        self.paused += 1

    def relay_resume_writing(self) -> None:
        self.resumed += 1


class Setup:
    def __init__(self) -> None:
        self.dc = FakeDc()
        self.relays: list[FakeRelay] = []
        self.ports: list[int] = []
        self.changes: list[tuple[int, bool, str]] = []
        self.pools: list[RelayPool] = []
        self.dc_port = 0

    async def start(self, count: int = 1) -> Setup:
        self.dc_port = await self.dc.start()
        for _ in range(count):
            relay = FakeRelay(SECRET, ("127.0.0.1", self.dc_port), dc_id=2, max_stall=10.0)
            self.relays.append(relay)
            self.ports.append(await relay.start())
        return self

    def pool(self, timings: RelayTimings = FAST, **options: Any) -> RelayPool:
        identity = LinkIdentity(parse_proxy_secret(SECRET), openssl_cbc, pid=os.getpid() & 0xFFFF,
                                start_time=int(time.time()))
        relays = [Relay(ipaddress.ip_address("127.0.0.1"), port) for port in self.ports]
        pool = RelayPool(2, relays, identity, timings=timings,
                         on_dc_change=lambda dc, up, why: self.changes.append((dc, up, why)), **options)
        self.pools.append(pool)
        return pool

    async def stop(self) -> None:
        for pool in self.pools:  # already closed unless the test failed: closing again is harmless
            await pool.close()
        for relay in self.relays:
            await relay.stop()
        await self.dc.close()


async def started(setup: Setup, **options: Any) -> RelayPool:
    pool = setup.pool(**options)
    pool.start()
    await until(lambda: pool.available, 5, "a relay link ready")
    return pool


def assert_empty(pool: RelayPool, counters: RelayCounters) -> None:
    assert (pool.client_count, pool.link_count) == (0, 0)
    gauges = (counters.ext_connections, counters.relay_links_open, counters.relay_links_ready,
              counters.total_ready_targets, counters.total_declared_targets)
    assert gauges == (0, 0, 0, 0, 0), counters


def test_a_request_is_answered_through_the_pool_with_its_ad_tag_and_quick_ack() -> None:
    async def go() -> None:
        setup = await Setup().start()
        try:
            pool = await started(setup)
            assert setup.changes == [(2, True, "link 1 up")]
            sink, tag, data = Sink(), os.urandom(16), packet()
            client = pool.open(sink, CLIENT, OURS, obfs2.TAG_INTERMEDIATE, ad_tag=tag)
            assert client.send(data, quick_ack=True)
            await until(lambda: len(sink.answers) == 1 and len(sink.acks) == 1, 5, "answer and quick ack")
            assert sink.answers == [data]
            assert sink.acks == [quick_ack_token(data).to_bytes(4, "little")]
            [seen] = setup.relays[0].requests
            assert (seen.conn_id % (1 << 64), seen.ad_tag, seen.size) == (client.conn_id, tag, len(data))
            assert (seen.remote, seen.local) == (("203.0.113.5", 50000), ("192.0.2.1", 443))
            counters = pool.counters
            assert (counters.tot_forwarded_queries, counters.tot_forwarded_responses,
                    counters.tot_forwarded_simple_acks) == (1, 1, 1)
            client.close()
            # announced as the official proxy does (RPC_CLOSE_CONN), which the relay acts on
            relay = setup.relays[0]
            await until(lambda: len(relay.closes_from_proxy) == 1, 2, "RPC_CLOSE_CONN reached the relay")
            assert [(link, conn_id % (1 << 64)) for link, conn_id in relay.closes_from_proxy] == [
                (seen.link, client.conn_id)]
            assert not relay.errors, list(relay.errors)
            assert not client.send(data) and counters.dropped_queries == 1
            await pool.close()
            assert sink.closed is None  # a client that closed itself hears nothing more
            assert_empty(pool, counters)
        finally:
            await setup.stop()
    run(go())


def test_many_clients_share_few_links_and_each_gets_its_own_answers() -> None:
    async def go() -> None:
        setup = await Setup().start(count=2)
        try:
            pool = await started(setup, min_links=2, max_links=2)
            await until(lambda: pool.counters.relay_links_ready == 4, 5, "four links ready")
            sinks = [Sink() for _ in range(60)]
            clients = [pool.open(sink, CLIENT, OURS, obfs2.TAG_ABRIDGED) for sink in sinks]
            assert len({c.conn_id for c in clients}) == 60
            sent = {c.conn_id: [packet() for _ in range(3)] for c in clients}
            for client in clients:
                for data in sent[client.conn_id]:
                    client.send(data)
            await until(lambda: all(len(s.answers) == 3 for s in sinks), 10, "every answer")
            for client, sink in zip(clients, sinks, strict=True):
                assert sink.answers == sent[client.conn_id]
            used = {(r.link, id(relay)) for relay in setup.relays for r in relay.requests}
            assert len(used) == 4 and pool.link_count == 4  # spread over every link, no extra links
            await pool.close("test over")
            assert all(sink.closed is not None and sink.closed.endswith("link ended: test over") for sink in sinks)
            assert_empty(pool, pool.counters)
        finally:
            await setup.stop()
    run(go())


def test_a_stalled_relay_is_closed_its_clients_told_in_bound_then_reconnected() -> None:
    async def go() -> None:
        setup = await Setup().start()
        relay = setup.relays[0]
        try:
            pool = await started(setup)
            sinks = [Sink() for _ in range(3)]
            clients = [pool.open(sink, CLIENT, OURS, obfs2.TAG_PADDED) for sink in sinks]
            relay.faults.stall = True
            stalled_at = time.monotonic()
            clients[0].send(packet())  # never answered: the relay reads nothing now
            await until(lambda: all(s.closed for s in sinks), STALL_BOUND + 1, "clients told of the stall")
            assert max(s.closed_at for s in sinks) - stalled_at <= STALL_BOUND
            assert all(s.closed is not None and "stalled" in s.closed for s in sinks)
            assert not any(c.open for c in clients)
            assert pool.health()[0][1] == "stalled" and setup.changes[-1][1] is False
            assert pool.counters.relay_stalls >= 1 and pool.counters.relay_clients_dropped == 3
            relay.faults.stall = False
            await until(lambda: pool.available, 5, "reconnected")
            assert setup.changes[-1][1] is True
            sink = Sink()
            pool.open(sink, CLIENT, OURS, obfs2.TAG_PADDED).send(data := packet())
            await until(lambda: sink.answers == [data], 5, "an answer after the reconnect")
            await pool.close()
            assert_empty(pool, pool.counters)
        finally:
            await setup.stop()
    run(go())


@pytest.mark.parametrize(("fault", "reason"), [("reset", "connection lost"), ("bad_crc", "bad-crc"),
                                               ("wrong_seq", "bad-seq")])
def test_a_broken_link_tells_its_clients_why_and_comes_back(fault: str, reason: str) -> None:
    async def go() -> None:
        setup = await Setup().start()
        relay = setup.relays[0]
        try:
            pool = await started(setup)
            sinks = [Sink() for _ in range(4)]
            clients = [pool.open(sink, CLIENT, OURS, obfs2.TAG_INTERMEDIATE) for sink in sinks]
            setattr(relay.faults, fault, True)
            clients[0].send(packet())
            await until(lambda: all(s.closed for s in sinks), 3, "clients told")
            assert all(s.closed is not None and reason in s.closed for s in sinks), sinks[0].closed
            assert pool.counters.relay_link_failures == 1
            setattr(relay.faults, fault, False)
            await until(lambda: pool.available, 5, "reconnected")
            sink = Sink()
            pool.open(sink, CLIENT, OURS, obfs2.TAG_INTERMEDIATE).send(data := packet())
            await until(lambda: sink.answers == [data], 5, "an answer after the reconnect")
            await pool.close()
            assert_empty(pool, pool.counters)
        finally:
            await setup.stop()
    run(go())


def test_the_relay_closing_one_client_leaves_the_others_running() -> None:
    async def go() -> None:
        setup = await Setup().start()
        relay = setup.relays[0]
        try:
            pool = await started(setup)
            closed, kept = Sink(), Sink()
            first = pool.open(closed, CLIENT, OURS, obfs2.TAG_INTERMEDIATE)
            second = pool.open(kept, CLIENT, OURS, obfs2.TAG_INTERMEDIATE)
            relay.faults.close_ext = True
            first.send(packet())
            await until(lambda: closed.closed is not None, 3, "RPC_CLOSE_EXT delivered")
            assert closed.closed is not None and "RPC_CLOSE_EXT" in closed.closed and not first.open
            relay.faults.close_ext = False
            second.send(data := packet())
            await until(lambda: kept.answers == [data], 3, "the other client answered")
            assert kept.closed is None and second.open and pool.client_count == 1
            assert pool.counters.relay_clients_closed_by_relay == 1
            await pool.close()
            assert kept.closed is not None
        finally:
            await setup.stop()
    run(go())


def test_all_relays_down_then_back_up_reaches_the_callback() -> None:
    async def go() -> None:
        setup = await Setup().start(count=2)
        try:
            pool = await started(setup)
            await until(lambda: pool.counters.total_ready_targets == 2, 5, "both relays ready")
            ports = list(setup.ports)
            for relay in setup.relays:
                await relay.stop()
            await until(lambda: pool.up is False, STALL_BOUND + 2, "DC down")
            assert [up for _, up, _ in setup.changes] == [True, False]
            assert {state for _, state, *_ in pool.health()} <= {"down", "stalled"}
            assert pool.counters.relay_dcs_down == 1
            with pytest.raises(RelayUnavailable):
                pool.open(Sink(), CLIENT, OURS, obfs2.TAG_INTERMEDIATE)
            revived = FakeRelay(SECRET, ("127.0.0.1", setup.dc_port), dc_id=2)
            await revived.start(port=ports[1])
            setup.relays.append(revived)
            # backoff_max bounds the wait for the next attempt
            await until(lambda: pool.up is True, FAST.backoff_max + FAST.connect_timeout + 1, "DC back up")
            assert [up for _, up, _ in setup.changes] == [True, False, True]
            assert pool.counters.relay_dcs_down == 0
            await pool.close()
            assert_empty(pool, pool.counters)
        finally:
            await setup.stop()
    run(go())


def test_a_full_link_pauses_its_clients_and_resumes_them() -> None:
    async def go() -> None:
        setup = await Setup().start()
        relay = setup.relays[0]
        try:
            slow = RelayTimings(connect_timeout=1.0, ping_interval=1.0, stall_after=8.0)
            pool = await started(setup, timings=slow)
            writer, other = Sink(), Sink()
            client = pool.open(writer, CLIENT, OURS, obfs2.TAG_INTERMEDIATE)
            pool.open(other, CLIENT, OURS, obfs2.TAG_INTERMEDIATE)
            relay.faults.stall = True
            chunk = bytes(8) + os.urandom((1 << 16) - 8)
            for _ in range(2048):  # at most 128 MiB; the kernel buffers fill long before
                client.send(chunk)
                if writer.paused:
                    break
                await asyncio.sleep(0)
            assert writer.paused == 1 and other.paused == 1 and pool.counters.relay_pauses == 1
            relay.faults.stall = False
            await until(lambda: writer.resumed == 1 and other.resumed == 1, 10, "resumed")
            await pool.close()
        finally:
            await setup.stop()
    run(go(), timeout=60)


def test_soak_with_random_faults_leaves_no_client_without_an_outcome() -> None:
    async def go() -> None:
        setup = await Setup().start(count=2)
        rng = random.Random(17)
        try:
            pool = await started(setup, min_links=2, max_links=3, clients_per_link=8)
            live: list[tuple[RelayClient, Sink, list[bytes]]] = []
            finished: list[tuple[Sink, bool]] = []  # (sink, closed by us)
            deadline = time.monotonic() + 4.0
            next_fault = time.monotonic() + 0.3
            faults = ("stall", "reset", "bad_crc", "close_ext", "slow")
            while time.monotonic() < deadline:
                action = rng.choices(("open", "send", "close"), (30, 50, 10))[0]
                if action == "open" and pool.available and len(live) < 200:
                    sink = Sink()
                    live.append((pool.open(sink, CLIENT, OURS, obfs2.TAG_ABRIDGED, ad_tag=os.urandom(16)), sink, []))
                elif action == "send" and live:
                    client, _sink, sent = rng.choice(live)
                    if client.send(data := packet()):
                        sent.append(data)
                elif action == "close" and live:
                    client, sink, _sent = live.pop(rng.randrange(len(live)))
                    client.close()
                    finished.append((sink, sink.closed is None))
                if time.monotonic() >= next_fault:  # one fault every 0.3 s, on a random relay
                    next_fault += 0.3
                    relay = rng.choice(setup.relays)
                    fault = rng.choice(faults)
                    setattr(relay.faults, fault, 0.05 if fault == "slow" else True)
                    asyncio.get_running_loop().call_later(rng.uniform(0.05, 0.6), setattr, relay.faults,
                                                          fault, 0.0 if fault == "slow" else False)
                await asyncio.sleep(0.002)
                for entry in [entry for entry in live if entry[1].closed]:
                    live.remove(entry)
                    finished.append((entry[1], False))
            await asyncio.sleep(0.7)  # every fault switched back off
            # no client left waiting: each has every packet answered or was told it ended
            await until(lambda: all(sink.closed or len(sink.answers) == len(sent) for _, sink, sent in live),
                        STALL_BOUND + 3, "every live client answered or told")
            counters = pool.counters
            assert counters.relay_link_failures + counters.relay_clients_closed_by_relay > 5
            assert counters.ext_connections_created > 50 and counters.tot_forwarded_responses > 100
            await pool.close()
            for _, sink, _ in live:
                assert sink.closed is not None
            assert all(by_us or sink.closed for sink, by_us in finished)
            assert all(sink.events_after_close == 0 for sink, _ in finished)
            assert_empty(pool, counters)
        finally:
            await setup.stop()
    run(go(), timeout=60)
