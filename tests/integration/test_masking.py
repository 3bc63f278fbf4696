"""Everything that does not authenticate reaches the mask site byte for byte, with one reject log line."""

from __future__ import annotations

import os
import re
import time

import pytest

from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import PEER_AES, open_client, secret_for_mode, send_raw
from mtproxy.testkit.process import free_port
from mtproxy.testkit.servers import MASK_BANNER, expected_mask_reply

from .conftest import DOMAIN, ProxyFactory, run

REJECT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ mtproxy\[(\d+)\]: rejected handshake from 127\.0\.0\.1 port (\d+) "
    r"on 127\.0\.0\.1:(\d+): reason=([a-z-]+)$",
    re.M,
)


def hello(key: bytes, domain: str = DOMAIN, skew: float = 0.0) -> bytes:
    return core.build_client_hello(key, domain, os.urandom, time.time() + skew)


def probe(peers: BackgroundPeers, port: int, data: bytes) -> None:
    """Send like a prober, half-close, and check the site's answer and what the site received."""
    before = len(peers.mask.received)
    reply = run(send_raw("127.0.0.1", port, data))
    assert reply == expected_mask_reply(data)
    assert peers.wait_mask_connections(before + 1)[before] == data


def reasons(log: str) -> list[str]:
    return [m.group(4) for m in REJECT_LINE.finditer(log)]


CASES = {
    "wrong-secret": ("unknown-secret", lambda s: core.ClientConnection(
        Secret(os.urandom(16), SecretKind.PADDED), os.urandom, time.time(), aes=PEER_AES).first_bytes()
        + os.urandom(100)),
    "random-bytes": ("unknown-secret", lambda s: os.urandom(300)),
    "http": ("unknown-secret", lambda s: b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\n"
                                          b"Accept: */*\r\n\r\n"),
    "bad-hmac": ("tls-bad-hmac", lambda s: hello(os.urandom(16))),
    "large-skew": ("tls-skew", lambda s: hello(s.key, skew=-3600)),
    "future-skew": ("tls-skew", lambda s: hello(s.key, skew=+3600)),
    "wrong-sni": ("tls-bad-sni", lambda s: hello(s.key, domain="other.example.org")),
    "short-then-eof": ("handshake-eof", lambda s: b"\x01\x02\x03\x04\x05"),
    "tls-garbage": ("tls-malformed", lambda s: b"\x16\x03\x01\x00\x80" + os.urandom(0x80)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_reaches_mask_byte_for_byte(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                          case: str) -> None:
    reason, make = CASES[case]
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    probe(peers, proxy.port, make(secret))
    log = proxy.wait_log("rejected handshake")
    assert reasons(log) == [reason]
    assert secret.key.hex() not in log


def test_replayed_hello_goes_to_mask(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex())

    async def first() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, secret)
        await client.send(b"ping" * 4)
        assert await client.recv_exactly(16) == b"ping" * 4
        await client.close()
        return client.conn._hello

    recorded = run(first())
    probe(peers, proxy.port, recorded)
    assert reasons(proxy.wait_log("rejected handshake")) == ["replay"]


def test_replayed_obfuscated2_init_goes_to_mask(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                 secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic")
    dd = secret_for_mode(secret, "dd")

    async def first() -> bytes:
        client = await open_client("127.0.0.1", proxy.port, dd)
        wire = client.conn.first_bytes()
        await client.send(b"x" * 8)
        assert await client.recv_exactly(8) == b"x" * 8
        await client.close()
        return wire

    init = run(first())
    probe(peers, proxy.port, init + b"more")
    assert reasons(proxy.wait_log("rejected handshake")) == ["replay"]


def test_fake_tls_only_with_domain(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret) -> None:
    """-D means fake-TLS only: a classic client with the right key is masked (mode-disabled)."""
    proxy = start_proxy("-S", secret.key.hex(), "-D", DOMAIN)
    classic = core.ClientConnection(secret_for_mode(secret, "classic"), os.urandom, time.time(), aes=PEER_AES)
    probe(peers, proxy.port, classic.first_bytes())
    assert reasons(proxy.wait_log("rejected handshake")) == ["mode-disabled"]

    async def tls_client() -> None:  # while an ee client with the same key passes
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, "ee", DOMAIN))
        await client.send(b"abcd")
        assert await client.recv_exactly(4) == b"abcd"
        await client.close()

    run(tls_client())


def test_handshake_timeout_goes_to_mask(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--handshake-timeout", "0.3")
    data = b"\x01\x02\x03"  # too short to decide: the proxy waits, then gives up

    async def slow() -> bytes:
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(data)
        await asyncio.sleep(0.6)
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return reply

    before = len(peers.mask.received)
    assert run(slow()) == expected_mask_reply(data)
    assert peers.wait_mask_connections(before + 1)[before] == data
    assert reasons(proxy.wait_log("rejected handshake")) == ["handshake-timeout"]


def test_mask_unreachable_closes(start_proxy: ProxyFactory, secret: Secret) -> None:
    port = free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask",
                        f"127.0.0.1:{free_port()}", "--cert-size", "2000", base=False, port=port)
    assert run(send_raw("127.0.0.1", port, b"GET / HTTP/1.0\r\n\r\n")) == b""
    assert "mask 127.0.0.1:" in proxy.wait_log("unreachable")


