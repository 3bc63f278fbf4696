"""The CLI as real processes: 50 concurrent writers, kill -9 mid-write, read-only root, closed pipes, roots."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from mtproxy.cli.errors import ExitStatus
from mtproxy.paths import Paths
from mtproxy.store import read_store

from .conftest import cli_env, run_process


def test_fifty_concurrent_add_secret_processes_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mtproxy.cli.main", "add-secret", "--label", f"user-{n}"],
            env=cli_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        for n in range(50)
    ]
    failures = []
    for proc in procs:
        _out, err = proc.communicate(timeout=240)
        if proc.returncode != 0:
            failures.append(err)
    assert failures == []
    data = read_store(Paths(root).secrets_file)
    assert sorted(rec.label for rec in data.secrets) == sorted(f"user-{n}" for n in range(50))
    assert len({rec.id for rec in data.secrets}) == 50
    assert len({rec.value for rec in data.secrets}) == 50
    # Every secret got its link and QR files, and no temp file was left behind.
    for rec in data.secrets:
        assert rec.value in (Paths(root).secret_dir(rec.id) / "link.txt").read_text()
        assert (Paths(root).secret_dir(rec.id) / "qr.png").exists()
    assert [p.name for p in Paths(root).config_dir.iterdir() if p.name.endswith(".tmp")] == []


_WRITER = """
import sys
from mtproxy.protocol.secret import SecretKind, generate_secret
from mtproxy.store import SecretRecord, update_store
import os
path = sys.argv[1]
n = 0
print("ready", flush=True)
while True:
    n += 1
    rec = SecretRecord.from_secret(f"id{n}", generate_secret(os.urandom(16), SecretKind.FAKE_TLS, "www.example.com"),
                                   label=f"l{n}", description="x" * 2000)
    def change(data, rec=rec):
        trimmed = data.without(f"id{n - 40}")  # keep the file a few hundred KB
        return trimmed.with_record(rec), None
    update_store(path, change)
"""


def test_kill_9_in_the_middle_of_writes_leaves_a_valid_file(tmp_path: Path) -> None:
    path = Paths(tmp_path).secrets_file
    seen_counts = set()
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=cli_env(tmp_path),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.037 * round_)  # land at different points of the write cycle
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        data = read_store(path)  # must parse: the old or the new file, never a torn one
        seen_counts.add(len(data.secrets))
        assert all(rec.description == "x" * 2000 for rec in data.secrets)
    assert max(seen_counts) > 0
    # The next command cleans up what the killed writers left and still works.
    assert run_process(tmp_path, "add-secret", "--label", "after-crash").returncode == 0
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert read_store(path).find("after-crash") is not None


def _read_only(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `directory` read-only: a read-only bind mount in a private mount namespace as root
    (root ignores permission bits), or permission bits otherwise."""
    base = [sys.executable, "-m", "mtproxy.cli.main", *args]
    if os.geteuid() == 0:
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "--", "bash", "-c", script, "ro", str(directory), *base]
    else:
        directory.chmod(0o555)
        argv = base
    try:
        return subprocess.run(argv, env=cli_env(directory.parent.parent), capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL, check=False)
    finally:
        directory.chmod(0o755)


