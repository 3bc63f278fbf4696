"""The engine through fake middle-proxy relays (testkit/fakerelay.py, written apart from the engine's codec):
client packets out as RPC_PROXY_REQ with the ad tag, answers back in the client's own transport, quick
acks, the modes that choose who goes through the relays, the fallback to direct while a DC's relays are
down and the return once one is back, and the official /stats keys."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mtproxy.paths import Paths
from mtproxy.protocol import obfs2
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.protocol.transport import encode_frame
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers, BackgroundRelays
from mtproxy.testkit.client import ProxyClient, open_client
from mtproxy.testkit.fakerelay import quick_ack_token

from .conftest import DOMAIN, ProxyFactory, run

RELAY_SECRET = os.urandom(128)
TAG_A, TAG_B = bytes(range(16)), bytes(range(16, 32))
TRANSPORTS = {"abridged": obfs2.TAG_ABRIDGED, "intermediate": obfs2.TAG_INTERMEDIATE, "padded": obfs2.TAG_PADDED}


@pytest.fixture(scope="module")
def relays() -> Iterator[BackgroundRelays]:
    started = BackgroundRelays(RELAY_SECRET, dc_ids=(2, 4)).start()
    yield started
    started.stop()


def stats_json(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5) as response:
        return dict(json.load(response))


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def packet(size: int) -> bytes:
    """An encrypted MTProto packet as the relay path forwards it: a non-zero auth_key_id, 4-byte words."""
    return b"\x01" * 8 + os.urandom(size - 8)


class Framed:
    """A client speaking one MTProto transport through the proxy."""

    def __init__(self, client: ProxyClient, tag: bytes) -> None:
        self.client, self.tag = client, tag

    async def send(self, data: bytes, quick_ack: bool = False) -> None:
        frame = bytearray(encode_frame(self.tag, data))
        if quick_ack:
            if self.tag == obfs2.TAG_ABRIDGED:
                frame[0] |= 0x80
            else:
                frame[3] |= 0x80
        await self.client.send(bytes(frame))

    async def recv(self) -> bytes:
        client = self.client
        if self.tag == obfs2.TAG_ABRIDGED:
            words = (await client.recv_exactly(1))[0] & 0x7F
            if words == 0x7F:
                words = int.from_bytes(await client.recv_exactly(3), "little")
            return await client.recv_exactly(words * 4)
        length = int.from_bytes(await client.recv_exactly(4), "little") & 0x7FFFFFFF
        return await client.recv_exactly(length)


async def session(port: int, secret: Secret, tag: bytes, dc_id: int = 2) -> Framed:
    client = await open_client("127.0.0.1", port, secret, tag=tag, dc_id=dc_id)
    client.timeout = 10
    return Framed(client, tag)


def test_every_transport_round_trips_through_the_relay(start_proxy: ProxyFactory, relays: BackgroundRelays,
                                                       peers: BackgroundPeers, tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "-P", TAG_A.hex(), "--aes-pwd", str(files.secret), str(files.config))
    proxy.wait_log("middle proxy: 2 relays for 2 DC ids")
    assert relays_ready(proxy, {2, 4})
    direct_before = peers.dc.connections
    sizes = [28, 124, 508, 512, 4096, 70000, 600000]

    async def one(mode: str, tag: bytes, dc_id: int) -> None:
        secret = Secret(key, SecretKind.FAKE_TLS, DOMAIN) if mode == "ee" else Secret(
            key, SecretKind.PADDED if tag == obfs2.TAG_PADDED else SecretKind.CLASSIC)
        framed = await session(proxy.port, secret, tag, dc_id)
        for size in sizes:
            sent = packet(size)
            await framed.send(sent)
            got = await framed.recv()
            # a padded client's answer may carry up to 3 bytes of padding (as the official proxy adds)
            assert got[:size] == sent and len(got) - size <= (3 if tag == obfs2.TAG_PADDED else 0)
        await framed.client.close()

    async def scenario() -> None:
        await one("classic", obfs2.TAG_ABRIDGED, 2)
        await one("classic", obfs2.TAG_INTERMEDIATE, 4)
        await one("dd", obfs2.TAG_PADDED, 2)
        await one("ee", obfs2.TAG_INTERMEDIATE, -4)  # a media DC without relays of its own: the default's

    run(scenario(), timeout=60)
    assert peers.dc.connections == direct_before  # nothing went direct
    requests = [*relays.relay(2).requests, *relays.relay(4).requests]
    assert len(requests) == 4 * len(sizes)
    assert {r.ad_tag for r in requests} == {TAG_A}
    assert {r.remote[0] for r in requests} == {"127.0.0.1"}
    assert {r.local for r in requests} == {("127.0.0.1", proxy.port)}
    flags = {r.flags & 0x60000000 for r in requests}
    assert flags == {0x40000000, 0x20000000}  # abridged, and intermediate/padded
    snap = stats_json(proxy.stats_port)["middle"]
    assert snap["counters"]["tot_forwarded_queries"] == 4 * len(sizes)
    assert snap["counters"]["tot_forwarded_responses"] == 4 * len(sizes)
    assert {relay["state"] for relay in snap["relays"]} == {"ready"}
    text = fetch(proxy.stats_port, "/stats")
    for key_name in ("tot_forwarded_queries", "tot_forwarded_responses", "ext_connections", "total_ready_targets"):
        assert f"\n{key_name}\t" in text
    metrics = fetch(proxy.stats_port, "/metrics")
    assert "mtproxy_middle_tot_forwarded_queries_total 28.0" in metrics
    assert 'mtproxy_middle_relay_ready_links{dc="2"' in metrics
    # each client's close reached its relay as RPC_CLOSE_EXT, and the pools forgot them
    assert wait_for(lambda: len(relays.relay(2).closes_from_proxy) + len(relays.relay(4).closes_from_proxy) >= 4)
    assert stats_json(proxy.stats_port)["middle"]["counters"]["ext_connections"] == 0


def test_quick_ack_comes_back_in_the_client_transport(start_proxy: ProxyFactory, relays: BackgroundRelays,
                                                      tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "--aes-pwd", str(files.secret), str(files.config))
    proxy.wait_log("ready:")
    assert relays_ready(proxy, {2})

    async def scenario(tag: bytes) -> None:
        framed = await session(proxy.port, Secret(key, SecretKind.CLASSIC), tag)
        sent = packet(64)
        await framed.send(sent, quick_ack=True)
        token = struct.pack("<I", quick_ack_token(sent))
        # the token first, raw (no length), byte-reversed for abridged: its high bit leads either way
        got = await framed.client.recv_exactly(4)
        assert got == (token[::-1] if tag == obfs2.TAG_ABRIDGED else token)
        assert await framed.recv() == sent
        await framed.client.close()

    run(scenario(obfs2.TAG_ABRIDGED))
    run(scenario(obfs2.TAG_INTERMEDIATE))
    flagged = [r for r in relays.relay(2).requests if r.flags & 0x80000000]
    assert len(flagged) >= 2


@pytest.mark.parametrize("records", ["shaped", "plain"])
def test_fake_tls_records_through_the_relay(start_proxy: ProxyFactory, relays: BackgroundRelays, tmp_path: Path,
                                            records: str) -> None:
    """--tls-records on the relay path: shaped, the 4-byte quick ack the relay sends just before the answer
    goes out with it (no record under 17 bytes) and full records are 16,401 bytes; plain, the quick ack is a
    4-byte record of its own and full records 16,384."""
    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "--middle-proxy", "on", "--tls-records", records, "--aes-pwd",
                        str(files.secret), str(files.config))
    proxy.wait_log("ready:")
    assert relays_ready(proxy, {2})

    async def scenario() -> tuple[list[int], bytes, bytes]:
        framed = await session(proxy.port, Secret(key, SecretKind.FAKE_TLS, DOMAIN), obfs2.TAG_INTERMEDIATE)
        client = framed.client
        raw, plain, sizes = bytearray(), bytearray(), []
        expected = b""
        for one in (packet(64), packet(100_000), packet(64)):  # one at a time: answers and acks stay in order
            await framed.send(one, quick_ack=True)
            expected += struct.pack("<I", quick_ack_token(one)) + len(one).to_bytes(4, "little") + one
            while len(plain) < len(expected):
                chunk = await asyncio.wait_for(client.reader.read(1 << 18), 10)
                assert chunk, "closed early"
                raw += chunk
                while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
                    size = int.from_bytes(raw[3:5], "big")
                    sizes.append(size)
                    plain += client.conn.decrypt(bytes(raw[: 5 + size]))
                    del raw[: 5 + size]
        await client.close()
        return sizes, bytes(plain), expected

    sizes, plain, expected = run(scenario())
    assert plain == expected
    if records == "shaped":
        assert min(sizes) >= 17 and max(sizes) == 16401
    else:
        assert 4 in sizes and max(sizes) == 16384


def test_a_packet_the_official_would_not_forward_is_dropped(start_proxy: ProxyFactory, relays: BackgroundRelays,
                                                            tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "--aes-pwd", str(files.secret), str(files.config))
    assert relays_ready(proxy, {2})

    async def scenario() -> None:
        framed = await session(proxy.port, Secret(key, SecretKind.CLASSIC), obfs2.TAG_INTERMEDIATE)
        await framed.send(bytes(8) + os.urandom(24))  # no auth key and not a key-exchange call
        sent = packet(40)
        await framed.send(sent)
        assert await framed.recv() == sent  # the next one still goes
        await framed.client.close()

    run(scenario())
    assert stats_json(proxy.stats_port)["middle"]["counters"]["client_packets_refused"] == 1


class ConfigServer:
    """core.telegram.org's three documents served from loopback (--relay-config-url)."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                body = server.documents.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_auto_relays_only_clients_with_an_ad_tag_fetching_the_config(
        start_proxy: ProxyFactory, relays: BackgroundRelays, peers: BackgroundPeers, tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "relays")
    served = ConfigServer({"getProxySecret": files.secret.read_bytes(), "getProxyConfig": files.config.read_bytes()})
    tagged, plain = os.urandom(16), os.urandom(16)
    store = tmp_path / "secrets.json"
    write_store(store, StoreData((
        replace(SecretRecord.from_secret("tagged", Secret(tagged, SecretKind.CLASSIC)), ad_tag=TAG_B.hex()),
        SecretRecord.from_secret("plain", Secret(plain, SecretKind.CLASSIC)))))
    try:
        proxy = start_proxy("--secrets-file", str(store), "--relay-config-url", f"http://127.0.0.1:{served.port}")
        proxy.wait_log("middle proxy: 2 relays")
        assert {"/getProxySecret", "/getProxyConfig", "/getProxyConfigV6"} <= set(served.hits)
        assert relays_ready(proxy, {2})
        before_relay, before_direct = len(relays.relay(2).requests), peers.dc.connections

        async def scenario() -> None:
            for key in (tagged, plain):
                framed = await session(proxy.port, Secret(key, SecretKind.CLASSIC), obfs2.TAG_INTERMEDIATE)
                sent = packet(100)
                await framed.send(sent)
                assert await framed.recv() == sent
                await framed.client.close()

        run(scenario())
        fresh = list(relays.relay(2).requests)[before_relay:]
        assert [r.ad_tag for r in fresh] == [TAG_B]  # the tagged one through the relay, with its own tag
        assert peers.dc.connections == before_direct + 1  # the other direct
        cached = tmp_path / "relay" / "proxy-multi.conf"
        assert cached.read_bytes() == files.config.read_bytes()  # kept for a start without Telegram
    finally:
        served.close()


