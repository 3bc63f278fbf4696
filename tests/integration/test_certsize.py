"""The fake flight takes the shape and size of the mask site's real TLS 1.3 flight to the same ClientHello:
Debian's nginx with a certificate chain of a real site's size, and a Python TLS site."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mtproxy.config import HostPort
from mtproxy.protocol import client as core
from mtproxy.protocol.flight import FlightReader, SiteFlight
from mtproxy.protocol.secret import Secret
from mtproxy.runtime.mask import probe_flight
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import send_raw
from mtproxy.testkit.nginx import NginxSite, make_chain, nginx_binary
from mtproxy.testkit.process import free_port
from mtproxy.testkit.servers import TlsSite, self_signed_context

from .conftest import DOMAIN, ProxyFactory, run
from .test_lifecycle import stats_of

CAPTURES = Path(__file__).parents[1] / "data" / "tdlib_hellos"


def third_record_length(flight: bytes) -> int:
    hello_end = 5 + int.from_bytes(flight[3:5], "big")
    ccs_end = hello_end + 6
    assert flight[ccs_end : ccs_end + 3] == b"\x17\x03\x03"
    return int.from_bytes(flight[ccs_end + 3 : ccs_end + 5], "big")


def site_answer(port: int, hello: bytes, quiet: float = 1.0, limit: float = 10.0) -> bytes:
    """What a TLS server sends to `hello` before it waits for the client's Finished (`quiet` s of silence)."""
    deadline = time.monotonic() + limit
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(hello)
        while time.monotonic() < deadline:
            sock.settimeout(quiet)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    return received


def flight_of(data: bytes) -> SiteFlight:
    reader = FlightReader()
    reader.feed(data)
    return reader.flight()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if nginx_binary() is None:
        pytest.fail("nginx is not installed (scripts/install-test-deps)")
    return make_chain(tmp_path_factory.mktemp("pki"), DOMAIN)


@pytest.fixture(params=[False, True], ids=["client-order", "server-order"])
def nginx(request: pytest.FixtureRequest, chain: tuple[Path, Path], tmp_path: Path) -> Iterator[NginxSite]:
    """nginx choosing the client's first TLS 1.3 suite (its default), or its own first (AES-256-GCM)."""
    site = NginxSite(tmp_path / "nginx", free_port(), *chain, prefer_server_ciphers=request.param)
    yield site
    site.stop()


def test_probe_sees_what_tdlib_gets(nginx: NginxSite) -> None:
    """The probe's ClientHello makes the site answer as it answers TDLib's own (a captured one, sent as is)."""
    capture = (CAPTURES / "ee_full_0.bin").read_bytes()
    tdlib_hello = capture[: 5 + int.from_bytes(capture[3:5], "big")]
    to_tdlib = flight_of(site_answer(nginx.port, tdlib_hello))
    probed = run(probe_flight(HostPort("127.0.0.1", nginx.port), DOMAIN))
    assert probed is not None and replace(probed, client_order=False) == to_tdlib
    # nginx's default takes the client's preference (AES-128 first for TDLib, AES-256 for Apple's TDLib)
    assert probed.client_order is not nginx.prefer_server_ciphers
    # OpenSSL's TLS 1.3 server: its extensions in this order, each handshake message in a record of its own
    assert probed.extensions == (0x002B, 0x0033) and probed.ccs and (probed.group, probed.share_size) == (0x1D, 32)
    assert len(probed.records) == 4 and 2500 < probed.records[1] < 4000  # the Certificate: leaf + intermediate
    cert_size = probed.cert_size()
    assert cert_size is not None and cert_size == sum(probed.records) + 5 * 3


