"""A flood of clients no hint identifies (random inits, hellos of no secret) against an engine with thousands of
secrets: their scans wait for the worker's --scan-budget, so a returning user's handshakes keep succeeding;
those the budget cannot serve before the handshake timeout go to the mask with every byte they sent."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import open_client
from mtproxy.testkit.servers import MASK_BANNER, expected_mask_reply

from .conftest import ProxyFactory, run
from .test_limits import wait_stat

SECRETS = 2000
HANDSHAKE_TIMEOUT = 3.0
# 2 ms of CPU a second: in the native library a scan of 2,000 dd secrets takes ~0.1-0.3 ms with its
# handshake step, so a handshake timeout (3 s) serves a few dozen scans at most (the first estimate, 2 µs
# per trial, is dearer still)
BUDGET = 0.002
GARBAGE = 120  # far more than the budget serves in a handshake timeout


async def garbage_client(port: int, data: bytes, source: str) -> bytes:
    """Send like a prober on a fresh address, wait for the site's answer, half-close, return all it said."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(data)
        # the mask answers at once, whenever the engine hands us over (at the latest at the handshake timeout)
        banner = await asyncio.wait_for(reader.readexactly(len(MASK_BANNER)), HANDSHAKE_TIMEOUT + 10)
        writer.write_eof()
        return banner + await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_a_flood_of_unhinted_clients_does_not_starve_a_returning_user(start_proxy: ProxyFactory,
                                                                      peers: BackgroundPeers) -> None:
    keys = [os.urandom(16) for _ in range(SECRETS)]
    user = Secret(keys[SECRETS // 2], SecretKind.PADDED)
    flags = [a for key in keys for a in ("-S", "dd" + key.hex())]
    proxy = start_proxy(*flags, "--scan-budget", str(BUDGET), "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
                        "--max-unauthenticated-per-ip", "0",
                        env={"MTPROXY_KEYSTREAM": "native"})  # the figures above are the native scan's
    probes = [b"\x01" + os.urandom(199) for _ in range(GARBAGE - 10)]
    probes += [core.build_client_hello(os.urandom(16), "example.com", os.urandom, time.time()) for _ in range(10)]

    async def user_session() -> None:
        client = await open_client("127.0.0.1", proxy.port, user, timeout=HANDSHAKE_TIMEOUT)
        await client.send(b"u" * 64)
        assert await client.recv_exactly(64) == b"u" * 64
        await client.close()

    async def scenario() -> list[bytes | BaseException]:
        await user_session()  # no hint yet: its scan runs at once, then its address names its secret
        flood = [asyncio.ensure_future(garbage_client(proxy.port, data, f"127.0.1.{i % 200 + 1}"))
                 for i, data in enumerate(probes)]
        await asyncio.sleep(0)  # the connections are under way
        for _ in range(20):  # each within the handshake timeout, or the engine would have masked it
            await user_session()
        return await asyncio.gather(*flood, return_exceptions=True)

    replies = run(scenario(), timeout=120)
    assert replies == [expected_mask_reply(data) for data in probes]  # the site saw every byte they sent
    stats = wait_stat(proxy.stats_port, "masked_connections", GARBAGE, 10)
    busy = int(stats["handshake_failures_scan-busy"])
    scanned = int(stats["handshake_failures_unknown-secret"]) + int(stats["handshake_failures_tls-bad-hmac"])
    assert busy > 0 and scanned > 0 and busy + scanned == GARBAGE
    assert int(stats["handshakes_ok"]) == 21
    assert int(stats["secret_scans"]) == scanned + 1  # the user's first handshake scanned too
    assert stats["secret_scans_waiting"] == "0"
    assert "reason=scan-busy" in proxy.log
    assert wait_stat(proxy.stats_port, "active_connections", 0, 10)["active_connections"] == "0"