def test_a_dc_whose_relays_are_down_goes_direct_and_comes_back(
        start_proxy: ProxyFactory, peers: BackgroundPeers, tmp_path: Path) -> None:
    relays = BackgroundRelays(RELAY_SECRET, dc_ids=(2,)).start()
    try:
        files = relays.write_files(tmp_path / "relays")
        key = os.urandom(16)
        proxy = start_proxy("-S", key.hex(), "--middle-proxy", "on", "--aes-pwd", str(files.secret),
                            str(files.config))
        assert relays_ready(proxy, {2})

        async def one() -> None:
            framed = await session(proxy.port, Secret(key, SecretKind.CLASSIC), obfs2.TAG_ABRIDGED)
            sent = packet(256)
            await framed.send(sent)
            assert await framed.recv() == sent
            await framed.client.close()

        run(one())
        assert len(relays.relay(2).requests) == 1
        port = relays.ports[2]
        relays.call(relays.relay(2).stop())  # every link ends, and new ones are refused
        proxy.wait_log("all relays down")
        assert stats_json(proxy.stats_port)["middle"]["dcs_down"] == [2]
        before = peers.dc.connections
        run(one())  # served all the same: direct
        assert peers.dc.connections == before + 1
        relays.call(relays.relay(2).start("127.0.0.1", port))
        proxy.wait_log("relays back up", timeout=40)
        run(one())
        assert len(relays.relay(2).requests) == 2 and peers.dc.connections == before + 1  # through the relay again
        snap = stats_json(proxy.stats_port)["middle"]
        assert snap["dcs_down"] == [] and snap["counters"]["relay_fallback_direct"] == 1
    finally:
        relays.stop()


