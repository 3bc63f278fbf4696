"""One serving process: start-up, main loop and shutdown, in one tested order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtproxy.config import EngineConfig, HostPort
from mtproxy.protocol.cipher import Aes
from mtproxy.protocol.secret import Secret
from mtproxy.stats.digest import secrets_digest

from .accept import AcceptPaused
from .accounting import AccountingTable
from .ledger import DEFAULT_INTERVAL, UsageKeeper
from .mask import fallback_size, refresh_flight
from .relayconfig import Document
from .reload import FileId, Reloader
from .secrets import SecretSet, load_secret_set
from .server import Server

log = logging.getLogger("mtproxy")


@dataclass
class WorkerPlan:
    """What a serving process needs, prepared before any fork or privilege drop."""

    cfg: EngineConfig
    sockets: list[tuple[HostPort, socket.socket]]
    generated: list[tuple[str, Secret]]
    initial: SecretSet
    replay_memory: Any  # bytearray, or a slice of shared memory
    replay_lock: Any | None = None
    publish: Callable[[dict[str, Any]], None] | None = None  # workers: hand the snapshot to the supervisor
    on_server: Callable[[Server], None] | None = None  # single process: the stats thread reads live counters
    cert_size: int = field(default=0)
    loaded_id: FileId = None  # the secrets file's identity when `initial` was read
    aes: Aes = field(kw_only=True)  # the AES backend chosen at start-up (crypto.backend.load)
    accounting: AccountingTable = field(kw_only=True)  # per-secret usage shared by all workers, made before fork
    keeper: UsageKeeper | None = field(default=None, kw_only=True)  # single process: it persists usage itself
    usage_interval: float = field(default=DEFAULT_INTERVAL, kw_only=True)
    # the operator's proxy-secret and proxy-multi.conf, read before privileges were dropped (engine.py)
    relay_given: dict[Document, bytes] = field(default_factory=dict, kw_only=True)


async def serve(plan: WorkerPlan) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the exit status."""
    cfg = plan.cfg
    loop = asyncio.get_running_loop()
    cert_size = cfg.tls.cert_size or plan.cert_size or fallback_size(random.SystemRandom())
    server = Server(cfg, plan.initial, plan.replay_memory, plan.replay_lock, aes=plan.aes,
                    accounting=plan.accounting, cert_size=cert_size, relay_given=plan.relay_given)
    if plan.on_server is not None:
        plan.on_server(server)
    stop = asyncio.Event()
    loop.set_exception_handler(_internal_error)

    server.counters.secrets_digest = secrets_digest(server.secrets.entries)

    def reloaded(error: str | None) -> None:
        if error is None:
            server.counters.reloads_ok += 1
            server.counters.secrets_digest = secrets_digest(server.secrets.entries)
            if plan.keeper is not None:
                plan.keeper.configure(server.secrets.all_limits(), server.secrets.resets)
        else:
            server.counters.reloads_failed += 1
        server.counters.reload_error = error or ""
        if plan.publish is not None:  # the supervisor sees the outcome now, not at the next tick
            plan.publish(server.counters.snapshot())

    reloader = Reloader(cfg.secrets_file, lambda: load_secret_set(cfg, cfg.secrets_file, plan.generated),
                        server.set_secrets, cfg.reload_interval, reloaded, plan.loaded_id)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    await server.start(plan.sockets)
    tasks = [loop.create_task(reloader.run())]
    if cfg.tls.cert_size is None and server.mask is not None and cfg.allow_tls:
        tasks.append(loop.create_task(refresh_flight(lambda: _cert_target(server), lambda: server.mask_flight,
                                                     server.set_mask_flight, cfg.tls.cert_refresh)))
    if plan.publish is not None:
        tasks.append(loop.create_task(_publisher(server, plan.publish)))
    usage_stop = asyncio.Event()
    keeping = (loop.create_task(plan.keeper.run(plan.usage_interval, usage_stop)) if plan.keeper is not None
               else None)
    # what start-up made (modules, settings, the secret tables) lives as long as the worker: out of the cyclic
    # GC's sight, a full collection no longer walks it (~25 ms each, about one per 3,000 handshakes here)
    gc.freeze()
    log.info("ready: %d secrets, listening on %s", len(server.table),
             ", ".join(str(a) for a in server.listening))
    await stop.wait()
    log.info("stopping: no new connections; draining for up to %.0f s", cfg.limits.drain_timeout)
    await server.shutdown(cfg.limits.drain_timeout)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if keeping is not None:  # after the drain: the last sessions' bytes are in the table now
        usage_stop.set()
        await keeping
    if plan.publish is not None:
        plan.publish(server.counters.snapshot())
    log.info("stopped")
    return 0


def _cert_target(server: Server) -> tuple[HostPort, str] | None:
    """The mask to learn the certificate size from, and the name to ask it for."""
    mask = server.mask
    if mask is None:
        return None
    cfg = server.cfg
    return mask, cfg.domains[0] if cfg.domains else (sorted(server.secrets.domains) or [mask.host])[0]


async def _publisher(server: Server, publish: Callable[[dict[str, Any]], None]) -> None:
    while True:
        # what the worker counted on its own goes to the shared table first: if this worker dies, the
        # supervisor frees exactly the sessions this report says are open (workers.py `_retire`)
        server.enforcer.sync()
        publish(server.counters.snapshot())
        await asyncio.sleep(0.5)


def _internal_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An exception escaping a protocol callback is our bug: log it with its traceback, keep serving."""
    exc = context.get("exception")
    if isinstance(exc, AcceptPaused):  # how accepting is paused (accept.py), not an error
        return
    log.error("internal error: %s", context.get("message", "unhandled exception"),
              exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None)
