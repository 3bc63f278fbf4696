"""The per-loop server: listeners with limits, the live secret table, session registry and counters."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mtproxy.config import EngineConfig, HostPort
from mtproxy.crypto.backend import openssl_cbc
from mtproxy.protocol.cipher import Aes
from mtproxy.protocol.faketls import DEFAULT_SHAPE
from mtproxy.protocol.flight import SiteFlight
from mtproxy.protocol.handshake import AuthResult, Handshake, HandshakeSettings, SecretTable
from mtproxy.protocol.obfs2 import TAG_PADDED
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.stats.counters import Counters

from .accept import LISTEN_BACKLOG, Listener
from .accounting import AccountingTable
from .connection import ClientConnection
from .context import Context, Tracked
from .dc import DcTable
from .enforce import Enforcer, Grant
from .guard import Guard
from .hints import HintCache
from .memory import INTERVAL, Trimmer, load_malloc_trim, refill_free_lists
from .middle import Middle, MiddleSettings
from .pair import Pair
from .proxied import ProxiedConnection
from .relayconfig import Document, sources_for
from .scans import ScanScheduler
from .secrets import SecretSet

log = logging.getLogger("mtproxy.server")


def bind_listener(address: HostPort, reuse_port: bool) -> socket.socket:
    """A listening socket; IPv6 wildcards are v6-only because -H also binds 0.0.0.0 on the same port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(listen: tuple[HostPort, ...], reuse_port: bool) -> list[tuple[HostPort, socket.socket]]:
    """Bind every address; an IPv6 wildcard on a host without IPv6 is skipped with a warning."""
    bound: list[tuple[HostPort, socket.socket]] = []
    for address in listen:
        try:
            sock = bind_listener(address, reuse_port)
        except OSError as exc:
            if address.host == "::" and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                log.warning("IPv6 unavailable, not listening on %s: %s", address, exc.strerror)
                continue
            for _, s in bound:
                s.close()
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None
        # with port 0 the kernel picked one: report the real address
        port = sock.getsockname()[1]
        bound.append((HostPort(address.host, port), sock))
    return bound


