"""`mtproxy run`: resolve secrets, bind, drop privileges, then serve in-process or under the worker supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import uvloop

from mtproxy.config import EngineConfig, HostPort
from mtproxy.crypto import backend as crypto
from mtproxy.links import AddressGuess, ServerUnknownError, guess_public_address, make_links
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret
from mtproxy.qr import terminal_text
from mtproxy.stats.counters import Counters
from mtproxy.stats.http import SnapshotProvider, StatsServer

from .accounting import AccountingTable
from .keeping import SupervisorUsage
from .ledger import UsageKeeper
from .logs import setup_logging
from .process import WorkerPlan, serve
from .relayconfig import Document, RelayConfigError, read_given, sources_for
from .reload import file_id
from .secrets import GENERATED_ID, SecretsError, generated_secret, load_secret_set
from .server import Server, bind_all
from .shared import SharedState
from .startup import (
    capacity_warning,
    connection_capacity,
    file_error,
    listen_error,
    no_public_address_note,
    private_address_note,
    raise_descriptor_limit,
    stats_error,
)
from .workers import Supervisor, worker_listen

log = logging.getLogger("mtproxy")


class StartupError(Exception):
    """The engine cannot start; the message says what to fix."""


def drop_privileges(user: str) -> None:
    """Become `user` after every privileged port is bound (the official -u)."""
    if os.getuid() != 0:
        if pwd.getpwuid(os.getuid()).pw_name != user:
            log.warning("-u %s ignored: not running as root", user)
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"-u: no such user {user!r}") from None
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as %s", user)


def print_generated(cfg: EngineConfig, secret: Secret, out: TextIO,
                    guess_address: Callable[[], AddressGuess] = guess_public_address) -> None:
    """The generated secret's links and QR; a link nobody else can use says so and how to fix it."""
    host = cfg.public_host
    note: str | None = None
    if host is None:
        try:
            guess = guess_address()
            host, note = guess.address, (None if guess.public else private_address_note(guess.address))
        except ServerUnknownError:
            host = "127.0.0.1"
            note = no_public_address_note(host)
    port = cfg.listen[0].port if cfg.listen else 443
    links = make_links(host, port, secret)
    out.write("No secret configured: serving a generated fake-TLS secret (kept in "
              f"{cfg.state_file}).\n{links.tg}\n{links.https}\n")
    if note is not None:
        out.write(f"note: {note}\n")
    if out.isatty() or os.environ.get("MTPROXY_QR", "1") == "1":
        out.write(terminal_text(links.tg))
    out.flush()


def cfg_generated_secret(cfg: EngineConfig) -> Secret:
    try:
        return generated_secret(cfg.state_file, cfg.domains[0] if cfg.domains else None, os.urandom)
    except OSError as exc:
        raise StartupError(file_error(f"keep the generated secret in {cfg.state_file}", exc)) from None


def _start_logging(log_file: Path | None) -> None:
    try:
        setup_logging(log_file)
    except OSError as exc:
        raise StartupError(file_error(f"write the log file {log_file}", exc,
                                      "choose another file with --log-file FILE")) from None


def fit_connections(cfg: EngineConfig, descriptor_limit: int) -> EngineConfig:
    """Without --max-connections, allow what the descriptor limit can hold; an explicit value that
    cannot fit is kept and warned about, since the operator asked for it."""
    if cfg.max_connections_auto:
        return replace(cfg, limits=replace(cfg.limits, max_connections=connection_capacity(descriptor_limit)))
    warning = capacity_warning(cfg.limits.max_connections, descriptor_limit)
    if warning is not None:
        log.warning("%s", warning)
    return cfg


