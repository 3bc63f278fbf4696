"""status tells the truth: engine vs store, another installation's stats endpoint, a failing `ufw status`,
and the install record's schema migration."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.host import ufw
from mtproxy.host.layout import HostLayout
from mtproxy.host.record import RECORD_SCHEMA, HaproxyRecord, InstallRecord, ownership
from mtproxy.host.runner import Runner
from mtproxy.operations.proxy_control import compare
from mtproxy.paths import Paths
from mtproxy.stats.counters import Counters, merge
from mtproxy.stats.digest import secrets_digest
from mtproxy.stats.http import StatsServer, render_json
from mtproxy.store import read_store

from .conftest import Result

Cli = Callable[..., Result]


def _settings(paths: Paths, **values: object) -> None:
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, **values}))


@pytest.fixture
def counters() -> Counters:
    return Counters(started_at=time.time() - 60)


def _serve(counters: Counters, store: str | None) -> Iterator[StatsServer]:
    server = StatsServer("127.0.0.1", 0, counters.snapshot, allow_remote=False, store=store)
    server.start()
    yield server
    server.close()


@pytest.fixture
def engine(counters: Counters, paths: Paths) -> Iterator[StatsServer]:
    """An engine run by hand for this root (it reads this root's store)."""
    yield from _serve(counters, str(paths.secrets_file))


def _line(result: Result, name: str) -> str:
    return next(line for line in result.out.splitlines() if f" {name}:" in line)


def test_status_compares_the_engine_with_the_store(cli: Cli, paths: Paths, engine: StatsServer,
                                                   counters: Counters, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtproxy.operations.proxy_control.RELOAD_WAIT", 0.3)
    _settings(paths, stats_port=engine.port)
    cli("add-secret", "--label", "a")
    data = read_store(paths.secrets_file)
    counters.secrets_loaded, counters.secrets_digest = 1, secrets_digest(data.active_secrets())
    assert "✓ secrets: 1 active" in _line(cli("status"), "secrets")
    cli("add-secret", "--label", "b")  # the engine (a fake that never reloads) still serves one
    stale = cli("status")
    assert stale.status == ExitStatus.UNHEALTHY
    assert "✗ secrets: the engine serves 1 secret(s), not the store's 2" in _line(stale, "secrets")
    counters.reload_error = "mtproxy_secrets.json: permission denied while reading"
    failed = _line(cli("status"), "secrets")
    assert "✗ secrets: the engine cannot read the store: mtproxy_secrets.json: permission denied" in failed
    assert f"fix: chown {os.geteuid()} {paths.secrets_file}" in failed


def test_add_secret_is_not_confirmed_by_an_engine_that_did_not_reload(
        cli: Cli, paths: Paths, engine: StatsServer, counters: Counters, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtproxy.operations.proxy_control.RELOAD_WAIT", 0.5)
    _settings(paths, stats_port=engine.port)
    added = cli("add-secret")
    assert "reloaded the secrets" not in added.out
    assert "not confirmed: the engine serves 0 secret(s), not the store's 1" in added.out
    counters.reload_error = "bad JSON"
    failed = cli("add-secret")
    assert "✗ not confirmed: the engine cannot read the store: bad JSON" in failed.out
    assert cli("add-secret", "--json").json()["proxy"]["failed"] is True


def test_another_installations_stats_endpoint_is_not_this_roots(cli: Cli, paths: Paths, counters: Counters,
                                                               tmp_path: Path) -> None:
    counters.active, counters.total = 7, 99
    other = iter(_serve(counters, str(tmp_path / "production/config/mtproxy/mtproxy_secrets.json")))
    server = next(other)
    try:
        _settings(paths, stats_port=server.port)
        cli("add-secret")
        result = cli("status")
        assert result.status == ExitStatus.UNHEALTHY
        assert "✗ stats: 127.0.0.1:" in result.out and "answers for another installation" in result.out
        assert "7 active" not in result.out and "99 total" not in result.out
        added = cli("add-secret")
        assert "no proxy is running for this root" in added.out
        shown = cli("stats")
        assert shown.status == ExitStatus.UNAVAILABLE and "answers for another installation" in shown.err
    finally:
        next(other, None)


def test_merged_worker_sets_confirm_only_when_all_agree() -> None:
    from mtproxy.store import StoreData

    store = StoreData()
    now = time.time()
    fresh = Counters(started_at=now)
    fresh.secrets_digest = secrets_digest([])
    stale = Counters(started_at=now)
    stale.secrets_digest, stale.secrets_loaded = "0123456789abcdef", 3
    both = render_json(merge([fresh.snapshot(), stale.snapshot()], now), now, None)
    assert len(both["secret_sets"]) == 2
    verdict = compare(both, store)
    assert not verdict.ok and verdict.detail.startswith("1 of 2 workers serve the store")
    dead = stale.snapshot() | {"workers": 0}  # a retired worker's totals do not vote
    assert compare(render_json(merge([fresh.snapshot(), dead], now), now, None), store).ok


_FAILING_UFW = """#!/bin/sh
case "$1" in
  status) echo "ERROR: problem running iptables: Another app is currently holding the xtables lock" >&2; exit 1 ;;
  show) echo "ufw limit $PORT/tcp comment 'MTProxy'" ;;
esac
"""


def test_a_failing_ufw_status_is_unknown_not_inactive(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ufw").write_text(_FAILING_UFW)
    (bin_dir / "ufw").chmod(0o755)
    runner = Runner(env={**os.environ, "PORT": "8443", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
                    which=lambda p: shutil.which(p, path=str(bin_dir)))
    current = ufw.state(runner)
    assert current.active is None and "xtables lock" in current.error
    if os.geteuid() == 0:
        from mtproxy.operations.health import ufw_check

        check = ufw_check(runner, 8443)
        assert check is not None and check.ok is None
        assert check.detail.startswith("UFW state unknown: `ufw status` failed (ERROR: problem running")


# ------------------------------------------------------------------------------------------ install record


def _v1(paths: Paths, files: list[str], manager: str = "docker") -> HostLayout:
    layout = HostLayout(paths.root / "etc", paths.root)
    layout.compose_dir.mkdir(parents=True, exist_ok=True)
    layout.install_record.write_text(json.dumps({
        "port": 8443, "manager": manager, "ufw_mode": "limit", "image": "mtproxy:local", "files": files,
        "ufw_added": True, "user_created": False}))
    return layout


def test_schema1_docker_record_migrates_and_saves_as_the_current_schema(paths: Paths) -> None:
    _settings(paths, stats_port=9999)
    layout = _v1(paths, [str(paths.root / "mtproxy/docker-compose.yml")])
    record = InstallRecord.load(layout.install_record)
    assert record is not None and record.migrated_from == 1
    assert (record.root, record.service, record.store, record.stats_port) == (
        str(paths.root), "vless_mtproxy", str(paths.secrets_file), 9999)
    assert record.ufw_added is True and record.port == 8443
    assert ownership(paths, layout).record == record
    record.save(layout.install_record)
    doc = json.loads(layout.install_record.read_text())
    assert doc["schema"] == RECORD_SCHEMA == 3 and doc["root"] == str(paths.root) and "migrated_from" not in doc
    assert InstallRecord.load(layout.install_record) == record


def test_schema1_records_find_their_root_in_the_unit_or_the_jail(paths: Paths, tmp_path: Path) -> None:
    unit = tmp_path / "mtproxy.service"
    unit.write_text("[Service]\nExecStart=/usr/local/bin/mtproxy run --root /opt/vless --config x\n")
    layout = _v1(paths, [str(unit)], manager="systemd")
    record = InstallRecord.load(layout.install_record)
    assert record is not None and (record.root, record.service) == ("/opt/vless", "mtproxy")
    assert "belongs to /opt/vless" in ownership(paths, layout).problem
    jail = tmp_path / "jail.conf"
    jail.write_text(f"[mtproxy]\nlogpath = {paths.root}/logs/mtproxy/mtproxy.log\n")
    layout = _v1(paths, [str(jail)], manager="none")
    record = InstallRecord.load(layout.install_record)
    assert record is not None and record.root == str(paths.root) and record.service == ""
    nothing = _v1(paths, [], manager="docker")  # nothing says whose it is: nobody's
    assert ownership(paths, nothing).record is None
    assert "does not say which root" in ownership(paths, nothing).problem


def test_schema2_record_migrates_without_an_haproxy_integration(paths: Paths) -> None:
    layout = HostLayout(paths.root / "etc", paths.root)
    layout.compose_dir.mkdir(parents=True)
    layout.install_record.write_text(json.dumps({
        "schema": 2, "port": 8443, "manager": "docker", "ufw_mode": "limit", "image": "x", "files": [],
        "ufw_added": True, "user_created": False, "root": str(paths.root), "service": "vless_mtproxy",
        "store": "s", "stats_port": 8888}))
    record = InstallRecord.load(layout.install_record)
    assert record is not None and record.migrated_from == 2 and record.haproxy is None
    assert (record.root, record.port, record.stats_port, record.ufw_added) == (str(paths.root), 8443, 8888, True)
    record.haproxy = HaproxyRecord("/opt/vless/config/haproxy.cfg", 443, ("haproxy", "-c", "-f", "{file}"),
                                   ("docker", "kill", "-s", "HUP", "vless_haproxy"))
    record.save(layout.install_record)
    doc = json.loads(layout.install_record.read_text())
    assert doc["schema"] == 3 and doc["haproxy"]["reload"] == ["docker", "kill", "-s", "HUP", "vless_haproxy"]
    assert InstallRecord.load(layout.install_record) == record
    doc["haproxy"] = {"config": "x", "public_port": 443, "check": [1], "reload": []}  # not strings: unreadable
    layout.install_record.write_text(json.dumps(doc))
    assert InstallRecord.load(layout.install_record) is None


def test_a_record_of_a_newer_schema_is_not_guessed_at(paths: Paths) -> None:
    layout = HostLayout(paths.root / "etc", paths.root)
    layout.compose_dir.mkdir(parents=True)
    layout.install_record.write_text(json.dumps({
        "schema": 4, "port": 8443, "manager": "docker", "ufw_mode": "limit", "image": "x", "root": str(paths.root),
        "service": "vless_mtproxy", "store": "s", "stats_port": 8888}))
    assert InstallRecord.load(layout.install_record) is None
    assert "unreadable install record" in ownership(paths, layout).problem
