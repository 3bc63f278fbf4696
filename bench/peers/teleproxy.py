"""Run teleproxy, the C engine (https://github.com/teleproxy/teleproxy), in direct mode under the load tool.

    python3 -m bench.peers.teleproxy BINARY --port P -S SECRET... --dc HOST:PORT --mask HOST:PORT --workers N

Every Telegram DC is overridden to --dc. For ee secrets the fake-TLS domain is given as `-D DOMAIN:PORT`
with the mask port; teleproxy resolves DOMAIN to find its mask site, so it runs with a private /etc/hosts
that maps DOMAIN to the mask host (no DNS query). `-6` skips its start-up IPv6 probe (a connect to a
Telegram address); the overrides are IPv4, so every DC connection stays IPv4 on loopback.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from typing import NoReturn

from bench.peers import launch
from mtproxy.protocol.secret import SecretKind

MAX_SECRETS = 16  # teleproxy's own limit on -S
# Its message-buffer pool. The default (256 MB) has been seen to abort under the bench's 1,000-connection
# bulk phase; the team's anchor runs used 4 GB. Buffers are allocated as used, not up front.
BUFFERS = "4g"
_RLIMIT_GAP = 16  # teleproxy asks for maxconn + 16 descriptors and exits if it cannot have them
MAX_CONNECTIONS = 65536  # its default for -c


def max_connections(nofile_hard: int) -> int:
    """The largest -c teleproxy can raise its descriptor limit for (as root it insists on all of it)."""
    return max(1, min(MAX_CONNECTIONS, nofile_hard - _RLIMIT_GAP))


def command(opts: launch.PeerOptions, nofile_hard: int) -> list[str]:
    """teleproxy's argv for one run."""
    if len(opts.secrets) > MAX_SECRETS:
        raise launch.PeerError(f"teleproxy takes at most {MAX_SECRETS} secrets, got {len(opts.secrets)}")
    argv = [str(opts.binary), "--direct", "-H", str(opts.port), "-6"]
    # Root to root: keeps the parent-death signal the load tool set (a change of user would clear it).
    argv += ["-u", "root", "-c", str(max_connections(nofile_hard)), "--msg-buffers-size", BUFFERS]
    for secret in opts.secrets:
        argv += ["-S", secret.key.hex()]
    for dc in launch.DC_IDS:
        argv += ["--dc-override", f"{dc}:{opts.dc}"]
    if opts.kind is SecretKind.FAKE_TLS:
        # -D turns the other transports off, so it is given for ee runs only.
        argv += ["-D", f"{opts.domain}:{opts.mask.port}"]
    if opts.workers > 1:
        argv += ["-M", str(opts.workers)]
    return argv


def main(argv: Sequence[str] | None = None) -> NoReturn:
    opts = launch.parse(argv, "python3 -m bench.peers.teleproxy", __doc__ or "")
    launch.check_binary(opts.binary)
    engine = command(opts, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if opts.domain is not None:
        launch.private_hosts([opts.domain], opts.mask.host, launch.private_dir("teleproxy"))
    launch.exec_engine(engine)


if __name__ == "__main__":
    launch.run(lambda: main(sys.argv[1:]))
