"""TDLib through the engine whose fake flight took the mask site's shape: nginx's (supported_versions first,
its cipher choice, a 3 KB chain's length), and a post-quantum site's (the X25519MLKEM768 group, whose
1120-byte share makes the ServerHello 1.2 KB). TDLib reads none of it but the random's HMAC: these show the
shaped flights still get it through."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.protocol import client, faketls
from mtproxy.protocol.flight import FlightReader
from mtproxy.testkit.client import send_raw
from mtproxy.testkit.nginx import NginxSite, make_chain, nginx_binary
from mtproxy.testkit.process import free_port

from .conftest import DOMAIN, StartProxy, default_keys
from .fake_dc import FakeDC
from .tdlib_client import run_tdlib
from .test_tdlib import assert_got_through

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxSite]:
    if nginx_binary() is None:
        pytest.fail("nginx is not installed (scripts/install-test-deps)")
    chain = make_chain(tmp_path / "pki", DOMAIN)
    site = NginxSite(tmp_path / "nginx", free_port(), *chain, prefer_server_ciphers=True)
    yield site
    site.stop()


def test_tdlib_through_a_flight_shaped_like_nginx(nginx: NginxSite, start_proxy: StartProxy, fake_dc: FakeDC,
                                                  tmp_path: Path) -> None:
    keys = default_keys()
    proxy = start_proxy(keys, mask=f"127.0.0.1:{nginx.port}")
    log = proxy.process.wait_log("fake certificate size learned", timeout=20)
    assert "cipher 0x1302" in log and "extensions supported_versions, key_share" in log
    run = run_tdlib(proxy.port, keys["ee"], fake_dc, tmp_path, timeout=25)
    assert_got_through(run, "ee", proxy, fake_dc)


class HybridSite:
    """A TLS 1.3 site as Debian's OpenSSL 3.0 cannot be: it answers X25519MLKEM768 (what BoringSSL and
    OpenSSL 3.5 sites choose for a Telegram client's hello) with AES-256-GCM, supported_versions first, and
    four encrypted records of a certificate flight's sizes. Only its shape is read (by the engine's probe);
    its bytes are random where a real site's are encrypted."""

    SHAPE = faketls.HelloShape(0x1302, (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE),
                               faketls.X25519MLKEM768)
    RECORDS = (36, 3100, 286, 69)

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                header = conn.recv(5, socket.MSG_WAITALL)
                record = header + conn.recv(faketls.hello_record_length(header) - 5, socket.MSG_WAITALL)
                hello = faketls.parse_client_hello(record)
                shape = faketls.fit_shape(self.SHAPE, hello)
                flight = faketls.build_server_flight(os.urandom(16), hello, os.urandom(1120),
                                                     os.urandom(self.RECORDS[0]), shape)
                for size in self.RECORDS[1:]:
                    flight += faketls.record_header(size) + os.urandom(size)
                conn.sendall(flight)
                self.answered += 1
                self.stopping.wait(2)  # then waits for the client's Finished, as a server does

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


def test_tdlib_through_a_hybrid_key_share(start_proxy: StartProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    site = HybridSite()
    try:
        keys = default_keys()
        proxy = start_proxy(keys, mask=f"127.0.0.1:{site.port}")
        log = proxy.process.wait_log("fake certificate size learned", timeout=20)
        assert "key share 0x11ec (1120 bytes)" in log and f"{sum(site.RECORDS) + 15} bytes" in log
        key = bytes.fromhex(keys["ee"][2:34])
        hello = client.build_client_hello(key, DOMAIN, os.urandom, time.time())
        answer = asyncio.run(send_raw("127.0.0.1", proxy.port, hello, timeout=10))
        reader = FlightReader()
        reader.feed(answer)
        engine = reader.flight()
        assert (engine.cipher, engine.extensions, engine.group, engine.share_size) == (
            0x1302, site.SHAPE.extensions, faketls.X25519MLKEM768, 1120)
        assert len(engine.records) == 1 and abs(engine.records[0] - (sum(site.RECORDS) + 15)) <= 16  # the jitter
        run = run_tdlib(proxy.port, keys["ee"], fake_dc, tmp_path, timeout=25)
        assert_got_through(run, "ee", proxy, fake_dc)
    finally:
        site.stop()
