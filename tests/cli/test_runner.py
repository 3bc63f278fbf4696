"""The one host command runner: argument lists without a shell, stderr kept, dry-run, timeouts, missing tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mtproxy.host.runner import CommandError, Runner
from mtproxy.operations.health import readable_by


def test_arguments_reach_the_program_verbatim_never_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tricky = f"x; touch {marker} && echo $HOME `id`"
    result = Runner().run([sys.executable, "-c", "import sys; print(sys.argv[1])", tricky])
    assert result.ok and result.stdout == tricky + "\n"
    assert not marker.exists()


def test_failure_keeps_stderr_and_says_why() -> None:
    runner = Runner()
    code = "import sys; sys.stderr.write('first\\nthe real reason\\n'); sys.exit(3)"
    result = runner.run([sys.executable, "-c", code], check=False)
    assert result.returncode == 3 and "the real reason" in result.stderr
    assert result.last_error_line() == "the real reason"
    with pytest.raises(CommandError) as info:
        runner.run([sys.executable, "-c", code])
    assert info.value.problem == "the real reason"
    assert info.value.result.returncode == 3


def test_missing_program_and_timeout() -> None:
    runner = Runner()
    with pytest.raises(CommandError) as info:
        runner.run(["mtproxy-no-such-program-xyz"])
    assert info.value.result.returncode == 127 and info.value.problem == "not installed"
    with pytest.raises(CommandError) as timed:
        runner.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.3)
    assert timed.value.result.returncode == 124 and "timed out" in timed.value.problem


def test_dry_run_records_changes_but_still_runs_queries() -> None:
    runner = Runner(dry_run=True)
    change = runner.run([sys.executable, "-c", "raise SystemExit(9)"])
    assert change.dry_run and change.ok
    query = runner.run([sys.executable, "-c", "print('state')"], mutates=False)
    assert not query.dry_run and query.stdout == "state\n"
    assert len(runner.history) == 2 and runner.history[0][-1] == "raise SystemExit(9)"


def test_stdin_is_not_inherited_unless_given() -> None:
    result = Runner().run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.stdout == "''\n"
    fed = Runner().run([sys.executable, "-c", "import sys; print(sys.stdin.read())"], input_text="hello")
    assert fed.stdout == "hello\n"


def test_store_readability_for_the_proxy_user(tmp_path: Path) -> None:
    store = tmp_path / "s.json"
    store.write_text("{}")
    store.chmod(0o600)
    owner = store.stat().st_uid
    assert readable_by(store, 0)
    assert readable_by(store, owner)
    assert not readable_by(store, owner + 4242)  # root-owned 0600, as the VPN installer leaves config/
    store.chmod(0o644)
    assert readable_by(store, owner + 4242)