def test_read_only_directory(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert run_process(tmp_path, "add-secret", "--label", "a").returncode == 0
    before = paths.secrets_file.read_bytes()
    result = _read_only(paths.config_dir, "add-secret", "--label", "b")
    assert result.returncode == ExitStatus.PERMISSION, result.stderr
    assert result.stderr.startswith(f"mtproxy: {paths.config_dir}/")
    assert ("read-only file system" in result.stderr or "permission denied" in result.stderr)
    assert result.stderr.count("\n") == 1 and " — " in result.stderr and "Traceback" not in result.stderr
    assert paths.secrets_file.read_bytes() == before
    listing = _read_only(paths.config_dir, "list-secrets")  # reading still works
    assert listing.returncode == 0 and " a " in listing.stdout


def test_unreadable_store_names_the_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.secrets_file.mkdir(parents=True)  # unreadable as a file, for root too
    result = run_process(tmp_path, "list-secrets")
    assert result.returncode == ExitStatus.PERMISSION
    assert result.stderr.startswith(f"mtproxy: {paths.secrets_file}: is a directory")


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for n in range(30):
        run_process(root, "add-secret", "--plain", "--label", f"n{n}")
    env = cli_env(root)
    cmd = f"{sys.executable} -m mtproxy.cli.main show-config | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "0"
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr


def test_no_prompt_without_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_process(root, "add-secret", "--label", "only")
    result = run_process(root, "remove-secret", "only")
    assert result.returncode == ExitStatus.CONFLICT
    assert result.stderr.count("\n") == 1 and "--yes" in result.stderr
    assert run_process(root, "remove-secret", "only", "--yes").returncode == 0


def test_root_from_flag_beats_environment(tmp_path: Path) -> None:
    env_root, flag_root = tmp_path / "env", tmp_path / "flag"
    assert run_process(env_root, "add-secret").returncode == 0
    assert run_process(env_root, "--root", str(flag_root), "add-secret", "--plain").returncode == 0
    assert len(read_store(Paths(env_root).secrets_file).secrets) == 1
    assert read_store(Paths(flag_root).secrets_file).secrets[0].type == "plain"


def test_no_colour_when_not_a_terminal(tmp_path: Path) -> None:
    result = run_process(tmp_path, "add-secret")
    assert result.returncode == 0 and "\x1b[" not in result.stdout + result.stderr


def test_shell_completion(tmp_path: Path) -> None:
    script = run_process(tmp_path, "completion", "bash")
    assert script.returncode == 0 and "_MTPROXY_COMPLETE" in script.stdout
    env = cli_env(tmp_path)
    env.update({"_MTPROXY_COMPLETE": "bash_complete", "COMP_WORDS": "mtproxy list-s", "COMP_CWORD": "1"})
    words = subprocess.run([sys.executable, "-m", "mtproxy.cli.main"], env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert "list-secrets" in words.stdout


def test_engine_commands_are_passed_through(tmp_path: Path) -> None:
    """`mtproxy run --help` reaches the engine's parser (or says clearly that it is not installed)."""
    result = run_process(tmp_path, "healthcheck", "--no-such-flag-here")
    assert "Traceback" not in result.stderr
    assert result.returncode != 0
    json.dumps(result.stdout)  # any text is fine; the point is no click usage error about the flag
    assert "No such option" not in result.stderr


def test_stats_live_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    (Paths(tmp_path).config_dir).mkdir(parents=True)
    Paths(tmp_path).settings_file.write_text('{"stats_port": 9}')  # nothing answers there
    proc = subprocess.Popen([sys.executable, "-m", "mtproxy.cli.main", "stats", "--live", "--interval", "0.2"],
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert "no proxy answers" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_stats_live_redraws_in_place_on_a_terminal_without_colour(tmp_path: Path) -> None:
    """NO_COLOR turns colour off, not the redraw: on a terminal each frame starts with home + clear, and no
    colour code is written."""
    (Paths(tmp_path).config_dir).mkdir(parents=True)
    Paths(tmp_path).settings_file.write_text('{"stats_port": 9}')  # nothing answers there
    controller, terminal = pty.openpty()
    with (tmp_path / "stderr").open("wb") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "mtproxy.cli.main", "stats", "--live", "--interval", "0.2",
                                 "--count", "3"], env={**cli_env(tmp_path), "NO_COLOR": "1", "TERM": "xterm"},
                                stdout=terminal, stderr=errors)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.wait(30) == 0, (tmp_path / "stderr").read_text()
    assert screen.count(b"\x1b[H\x1b[2J") == 3 and screen.count(b"no proxy answers") == 3, screen
    assert b"\x1b[3" not in screen and b"\x1b[1m" not in screen  # no colour, no bold
