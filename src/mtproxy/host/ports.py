"""Whether a TCP port can be the proxy's: in range, not one the VPN stack or the stats server uses, and free."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from pathlib import Path

# The host VPN stack's well-known ports: Xray VLESS Reality on 443 (and its fallbacks on 80), SSH.
# 8443 is not listed: Xray binds it on 127.0.0.1 only, and the bind test below catches that conflict.
RESERVED = {22: "SSH", 80: "the VPN stack's HTTP fallback", 443: "VLESS Reality (Xray)"}
SUGGESTIONS = (2053, 8444, 2083, 2087, 2096, 8445, 8446)


def vpn_ports(root: Path) -> dict[int, str]:
    """Inbound ports in the VPN stack's Xray config under the same root, if it is there and readable."""
    found: dict[int, str] = {}
    for name in ("config/xray_config.json", "config/config.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            doc = json.loads((root / name).read_text())
            for inbound in doc.get("inbounds", []):
                port = inbound.get("port")
                if isinstance(port, int):
                    found[port] = f"Xray inbound {inbound.get('tag') or ''}".strip()
    return found


def bind_error(port: int) -> str | None:
    """Try to listen on 0.0.0.0:port and [::]:port as the proxy will; None if both work.

    A wildcard bind is what really conflicts with a 127.0.0.1 listener on Linux, so a connect test
    would miss Xray's 127.0.0.1:8443.
    """
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: nothing to conflict with
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue
                if exc.errno == errno.EACCES:
                    return "binding ports below 1024 needs root"
                return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None


def suggest_free(exclude: set[int]) -> int | None:
    for port in SUGGESTIONS:
        if port not in exclude and bind_error(port) is None:
            return port
    return None
