"""Telethon's MTProxy connection classes through the real proxy to the fake DC, with classic and dd secrets.

A client that reaches req_DH_params at the fake DC went through the proxy: Telethon's MTProxy init is
hashed with the secret, which the fake DC (raw DC-side keys) could not decode had it arrived directly.
"""

from __future__ import annotations

import asyncio

import pytest
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)

from .conftest import RunningProxy
from .fake_dc import TELETHON_FINGERPRINTS, FakeDC
from .telethon_client import connect_until_dh_params

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(60),
    # Telethon warns that python-socks is missing; MTProxy connections do not use it.
    pytest.mark.filterwarnings("ignore:proxy argument will be ignored"),
]

CASES = [
    ("classic", ConnectionTcpMTProxyAbridged, "abridged"),
    ("classic", ConnectionTcpMTProxyIntermediate, "intermediate"),
    ("classic", ConnectionTcpMTProxyRandomizedIntermediate, "padded"),
    ("dd", ConnectionTcpMTProxyRandomizedIntermediate, "padded"),
    # Telethon sends its own class's tag even when given a dd secret (shared/protocol.md).
    ("dd", ConnectionTcpMTProxyAbridged, "abridged"),
]


@pytest.mark.parametrize(("kind", "connection", "transport"), CASES, ids=lambda v: getattr(v, "__name__", v))
def test_telethon_through_proxy(
    kind: str, connection: type, transport: str, proxy: RunningProxy, fake_dc: FakeDC
) -> None:
    secret = proxy.keys[kind]
    reached = asyncio.run(
        connect_until_dh_params(fake_dc, connection, proxy=("127.0.0.1", proxy.port, secret), timeout=25)
    )
    context = f"fake DC: {fake_dc.kinds()}\nproxy log:\n{proxy.process.log[-2000:]}"
    assert reached, context
    dh = fake_dc.wait_for("req_DH_params", 0)
    assert dh is not None and dh.detail["fingerprint"] in TELETHON_FINGERPRINTS
    init = fake_dc.wait_for("init", 0)
    assert init is not None and init.detail["transport"] == transport, context
