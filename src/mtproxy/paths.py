"""Every on-disk location of the proxy, derived from one root, and which root a command uses.

The root is --root, else $MTPROXY_ROOT, else the installed system at /opt/vless, else (not root, nothing
installed) a per-user root under the XDG state directory, so the first command works for anyone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .host.layout import HostLayout

DEFAULT_ROOT = Path("/opt/vless")
ROOT_ENV = "MTPROXY_ROOT"


@dataclass(frozen=True)
class Paths:
    """The files and directories of one installation; nothing here touches the disk."""

    root: Path

    @classmethod
    def resolve(
        cls, root: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Paths:
        """The installer's root (setup, uninstall): ``--root``, then ``MTPROXY_ROOT``, then /opt/vless.
        Every other command asks `choose_root`, which may pick a per-user root instead."""
        environ = os.environ if env is None else env
        if root is not None and str(root) != "":
            return cls(Path(root))
        from_env = environ.get(ROOT_ENV, "")
        return cls(Path(from_env) if from_env else DEFAULT_ROOT)

    @property
    def config_dir(self) -> Path:
        return self.root / "config" / "mtproxy"

    @property
    def secrets_file(self) -> Path:
        return self.config_dir / "mtproxy_secrets.json"

    @property
    def settings_file(self) -> Path:
        return self.config_dir / "mtproxy_config.json"

    @property
    def api_token_file(self) -> Path:
        """The management API's bearer token (mode 0600), written by `mtproxy api-token`."""
        return self.config_dir / "api_token"

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / "mtproxy"

    @property
    def usage_file(self) -> Path:
        """The engine's per-secret usage ledger (accounts/usage.py). In the data directory, not beside the
        store: the container mounts the config directory read-only and the engine writes this file."""
        return self.data_dir / "usage.json"

    @property
    def engine_state_file(self) -> Path:
        """Where `mtproxy run` keeps the secret it generated when none is configured."""
        return self.data_dir / "engine_state.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs" / "mtproxy"

    @property
    def default_link_file(self) -> Path:
        """The plan's single-link file: the link of the default (first active) secret."""
        return self.data_dir / "mtproxy_link.txt"

    @property
    def default_qr_png(self) -> Path:
        return self.data_dir / "mtproxy_qr.png"

    def secret_dir(self, secret_id: str) -> Path:
        """Per-secret link and QR files live in their own directory, named by the secret's id."""
        return self.data_dir / "secrets" / secret_id


@dataclass(frozen=True)
class RootChoice:
    """The root a command works on, and the one line it says about that (None: nothing worth saying)."""

    paths: Paths
    note: str | None = None


def user_root(environ: Mapping[str, str]) -> Path | None:
    """$XDG_STATE_HOME/mtproxy (~/.local/state/mtproxy): one root with the system layout beneath it, so
    --root can name it and everything derived from a root (engine, links, logs) works unchanged. None when
    the user has no home directory to put it in."""
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: relative values are invalid and ignored
        home = environ.get("HOME", "")
        if not os.path.isabs(home):
            try:
                home = str(Path.home())
            except (RuntimeError, KeyError):
                return None
        state = os.path.join(home, ".local", "state")
    return Path(state) / "mtproxy"


def _record_state(record: Path) -> str:
    """'readable', 'missing' or why it cannot be read."""
    try:
        with open(record, "rb"):
            return "readable"
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except PermissionError:
        return "not readable by this user"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _keeps_anything(paths: Paths, *more: Path) -> bool:
    """A secret (stored or generated) is there, so the operator has already been told where it is."""
    return any(path.exists() for path in (paths.secrets_file, paths.engine_state_file, *more))


def choose_root(
    explicit: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    euid: int,
    system_root: Path = DEFAULT_ROOT,
) -> RootChoice:
    """Which installation a command works on.

    --root, then $MTPROXY_ROOT; then the installed system whenever its install record is readable (or we are
    root); otherwise the per-user root. When both exist, or the system one is there but unreadable, the note
    says which one is used, so nothing is split silently between two roots.
    """
    if explicit is not None and str(explicit) != "":
        return RootChoice(Paths(Path(explicit)))
    if environ.get(ROOT_ENV):
        return RootChoice(Paths(Path(environ[ROOT_ENV])))
    system = Paths(system_root)
    if euid == 0:
        return RootChoice(system)
    record = HostLayout(Path("/etc"), system_root).install_record
    state = _record_state(record)
    mine = user_root(environ)
    if state == "readable":
        if mine is not None and _keeps_anything(Paths(mine), Paths(mine).settings_file):
            return RootChoice(system, f"using the installation at {system_root}; your own files in {mine} are"
                                      f" not used (--root {mine} to work on them)")
        return RootChoice(system)
    if mine is None:
        return RootChoice(system, f"no home directory to keep your own files in: using {system_root}; set HOME,"
                                  " or choose a root with --root DIR")
    own = Paths(mine)
    if state == "missing":
        if _keeps_anything(own):
            return RootChoice(own)
        return RootChoice(own, f"not root and nothing installed at {system_root}: keeping secrets, settings,"
                               f" links and logs in {mine} (--root DIR or MTPROXY_ROOT to choose another place)")
    return RootChoice(own, f"an installation at {system_root} exists but {record} is {state}: using your own"
                           f" files in {mine}; run as root (sudo) to manage the installed proxy")
