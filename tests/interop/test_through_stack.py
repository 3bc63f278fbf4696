"""TDLib through the whole stack a VPN server gives the proxy: Debian's HAProxy on the public port routing the
proxy's fake-TLS SNI (the block `mtproxy setup --behind-haproxy` writes) with send-proxy-v2, the engine on a
loopback port with --proxy-protocol, its DC leg through Debian's dante (--upstream socks5://), the fake DC.

Pass: TDLib's ping comes back and its key exchange reaches the DC, every DC connection came from dante's
address, the other SNI still reaches the stack's own backend, and a bad client's reject line names that
client's address — which is what the shipped fail2ban filter then bans, never HAProxy's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.host import haproxy, templates
from mtproxy.protocol.client import build_client_hello
from mtproxy.testkit.haproxy import HaproxyProcess
from mtproxy.testkit.process import free_port
from mtproxy.testkit.socks import Dante

from .conftest import DOMAIN, StartProxy, default_keys
from .fake_dc import FakeDC
from .tdlib_client import run_tdlib
from .test_tdlib import assert_got_through

HAPROXY = shutil.which("haproxy")
WAIT = 10.0
DANTE_EXTERNAL = "127.0.0.2"  # dante dials out from here: the DC can tell the leg came through it
BAD_CLIENT = "127.0.0.5"
SITE = "site.example.net"  # the stack's own site, routed to its own backend

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.skipif(HAPROXY is None or not Dante.available(),
                       reason="needs Debian's haproxy and dante-server (scripts/install-test-deps)"),
]

STACK = """global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend vless_443
    bind 127.0.0.1:{public}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend site if {{ req.ssl_sni -i {site} }}
    default_backend xray

backend xray
    server xray 127.0.0.1:{xray_port}

backend site
    server site 127.0.0.1:{site_port}
"""


class StackSite:
    """The stack's own backend (Xray or a site): accepts in a thread, notes each connection's first bytes,
    answers with its name."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.first: list[bytes] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(WAIT)
                try:
                    self.first.append(conn.recv(65536))
                    conn.sendall(b"stack site")
                except OSError:
                    pass

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(WAIT)
        self.sock.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[int, StackSite, Dante]]:
    """The stack's HAProxy config (not started yet), its site's backend and a running dante. Xray, the default
    backend, has a backend of its own: HAProxy sends it whatever carries no routed name, such as a client's
    connection closed before its hello (TDLib abandons some), which the site must not be charged with."""
    site, xray = StackSite(), StackSite()
    dante = Dante(tmp_path, free_port(), external=DANTE_EXTERNAL).start()
    public = free_port()
    (tmp_path / "haproxy.cfg").write_text(STACK.format(public=public, site=SITE, site_port=site.port,
                                                       xray_port=xray.port))
    yield public, site, dante
    dante.stop()
    xray.close()
    site.close()


def send_hello(port: int, name: str, source: str = "127.0.0.1") -> bytes:
    """A fake-TLS ClientHello for `name` signed by no secret; what came back before the other side closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(build_client_hello(os.urandom(16), name, os.urandom, time.time()))
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return reply


def test_tdlib_through_haproxy_proxy_protocol_and_socks_upstream(
    stack: tuple[int, StackSite, Dante], start_proxy: StartProxy, fake_dc: FakeDC, tmp_path: Path
) -> None:
    public, site, dante = stack
    log_file = tmp_path / "mtproxy.log"
    proxy = start_proxy(default_keys(), "--proxy-protocol", "--upstream", f"socks5://127.0.0.1:{dante.port}",
                        "--log-file", str(log_file))
    config = tmp_path / "haproxy.cfg"
    # the very edit setup makes in the stack's file (host/haproxy.py), then the real HAProxy runs it
    config.write_text(haproxy.with_block(config.read_text(), [DOMAIN], proxy.port, public_port=public))
    checked = subprocess.run([HAPROXY or "haproxy", "-c", "-f", str(config)], capture_output=True, timeout=WAIT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    balancer = HaproxyProcess(config)
    try:
        run = run_tdlib(public, proxy.keys["ee"], fake_dc, tmp_path, timeout=40)
        assert_got_through(run, "ee", proxy, fake_dc)
        dialled = [e.detail["address"] for e in fake_dc.events if e.kind == "accepted"]
        assert dialled and set(dialled) == {DANTE_EXTERNAL}, dialled  # every DC leg went through dante

        # the stack's own site is untouched by the proxy's rule
        assert send_hello(public, SITE) == b"stack site"
        assert len(site.first) == 1 and site.first[0].startswith(b"\x16\x03\x01")

        # a client with no secret, through HAProxy: the engine names the client, fail2ban bans the client
        send_hello(public, DOMAIN, source=BAD_CLIENT)
        proxy.process.wait_log("rejected handshake", 1)
    finally:
        balancer.stop()
    filter_file = tmp_path / "mtproxy.conf"
    filter_file.write_text(templates.fail2ban_filter())
    found = subprocess.run(["fail2ban-regex", "-o", "ip", str(log_file), str(filter_file)], capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()
    assert found == [BAD_CLIENT], (found, log_file.read_text())
