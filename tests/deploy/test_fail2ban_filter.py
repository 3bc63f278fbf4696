"""The shipped fail2ban filter against the log of real rejected handshakes: the right addresses, no others."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mtproxy.host import templates
from mtproxy.protocol.secret import parse_secret
from mtproxy.testkit.client import open_client
from mtproxy.testkit.process import ProxyProcess, free_port
from mtproxy.testkit.servers import FakeDc

pytestmark = pytest.mark.netns
SECRET = "dd0123456789abcdef0123456789abcdef"


def _send(family: socket.AddressFamily, src: str, dst: str, port: int, payload: bytes) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.bind((src, 0))
        sock.connect((dst, port))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass


async def _good_session(port: int) -> None:
    client = await open_client("127.0.0.1", port, parse_secret(SECRET), timeout=5)
    await client.send(b"x" * 1000)
    assert await client.recv_exactly(1000) == b"x" * 1000
    await client.close()


def test_filter_finds_exactly_the_rejected_clients(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    filter_file = tmp_path / "mtproxy.conf"
    filter_file.write_text(templates.fail2ban_filter())
    log_file = tmp_path / "mtproxy.log"
    port = free_port()

    async def scenario() -> None:
        dc = FakeDc()
        dc_port = await dc.start()
        proxy = ProxyProcess(["-H", str(port), "-S", SECRET, "--no-mask", "-p", "0",
                              "--dc-override", f"*=127.0.0.1:{dc_port}", "--log-file", str(log_file)],
                             tmp_path / "stderr.log")
        try:
            await asyncio.to_thread(proxy.wait_ready)
            await _good_session(port)
            bad = [
                (socket.AF_INET, "127.0.0.2", "127.0.0.1", os.urandom(64)),
                (socket.AF_INET, "127.0.0.2", "127.0.0.1", os.urandom(64)),
                (socket.AF_INET, "127.0.0.2", "127.0.0.1", os.urandom(64)),
                (socket.AF_INET, "127.0.0.3", "127.0.0.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40)),
                (socket.AF_INET6, "::1", "::1", os.urandom(64)),
            ]
            for family, src, dst, payload in bad:
                await asyncio.to_thread(_send, family, src, dst, port, payload)
            await asyncio.to_thread(proxy.wait_log, "rejected handshake", len(bad))
            await _good_session(port)
        finally:
            proxy.stop()
            await dc.close()

    asyncio.run(scenario())
    log = log_file.read_text()
    assert log.count("rejected handshake") == 5, log
    out = subprocess.run(["fail2ban-regex", "-o", "ip", str(log_file), str(filter_file)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    found = Counter(line.strip() for line in out.splitlines() if line.strip())
    assert found == {"127.0.0.2": 3, "127.0.0.3": 1, "::1": 1}, (out, log)


def test_filter_ignores_lookalike_lines(tmp_path: Path) -> None:
    """Only the exact engine format counts; other mtproxy lines and injected text do not match."""
    log_file = tmp_path / "mtproxy.log"
    log_file.write_text(
        "2026-11-25T21:30:00Z mtproxy[7]: rejected handshake from 203.0.113.5 port 5 on 0.0.0.0:8443: "
        "reason=tls-bad-hmac\n"
        "2026-11-25T21:30:00Z mtproxy[7]: listening on 0.0.0.0:8443\n"
        "2026-11-25T21:30:00Z mtproxy[7]: warning: upstream 198.51.100.7 port 443 refused\n"
        "2026-11-25T21:30:00Z mtproxy[7]: rejected handshake from 198.51.100.9 port 5 on 0.0.0.0:8443: "
        "reason=x from 192.0.2.1\n"
        "2026-11-25T21:30:01Z mtproxy[7]: rejected handshake from 2001:db8::5 port 6 on :::8443: reason=replay\n"
        # --proxy-protocol: the peer of a refused header is the load balancer, never to be banned
        "2026-11-25T21:30:02Z mtproxy[7]: rejected connection from 198.51.100.20 port 7 on 127.0.0.1:8444: "
        "reason=proxy-header-missing (no PROXY protocol header: the connection starts with byte 0x16)\n"
    )
    filter_file = tmp_path / "mtproxy.conf"
    filter_file.write_text(templates.fail2ban_filter())
    out = subprocess.run(["fail2ban-regex", "-o", "ip", str(log_file), str(filter_file)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert sorted(out.split()) == ["2001:db8::5", "203.0.113.5"]
