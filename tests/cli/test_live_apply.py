"""Against the real engine: secret changes reach the running proxy without a restart; stats and status read it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.cli.proxy_control import fetch_stats, stat_int
from mtproxy.paths import Paths
from mtproxy.testkit.process import ProxyProcess, free_port

from .conftest import Result

Cli = Callable[..., Result]

pytestmark = pytest.mark.netns


@pytest.fixture
def engine(cli: Cli, paths: Paths, tmp_path: Path) -> Iterator[ProxyProcess]:
    port, stats_port = free_port(), free_port()
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "port": port, "stats_port": stats_port}))
    assert cli("add-secret", "--label", "first").status == ExitStatus.OK
    proxy = ProxyProcess(
        ["--listen", f"127.0.0.1:{port}", "-p", str(stats_port), "--secrets-file", str(paths.secrets_file),
         "--no-mask", "--reload-interval", "0.2", "--dc-override", "*=127.0.0.1:9"],
        tmp_path / "engine.log",
    )
    try:
        proxy.wait_ready()
        proxy.port, proxy.stats_port = port, stats_port
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
    assert "the running proxy reloaded the secrets (2 live)" in added.out
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