def _bind(listen: tuple[HostPort, ...], reuse_port: bool) -> list[tuple[HostPort, socket.socket]]:
    try:
        return bind_all(listen, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(listen_error(exc)) from None


def run_engine(cfg: EngineConfig, out: TextIO = sys.stdout) -> int:
    _start_logging(cfg.log_file)
    if cfg.root_note:
        log.info("%s", cfg.root_note)
    cfg = fit_connections(cfg, raise_descriptor_limit())
    for warning in cfg.warnings:
        log.warning("%s", warning)
    generated: list[tuple[str, Secret]] = []
    if not cfg.secrets and cfg.secrets_file is None:
        secret = cfg_generated_secret(cfg)
        generated = [(GENERATED_ID, secret)]
        print_generated(cfg, secret, out)
    loaded_id = file_id(cfg.secrets_file) if cfg.secrets_file is not None else None
    try:
        initial = load_secret_set(cfg, cfg.secrets_file, generated)
    except SecretsError as exc:
        raise StartupError(f"cannot read the secrets file: {exc}") from None
    if not initial.entries:
        log.warning("no active secret: every connection goes to the mask until the secrets file gets one")

    try:
        aes = crypto.load(os.environ.get(crypto.KEYSTREAM_ENV, ""))  # before forking: every worker inherits it
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    log.info("AES-CTR runs on %s (%s)", crypto.KEYSTREAMS[aes.name], aes.why)
    relay_given = _relay_files(cfg)

    # per-secret usage: the table every worker maps (so made before any fork), and its ledger file
    accounting = AccountingTable(os.urandom(16))
    keeper = UsageKeeper(accounting, usage_file(cfg), _utc_now, lambda text: log.error("%s", text))
    keeper.load()
    keeper.configure(initial.all_limits(), initial.resets, initial.labels)

    if cfg.workers == 1:
        sockets = _bind(cfg.listen, reuse_port=False)
        holder: list[Server] = []
        idle = Counters(started_at=time.time())
        stats = _start_stats(
            cfg, lambda: keeper.annotate((holder[0].counters if holder else idle).snapshot()))
        if cfg.user:
            drop_privileges(cfg.user)
        plan = WorkerPlan(cfg, sockets, generated, initial, bytearray(ReplayFilter.memory_size(
            cfg.tls.replay_entries)), on_server=holder.append, loaded_id=loaded_id, aes=aes,
            accounting=accounting, keeper=keeper, usage_interval=cfg.usage_interval, relay_given=relay_given)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(serve(plan))
        finally:
            if stats is not None:
                stats.close()

    try:
        listen = worker_listen(cfg.listen)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    slots = [_bind(listen, reuse_port=True) for _ in range(cfg.workers)]
    shared = SharedState(cfg.workers, cfg.tls.replay_entries)
    supervisor: Supervisor

    def run_worker(slot: int) -> int:
        if stats is not None:
            stats.close_socket_only()
        for other, sockets in enumerate(slots):
            if other != slot:
                for _, sock in sockets:
                    sock.close()
        plan = WorkerPlan(cfg, slots[slot], generated, initial, shared.replay_memory, shared.replay_lock,
                          publish=lambda snap: shared.publish(slot, snap), loaded_id=loaded_id, aes=aes,
                          accounting=accounting, relay_given=relay_given)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(plan))

    stats = _start_stats(cfg, lambda: keeper.annotate(supervisor.snapshot()), start=False)
    if cfg.user:
        drop_privileges(cfg.user)
    usage = SupervisorUsage(keeper, cfg.secrets_file, lambda: load_secret_set(cfg, cfg.secrets_file, generated),
                            loaded_id, cfg.usage_interval, cfg.reload_interval)
    supervisor = Supervisor(cfg.workers, shared, cfg.limits.drain_timeout, run_worker, usage.tick, usage.close,
                            keeper.orphaned)
    if stats is not None:
        stats.start()
    try:
        return supervisor.run()
    finally:
        if stats is not None:
            stats.close()


def _relay_files(cfg: EngineConfig) -> dict[Document, bytes]:
    """--aes-pwd and proxy-multi.conf, read now: before privileges are dropped, and a bad one stops the
    start with its name rather than leaving every worker to find out."""
    if cfg.middle_proxy == "off":
        return {}
    try:
        return read_given(sources_for(cfg))
    except RelayConfigError as exc:
        raise StartupError(f"{exc} — give the file as Telegram publishes it ({cfg.relay_config_url}/getProxySecret,"
                           " /getProxyConfig), or leave the flag out to have it fetched") from None


def usage_file(cfg: EngineConfig) -> Path:
    """usage.json beside the engine's state file: the data directory (paths.Paths.usage_file), which the
    engine may write even where the store's directory is read-only."""
    return cfg.state_file.parent / "usage.json"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _start_stats(cfg: EngineConfig, provider: SnapshotProvider, start: bool = True) -> StatsServer | None:
    if cfg.stats is None:
        return None
    try:
        store = os.path.abspath(cfg.secrets_file) if cfg.secrets_file is not None else None
        server = StatsServer(cfg.stats.host, cfg.stats.port, provider, cfg.stats_allow_remote, store,
                             max_secrets=cfg.metrics_max_secrets)
    except OSError as exc:
        raise StartupError(stats_error(str(cfg.stats), exc)) from None
    if start:
        server.start()
    log.info("stats on http://%s/stats, /stats.json and /metrics", cfg.stats)
    return server
