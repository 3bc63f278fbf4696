"""Start-up facts an operator can act on: the descriptor limit and what it can hold, and one-line errors.

Every error the file system or the network raises while the engine starts becomes
`what (path or address): why — what to do`, never a bare strerror such as "Permission denied".
"""

from __future__ import annotations

import errno
import resource

# A session holds two sockets. A spliced one also takes two dups and a pipe, but only while descriptors
# are there: a raw relay that cannot get them leaves the session on the transport path, and accepting
# pauses when the process runs out (runtime/accept.py). So two per session is what the limit must hold.
DESCRIPTORS_PER_CONNECTION = 2
# Listeners, the stats server, log files, the secrets watcher, the event loop's own descriptors.
RESERVED_DESCRIPTORS = 64
# RLIM_INFINITY is not a count; Linux's default fs.nr_open caps any one process at this many.
UNLIMITED_DESCRIPTORS = 1 << 20


def raise_descriptor_limit() -> int:
    """Lift the soft descriptor limit to the hard one (the usual soft 1024 would stop the proxy after a
    few hundred users) and return the soft limit now in force. Raising within the hard limit cannot be
    refused, so nothing is said about it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_DESCRIPTORS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a sandbox that forbids it: the capacity is then computed from the limit in force
    return UNLIMITED_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft


def connection_capacity(descriptor_limit: int) -> int:
    """How many client connections one process can hold within `descriptor_limit` descriptors."""
    return max(1, (descriptor_limit - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)


def capacity_warning(explicit: int, descriptor_limit: int) -> str | None:
    """A warning when an explicit --max-connections cannot fit; None when it can."""
    capacity = connection_capacity(descriptor_limit)
    if explicit <= capacity:
        return None
    return (f"--max-connections {explicit} does not fit the descriptor limit ({descriptor_limit}: room for"
            f" {capacity} connections at {DESCRIPTORS_PER_CONNECTION} descriptors each) — raise the hard"
            " limit (LimitNOFILE= in the unit, `ulimit -Hn` as root) or leave --max-connections out to fit it")


ROOT_HINT = "choose a place you can write with --root DIR (or MTPROXY_ROOT)"


def file_error(what: str, exc: OSError, elsewhere: str = ROOT_HINT) -> str:
    """`cannot <what> <path>: <why> — <fix>` for an OSError from the file system; `elsewhere` says how to
    choose another place."""
    problem, fix = file_problem(what, exc, elsewhere)
    return f"{problem} — {fix}"


def file_problem(what: str, exc: OSError, elsewhere: str = ROOT_HINT) -> tuple[str, str]:
    """(`cannot <what> <path>: <why>`, what to do). `what` may name a file; the path the OS names (often
    its directory) is then added in parentheses."""
    path = exc.filename if exc.filename is not None else ""
    where = ""
    if path and str(path) not in what.split():
        where = f" ({path})" if "/" in what else f" {path}"
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        why, fix = "permission denied", f"run as the owner of that directory (or root), or {elsewhere}"
    elif code == errno.EROFS:
        why, fix = "read-only file system", elsewhere
    elif code == errno.ENOSPC:
        why, fix = "disk full", "free some space and start again"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why, fix = "a file is where a directory must be", f"move it away, or {elsewhere}"
    elif code == errno.EISDIR:
        why, fix = "a directory is where the file must be", f"move it away, or {elsewhere}"
    else:
        why, fix = exc.strerror or str(exc), "check the path and the disk"
    return f"cannot {what}{where}: {why.lower()}", fix


def listen_error(exc: OSError) -> str:
    """The bind failure (its message names the address) with what to do about it."""
    text = exc.strerror or str(exc)
    code = exc.errno
    if code == errno.EADDRINUSE:
        fix = "stop the process holding it (`ss -ltnp`) or choose another port with -H PORT"
    elif code in (errno.EACCES, errno.EPERM):
        fix = ("ports below 1024 need root or CAP_NET_BIND_SERVICE: choose one above 1024 with -H PORT"
               " (8443 is the default)")
    elif code == errno.EADDRNOTAVAIL:
        fix = "that address is not on this host: use one of its addresses with --listen HOST:PORT"
    else:
        fix = "check the address with --listen HOST:PORT or -H PORT"
    return f"{text} — {fix}"


def stats_error(address: str, exc: OSError) -> str:
    """The stats server could not bind `address`."""
    code = exc.errno
    if code == errno.EADDRINUSE:
        why = "address already in use (another mtproxy?)"
    elif code in (errno.EACCES, errno.EPERM):
        why = "permission denied (ports below 1024 need root)"
    else:
        why = (exc.strerror or str(exc)).lower()
    return f"cannot serve stats on {address}: {why} — choose another port with -p PORT, or -p 0 to turn stats off"


_SET_ADDRESS = ("set the address clients reach with --public-host HOST, or `mtproxy set-server HOST` to keep"
                " it for every start")


def no_public_address_note(host: str) -> str:
    """Why a link points at `host` although nobody else can reach it, and how to fix it."""
    return (f"no public address is known (no default route to guess it from), so this link points at {host}"
            f" and works only on this machine — {_SET_ADDRESS}")


def private_address_note(address: str) -> str:
    """The guessed address is private: clients outside the network cannot use the link."""
    return f"{address} is a private address (this host is probably behind NAT) — {_SET_ADDRESS}"
