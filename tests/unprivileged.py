"""Run a shell command as an unprivileged user with a fresh home directory, as a new user would.

The test interpreter may live where another user cannot reach it (pyenv under /root, mode 0700), so the
command runs in a private mount namespace with the interpreter's prefix bind-mounted into a directory
everyone may enter; nothing outside that namespace changes. Needs root (unshare -m, setpriv).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path


def unused_uid(start: int = 54321) -> int:
    """A uid no account has, so nothing of a real user is touched."""
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def missing_tools() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to become an unprivileged user (setpriv) and to bind-mount the interpreter"
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass
class UserSandbox:
    """A world-enterable base directory holding the user's home and the interpreter's mount point."""

    base: Path
    uid: int

    @classmethod
    def create(cls) -> UserSandbox:
        base = Path(tempfile.mkdtemp(prefix="mtproxy-user-", dir="/tmp"))
        base.chmod(0o755)
        sandbox = cls(base, unused_uid())
        sandbox.home.mkdir()
        (base / "py").mkdir()
        os.chown(sandbox.home, sandbox.uid, sandbox.uid)
        return sandbox

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def python(self) -> Path:
        """The test interpreter as the user sees it, inside the mount namespace."""
        return self.base / "py" / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"

    def give(self, path: Path) -> None:
        """Hand a tree under the home directory to the user."""
        for dirpath, _dirs, files in os.walk(path):
            os.chown(dirpath, self.uid, self.uid)
            for name in files:
                os.chown(os.path.join(dirpath, name), self.uid, self.uid, follow_symlinks=False)

    def start(self, script: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              as_root_first: str = "") -> subprocess.Popen[str]:
        """`bash -c script args…` as the user, with only HOME, PATH, LANG and `env` in its environment.
        `as_root_first` runs before, as root, inside the private mount namespace (e.g. a tmpfs over /opt).
        Its own process group, so `stop` ends everything it started."""
        user_env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):
            # Its libpython is found through a RUNPATH under the unreachable prefix; without this the
            # loader would take the system's libpython of another patch level.
            user_env["LD_LIBRARY_PATH"] = str(self.base / "py" / "lib")
        inner = [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--",
            "env", "-i", *(f"{k}={v}" for k, v in user_env.items()), "bash", "-c", script, "user", *args,
        ]  # fmt: skip
        prefix, mount_point = shlex.quote(sys.base_prefix), shlex.quote(str(self.base / "py"))
        outer = (f"mount --bind {prefix} {mount_point} && {as_root_first or 'true'}"
                 f' && cd {shlex.quote(str(cwd or self.home))} && exec "$@"')
        return subprocess.Popen(
            ["unshare", "-m", "--", "bash", "-c", outer, "mount", *inner],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            encoding="utf-8", errors="replace", start_new_session=True,
        )

    @staticmethod
    def stop(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