def relays_ready(proxy: Any, dcs: set[int]) -> bool:
    """The engine (not only the relay) has a ready link to the relays of `dcs`: clients will take them."""
    def ready() -> bool:
        middle = stats_json(proxy.stats_port).get("middle") or {}
        return dcs <= {relay["dc"] for relay in middle.get("relays", []) if relay["state"] == "ready"}
    return wait_for(ready)


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    async def waiting() -> bool:
        for _ in range(int(timeout / 0.05)):
            if condition():
                return True
            await asyncio.sleep(0.05)
        return bool(condition())
    return asyncio.run(waiting())



@pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian's haproxy is not installed")
def test_behind_haproxy_the_relay_is_told_the_real_client_and_address(
        start_proxy: ProxyFactory, relays: BackgroundRelays, tmp_path: Path) -> None:
    """With --proxy-protocol the relay gets the client and the address it connected to from the header, not
    HAProxy's hop (RPC_PROXY_REQ's two addresses)."""
    from .test_proxy_protocol import Haproxy

    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "-P", TAG_A.hex(), "--proxy-protocol", "--aes-pwd", str(files.secret),
                        str(files.config))
    front = Haproxy(tmp_path, proxy.port, "send-proxy-v2")
    assert relays_ready(proxy, {2})
    before = len(relays.relay(2).requests)

    async def scenario() -> None:
        client = await open_client("127.0.0.1", front.port, Secret(key, SecretKind.CLASSIC),
                                   tag=obfs2.TAG_INTERMEDIATE, source="127.0.0.7")
        framed = Framed(client, obfs2.TAG_INTERMEDIATE)
        sent = packet(200)
        await framed.send(sent)
        assert await framed.recv() == sent
        await client.close()

    try:
        run(scenario())
    finally:
        front.stop()
    request = list(relays.relay(2).requests)[before]
    assert request.remote[0] == "127.0.0.7" and request.local == ("127.0.0.1", front.port)


