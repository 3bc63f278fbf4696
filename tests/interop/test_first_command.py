"""README's first command, exactly as written, as an unprivileged user with a fresh home directory.

The user gets a copy of this checkout and a fresh venv (--system-site-packages, so the dependencies and the
build tools are found offline) and runs the first line of README's first code block in the checkout. The
DCs and the mask are pointed at loopback by the engine's settings file in the per-user root, the way an
operator would configure it; the command itself is not changed. Then: the link, its QR code, and TDLib
(the library of the official apps) through the link to the fake DC.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from mtproxy.paths import DEFAULT_ROOT, Paths
from mtproxy.qr import terminal_text

from ..qr_decode import decode_terminal_qr
from ..unprivileged import UserSandbox, missing_tools
from .fake_dc import FakeDC
from .tdlib_client import run_tdlib

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"^tg://proxy\?\S+$", re.MULTILINE)
QR_CHARS = set("█▀▄ ")


def readme_first_command(readme: Path) -> str:
    """The first line of README's first code block, as written (a trailing shell comment included)."""
    match = re.search(r"^```[a-z]*\n(.*?)\n", readme.read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None, "README.md has no code block"
    return match.group(1)


def copy_checkout(target: Path) -> None:
    """What a clone of this checkout holds: tracked files and new ones not ignored (no build output)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


class Output:
    """Collects a stream's text in a thread, so the test can wait for lines with a deadline."""

    def __init__(self, stream: object) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _pump(self, stream: object) -> None:
        for chunk in iter(lambda: stream.readline(), ""):  # type: ignore[attr-defined]
            with self._lock:
                self.text += chunk

    def wait(self, pattern: re.Pattern[str], timeout: float, process: subprocess.Popen[str]) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                match = pattern.search(self.text)
            if match is not None:
                return match
            if process.poll() is not None:
                time.sleep(0.2)  # let the pump take the last lines
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern.pattern!r} within {timeout} s; output so far:\n{self.text}"
                             f"\nexit status: {process.poll()}")


@pytest.fixture
def sandbox() -> Iterator[UserSandbox]:
    why = missing_tools()
    if why is not None:
        pytest.skip(why)
    if (DEFAULT_ROOT / "mtproxy" / "install.json").exists():
        pytest.skip(f"mtproxy is installed at {DEFAULT_ROOT}: a user would (rightly) get that installation")
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1 builds wheels by itself)
    except ImportError:
        pytest.fail("the offline build needs setuptools >= 70.1 in the test interpreter: install the test"
                    " extras (scripts/install-test-deps)")
    box = UserSandbox.create()
    yield box
    box.remove()


def test_readme_first_command_as_a_new_unprivileged_user(sandbox: UserSandbox, tmp_path: Path) -> None:
    checkout = sandbox.home / "mtproxy"
    copy_checkout(checkout)
    command = readme_first_command(checkout / "README.md")
    assert "mtproxy run" in command

    with FakeDC() as dc, socket.create_server(("127.0.0.1", 0)) as mask:
        # The engine's own settings file in the per-user root: DCs and mask on loopback, nothing else.
        own = Paths(sandbox.home / ".local" / "state" / "mtproxy")
        own.config_dir.mkdir(parents=True)
        own.settings_file.write_text(
            f'{{"dc_override": ["*={dc.address}"], "mask": "127.0.0.1:{mask.getsockname()[1]}",'
            ' "cert_size": 4096}\n')
        sandbox.give(sandbox.home)

        prepare = (f'{sandbox.python} -m venv --system-site-packages "$HOME/venv"'
                   # the venv's own old setuptools (no bdist_wheel) would hide the interpreter's build tools
                   ' && "$HOME/venv/bin/python" -m pip uninstall -q -y setuptools'
                   ' && exec bash -c "$1"')
        process = sandbox.start(prepare, command, cwd=checkout, env={
            "PATH": f"{sandbox.home}/venv/bin:/usr/bin:/bin",
            # offline: no index, no isolated build environment (the build tools come from the interpreter)
            "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        })
        with process:  # closes its pipes on the way out
            out, err = Output(process.stdout), Output(process.stderr)
            try:
                _wait_for_run(out, err, process)
                link = out.wait(LINK, 180, process).group(0)
                qr = out.wait(re.compile(r"^((?:[█▀▄ ]+\n){10,})", re.MULTILINE), 10, process).group(1)
                err.wait(re.compile(r"mtproxy\[\d+\]: ready: .* listening on"), 20, process)
                _check_link_and_messages(link, out.text, err.text, own)
                assert qr == terminal_text(link), out.text
                if shutil.which("zbarimg"):
                    assert decode_terminal_qr(qr, tmp_path) == link

                secret = parse_qs(urlsplit(link).query)["secret"][0]
                run = run_tdlib(8443, secret, dc, tmp_path, timeout=25)
                context = f"tdlib: {run.events}\nfake DC: {dc.kinds()}\nstderr:\n{err.text[-3000:]}"
                assert run.ping_seconds and run.ping_seconds[0] > 0, context
                assert dc.wait_for("req_DH_params", 5) is not None, context
            finally:
                UserSandbox.stop(process)
                out.join(5)  # the pumps reach the end of the pipes before they are closed
                err.join(5)


def _wait_for_run(out: Output, err: Output, process: subprocess.Popen[str]) -> None:
    try:
        out.wait(re.compile(r"^No secret configured", re.MULTILINE), 180, process)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstderr:\n{err.text}") from None


def _check_link_and_messages(link: str, stdout: str, stderr: str, own: Paths) -> None:
    query = parse_qs(urlsplit(link).query)
    # No default route in the namespace: the link says where it points and how to give the real address.
    assert query["server"] == ["127.0.0.1"] and query["port"] == ["8443"], link
    assert query["secret"][0].startswith("ee") and len(query["secret"][0]) > 34
    note = next(line for line in stdout.splitlines() if line.startswith("note:"))
    assert "no public address" in note and "--public-host" in note and "mtproxy set-server" in note
    assert f"https://t.me/proxy?{urlsplit(link).query}" in stdout
    # Where things are kept, said once; the generated secret is kept there.
    assert stderr.count(f"keeping secrets, settings, links and logs in {own.root}") == 1, stderr
    assert f"kept in {own.engine_state_file}" in stdout
    assert own.engine_state_file.exists()
    # Only what the operator can act on: no descriptor talk, no bare OS error.
    assert "descriptor" not in stderr and "Permission denied" not in stderr + stdout, stderr
