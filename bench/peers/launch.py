"""What the peer wrappers share: their command line, the checks on it, and how the engine is started.

The wrapper replaces itself with the engine (exec), so the process the load tool started, signals and
measures is the engine itself: no Python process sits in its process tree or in its memory figures. A
private directory for the engine's files is removed by a detached watcher once the engine has exited.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import resource
import select
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from bench import netns
from mtproxy.protocol.errors import SecretFormatError
from mtproxy.protocol.secret import Secret, SecretKind, parse_secret

# Telegram's production DCs: every one is pointed at the fake DC, whichever a client asks for.
DC_IDS = (1, 2, 3, 4, 5)
# The watcher gives up on an engine that outlives any benchmark by far, and removes the files anyway.
WATCH_LIMIT = 24 * 3600.0

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


class PeerError(Exception):
    """The wrapper cannot start the engine as asked; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """A loopback address and port (the fake DC, the mask site)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PeerOptions:
    """One engine run as the load tool asks for it."""

    binary: Path
    port: int
    secrets: tuple[Secret, ...]
    dc: Endpoint
    mask: Endpoint
    workers: int

    @property
    def kind(self) -> SecretKind:
        return self.secrets[0].kind

    @property
    def domain(self) -> str | None:
        return self.secrets[0].domain


def loopback_endpoint(text: str) -> Endpoint:
    """HOST:PORT with HOST a loopback IPv4 literal: the wrappers never point an engine anywhere else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} is not an IPv4 address") from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address (benchmarks stay on loopback)")
    return Endpoint(host, int(port))


def _secret(text: str) -> Secret:
    try:
        return parse_secret(text)
    except SecretFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("binary", type=Path, help="the engine's executable, built from its public source")
    p.add_argument("--port", type=_positive, required=True, help="port clients connect to")
    p.add_argument("-S", "--secret", dest="secrets", type=_secret, action="append", required=True,
                   help="a client secret (classic hex, dd…, ee…+domain); repeat for more, all of one kind")
    p.add_argument("--dc", type=loopback_endpoint, required=True, help="HOST:PORT every Telegram DC goes to")
    p.add_argument("--mask", type=loopback_endpoint, required=True, help="HOST:PORT of the mask (fronting) site")
    p.add_argument("--workers", type=_positive, default=1, help="worker processes (where the engine has them)")
    return p


def parse(argv: Sequence[str] | None, prog: str, description: str) -> PeerOptions:
    """The wrapper's arguments; bad ones exit with argparse's message (status 2)."""
    p = parser(prog, description)
    ns = p.parse_args(argv)
    secrets: list[Secret] = ns.secrets
    kinds = {s.kind for s in secrets}
    if len(kinds) > 1:
        p.error("all secrets of one run must be of one kind (classic, dd or ee)")
    if len({s.domain for s in secrets}) > 1:
        p.error("all ee secrets of one run must name the same domain")
    return PeerOptions(ns.binary, ns.port, tuple(secrets), ns.dc, ns.mask, ns.workers)


def check_binary(path: Path) -> None:
    """The engine must exist and be executable, and this process must sit in a network namespace with
    loopback only: some engines try real addresses at start-up that no setting turns off (telemt), and
    only the namespace keeps those attempts from leaving the machine."""
    if not path.is_file():
        raise PeerError(f"no engine binary at {path} (build it first: see bench/peers/README.md)")
    if not os.access(path, os.X_OK):
        raise PeerError(f"{path} is not executable")
    foreign = netns.foreign_interfaces()
    if foreign:
        raise PeerError(
            f"non-loopback interfaces are up ({', '.join(sorted(foreign))}): run the engine only under the "
            "load tool, which runs it in a private network namespace"
        )


def private_dir(name: str) -> Path:
    """A fresh directory for the engine's files, removed once the engine has exited."""
    path = Path(tempfile.mkdtemp(prefix=f"mtproxy-peer-{name}-"))
    _remove_after_exit(path)
    return path


def _remove_after_exit(path: Path) -> None:
    """Fork a watcher outside this process's tree and group: it waits for this pid (the engine, once we
    exec) to exit, then removes `path`. Outside the tree, it is not in the engine's CPU or memory."""
    watched = os.pidfd_open(os.getpid())
    if os.fork() != 0:
        os.close(watched)
        os.wait()  # the first child exits at once; its child is reparented away from us
        return
    try:
        os.setsid()  # out of the group the load tool signals
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            select.select([watched], [], [], WATCH_LIMIT)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        os._exit(0)


def private_hosts(names: Sequence[str], address: str, directory: Path) -> None:
    """Give this process (and the engine it becomes) a mount namespace of its own in which /etc/hosts
    maps `names` to `address`: engines that resolve their fake-TLS domain to find the mask site then find
    the bench's, without a DNS query. Needs CAP_SYS_ADMIN, as `unshare -n` does."""
    hosts = directory / "hosts"
    lines = ["127.0.0.1 localhost", *(f"{address} {name}" for name in names)]
    hosts.write_text("\n".join(lines) + "\n")
    hosts.chmod(0o644)
    libc = ctypes.CDLL(None, use_errno=True)
    steps: tuple[tuple[str, str, tuple[object, ...]], ...] = (
        ("unshare the mount namespace", "unshare", (_CLONE_NEWNS,)),
        # Private first: the bind mount below must not propagate back to the host's namespace.
        ("make / private", "mount", (b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)),
        ("bind the hosts file", "mount", (bytes(hosts), b"/etc/hosts", None, _MS_BIND, None)),
    )
    for what, function, args in steps:
        if getattr(libc, function)(*args) != 0:
            raise PeerError(f"cannot {what}: {os.strerror(ctypes.get_errno())} (run as root)")


def exec_engine(argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with the engine; its stdout/stderr are ours (the load tool's log). The soft
    descriptor limit goes up to the hard one first, as our engine raises its own. The argv may hold
    secrets, so it is not printed."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if cwd is not None:
        os.chdir(cwd)
    os.execve(argv[0], list(argv), dict(os.environ) if env is None else dict(env))


def run(main: Callable[[], NoReturn]) -> NoReturn:
    """Call a wrapper's main; a PeerError becomes a one-line message and status 1."""
    try:
        main()
    except PeerError as exc:
        sys.exit(f"peer: {exc}")