def test_a_client_that_never_reads_its_answers_is_closed(start_proxy: ProxyFactory, relays: BackgroundRelays,
                                                         tmp_path: Path) -> None:
    """The relay link is shared: it cannot be paused for one client, so the answers a client leaves unread
    are bounded (MIDDLE_BACKLOG, 8 MiB) and the client closed past it; the link and others go on."""
    files = relays.write_files(tmp_path / "relays")
    key = os.urandom(16)
    proxy = start_proxy("-S", key.hex(), "--aes-pwd", str(files.secret), str(files.config))
    assert relays_ready(proxy, {2})

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, Secret(key, SecretKind.CLASSIC),
                                   tag=obfs2.TAG_INTERMEDIATE, rcvbuf=4096)
        client.timeout = 20
        framed = Framed(client, obfs2.TAG_INTERMEDIATE)
        big = packet(1_000_000)
        try:
            for _ in range(24):  # 24 MB of answers asked for, none read
                await framed.send(big)
        except (ConnectionError, OSError):
            pass  # closed while still sending: what is tested
        await asyncio.get_running_loop().run_in_executor(None, proxy.wait_log, "leaves its answers unread")
        await client.close()
        other = await session(proxy.port, Secret(key, SecretKind.CLASSIC), obfs2.TAG_INTERMEDIATE)
        sent = packet(64)
        await other.send(sent)
        assert await other.recv() == sent
        await other.client.close()

    run(scenario(), timeout=60)
    assert wait_for(lambda: stats_json(proxy.stats_port)["middle"]["counters"]["ext_connections"] == 0)


def test_mtproxy_stats_shows_the_relay_path(start_proxy: ProxyFactory, relays: BackgroundRelays,
                                            tmp_path: Path) -> None:
    files = relays.write_files(tmp_path / "relays")
    root = tmp_path / "root"
    paths = Paths(root)
    write_store(paths.secrets_file, StoreData((SecretRecord.from_secret("s", Secret(os.urandom(16),
                                                                                    SecretKind.CLASSIC)),)))
    proxy = start_proxy("--secrets-file", str(paths.secrets_file), "--aes-pwd", str(files.secret),
                        str(files.config))
    assert relays_ready(proxy, {2, 4})
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "stats_port": proxy.stats_port}))
    shown = subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "--root", str(root), "stats"],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    assert "middle proxy: 0 clients over relays, 2 of 2 relays ready, DCs down: -, 0 went direct" in shown.stdout
