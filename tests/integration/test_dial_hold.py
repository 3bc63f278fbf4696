"""What a client sends while its DC is still being dialled: the session keeps reading it (up to a bound,
then reading pauses: what it did not read is still in the sockets' queues) and the DC gets all of it, in
order, behind the header, then the client's EOF.

The DC's connect is held up in the kernel: its listening socket has a backlog of one, filled by a
connection nobody accepts, so the proxy's SYN is dropped until the test accepts that filler (the SYN is
retried after a second)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from mtproxy.protocol import obfs2
from mtproxy.protocol.secret import Secret
from mtproxy.runtime.session import DIAL_HOLD
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import PEER_AES, open_client, secret_for_mode
from mtproxy.testkit.process import free_port

from .conftest import ProxyFactory, run

DIAL_TIME = 0.5  # seconds the client sends into a dial that cannot finish yet


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """The kernel's send and receive queues (bytes) of the loopback TCP socket local_port -> remote_port."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                tx, rx = queues.split(":")
                return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no TCP socket {local_port} -> {remote_port}")


async def read_to_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> bytes:
    got = bytearray()
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 18), timeout)
        if not chunk:
            return bytes(got)
        got += chunk


@pytest.mark.parametrize(("mode", "size"), [("classic", 1000), ("classic", 600_000), ("ee", 600_000)])
def test_bytes_sent_while_the_dc_is_dialled_arrive_in_order(
        start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret, tmp_path: Path, mode: str,
        size: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    listener.setblocking(False)
    dc_port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", dc_port), timeout=5)  # the backlog is full from now on
    port = free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--allow-classic", "--listen", f"127.0.0.1:{port}",
                        "--dc-override", f"*=127.0.0.1:{dc_port}", "--mask", f"127.0.0.1:{peers.mask_port}",
                        "--state-file", str(tmp_path / "state.json"), base=False, port=port)
    first, rest = os.urandom(100), os.urandom(size)

    async def scenario() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        client = await open_client("127.0.0.1", proxy.port, secret_for_mode(secret, mode))
        try:
            await client.send(first)
            await asyncio.sleep(0.05)  # the handshake's read and the dial are under way
            sent = client.conn.encrypt(rest)
            client.writer.write(sent)  # more than the hold: the proxy stops reading
            client.writer.write_eof()
            await asyncio.sleep(DIAL_TIME)
            own_port = client.writer.get_extra_info("sockname")[1]
            unsent, _ = tcp_queues(own_port, proxy.port)
            _, unread = tcp_queues(proxy.port, own_port)
            taken = len(sent) - client.writer.transport.get_write_buffer_size() - unsent - unread
            held, _ = await loop.sock_accept(listener)  # the filler: the proxy's retried SYN gets through
            held.close()
            dc, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
            with dc:
                dc.setblocking(False)
                received = await read_to_eof(loop, dc, 10)
        finally:
            await client.close()
        decoded = obfs2.decode_init(received[: obfs2.INIT_SIZE], None, PEER_AES)
        assert decoded is not None
        return decoded.from_initiator.update(received[obfs2.INIT_SIZE:]), taken

    try:
        got, taken = run(scenario())
    finally:
        filler.close()
        listener.close()
    assert got == first + rest
    assert 0 < taken <= DIAL_HOLD  # what the proxy read of it while dialling (the rest waited in the kernel)
    assert proxy.proc.poll() is None
