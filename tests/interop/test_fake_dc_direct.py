"""The fake DC itself, checked with a real client and no proxy in between: Telethon's obfuscated transport."""

from __future__ import annotations

import asyncio

import pytest
from telethon.network.connection import ConnectionTcpObfuscated

from .fake_dc import TELETHON_FINGERPRINTS, FakeDC
from .telethon_client import connect_until_dh_params

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def test_telethon_direct_reaches_req_dh_params(fake_dc: FakeDC) -> None:
    reached = asyncio.run(connect_until_dh_params(fake_dc, ConnectionTcpObfuscated, timeout=20))
    assert reached, f"fake DC events: {fake_dc.kinds()}"
    init = fake_dc.wait_for("init", 0)
    assert init is not None and init.detail["transport"] == "abridged"
    dh = fake_dc.wait_for("req_DH_params", 0)
    assert dh is not None
    # Telethon factored our pq and chose one of its own keys from our list.
    assert (dh.detail["p"], dh.detail["q"]) == (1229739323, 1402015859)
    assert dh.detail["fingerprint"] in TELETHON_FINGERPRINTS