class Server:
    """Owns everything one event loop serves; its connections and sessions see it only through `ctx`."""

    def __init__(
        self,
        cfg: EngineConfig,
        secrets: SecretSet,
        replay_memory: memoryview | bytearray,
        replay_lock: Any | None = None,
        *,
        aes: Aes,
        accounting: AccountingTable,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        random_bytes: Callable[[int], bytes] = os.urandom,
        cert_size: int = 2500,
        relay_given: dict[Document, bytes] | None = None,
    ) -> None:
        self.cfg = cfg
        self.aes = aes  # chosen once at start-up (crypto.backend.load)
        self.clock = clock
        self.random_bytes = random_bytes
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.counters = Counters(started_at=clock())
        self.replay = ReplayFilter(replay_memory, aes.replay_check)
        self._replay_guard = (lambda: replay_lock) if replay_lock is not None else None
        self.connections: set[Tracked] = set()  # every admitted client socket, by its current protocol
        self.by_secret: dict[str, set[Tracked]] = {}  # the sessions of each secret id
        self.per_ip: dict[str, int] = {}
        self.guard = Guard(cfg.limits, self.counters)
        # per-secret limits across all workers; `clock` is wall time (expiry, periods), `monotonic` the buckets'
        self.enforcer = Enforcer(accounting, self.counters, lambda: datetime.fromtimestamp(clock(), UTC),
                                 monotonic)
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0  # loop time the expiry timer fires at
        self.ctx = self._context()
        self._hints = HintCache()
        self.accepting = True
        self.cert_size = cert_size
        self.counters.cert_size = cert_size
        self.mask_flight: SiteFlight | None = None
        self._listeners: list[Listener] = []
        self._trimmer = Trimmer()
        self._malloc_trim: Callable[[int], int] | None = None
        self._memory_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.listening: list[HostPort] = []
        self.secrets = secrets
        self.table = SecretTable(list(secrets.entries), aes)
        self._live = secrets.fingerprint()
        self.settings = self._handshake_settings()
        self.counters.secrets_loaded = len(self.table)
        self.enforcer.update(secrets.all_limits())
        self.middle_settings = MiddleSettings(cfg.middle_proxy, sources_for(cfg), cfg.nat_rules,
                                              everyone=cfg.relays_for_everyone)
        self._relay_given = relay_given or {}  # the operator's relay files, read before privileges were dropped

    def _context(self) -> Context:
        ctx = Context(self.cfg.limits, self.counters, fast_mode=self.cfg.fast_mode,
                      dc_table=DcTable(self.cfg.dc_overrides, self.cfg.prefer_ipv6, self.cfg.upstream),
                      guard=self.guard, clock=self.clock, random_bytes=self.random_bytes, proxy=self.cfg.proxy,
                      shape_records=self.cfg.tls.shaped_records, raw_relays=self.cfg.raw_relays)
        ctx.admit = self.admit
        ctx.admit_pending = self.admit_pending
        ctx.admit_proxied = self.admit_proxied
        ctx.release_pending = self.release_pending
        ctx.release = self.release
        ctx.count_client = self.count_client
        ctx.new_handshake = self.new_handshake
        ctx.still_live = self.still_live
        ctx.hand_over = self.hand_over
        ctx.authenticated = self.session_authenticated
        ctx.ended = self.session_ended
        ctx.count_in = self.count_in
        ctx.count_out = self.count_out
        ctx.mask = lambda: self.mask
        ctx.enforcer = self.enforcer
        ctx.session_opened = self.session_opened
        return ctx

    # ----------------------------------------------------------------- secrets

    @property
    def mask(self) -> HostPort | None:
        """--mask, else -D's domain on 443 (both resolved in config), else the domain of a live ee secret."""
        if self.cfg.mask is not None or self.cfg.mask_disabled:
            return self.cfg.mask
        domains = sorted(self.secrets.domains)
        return HostPort(domains[0], 443) if domains else None

    def _handshake_settings(self) -> HandshakeSettings:
        domains = frozenset(self.cfg.domains) | self.secrets.domains if self.cfg.tls.check_sni else frozenset()
        return HandshakeSettings(
            allow_obfuscated=self.cfg.allow_classic,
            allow_faketls=self.cfg.allow_tls,
            tls_domains=domains,
            max_skew_past=self.cfg.tls.skew,
            max_skew_future=self.cfg.tls.skew,
            cert_size=self.cert_size,
            cert_size_jitter=self.cfg.tls.cert_jitter,
            hello_shape=self.mask_flight.hello_shape() if self.mask_flight is not None else DEFAULT_SHAPE,
        )

    def set_mask_flight(self, flight: SiteFlight) -> None:
        """The mask site's first flight, learned: the fake one takes its shape and its size."""
        self.mask_flight = flight
        size = flight.cert_size()
        if size is not None:
            self.cert_size = size
            self.counters.cert_size = size
        self.settings = self._handshake_settings()

    def set_secrets(self, new: SecretSet) -> int:
        """Swap the whole set; sessions of removed or changed secrets are closed. Returns how many."""
        old = self.secrets.fingerprint()
        kept = new.fingerprint()
        self.table = SecretTable(list(new.entries), self.aes)
        self.secrets = new
        self._live = kept
        self.settings = self._handshake_settings()
        self._hints.clear()
        self.counters.secrets_loaded = len(self.table)
        # new limits first: a session the reload disables, expires or puts over its quota gets its refusal
        # line and counter, whether or not its secret stays in the set
        closed = self._close_grants(self.enforcer.update(new.all_limits()))
        if self.loop is not None:
            self._arm_expiry(force=True)
            self._start_middle()
        for sid, value in old.items():
            if kept.get(sid) == value:
                continue
            for conn in list(self.by_secret.pop(sid, ())):
                conn.abort()
                closed += 1
            self.counters.secrets.pop(sid, None)
        return closed

    # ----------------------------------------------------------------- middle proxy

    def _start_middle(self) -> None:
        """Run the relay path once the settings or the secrets' ad tags ask for it (then for good)."""
        if self.ctx.middle is not None or not self.cfg.runs_middle_proxy(bool(self.secrets.ad_tags)):
            return
        middle = Middle(self.middle_settings, openssl_cbc,
                        lambda secret_id: self.secrets.ad_tag_for(secret_id, self.cfg.proxy_tag),
                        given=self._relay_given)
        self.ctx.middle = middle
        self.counters.middle = middle.snapshot
        middle.start()

    # ----------------------------------------------------------------- per-secret limits

    def session_opened(self, grant: Grant) -> None:
        """An admitted session: its secret's expiry may come before the timer's."""
        wait = self.enforcer.next_expiry_of(grant.secret_id)
        if wait is not None and (self._expiry is None or self.loop.time() + wait < self._expiry_at):
            self._arm_expiry(force=True, wait=wait)

    def _arm_expiry(self, force: bool = False, wait: float | None = None) -> None:
        """The one expiry timer of this loop, at the earliest expiry among secrets with sessions."""
        if self._expiry is not None:
            if not force:
                return
            self._expiry.cancel()
            self._expiry = None
        if wait is None:
            wait = self.enforcer.next_expiry()
        if wait is not None:
            self._expiry_at = self.loop.time() + wait
            self._expiry = self.loop.call_later(wait, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._close_grants(self.enforcer.tick())
        self._arm_expiry()  # the wall clock may be a hair behind the loop's: then this fires again at once

    @staticmethod
    def _close_grants(grants: list[Grant]) -> int:
        for grant in grants:
            if grant.holder is not None:
                grant.holder.close()
        return len(grants)

    def new_handshake(self, ip: str) -> tuple[Handshake, SecretTable]:
        """A handshake over the live table; the table is returned so a reload during the handshake
        can be noticed when it completes."""
        return Handshake(self.table, self.settings, self.replay, self.random_bytes, aes=self.aes,
                         hint=self._hints.get(ip), replay_guard=self._replay_guard), self.table

    # ----------------------------------------------------------------- admission and accounting

    def admit(self, conn: Tracked, fileno: int) -> bool:
        """Every new connection starts unauthenticated, so it must fit under those caps too."""
        limits = self.cfg.limits
        ip = conn.peer[0]
        if not self.guard.fd_headroom(fileno):
            return False
        if not self.accepting or len(self.connections) >= limits.max_connections:
            self.counters.refused_limit += 1
            return False
        if limits.max_connections_per_ip and self.per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            self.counters.refused_limit += 1
            return False
        if not self.guard.admit_unauthenticated(ip):
            return False
        conn.unauthenticated = True
        self.connections.add(conn)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.counters.active += 1
        return True

    def admit_pending(self, conn: Tracked, fileno: int) -> bool:
        """Behind a balancer (--proxy-protocol), at accept: the caps that need no client address. The peer is
        the balancer, so the per-IP caps wait for the PROXY header (admit_proxied)."""
        if not self.guard.fd_headroom(fileno):
            return False
        if not self.accepting or len(self.connections) >= self.cfg.limits.max_connections:
            self.counters.refused_limit += 1
            return False
        if not self.guard.reserve_unauthenticated():
            return False
        conn.unauthenticated = True
        self.connections.add(conn)
        self.counters.active += 1
        return True

    def admit_proxied(self, pending: Tracked, conn: Tracked) -> bool:
        """The PROXY header named the client `conn.peer`: its per-IP caps; `conn` takes `pending`'s place
        (and, when it goes, is released as any directly accepted connection is)."""
        ip = conn.peer[0]
        limit = self.cfg.limits.max_connections_per_ip
        if limit and self.per_ip.get(ip, 0) >= limit:
            self.counters.refused_limit += 1
            return False
        if not self.guard.claim_unauthenticated_ip(ip):
            return False
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.connections.discard(pending)
        self.connections.add(conn)
        pending.unauthenticated = False
        conn.unauthenticated = True
        return True

    def release_pending(self, conn: Tracked) -> None:
        """A connection admitted by admit_pending closed before admit_proxied took it over."""
        self.connections.discard(conn)
        if conn.unauthenticated:
            conn.unauthenticated = False
            self.guard.unreserve_unauthenticated()
        self.counters.active -= 1

    def count_client(self) -> None:
        """A connection counts in `total` once it sent a byte or was rejected, not when accepted: a port
        check that connects and closes (`mtproxy status`, a health check) is no client."""
        self.counters.total += 1

    def release(self, conn: Tracked) -> None:
        self.connections.discard(conn)
        ip = conn.peer[0]
        if conn.unauthenticated:
            conn.unauthenticated = False
            self.guard.authenticated_or_gone(ip)
        left = self.per_ip.get(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)
        self.counters.active -= 1

    def still_live(self, table: SecretTable, index: int, secret_id: str) -> bool:
        """Did the secret a handshake matched survive any reload that happened meanwhile?"""
        if table is self.table:
            return True
        secret = table.secrets[index]
        return self._live.get(secret_id) == (secret.key, secret.kind.value)

    def hand_over(self, old: Tracked, new: Tracked) -> None:
        """The client socket `old` was admitted for has a new protocol: the registry and caps follow it."""
        self.connections.discard(old)
        self.connections.add(new)
        new.unauthenticated = old.unauthenticated
        old.unauthenticated = False

    def session_authenticated(self, conn: Tracked, auth: AuthResult) -> None:
        c = self.counters
        c.handshakes_ok += 1
        if conn.unauthenticated:
            conn.unauthenticated = False
            self.guard.authenticated_or_gone(conn.peer[0])
        # by what the client sent, not by the secret's kind: the same key serves every mode
        mode = "ee" if auth.fake_tls else ("dd" if auth.tag == TAG_PADDED else "classic")
        c.modes[mode] = c.modes.get(mode, 0) + 1
        per = c.for_secret(auth.secret_id)
        per.active += 1
        per.total += 1
        self.by_secret.setdefault(auth.secret_id, set()).add(conn)
        self._hints.put(conn.peer[0], auth.secret_index)

    def session_ended(self, conn: Tracked, secret_id: str) -> None:
        group = self.by_secret.get(secret_id)
        if group is not None and conn in group:
            group.discard(conn)
            if not group:
                del self.by_secret[secret_id]
            per = self.counters.secrets.get(secret_id)
            if per is not None:
                per.active -= 1

    def count_in(self, secret_id: str, n: int) -> None:
        counters = self.counters
        counters.bytes_in += n
        per = counters.secrets.get(secret_id)
        if per is not None:
            per.bytes_in += n

    def count_out(self, secret_id: str, n: int) -> None:
        counters = self.counters
        counters.bytes_out += n
        per = counters.secrets.get(secret_id)
        if per is not None:
            per.bytes_out += n

    def _memory_tick(self) -> None:
        """After a burst: tables shrink to their present size (Python never shrinks a dict or set), and
        glibc hands its free pages back. Also, once a second, what the enforcer counted on its own (sessions
        of secrets without limits, unmetered sessions' bytes) goes to the shared accounting table."""
        self.enforcer.sync()
        if self._trimmer.due(len(self.connections)):
            self.connections = set(self.connections)
            self.per_ip = dict(self.per_ip)
            self.guard.per_ip = dict(self.guard.per_ip)
            refill_free_lists(self.loop, self._trimmer.ended, self._give_back)
        self._memory_timer = self.loop.call_later(INTERVAL, self._memory_tick)

    def _sweep_interval(self) -> float:
        limits = self.cfg.limits
        return min(limits.idle_timeout, limits.halfclose_timeout) / 2

    def _sweep_idle(self) -> None:
        """Every relay's idle check (Pair.idle_check), on one timer for the loop."""
        now = self.loop.time()
        for conn in list(self.connections):
            if isinstance(conn, Pair):
                conn.idle_check(now)
        self._idle_timer = self.loop.call_later(self._sweep_interval(), self._sweep_idle)

    def _give_back(self) -> None:
        gc.collect()  # a burst leaves cycles (tasks, exceptions, frames) that pin whole allocator arenas
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        log.debug("burst over: %d connections, memory trimmed", len(self.connections))

    # ----------------------------------------------------------------- lifecycle

    async def start(self, sockets: list[tuple[HostPort, socket.socket]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.ctx.start(self.loop)
        limits = self.cfg.limits
        self.ctx.scans = ScanScheduler(self.loop, self.counters, limits.scan_budget, limits.handshake_timeout)
        self._malloc_trim = load_malloc_trim()
        self._memory_timer = self.loop.call_later(INTERVAL, self._memory_tick)
        self._idle_timer = self.loop.call_later(self._sweep_interval(), self._sweep_idle)
        for address, sock in sockets:
            accepted = ProxiedConnection if self.cfg.proxy.accept else ClientConnection
            listener = Listener(address, sock, functools.partial(accepted, self.ctx, address), self.guard.out_of_fds,
                                self.guard.read_fd_limit)
            await listener.start()
            self._listeners.append(listener)
            self.listening.append(address)
            log.info("listening on %s", address)
        if self.cfg.proxy.accept:
            log.info("PROXY protocol header required before each client's bytes, from %s",
                     ", ".join(str(network) for network in self.cfg.proxy.trusted))
        self._start_middle()

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, let sessions finish for up to `deadline` seconds, then drop the rest."""
        self.accepting = False
        for listener in self._listeners:
            listener.close()
        end = self.loop.time() + deadline
        # handshakes in progress may finish (bounded by the handshake timeout) and become sessions
        while self.connections and self.loop.time() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - self.loop.time())))
        if self.connections:
            log.info("drain deadline reached: closing %d sessions", len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        self.guard.close()
        self.ctx.scans.close()
        self.enforcer.sync()
        if self._memory_timer is not None:
            self._memory_timer.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        self.ctx.wheel.close()
        for listener in self._listeners:
            await listener.wait_closed()
        if self.ctx.middle is not None:  # after the sessions: the relays are told each one closed
            await self.ctx.middle.close()
