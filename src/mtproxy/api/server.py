"""Serve the API: bind (loopback unless forced), say where once, stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from mtproxy.addresses import is_loopback

from ..operations.context import Ops
from .app import PREFIX, build_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8899


class BindRefused(Exception):
    """A non-loopback address without --allow-remote: the API changes secrets, so it stays local."""


def check_bind(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise BindRefused(f"{host} is not a loopback address: the API would be reachable from the network")


async def serve(ops: Ops, token: str, host: str, port: int, read_only: bool, allow_remote: bool,
                ready: Callable[[str], None], stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM); `ready` gets the base URL once the socket listens."""
    check_bind(host, allow_remote)
    runner = web.AppRunner(build_app(ops, token, read_only), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        ready(f"http://{shown}:{bound[1]}{PREFIX}")
        done = stop or asyncio.Event()
        if stop is None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, done.set)
        await done.wait()
    finally:
        await runner.cleanup()