def test_mask_pointing_at_itself_is_refused(tmp_path, secret: Secret) -> None:  # type: ignore[no-untyped-def]
    from mtproxy.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="own"):
        resolve(["--listen", "127.0.0.1:8443", "--mask", "127.0.0.1:8443", "-S", secret.to_hex()])
    with pytest.raises(ConfigError, match="own"):
        resolve(["-H", "8443", "--mask", "127.0.0.1:8443", "-S", secret.to_hex()])


def test_ipv6_listener_logs_bare_address(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port("::1")
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"[::1]:{port}", "--mask", f"127.0.0.1:{peers.mask_port}",
                        "--cert-size", "2000", "--state-file", str(tmp_path / "s.json"), base=False, port=port)
    data = os.urandom(200)
    assert run(send_raw("::1", port, data)) == expected_mask_reply(data)
    line = proxy.wait_log("rejected handshake").splitlines()[-1]
    assert re.search(rf"Z mtproxy\[\d+\]: rejected handshake from ::1 port \d+ on ::1:{port}: reason=unknown-secret$",
                     line), line


def test_short_http_probe_is_masked_at_once(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                            secret: Secret) -> None:
    """A 19-byte request without a half-close must reach the site now, not after the handshake timeout."""
    import asyncio

    proxy = start_proxy("-S", secret.to_hex(), "--handshake-timeout", "10")
    data = b"GET / HTTP/1.0\r\n\r\n"

    async def scenario() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(data)
        banner = await asyncio.wait_for(reader.readexactly(len(MASK_BANNER)), 5)
        assert banner == MASK_BANNER
        writer.close()
        return time.monotonic() - started

    assert run(scenario()) < 3
    assert reasons(proxy.wait_log("rejected handshake")) == ["unknown-secret"]


def test_reject_lines_also_in_log_file(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    log_file = tmp_path / "logs" / "mtproxy.log"
    proxy = start_proxy("-S", secret.to_hex(), "--log-file", str(log_file))
    probe(peers, proxy.port, os.urandom(100))
    proxy.wait_log("rejected handshake")
    assert reasons(log_file.read_text()) == ["unknown-secret"]


def test_hello_in_pieces_dials_the_mask_early_and_sends_it_nothing(start_proxy: ProxyFactory,
                                                                    peers: BackgroundPeers, secret: Secret) -> None:
    """A first piece that does not decide the handshake has the mask dialled at once (so a refused client's
    site counts its timeouts from about when the client connected); a client that then authenticates is
    served, and that leg closes having carried nothing."""
    import asyncio

    proxy = start_proxy("-S", secret.to_hex())
    before = len(peers.mask.received)

    async def scenario() -> None:
        conn = core.ClientConnection(secret, os.urandom, time.time(), aes=PEER_AES)
        first = conn.first_bytes()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(first[:100])
        await asyncio.sleep(0.3)  # the early leg is dialled meanwhile
        writer.write(first[100:])
        while not conn.ready:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, "the proxy closed during the handshake"
            conn.feed_handshake(chunk)
        writer.write(conn.encrypt(b"pieces"))
        echoed = b""
        while len(echoed) < 6:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk
            echoed += conn.decrypt(chunk)
        assert echoed == b"pieces"
        writer.close()

    run(scenario())
    assert peers.wait_mask_connections(before + 1)[before:] == [b""]
    assert "rejected handshake" not in proxy.log


def test_site_that_speaks_first_is_heard_at_once(start_proxy: ProxyFactory, secret: Secret,
                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A site that greets before its client speaks is heard, through the leg dialled while the hello is still
    undecided, when its own client would hear it, not after our handshake timeout; then it gets what the
    client sent."""
    import asyncio

    site_port, port = free_port(), free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask", f"127.0.0.1:{site_port}",
                        "--cert-size", "2000", "--handshake-timeout", "10", "--state-file", str(tmp_path / "s.json"),
                        base=False, port=port)

    async def scenario() -> tuple[bytes, float, bytes]:
        heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 ready\r\n")
            heard.set_result(await asyncio.wait_for(reader.read(100), 5))
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", site_port)
        try:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01")  # a hello's first bytes: undecided
            banner = await asyncio.wait_for(reader.readexactly(11), 5)
            took = time.monotonic() - started
            got = await asyncio.wait_for(heard, 5)
            writer.close()
            return banner, took, got
        finally:
            server.close()

    banner, took, got = run(scenario())
    assert banner == b"220 ready\r\n"
    assert took < 3  # the handshake timeout is 10 s
    assert got == b"\x16\x03\x01"
    assert reasons(proxy.wait_log("rejected handshake")) == ["handshake-timeout"]
