"""The setup wizard and uninstall, driven as a user would (flags/env, and a real terminal), in a temp root.

/etc is replaced by MTPROXY_SYSCONF (a temp dir); the manager is `none` (files, secret, links, fail2ban
and logrotate; no container), UFW is skipped (tests/deploy/test_firewall.py exercises it for real).
"""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtproxy.testkit.process import free_port

from .conftest import REPO

pytestmark = pytest.mark.netns


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(MTPROXY_SYSCONF=str(tmp_path / "etc"), MTPROXY_ROOT=str(tmp_path / "root"), NO_COLOR="1")
    env.update(extra)
    return env


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtproxy.cli.main", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env=env or _env(tmp_path), stdin=subprocess.DEVNULL)


def _tree(base: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under base: (mode, bytes); lock files are the store's own and not content."""
    out: dict[str, tuple[int, bytes]] = {}
    if base.exists():
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".lock"):
                out[str(path.relative_to(base))] = (path.stat().st_mode & 0o7777, path.read_bytes())
    return out


def _setup_args(port: int) -> list[str]:
    return ["setup", "-n", "--manager", "none", "--ufw", "skip", "--port", str(port)]


def test_non_interactive_from_environment(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, MTPROXY_PORT=str(port), MTPROXY_WORKERS="2", MTPROXY_DOMAIN="www.example.com",
               MTPROXY_SERVER="proxy.example.org")
    result = _cli(tmp_path, "setup", "--non-interactive", "--manager", "none", "--ufw", "skip", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    root, etc = tmp_path / "root", tmp_path / "etc"
    settings = json.loads((root / "config/mtproxy/mtproxy_config.json").read_text())
    assert settings["port"] == port and settings["workers"] == 2
    assert settings["domain"] == "www.example.com" and settings["server"] == "proxy.example.org"
    store = json.loads((root / "config/mtproxy/mtproxy_secrets.json").read_text())
    [secret] = store["secrets"]
    assert secret["type"] == "ee" and secret["domain"] == "www.example.com" and secret["active"]
    assert secret["value"] not in result.stdout.replace("secret=" + secret["value"], "")  # only inside links
    link = (root / "data/mtproxy/mtproxy_link.txt").read_text()
    assert f"tg://proxy?server=proxy.example.org&port={port}&secret={secret['value']}" in link
    assert f"tg://proxy?server=proxy.example.org&port={port}" in result.stdout
    for path, mode in (("config/mtproxy/mtproxy_secrets.json", 0o600), ("config/mtproxy", 0o750),
                       ("logs/mtproxy", 0o750), ("data/mtproxy/mtproxy_qr.png", 0o600)):
        assert (root / path).stat().st_mode & 0o777 == mode, path
    jail = (etc / "fail2ban/jail.d/mtproxy.conf").read_text()
    assert f"port     = {port}" in jail and str(root / "logs/mtproxy/mtproxy.log") in jail
    assert (etc / "fail2ban/filter.d/mtproxy.conf").exists()
    assert str(root / "logs/mtproxy") in (etc / "logrotate.d/mtproxy").read_text()
    assert "[7/7]" in result.stdout  # progress


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.10")
    first = _cli(tmp_path, *_setup_args(port), "--type", "dd", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _tree(tmp_path)
    second = _cli(tmp_path, *_setup_args(port), "--type", "dd", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _tree(tmp_path) == before  # same secret, same files, same modes


def test_busy_port_is_refused_before_anything_changes(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # like Xray's 127.0.0.1:8443: a wildcard bind then fails
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _cli(tmp_path, *_setup_args(port), "--type", "plain")
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr  # refusals: stderr
    assert "free" in result.stderr or "choose another port" in result.stderr
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


def test_failure_midway_is_undone(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("not a directory")  # the fail2ban step cannot write under it
    result = _cli(tmp_path, *_setup_args(free_port()), "--type", "dd")
    assert result.returncode == 1, result.stdout
    assert "Undoing" in result.stdout and "undone:" in result.stdout
    assert _tree(tmp_path / "root") == {}
    assert not (tmp_path / "root" / "config").exists()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = _cli(tmp_path, *_setup_args(free_port()), "--type", "dd", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing changed" in result.stdout
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


def test_no_terminal_without_non_interactive_is_refused(tmp_path: Path) -> None:
    result = _cli(tmp_path, "setup", "--manager", "none")
    assert result.returncode == 6 and "--non-interactive" in result.stderr and result.stdout == ""


class Terminal:
    """A real pseudo-terminal around the wizard: read until a prompt appears, then type an answer."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                                     close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never appeared; screen so far:\n{self.screen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}:\n{self.screen}")
                self.screen += chunk.decode(errors="replace")

    def answer(self, prompt: str, text: str) -> None:
        self.expect(prompt)
        self.screen = self.screen[self.screen.index(prompt) + len(prompt):]
        os.write(self.master, text.encode() + b"\r")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            self.expect("\x00", timeout)  # read to the end
        except AssertionError:
            pass
        code = self.proc.wait(timeout)
        os.close(self.master)
        return code


def test_interactive_answers_prompts(tmp_path: Path) -> None:
    port = free_port()
    term = Terminal([sys.executable, "-m", "mtproxy.cli.main", "setup", "--manager", "none"], _env(tmp_path))
    term.answer("Install the MTProxy add-on now?", "y")
    term.answer("Public port", "70000")
    term.answer("Public port", str(port))  # re-asked after the invalid answer
    term.answer("Worker processes", "3")
    term.answer("Secret type", "fake-tls")
    term.answer("Fake-TLS domain", "www.example.com")
    term.answer("Server address or domain for links", "203.0.113.7")
    term.expect("6th and later new connections")  # what `ufw limit` really does
    term.answer("UFW rule: limit, allow or skip", "skip")
    term.expect("mtproxy is installed.")
    code = term.finish()
    assert code == 0, term.screen
    settings = json.loads((tmp_path / "root/config/mtproxy/mtproxy_config.json").read_text())
    assert (settings["port"], settings["workers"], settings["domain"]) == (port, 3, "www.example.com")
    link = (tmp_path / "root/data/mtproxy/mtproxy_link.txt").read_text()
    assert f"server=203.0.113.7&port={port}&secret=ee" in link


def test_interactive_decline_changes_nothing(tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "mtproxy.cli.main", "setup", "--manager", "none"], _env(tmp_path))
    term.answer("Install the MTProxy add-on now?", "n")
    term.expect("Nothing installed.")
    assert term.finish() == 0
    assert not (tmp_path / "root").exists()


def test_uninstall_leaves_nothing_behind(tmp_path: Path) -> None:
    setup = _cli(tmp_path, *_setup_args(free_port()), "--type", "dd", env=_env(tmp_path, MTPROXY_SERVER="192.0.2.1"))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    refused = _cli(tmp_path, "uninstall")
    assert refused.returncode == 6 and "--yes" in refused.stderr and refused.stdout == ""
    kept = _cli(tmp_path, "uninstall", "--yes")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert set(_tree(tmp_path / "root")) == {"config/mtproxy/mtproxy_secrets.json",
                                             "config/mtproxy/mtproxy_config.json"}
    assert _tree(tmp_path / "etc") == {}
    purged = _cli(tmp_path, "uninstall", "--yes", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert _tree(tmp_path / "root") == {} and _tree(tmp_path / "etc") == {}
    assert not (tmp_path / "root/config/mtproxy").exists()
