"""Run fake DCs, mask stubs and fake middle-proxy relays on an event loop in a background thread, for
synchronous test code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .fakerelay import FakeRelay
from .relayconfig import RelayFiles, write_relay_files
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


class BackgroundRelays:
    """One fake relay per DC id on 127.0.0.1, all in front of one DC, served from their own thread;
    `write_files` names them in a proxy-multi.conf beside the proxy-secret they hold. Faults are switched from
    the test's thread through `relay(dc).faults` (plain attributes, read live by the relay). The DC is `dc`
    when given (another test's fake DC, e.g. one speaking MTProto), else a fake echo DC of their own
    (`self.dc`, started only then)."""

    def __init__(self, secret: bytes, dc_ids: tuple[int, ...] = (1, 2, 3, 4, 5),
                 dc: tuple[str, int] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-relays", daemon=True)
        self.secret = secret
        self.dc = FakeDc()
        self._target = dc
        self.dc_ids = dc_ids
        self.relays: dict[int, FakeRelay] = {}
        self.ports: dict[int, int] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> BackgroundRelays:
        self._thread.start()
        target = self._target if self._target is not None else ("127.0.0.1", self.call(self.dc.start()))
        for dc_id in self.dc_ids:
            relay = self.call(_make_relay(self.secret, target, dc_id))
            self.relays[dc_id] = relay
            self.ports[dc_id] = self.call(relay.start())
        return self

    def relay(self, dc_id: int) -> FakeRelay:
        return self.relays[dc_id]

    def write_files(self, directory: Path) -> RelayFiles:
        v4 = {dc_id: [("127.0.0.1", port)] for dc_id, port in self.ports.items()}
        return write_relay_files(directory, self.secret, v4, default_dc=self.dc_ids[0])

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait, from the test's thread, until `condition()` holds on the relays' records."""
        relay = next(iter(self.relays.values()))
        return self.call(relay.wait_for(condition, timeout), timeout + 2)

    def stop(self) -> None:
        for relay in self.relays.values():
            self.call(relay.stop())
        self.call(self.dc.close())  # a no-op when it never started
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _make_relay(secret: bytes, dc: tuple[str, int], dc_id: int) -> FakeRelay:
    return FakeRelay(secret, dc, dc_id=dc_id)  # made on the loop that serves it
