"""What a connection and its relay may use of the per-loop server: shared buffers, limits, counters, the DC
table, and the server's accounting and registry as callbacks. Never the server itself, so nothing below the
server imports it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from mtproxy.config import HostPort, Limits, ProxyProtocol
from mtproxy.protocol import faketls
from mtproxy.protocol.handshake import AuthResult, Handshake, SecretTable
from mtproxy.stats.counters import Counters

from .buffers import Buffers
from .dc import DcTable, Via
from .enforce import Enforcer, Grant
from .guard import Guard
from .middle import Middle
from .rawrelay import Pipe, Pool, RecordBuffer
from .scans import ScanScheduler
from .wheel import TimerWheel


class Tracked(Protocol):
    """What the server's registry holds for each admitted client socket: whichever object is its protocol
    now. Behind a balancer first the PROXY header's reader (proxied.py); then the client connection, which
    stays the session once authenticated, or the mask relay a rejected one hands over to (hand_over)."""

    peer: tuple[str, int]
    unauthenticated: bool  # counted under the unauthenticated caps

    def abort(self) -> None: ...


class Context:
    """One per server (per event loop); every connection and relay of that loop shares it."""

    __slots__ = ("admit", "admit_pending", "admit_proxied", "authenticated", "buffers", "clock", "count_client",
                 "count_in", "count_out", "counters", "dc_table", "ended", "enforcer", "fast_mode", "guard",
                 "hand_over", "limits", "loop", "mask", "mask_header", "mask_legs", "middle", "new_handshake", "pipes",
                 "random_bytes", "raw_relays", "record_buffers", "release", "release_pending", "scans",
                 "session_opened", "shape_records",
                 "still_live", "trusted", "via", "wheel")

    def __init__(self, limits: Limits, counters: Counters, *, fast_mode: bool, dc_table: DcTable, guard: Guard,
                 clock: Callable[[], float], random_bytes: Callable[[int], bytes],
                 proxy: ProxyProtocol | None = None, shape_records: bool = True, raw_relays: bool = True) -> None:
        proxy = proxy or ProxyProtocol()
        self.shape_records = shape_records  # --tls-records shaped (runtime/session.py, rawrelay.RecordRelay)
        self.raw_relays = raw_relays  # bulk fast-mode downloads may move to a raw relay (session.py)
        self.limits = limits
        self.trusted = proxy.trusted  # --proxy-protocol: who may send the PROXY header
        self.mask_header = proxy.to_mask  # PROXY header version sent to the mask site, 0 for none
        # with --proxy-protocol: the local addresses of the live mask connections, for the runtime loop guard
        # (a PROXY header naming one as its client is the mask leading back through the balancer)
        self.mask_legs: set[tuple[str, int]] = set()
        self.counters = counters
        self.fast_mode = fast_mode
        self.dc_table = dc_table
        # DC legs through a SOCKS5 upstream (runtime/upstream.py); None: dialled directly
        self.via = Via(dc_table.upstream, counters) if dc_table.upstream is not None else None
        self.guard = guard
        self.middle: Middle | None = None  # the worker's middle-proxy path, while it runs one (server.py)
        self.clock = clock
        self.random_bytes = random_bytes
        self.buffers = Buffers(limits.read_size, limits.buffer_size)
        self.pipes = Pool(Pipe)
        record = faketls.SHAPED_RECORD_PAYLOAD if shape_records else faketls.MAX_RECORD_PAYLOAD
        self.record_buffers = Pool(lambda: RecordBuffer(limits.read_size, record))
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set when the server starts
        self.wheel: TimerWheel = None  # type: ignore[assignment]  # the loop's timeouts, made with it (start)
        # the server's side, filled in by the server
        self.admit: Callable[[Tracked, int], bool]
        self.release: Callable[[Tracked], None]
        self.count_client: Callable[[], None]
        self.new_handshake: Callable[[str], tuple[Handshake, SecretTable]]
        self.still_live: Callable[[SecretTable, int, str], bool]
        self.hand_over: Callable[[Tracked, Tracked], None]  # a mask relay took the socket: the registry follows
        self.authenticated: Callable[[Tracked, AuthResult], None]
        self.ended: Callable[[Tracked, str], None]  # a session of this secret id ended
        self.count_in: Callable[[str, int], None]  # client->DC bytes of a secret id
        self.count_out: Callable[[str, int], None]
        self.mask: Callable[[], HostPort | None]
        self.enforcer: Enforcer  # per-secret limits: admission after authentication, running sessions
        self.session_opened: Callable[[Grant], None]  # a session was admitted: the expiry timer may move
        self.scans: ScanScheduler  # when handshakes no hint identifies scan the secrets (set when the server starts)
        # --proxy-protocol (runtime/proxied.py): the caps without an address at accept, the per-IP ones once the
        # header names the client (the new protocol takes the registry entry); a connection refused before that
        self.admit_pending: Callable[[Tracked, int], bool]
        self.admit_proxied: Callable[[Tracked, Tracked], bool]
        self.release_pending: Callable[[Tracked], None]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop this context serves, and its timer wheel."""
        self.loop = loop
        self.wheel = TimerWheel(loop)
