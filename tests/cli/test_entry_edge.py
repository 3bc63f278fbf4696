"""Every entry point (`mtproxy`, run, healthcheck, setup, uninstall) reports through one edge: one line
`PROG: what — what to do` on stderr, nothing on stdout, and a status from the one ExitStatus enum."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtproxy.cli import setup, uninstall
from mtproxy.cli.errors import ExitStatus
from mtproxy.cli.healthcheck import healthcheck_command
from mtproxy.host.runner import Runner
from mtproxy.testkit.process import free_port

from .conftest import cli_env, no_host_tools


class _NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_uninstall_refusing_without_a_terminal_is_one_line_on_stderr(tmp_path: Path) -> None:
    out, err = _NotATerminal(), io.StringIO()
    status = uninstall.main(["--root", str(tmp_path / "root")], env={"MTPROXY_SYSCONF": str(tmp_path / "etc")},
                            stdin=_NotATerminal(), stdout=out, runner=Runner(which=no_host_tools), stderr=err)
    assert status == ExitStatus.CONFLICT == 6
    assert out.getvalue() == ""
    assert err.getvalue() == "mtproxy-uninstall: refusing to remove without confirmation — pass --yes\n"


def test_uninstall_as_a_user_is_a_permission_status(tmp_path: Path) -> None:
    err = io.StringIO()
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)  # nobody: the refusal is for users other than root
    try:
        status = uninstall.main(["--yes", "--root", str(tmp_path / "root")], env={}, stdout=io.StringIO(),
                                runner=Runner(which=no_host_tools), stderr=err)
    finally:
        if as_root:
            os.seteuid(0)
    assert status == ExitStatus.PERMISSION == 5
    assert err.getvalue() == "mtproxy-uninstall: must run as root — run it again with sudo\n"


def test_setup_without_a_terminal_is_a_conflict_on_stderr(tmp_path: Path) -> None:
    out, err = _NotATerminal(), io.StringIO()
    status = setup.main(["--root", str(tmp_path / "root")], env={"MTPROXY_SYSCONF": str(tmp_path / "etc")},
                        stdin=_NotATerminal(), stdout=out, runner=Runner(which=no_host_tools), stderr=err)
    assert status == ExitStatus.CONFLICT == 6
    assert out.getvalue() == ""
    assert err.getvalue().startswith("mtproxy-setup: no terminal to ask questions on — run with --non-interactive")


def test_healthcheck_unhealthy_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    status = healthcheck_command(["-p", str(free_port()), "--timeout", "1"])
    captured = capsys.readouterr()
    assert status == ExitStatus.FAILURE == 1  # what container health checks expect
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("mtproxy healthcheck: unhealthy: stats endpoint 127.0.0.1:")
    assert " — is the proxy running?" in captured.err
    assert healthcheck_command(["-p", str(free_port()), "--timeout", "1", "-q"]) == ExitStatus.FAILURE
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [
    ["-m", "mtproxy.cli.main", "uninstall", "--root", "ROOT"],
    ["-c", "from mtproxy.cli.main import uninstall_main; uninstall_main()", "--root", "ROOT"],
    ["-c", "from mtproxy.cli.entry import main; main()", "run", "-S", "nothex"],
])
def test_entry_points_answer_on_stderr_with_an_exit_status(tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / "root") if a == "ROOT" else a for a in argv]
    proc = subprocess.run([sys.executable, *argv], env=cli_env(tmp_path / "root"), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode in {int(s) for s in ExitStatus} - {0}, proc
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc
    assert proc.stderr.startswith(("mtproxy-uninstall: ", "mtproxy run: "))


def test_the_global_root_reaches_run_as_its_own_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mtproxy --root X run …` hands X to the engine's parser; the process environment is left alone
    (before, it was changed for the rest of the process)."""
    from mtproxy.cli import run
    from mtproxy.cli.main import main

    monkeypatch.delenv("MTPROXY_ROOT", raising=False)
    seen: list[list[str]] = []
    monkeypatch.setattr(run, "run_command", lambda argv: seen.append(argv) or 0)
    assert main(["--root", str(tmp_path), "run", "-H", "7000", "--root", str(tmp_path / "mine")]) == 0
    assert seen == [["--root", str(tmp_path), "-H", "7000", "--root", str(tmp_path / "mine")]]  # the last wins
    assert "MTPROXY_ROOT" not in os.environ
    assert main(["run", "-H", "7000"]) == 0
    assert seen[-1] == ["-H", "7000"]


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "--bogus"], "mtproxy run: unrecognized arguments: --bogus — see `mtproxy run --help`"),
    (["run", "-M", "two"], "mtproxy run: argument -M/--workers: invalid int value: 'two' — see `mtproxy run --help`"),
    (["healthcheck", "--nope"],
     "mtproxy healthcheck: unrecognized arguments: --nope — see `mtproxy healthcheck --help`"),
    (["setup", "--port", "x"], "mtproxy-setup: argument --port: invalid int value: 'x' — see `mtproxy-setup --help`"),
    (["uninstall", "--what"], "mtproxy-uninstall: unrecognized arguments: --what — see `mtproxy-uninstall --help`"),
])
def test_a_bad_flag_is_one_usage_line(tmp_path: Path, argv: list[str], says: str) -> None:
    """The pass-through commands parse their own flags; a bad one is the same one line and status 2 as a
    bad flag of any other command, not argparse's usage block."""
    proc = subprocess.run([sys.executable, "-m", "mtproxy.cli.main", *argv], env=cli_env(tmp_path / "root"),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == ExitStatus.USAGE == 2
    assert (proc.stdout, proc.stderr) == ("", says + "\n")
