"""Run fake DCs and mask stubs on an event loop in a background thread, for synchronous test code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from .servers import FakeDc, MaskStub

T = TypeVar("T")


class BackgroundPeers:
    """A fake echo DC and a mask stub on 127.0.0.1, served from their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-peers", daemon=True)
        self.dc = FakeDc()
        self.mask = MaskStub()
        self.dc_port = 0
        self.mask_port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> BackgroundPeers:
        self._thread.start()
        self.dc_port = self.call(self.dc.start())
        self.mask_port = self.call(self.mask.start())
        return self

    def wait_mask_connections(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until the mask stub has finished `count` connections in total; returns all of them."""
        deadline = time.monotonic() + timeout
        while len(self.mask.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mask stub saw {len(self.mask.received)} connections, wanted {count}")
            time.sleep(0.01)
        return list(self.mask.received)

    @contextlib.contextmanager
    def stalled_dc(self) -> Iterator[BackgroundPeers]:
        """The fake DC stops reading for the duration; its stalled connections are released after."""
        self.dc.mode = "stall"
        try:
            yield self
        finally:
            self.dc.mode = "echo"
            self.loop.call_soon_threadsafe(self.dc.release_stalled)

    def stop(self) -> None:
        self.call(self.dc.close())
        self.call(self.mask.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
