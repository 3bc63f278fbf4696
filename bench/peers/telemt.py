"""Run telemt, the Rust engine (https://github.com/telemt/telemt), in direct mode under the load tool.

    python3 -m bench.peers.telemt BINARY --port P -S SECRET... --dc HOST:PORT --mask HOST:PORT --workers N

The wrapper writes a config.toml into a private directory (also telemt's data directory) and runs
`telemt run CONFIG --data-path DIR`. The config turns off everything that would leave loopback: the
middle proxies and their config fetches, the NTP check, STUN and HTTP public-IP detection, TLS-front
fetching (`tls_emulation`), the API listener and the conntrack controller. Every Telegram DC (and DC 203,
for which telemt carries a built-in address) goes to --dc, the mask site to --mask. Only the mode of the
given secrets is enabled. --workers sets the number of tokio worker threads (TOKIO_WORKER_THREADS): telemt
is one process, and a thread per worker gives it the parallelism N of our worker processes.

No setting stops three start-up attempts at real addresses in 3.4.25: a UDP "connect" to 8.8.8.8:80 and
to 2001:4860:4860::8888 (a route lookup for its local address; UDP sends nothing on connect) and a TCP
connect to each built-in DC 1-5 address (its start-up connectivity report, which ignores the overrides
for these). In the load tool's namespace all of them fail at once with ENETUNREACH; the wrapper refuses to
start outside such a namespace.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bench.peers import launch
from mtproxy.protocol.secret import SecretKind

# DC 203 is a CDN DC telemt adds an address for by itself; pointing it at the fake DC keeps it on loopback.
EXTRA_DC_IDS = (203,)


def _str(value: str) -> str:
    # A TOML basic string; JSON's escaping of these ASCII values is valid TOML.
    return json.dumps(value)


def config(opts: launch.PeerOptions) -> str:
    """telemt's config.toml for one run (holds the secrets: it is written to a private directory only)."""
    kind = opts.kind
    users = [f"bench{i} = {_str(s.key.hex())}" for i, s in enumerate(opts.secrets)]
    dcs = [f'"{dc}" = {_str(str(opts.dc))}' for dc in (*launch.DC_IDS, *EXTRA_DC_IDS)]
    censorship = [f"tls_domain = {_str(opts.domain)}"] if opts.domain is not None else []
    lines = [
        "# Written by bench/peers/telemt.py for one benchmark run: direct mode, loopback only.",
        "[general]",
        "config_strict = true",  # a misspelt key below fails the start instead of being ignored
        "use_middle_proxy = false",
        "ntp_check = false",
        "beobachten = false",
        "",
        "[general.modes]",
        f"classic = {str(kind is SecretKind.CLASSIC).lower()}",
        f"secure = {str(kind is SecretKind.PADDED).lower()}",
        f"tls = {str(kind is SecretKind.FAKE_TLS).lower()}",
        "",
        "[general.links]",
        "show = []",
        f"public_host = {_str(opts.dc.host)}",
        "",
        "[network]",
        "ipv4 = true",
        "ipv6 = false",
        "prefer = 4",
        "stun_use = false",
        "http_ip_detect_urls = []",
        "",
        "[server]",
        f"port = {opts.port}",
        "max_connections = 0",  # no cap of its own: the load decides, as for the other subjects
        "",
        "[server.api]",
        "enabled = false",
        "",
        "[server.conntrack_control]",
        "inline_conntrack_control = false",
        "",
        "[[server.listeners]]",
        f"ip = {_str(opts.dc.host)}",
        "",
        # telemt decides IPv4 is usable from the address a UDP socket "connected" to 8.8.8.8 gets; in the
        # namespace there is none, and it would bind no listener. An explicit bind address is its other
        # source: DC connections then leave from 127.0.0.1, as they would anyway.
        "[[upstreams]]",
        'type = "direct"',
        f"bind_addresses = [{_str(opts.dc.host)}]",
        "",
        "[censorship]",
        *censorship,
        "mask = true",
        f"mask_host = {_str(opts.mask.host)}",
        f"mask_port = {opts.mask.port}",
        "tls_emulation = false",
        "",
        "[access.users]",
        *users,
        "",
        "[dc_overrides]",
        *dcs,
    ]
    return "\n".join(lines) + "\n"


def command(opts: launch.PeerOptions, directory: Path) -> list[str]:
    """telemt's argv, with its config and data in `directory`."""
    return [str(opts.binary), "run", str(directory / "config.toml"), "--data-path", str(directory)]


def environment(opts: launch.PeerOptions, base: dict[str, str]) -> dict[str, str]:
    return {**base, "TOKIO_WORKER_THREADS": str(opts.workers)}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    opts = launch.parse(argv, "python3 -m bench.peers.telemt", __doc__ or "")
    launch.check_binary(opts.binary)
    directory = launch.private_dir("telemt")
    (directory / "config.toml").write_text(config(opts))
    launch.exec_engine(command(opts, directory), cwd=directory, env=environment(opts, dict(os.environ)))


if __name__ == "__main__":
    launch.run(lambda: main(sys.argv[1:]))
