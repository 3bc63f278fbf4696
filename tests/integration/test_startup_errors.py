"""`mtproxy run` start-up failures from the file system or the network: one line, the path or address, a fix.

Some run as an unprivileged user (a fresh home, see tests/unprivileged.py), since that is where "Permission
denied" came from.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtproxy
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.process import free_port

from ..unprivileged import UserSandbox, missing_tools

SRC = str(Path(mtproxy.__file__).resolve().parent.parent)


def engine_flags(peers: BackgroundPeers) -> list[str]:
    return ["--dc-override", f"*=127.0.0.1:{peers.dc_port}", "--mask", f"127.0.0.1:{peers.mask_port}",
            "--cert-size", "2345"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`mtproxy run ARGS` expected to fail at start-up (bounded, in case it serves instead)."""
    env = {**os.environ, "PYTHONPATH": SRC, "MTPROXY_QR": "0"}
    env.pop("MTPROXY_ROOT", None)
    return subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "run", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def one_line(stderr: str) -> str:
    """The error line; the lines before it are the engine's log (timestamped)."""
    lines = [line for line in stderr.splitlines() if not line[:4].isdigit()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and " — " in lines[0], stderr
    return lines[0]


def test_a_port_in_use_names_the_address_and_the_fix(peers: BackgroundPeers, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = run("--root", str(tmp_path), "--listen", f"127.0.0.1:{port}", "-p", "0", *engine_flags(peers))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"mtproxy run: cannot listen on 127.0.0.1:{port}: Address already in use — ")
    assert "-H PORT" in line


def test_a_stats_port_in_use_names_it_and_the_fix(peers: BackgroundPeers, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        stats = holder.getsockname()[1]
        result = run("--root", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}", "-p", str(stats),
                     *engine_flags(peers))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"mtproxy run: cannot serve stats on 127.0.0.1:{stats}: address already in use")
    assert "-p PORT" in line and "-p 0" in line


def test_a_root_under_a_file_names_the_path(peers: BackgroundPeers, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run("--root", str(blocker / "root"), "--listen", f"127.0.0.1:{free_port()}", "-p", "0",
                 *engine_flags(peers))
    assert result.returncode == 2
    line = one_line(result.stderr)
    state = blocker / "root" / "data" / "mtproxy" / "engine_state.json"
    assert line.startswith(f"mtproxy run: cannot keep the generated secret in {state}")
    assert "a file is where a directory must be" in line and "--root DIR" in line


def test_a_log_file_that_cannot_be_written_names_it(peers: BackgroundPeers, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log_file = blocker / "mtproxy.log"
    result = run("--root", str(tmp_path), "--log-file", str(log_file), "--listen", f"127.0.0.1:{free_port()}",
                 "-p", "0", *engine_flags(peers))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"mtproxy run: cannot write the log file {log_file}")
    assert "a file is where a directory must be — move it away, or choose another file with --log-file" in line


@pytest.fixture
def sandbox() -> Iterator[UserSandbox]:
    why = missing_tools()
    if why is not None:
        pytest.skip(why)
    box = UserSandbox.create()
    yield box
    box.remove()


def run_as_user(sandbox: UserSandbox, *args: str) -> tuple[int, str, str]:
    process = sandbox.start(f'exec {sandbox.python} -m mtproxy.cli.main "$@"', *args,
                           env={"PYTHONPATH": SRC, "MTPROXY_QR": "0"})
    with process:  # closes its pipes even when communicate times out
        try:
            out, err = process.communicate(timeout=60)
        finally:
            UserSandbox.stop(process)
    return process.returncode, out, err


def test_a_root_the_user_cannot_write_names_the_path_and_the_fix(
    sandbox: UserSandbox, peers: BackgroundPeers
) -> None:
    root = sandbox.base / "opt-vless"  # root's, 0755: what /opt/vless is to an ordinary user
    root.mkdir()
    status, _out, err = run_as_user(sandbox, "run", "--root", str(root), "--listen",
                                    f"127.0.0.1:{free_port()}", "-p", "0", *engine_flags(peers))
    assert status == 2, err
    line = one_line(err)
    assert line.startswith(f"mtproxy run: cannot keep the generated secret in {root}/data/mtproxy/")
    assert "permission denied" in line and "--root DIR" in line
    assert "Permission denied" not in err


def test_a_low_port_without_root_says_how_to_choose_another(sandbox: UserSandbox, peers: BackgroundPeers) -> None:
    status, _out, err = run_as_user(sandbox, "run", "--listen", "127.0.0.1:443", "-p", "0", *engine_flags(peers))
    assert status == 2, err
    line = one_line(err)
    assert line.startswith("mtproxy run: cannot listen on 127.0.0.1:443: Permission denied — ports below 1024")
    assert "-H PORT" in line


def test_an_unusable_relay_file_stops_the_start_naming_it(peers: BackgroundPeers, tmp_path: Path) -> None:
    """--aes-pwd and proxy-multi.conf are read before privileges drop: a bad one is one line at start."""
    secret, config = tmp_path / "proxy-secret", tmp_path / "proxy-multi.conf"
    secret.write_bytes(b"too short for a proxy secret")
    config.write_text("proxy_for 2 127.0.0.1:1;\n")
    result = run("--root", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}", "-p", "0", "-S", "00" * 16,
                 "--aes-pwd", str(secret), str(config), *engine_flags(peers))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"mtproxy run: {secret}: cannot use it as proxy-secret: ")
    assert "getProxySecret" in line
    result = run("--root", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}", "-p", "0", "-S", "00" * 16,
                 "--aes-pwd", str(tmp_path / "missing"), str(config), *engine_flags(peers))
    assert one_line(result.stderr).startswith(f"mtproxy run: {tmp_path / 'missing'}: cannot use it as proxy-secret:"
                                              " No such file or directory — ")
