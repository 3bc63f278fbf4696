"""A relayed client that leaves is announced to its relay as the official proxy announces it: RPC_CLOSE_CONN
with its conn id (Telegram's MTProxy sources, mtproto/mtproto-proxy.c: mtproto_ext_rpc_close ->
remove_ext_connection(Ex, 1) -> _notify_remote_closed). RPC_CLOSE_EXT is the other direction, the relay's
word that it closed a session; a relay does not know it from a proxy (rpcc_execute takes it as an answer)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from mtproxy.protocol import obfs2
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.testkit.background import BackgroundRelays

from .conftest import ProxyFactory, run
from .test_middle_proxy import packet, relays_ready, session, stats_json


def test_a_client_that_leaves_is_announced_with_rpc_close_conn(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    relays = BackgroundRelays(os.urandom(128), dc_ids=(2,)).start()
    try:
        files = relays.write_files(tmp_path / "relays")
        key = os.urandom(16)
        proxy = start_proxy("-S", key.hex(), "--aes-pwd", str(files.secret), str(files.config))
        relay = relays.relay(2)
        assert relays_ready(proxy, {2})

        async def one(reset: bool) -> None:
            framed = await session(proxy.port, Secret(key, SecretKind.CLASSIC), obfs2.TAG_INTERMEDIATE)
            sent = packet(64)
            await framed.send(sent)
            assert await framed.recv() == sent
            if reset:  # gone at once: an RST
                sock = framed.client.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await framed.client.close()

        run(one(reset=True))
        run(one(reset=False))
        left = [(r.link, r.conn_id) for r in relay.requests]
        assert len(left) == 2
        # at once, FIN or RST: the relay protocol has no half-close (the default --halfclose-timeout is 15 s)
        assert relays.wait(lambda: len(relay.closes_from_proxy) == 2, timeout=3), (list(relay.errors),
                                                                                  proxy.log[-2000:])
        assert sorted(relay.closes_from_proxy) == sorted(left)
        assert not relay.errors, list(relay.errors)
        assert stats_json(proxy.stats_port)["middle"]["counters"]["ext_connections"] == 0
    finally:
        relays.stop()
