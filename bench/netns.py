"""Keep the load tool off every real network: re-exec inside a private network namespace, or refuse."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

_MARK = "MTPROXY_BENCH_NETNS"
_SIOCGIFFLAGS = 0x8913


def _up_interfaces() -> list[str]:
    # Ask the kernel through a socket of this namespace: /sys/class/net shows the namespace sysfs was
    # mounted in, which after `unshare -n` is still the host's.
    up = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("16sH14x", name.encode()[:15], 0)
            try:
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
            except OSError:
                continue
            if flags & 0x1:  # IFF_UP
                up.append(name)
    return up


def foreign_interfaces() -> list[str]:
    """The interfaces other than loopback that are up in this process's network namespace."""
    return [n for n in _up_interfaces() if n != "lo"]


def ensure_isolated(module: str) -> None:
    """Return only when loopback is the sole interface up; otherwise re-exec this command under
    `unshare -n` as `python -m module` (once), or exit with an explanation."""
    foreign = foreign_interfaces()
    if not foreign:
        if "lo" not in _up_interfaces():
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.environ.get(_MARK) or shutil.which("unshare") is None:
        sys.exit(f"bench: refusing to run with non-loopback interfaces up: {', '.join(sorted(foreign))}")
    env = dict(os.environ, **{_MARK: "1"})
    shell = 'ip link set lo up && exec "$@"'
    cmd = ["unshare", "-n", "--", "sh", "-c", shell, "bench", sys.executable, "-m", module, *sys.argv[1:]]
    os.execvpe(cmd[0], cmd, env)


def tune_namespace() -> None:
    """Per-namespace sysctls so tens of thousands of loopback connections fit: a wide ephemeral port
    range (kept above the fixed service ports, all below 10000, so no leftover connection sits on a port a
    server must bind next) and TIME_WAIT reuse for the handshake churn. Only touches this private namespace."""
    for key, value in (
        ("net/ipv4/ip_local_port_range", "10000 65535"),
        ("net/ipv4/tcp_tw_reuse", "1"),
        ("net/core/somaxconn", "65535"),
        ("net/ipv4/tcp_max_syn_backlog", "65535"),
    ):
        try:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
        except OSError as exc:
            print(f"bench: could not set {key}: {exc}", file=sys.stderr)
