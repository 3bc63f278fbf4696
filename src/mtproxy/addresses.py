"""Address facts the edges share (the stats server, the management API, the HAProxy integration)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback: `localhost`, 127.0.0.0/8, ::1 (a zone id allowed), or an
    IPv4-mapped loopback address (how a dual-stack socket reports an IPv4 client)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))
