"""The fake certificate record takes the size the mask site's real TLS 1.3 flight has."""

from __future__ import annotations

import os
import time

from mtproxy.config import HostPort
from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret
from mtproxy.runtime.mask import probe_cert_size
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import send_raw
from mtproxy.testkit.process import free_port
from mtproxy.testkit.servers import TlsSite, self_signed_context

from .conftest import DOMAIN, ProxyFactory, run
from .test_lifecycle import stats_of


def third_record_length(flight: bytes) -> int:
    hello_end = 5 + int.from_bytes(flight[3:5], "big")
    ccs_end = hello_end + 6
    assert flight[ccs_end : ccs_end + 3] == b"\x17\x03\x03"
    return int.from_bytes(flight[ccs_end + 3 : ccs_end + 5], "big")


def test_cert_size_learned_from_mask(start_proxy: ProxyFactory, peers: BackgroundPeers, secret: Secret,
                                     tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = TlsSite(self_signed_context(DOMAIN, extra_names=25))
    site_port = peers.call(site.start())
    try:
        expected = peers.call(probe_cert_size(HostPort("127.0.0.1", site_port), DOMAIN))
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
                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proxy = start_proxy("-S", secret.to_hex(), "--listen", f"127.0.0.1:{port}", "--mask",
                        f"127.0.0.1:{free_port()}", "--state-file", str(tmp_path / "s.json"), base=False, port=port)
    proxy.wait_log("could not learn the certificate size from 127.0.0.1:")
    line = next(x for x in proxy.log.splitlines() if "could not learn" in x)
    assert "connection refused — a typical size is used until it answers; check --mask" in line, line
    size = int(stats_of(proxy.stats_port)["fake_cert_size"])
    assert 2000 <= size <= 5000
