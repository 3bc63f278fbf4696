"""set-limits, enable, disable, extend, reset-usage: what they write, what they refuse, and live effect."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.operations.units import UnitError, parse_duration, parse_rate, parse_size, parse_when
from mtproxy.paths import Paths
from mtproxy.store import read_store
from mtproxy.testkit.process import ProxyProcess

from .conftest import SRC, Result, stored_entry
from .test_live_apply import _wait_loaded, start_engine

Cli = Callable[..., Result]
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "size"), [("10G", 10 * 2**30), ("500MB", 500 * 10**6), ("1.5GiB", 3 * 2**29),
                                            ("1k", 1024), ("42", 42), ("2 TB", 2 * 10**12), ("7b", 7)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "10X", "-1G", "0", "0.1B", "1e3"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UnitError):
        parse_size(text)


def test_rates_durations_dates() -> None:
    assert parse_rate("1M/s") == 2**20 and parse_rate("500KB") == 500_000
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("1w") == timedelta(weeks=1)
    for bad in ("", "30", "d", "1y", "0d", "1d 2h"):
        with pytest.raises(UnitError):
            parse_duration(bad)
    assert parse_when("2027-01-31") == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_when("2027-01-31T18:00:00+01:00") == datetime(2027, 1, 31, 17, tzinfo=UTC)
    assert parse_when("never") is None
    with pytest.raises(UnitError):
        parse_when("31.01.2027")


@pytest.mark.usefixtures("two")
def test_set_limits_writes_the_store_and_keeps_what_it_is_not_told(cli: Cli, paths: Paths) -> None:
    done = cli("set-limits", "alice", "--max-connections", "5", "--max-ips", "3", "--quota", "10G",
               "--quota-period", "month", "--quota-anchor", "15", "--quota-tz", "Europe/Berlin",
               "--expires", "2027-01-31", "--rate", "1M/s", "--note", "Alice's phone")
    assert done.status == ExitStatus.OK, done.err
    assert "5 conn, 3 IPs, 10G/month, 1M/s, until 2027-01-31" in done.out
    limits = stored_entry(paths, "alice")["limits"]
    assert limits == {"expires_at": "2027-01-31T00:00:00Z", "max_connections": 5, "max_unique_ips": 3,
                      "unique_ip_window": 86400, "rate_limit": 2**20, "note": "Alice's phone",
                      "quota": {"limit_bytes": 10 * 2**30, "period": "month", "anchor_day": 15,
                                "timezone": "Europe/Berlin"}}
    assert "limits" not in stored_entry(paths, "bob")
    again = cli("set-limits", "alice", "--quota", "20G", "--max-connections", "none", "--json").json()
    assert again["kind"] == "secret-limits" and again["limits"]["max_connections"] is None
    assert again["limits"]["quota"] == {"limit_bytes": 20 * 2**30, "period": "month", "anchor_day": 15,
                                        "timezone": "Europe/Berlin"}
    cleared = cli("set-limits", "alice", "--quota", "none", "--expires", "never", "--rate", "none",
                  "--max-ips", "none", "--note", "", "--json").json()
    assert cleared["limits"]["quota"] is None and cleared["limits"]["expires_at"] is None
    assert "limits" not in stored_entry(paths, "alice")  # nothing left to limit: the object goes


@pytest.mark.usefixtures("two")
@pytest.mark.parametrize(("args", "problem"), [
    (["--quota", "10X"], "is not a size such as 10G"),
    (["--max-connections", "-3"], "is not a whole number"),
    (["--expires", "tomorrow"], "is not a date such as 2027-01-31"),
    (["--quota-tz", "Mars/Base"], "there is no quota to change"),
    (["--quota", "1G", "--quota-tz", "Mars/Base"], "'Mars/Base' is not a known IANA time zone"),
    (["--quota", "1G", "--quota-period", "week", "--quota-anchor", "9"], "anchor_day must be 1..7"),
    (["--quota-period", "year"], "'year' is not one of"),
    ([], "nothing to change"),
])
def test_bad_limits_are_refused_and_change_nothing(cli: Cli, paths: Paths, args: list[str], problem: str) -> None:
    before = paths.secrets_file.read_bytes()
    result = cli("set-limits", "alice", *args)
    assert result.status == ExitStatus.USAGE and problem in result.err, result.err
    assert result.err.count("\n") == 1
    assert paths.secrets_file.read_bytes() == before


@pytest.mark.usefixtures("two")
def test_unknown_secret_is_not_found(cli: Cli) -> None:
    for args in (["set-limits", "carol", "--max-ips", "1"], ["enable", "carol"], ["extend", "carol", "1d"],
                 ["reset-usage", "carol", "--yes"], ["disable", "carol", "--yes"]):
        assert cli(*args).status == ExitStatus.NOT_FOUND, args


@pytest.mark.usefixtures("two")
def test_disable_enable_and_the_last_active_secret(cli: Cli, paths: Paths) -> None:
    assert cli("disable", "alice").status == ExitStatus.OK
    assert stored_entry(paths, "alice")["active"] is False
    assert [r.label for r in read_store(paths.secrets_file).active_records()] == ["bob"]
    refused = cli("disable", "bob")  # the last one: asks, and without a terminal refuses
    assert refused.status == ExitStatus.CONFLICT and stored_entry(paths, "bob")["active"] is True
    assert cli("--dry-run", "disable", "bob").status == ExitStatus.OK and stored_entry(paths, "bob")["active"] is True
    assert cli("disable", "bob", "--yes").status == ExitStatus.OK and stored_entry(paths, "bob")["active"] is False
    listing = cli("list-secrets", "--json").json()["secrets"]
    assert [(s["label"], s["state"], s["limits"]["enabled"]) for s in listing] == [
        ("alice", "disabled", False), ("bob", "disabled", False)]
    assert cli("enable", "alice", "--json").json()["active"] is True
    assert stored_entry(paths, "alice")["active"] is True


@pytest.mark.usefixtures("two")
def test_extend_moves_the_expiry(cli: Cli, paths: Paths) -> None:
    never = cli("extend", "alice", "30d")
    assert never.status == ExitStatus.CONFLICT and "never expires" in never.err
    assert cli("extend", "alice", "soon").status == ExitStatus.USAGE
    cli("set-limits", "alice", "--expires", "2099-01-01")
    assert cli("extend", "alice", "1w").status == ExitStatus.OK
    assert stored_entry(paths, "alice")["limits"]["expires_at"] == "2099-01-08T00:00:00Z"
    cli("set-limits", "alice", "--expires", "2001-01-01")  # long past: extended from now
    result = cli("extend", "alice", "1d", clock=lambda: NOW)
    assert result.status == ExitStatus.OK
    assert stored_entry(paths, "alice")["limits"]["expires_at"] == "2026-12-07T12:00:00Z"


@pytest.mark.usefixtures("two")
def test_reset_usage_stamps_the_store_and_usage_counts_from_then(cli: Cli, paths: Paths) -> None:
    sid = stored_entry(paths, "alice")["id"]
    paths.usage_file.write_text(json.dumps({"version": 1, "secrets": {sid: {
        "bytes_in": 100, "bytes_out": 50, "connections_total": 3, "reset_at": None}}}))
    assert cli("list-secrets", "--json").json()["secrets"][0]["usage"]["bytes_total"] == 150
    assert cli("reset-usage", "alice").status == ExitStatus.CONFLICT  # asks first; no terminal here
    assert cli("reset-usage", "alice", "--yes", clock=lambda: NOW).status == ExitStatus.OK
    assert stored_entry(paths, "alice")["usage_reset_at"] == "2026-12-06T12:00:00Z"
    usage = cli("list-secrets", "--json").json()["secrets"][0]["usage"]
    assert usage["bytes_total"] == 0 and usage["period_start"] == "2026-12-06T12:00:00Z"
    # once the engine's ledger has applied the reset, its figures count again
    paths.usage_file.write_text(json.dumps({"version": 1, "secrets": {sid: {
        "bytes_in": 7, "bytes_out": 0, "reset_at": "2026-12-06T12:00:00Z"}}}))
    assert cli("list-secrets", "--json").json()["secrets"][0]["usage"]["bytes_total"] == 7


@pytest.mark.netns
def test_disable_and_enable_reach_the_running_proxy_live(cli: Cli, paths: Paths, tmp_path: Path) -> None:
    engine: ProxyProcess = start_engine(cli, paths, tmp_path / "engine.log")
    try:
        assert cli("add-secret", "--label", "second").status == ExitStatus.OK
        assert _wait_loaded(engine.stats_port, 2) == 2
        pid = engine.proc.pid
        off = cli("disable", "second")
        assert off.status == ExitStatus.OK and "the running proxy reloaded the secrets" in off.out, off.out
        assert _wait_loaded(engine.stats_port, 1) == 1
        limited = cli("set-limits", "first", "--max-connections", "2")
        assert "the running proxy reloaded the secrets" in limited.out
        on = cli("enable", "second")
        assert "the engine serves the store's 2 active secret(s)" in on.out
        assert _wait_loaded(engine.stats_port, 2) == 2
        assert engine.proc.pid == pid and engine.proc.poll() is None  # no restart
    finally:
        engine.stop()


def test_man_page_and_completion_know_the_new_commands(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mtproxy.cli.main import cli as group
    from mtproxy.cli.manpage import render

    page = render(group)
    for name in ("set\\-limits", "enable", "disable", "extend", "reset\\-usage", "api", "api\\-token"):
        assert f".SS {name}\n" in page, name
    assert "\\-\\-max\\-connections" in page and "\\-\\-quota\\-period" in page
    root = tmp_path / "root"
    env = {**os.environ, "MTPROXY_ROOT": str(root), "PYTHONPATH": SRC}
    subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "--server", "203.0.113.10", "add-secret", "--label",
                    "alice"], env=env, capture_output=True, check=True, timeout=60)
    for words, wanted in (("mtproxy set-l", "set-limits"), ("mtproxy reset-usage al", "alice"),
                          ("mtproxy set-limits al", "alice")):
        comp = {**env, "_MTPROXY_COMPLETE": "bash_complete", "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - 1)}
        out = subprocess.run([sys.executable, "-m", "mtproxy.cli.main"], env=comp, capture_output=True, text=True,
                             timeout=60, check=False).stdout
        assert wanted in out, (words, out)
