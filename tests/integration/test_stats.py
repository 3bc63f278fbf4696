"""Stats HTTP: /stats key<TAB>value, /metrics in Prometheus text, loopback peers only unless allowed."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.protocol.secret import Secret

from .conftest import ProxyFactory, served_once
from .test_lifecycle import stats_of

LOCAL_NON_LOOPBACK = "192.0.2.10"  # TEST-NET-1, added to lo inside the private namespace


def test_stats_and_metrics(start_proxy: ProxyFactory, secret: Secret, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proxy = served_once(start_proxy, secret, tmp_path)
    stats = stats_of(proxy.stats_port)
    assert stats["total_connections"] == "2"
    assert stats["handshakes_ok"] == "1"
    assert stats["bytes_client_to_dc"] == "1000"
    assert stats["handshake_failures_unknown-secret"] == "1"
    assert stats["secret_s-42_total"] == "1"
    assert stats["secret_s-42_bytes_out"] == "1000"
    assert int(stats["uptime"]) >= 0
    assert not any(secret.key.hex() in k or secret.key.hex() in v for k, v in stats.items())

    body = urllib.request.urlopen(f"http://127.0.0.1:{proxy.stats_port}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    failures = {s.labels["reason"]: s.value for s in families["mtproxy_handshake_failures"].samples
                if s.name.endswith("_total")}
    assert failures["unknown-secret"] == 1
    per_secret = [s for s in families["mtproxy_secret_connections"].samples if s.name.endswith("_total")]
    assert [(s.labels["secret"], s.value) for s in per_secret] == [("s-42", 1)]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{proxy.stats_port}/nope", timeout=5)
    err.value.close()  # the error holds the response and its socket
    assert err.value.code == 404


@contextlib.contextmanager
def dummy_address() -> Iterator[str]:
    """A non-loopback address on `lo` of this private namespace: nothing can leave it."""
    if [n for _, n in socket.if_nameindex()] != ["lo"]:
        pytest.skip("needs the private network namespace")
    made = subprocess.run(["ip", "addr", "add", f"{LOCAL_NON_LOOPBACK}/32", "dev", "lo"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot add an address: {made.stderr.decode().strip()}")
    try:
        yield LOCAL_NON_LOOPBACK
    finally:
        subprocess.run(["ip", "addr", "del", f"{LOCAL_NON_LOOPBACK}/32", "dev", "lo"], capture_output=True)


def fetch_from(source: str, port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
        head = b""
        while b"\r\n" not in head:  # a loaded machine may deliver the status line in pieces
            chunk = sock.recv(64)
            if not chunk:
                break
            head += chunk
    return int(head.split()[1])


@pytest.mark.parametrize("allow", [False, True])
def test_non_loopback_peers_refused_unless_allowed(start_proxy: ProxyFactory, secret: Secret, allow: bool) -> None:
    flags = ["-S", secret.to_hex(), "--stats-host", "0.0.0.0"] + (["--stats-allow-remote"] if allow else [])
    proxy = start_proxy(*flags)
    with dummy_address() as source:
        assert fetch_from(source, proxy.stats_port) == (200 if allow else 403)
    assert fetch_from("127.0.0.1", proxy.stats_port) == 200
