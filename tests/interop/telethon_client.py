"""Run Telethon's connect (and so its first key-exchange steps) against a fake DC, bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from telethon import TelegramClient
from telethon.sessions import MemorySession

from .fake_dc import FakeDC

TEST_API_ID = 94575
TEST_API_HASH = "a7ccab0a2dfeba2c30e3c7b42ac6f4eb"
DC_ID = 2

logging.getLogger("telethon").setLevel(logging.CRITICAL)


async def connect_until_dh_params(
    dc: FakeDC,
    connection: type,
    *,
    proxy: tuple[str, int, str] | None = None,
    timeout: float = 20.0,
) -> bool:
    """Start Telethon's connect (no auth key yet, so it starts the DH exchange) and wait until the fake
    DC has seen req_DH_params; then tear the client down. True when it arrived within `timeout`."""
    session = MemorySession()
    # Never let Telethon fall back on its built-in DC address: point DC 2 at the fake DC.
    session.set_dc(DC_ID, dc.host, dc.port)
    kwargs: dict[str, Any] = {"connection": connection, "connection_retries": 0, "timeout": 10}
    if proxy is not None:
        kwargs["proxy"] = proxy
    client = TelegramClient(session, TEST_API_ID, TEST_API_HASH, **kwargs)
    task = asyncio.ensure_future(client.connect())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not task.done():
            if "req_DH_params" in dc.kinds():
                return True
            await asyncio.sleep(0.05)
        return "req_DH_params" in dc.kinds()
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(client.disconnect(), 5)
