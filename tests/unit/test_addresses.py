"""The one loopback rule the stats server, the management API and the HAProxy integration share."""

from __future__ import annotations

import pytest

from mtproxy.addresses import is_loopback


@pytest.mark.parametrize(("host", "expected"), [
    ("localhost", True), ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::1%lo", True),
    ("::ffff:127.0.0.1", True),  # a dual-stack socket's IPv4 client
    ("0.0.0.0", False), ("192.0.2.7", False), ("::", False), ("::ffff:192.0.2.7", False),
    ("example.com", False), ("", False), ("localhost.example.com", False),
])
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
