"""Against the real engine: secret changes reach the running proxy without a restart; stats and status read it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.operations.proxy_control import fetch_engine, fetch_stats, stat_int
from mtproxy.paths import Paths
from mtproxy.testkit.process import ProxyProcess, free_port

from .conftest import Result

Cli = Callable[..., Result]

pytestmark = pytest.mark.netns


def start_engine(cli: Cli, paths: Paths, log: Path, *flags: str, ready: int = 1) -> ProxyProcess:
    """An engine run by hand for the root (no install record): it serves the root's store."""
    port, stats_port = free_port(), free_port()
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "port": port, "stats_port": stats_port}))
    if not paths.secrets_file.exists():
        assert cli("add-secret", "--label", "first").status == ExitStatus.OK
    proxy = ProxyProcess(
        ["--listen", f"127.0.0.1:{port}", "-p", str(stats_port), "--secrets-file", str(paths.secrets_file),
         "--no-mask", "--reload-interval", "0.2", "--dc-override", "*=127.0.0.1:9", *flags],
        log, ready_lines=ready,
    )
    proxy.port, proxy.stats_port = port, stats_port
    try:
        return proxy.wait_ready()
    except BaseException:
        proxy.stop()
        raise


@pytest.fixture
def engine(cli: Cli, paths: Paths, tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_engine(cli, paths, tmp_path / "engine.log")
    try:
        yield proxy
    finally:
        proxy.stop()


def _wait_loaded(stats_port: int, wanted: int, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    loaded = None
    while time.monotonic() < deadline:
        loaded = stat_int(fetch_stats(stats_port), "secrets_loaded")
        if loaded == wanted:
            return loaded
        time.sleep(0.05)
    return loaded


def test_secret_changes_reach_the_running_proxy_without_restart(cli: Cli, engine: ProxyProcess) -> None:
    assert _wait_loaded(engine.stats_port, 1) == 1
    pid = engine.proc.pid
    added = cli("add-secret", "--label", "second")
    assert added.status == ExitStatus.OK
    assert "the running proxy reloaded the secrets (the engine serves the store's 2 active secret(s))" in added.out
    assert _wait_loaded(engine.stats_port, 2) == 2
    removed = cli("remove-secret", "first")
    assert removed.status == ExitStatus.OK
    assert _wait_loaded(engine.stats_port, 1) == 1
    regenerated = cli("regenerate-secret", "second", "--yes")
    assert regenerated.status == ExitStatus.OK
    assert engine.proc.poll() is None and engine.proc.pid == pid  # never restarted
    assert stat_int(fetch_stats(engine.stats_port), "reloads_failed") == 0


def test_stats_and_status_read_the_real_engine(cli: Cli, engine: ProxyProcess) -> None:
    stats = cli("stats", "--json").json()
    assert stats["stats"]["secrets_loaded"] == 1
    assert "active_connections" in stats["stats"] and "uptime" in stats["stats"]
    text = cli("stats")
    assert text.status == ExitStatus.OK and "1 loaded" in text.out
    status = cli("status")
    assert status.status == ExitStatus.OK, status.out
    assert f"✓ port: {engine.port}/tcp accepting connections" in status.out
    engine.stop()
    after = cli("status")
    assert after.status == ExitStatus.UNHEALTHY
    assert "✗ stats" in after.out and "✗ port" in after.out
    changed = cli("add-secret")
    assert changed.status == ExitStatus.OK and "no proxy is running" in changed.out


def test_a_reload_is_confirmed_only_when_every_worker_has_it(cli: Cli, paths: Paths, tmp_path: Path) -> None:
    proxy = start_engine(cli, paths, tmp_path / "engine.log", "-M", "2", ready=2)
    try:
        added = cli("add-secret", "--label", "second")
        assert added.status == ExitStatus.OK
        assert "the running proxy reloaded the secrets (the engine serves the store's 2 active secret(s), " \
               "all 2 workers)" in added.out
        sets = fetch_engine(proxy.stats_port)["secret_sets"]  # type: ignore[index]
        assert len(sets) == 2 and sets[0]["digest"] == sets[1]["digest"] and sets[0]["count"] == 2
        status = cli("status")
        assert status.status == ExitStatus.OK, status.out
        assert "all 2 workers" in status.out
        # one worker stopped (SIGSTOP): it cannot reload, so the change is not confirmed
        worker = int(Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text().split()[0])
        os.kill(worker, signal.SIGSTOP)
        try:
            lagging = cli("add-secret", "--label", "third")
            assert "not confirmed: 1 of 2 workers serve the store; 1 still serve an older set" in lagging.out
            assert "reloaded the secrets" not in lagging.out
        finally:
            os.kill(worker, signal.SIGCONT)
    finally:
        proxy.stop()


def test_status_does_not_count_its_probe(cli: Cli, engine: ProxyProcess) -> None:
    for _ in range(3):
        assert cli("status").status == ExitStatus.OK
    time.sleep(0.3)  # the engine has seen the probes' connections close
    stats = fetch_stats(engine.stats_port)
    assert stat_int(stats, "total_connections") == 0
    assert stat_int(stats, "active_connections") == 0
    assert "rejected handshake" not in engine.log  # nothing for fail2ban to count either
    with socket.create_connection(("127.0.0.1", engine.port), timeout=5) as sock:  # a client that speaks
        sock.sendall(os.urandom(64))
        sock.recv(1)
    deadline = time.monotonic() + 5
    while stat_int(fetch_stats(engine.stats_port), "total_connections") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture
def shared_paths() -> Iterator[Paths]:
    """A root the unprivileged engine user can traverse (pytest's own temp dirs are 0700 root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the engine as another user")
    base = Path(tempfile.mkdtemp(prefix="mtproxy-chown-"))
    base.chmod(0o711)
    try:
        yield Paths(base / "root")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _status_line(cli: Cli, name: str) -> str:
    out = cli("status").out
    return next(line for line in out.splitlines() if f" {name}:" in line)


def test_status_shows_an_unreadable_store_and_a_chown_fix_is_picked_up(
    make_env: Callable[..., object], shared_paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine runs as nobody; the store becomes root 0600 (what the VPN installer does): status says ✗
    with the reason, and `chown` alone (no SIGHUP, no restart) brings it back."""
    from mtproxy.cli.env import Env
    from mtproxy.cli.main import main

    def cli(*args: str) -> Result:
        env = make_env()
        assert isinstance(env, Env)
        env.paths = shared_paths
        capsys.readouterr()
        status = main(list(args), env=env)
        return Result(status, capsys.readouterr().out, "")

    nobody = pwd.getpwnam("nobody")
    shared_paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    assert cli("add-secret", "--label", "first").status == ExitStatus.OK
    for directory in (shared_paths.root, shared_paths.root / "config", shared_paths.config_dir):
        directory.chmod(0o711)
    store = shared_paths.secrets_file
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    proxy = start_engine(cli, shared_paths, tmp_path / "engine.log", "-u", "nobody")
    try:
        assert "✓ secrets:" in _status_line(cli, "secrets")
        os.chown(store, 0, 0)  # the content and mtime stay; only the owner changes
        deadline = time.monotonic() + 5
        while "cannot read the store" not in (line := _status_line(cli, "secrets")):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)
        assert "✗ secrets: the engine cannot read the store:" in line and "permission denied" in line
        assert f"fix: chown {nobody.pw_uid} {store}" in line
        status = cli("status")
        assert status.status == ExitStatus.UNHEALTHY
        added = cli("add-secret", "--label", "second")
        assert "✗ not confirmed: the engine cannot read the store" in added.out
        os.chown(store, nobody.pw_uid, nobody.pw_gid)  # the fix: no signal, no restart
        deadline = time.monotonic() + 5
        while "✓ secrets:" not in (line := _status_line(cli, "secrets")):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)
        assert "serves the store's 2 active secret(s)" in line
    finally:
        proxy.stop()