@pytest.mark.parametrize("suites", [core.TDLIB_SUITES, core.DARWIN_SUITES], ids=["tdlib", "tdlib-apple"])
def test_engine_flight_follows_the_site(nginx: NginxSite, start_proxy: ProxyFactory, peers: BackgroundPeers,
                                        secret: Secret, tmp_path: Path, suites: tuple[int, ...]) -> None:
    """To one ClientHello, the engine answers as nginx does: the same cipher (whichever suite the client lists
    first), ServerHello extension order, key share group and length, ServerHello size, ChangeCipherSpec, and as
    many bytes of encrypted records in total; only their count differs (one record: what the MTProto clients
    take, see faketls)."""
    port = free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask",
                        f"127.0.0.1:{nginx.port}", "--cert-jitter", "0", "--dc-override",
                        f"*=127.0.0.1:{peers.dc_port}", "--state-file", str(tmp_path / "s.json"), base=False, port=port)
    proxy.wait_log("fake certificate size learned")
    hello = core.build_client_hello(secret.key, DOMAIN, os.urandom, time.time(), core.mlkem768_share(os.urandom),
                                    suites)
    site_bytes = site_answer(nginx.port, hello)
    engine_bytes = run(send_raw("127.0.0.1", port, hello))
    assert core.verify_server_flight(secret.key, hello[11:43], engine_bytes)
    assert core.server_flight_length(engine_bytes) == len(engine_bytes)  # TDLib's reading of a flight
    site, engine = flight_of(site_bytes), flight_of(engine_bytes)
    assert (engine.cipher, engine.extensions, engine.group, engine.share_size, engine.ccs, engine.hello_size) == (
        site.cipher, site.extensions, site.group, site.share_size, site.ccs, site.hello_size)
    assert engine.records == (sum(site.records) + 5 * (len(site.records) - 1),)
    assert len(engine_bytes) == len(site_bytes)
    # the size shown is the one measured on TDLib's order: a site that answers Apple's TDLib with AES-256 sends
    # it a SHA-384 Finished, 16 bytes more
    apple_sha384 = suites == core.DARWIN_SUITES and not nginx.prefer_server_ciphers
    assert int(stats_of(proxy.stats_port)["fake_cert_size"]) + 16 * apple_sha384 == engine.records[0]


def test_cert_size_learned_from_mask(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                     tmp_path: Path) -> None:
    site = TlsSite(self_signed_context(DOMAIN, extra_names=25))
    site_port = peers.call(site.start())
    try:
        probed = peers.call(probe_flight(HostPort("127.0.0.1", site_port), DOMAIN))
        assert probed is not None
        expected = probed.cert_size()
        assert expected is not None and expected > 300
        port = free_port()
        proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask",
                            f"127.0.0.1:{site_port}", "--dc-override", f"*=127.0.0.1:{peers.dc_port}",
                            "--state-file", str(tmp_path / "s.json"), base=False, port=port)
        proxy.wait_log("fake certificate size learned")
        learned = int(stats_of(proxy.stats_port)["fake_cert_size"])
        assert abs(learned - expected) <= 16  # an ECDSA signature's length varies by a byte or two
        hello = core.build_client_hello(secret.key, DOMAIN, os.urandom, time.time())
        flight = run(send_raw("127.0.0.1", port, hello))
        assert core.verify_server_flight(secret.key, hello[11:43], flight)
        assert abs(third_record_length(flight) - learned) <= 16  # the default jitter
    finally:
        peers.call(site.close())


def test_unreachable_mask_falls_back_to_realistic_size(start_proxy: ProxyFactory, secret: Secret,
                                                       tmp_path: Path) -> None:
    port = free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask",
                        f"127.0.0.1:{free_port()}", "--state-file", str(tmp_path / "s.json"), base=False, port=port)
    proxy.wait_log("could not learn the certificate size from 127.0.0.1:")
    line = next(x for x in proxy.log.splitlines() if "could not learn" in x)
    assert "connection refused — a typical size is used until it answers; check --mask" in line, line
    size = int(stats_of(proxy.stats_port)["fake_cert_size"])
    assert 2000 <= size <= 5000
