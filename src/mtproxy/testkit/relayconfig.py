"""Test files naming fake relays: proxy-multi.conf text (v4 and v6) and a proxy-secret file, in the shapes
core.telegram.org/getProxyConfig, getProxyConfigV6 and getProxySecret serve."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtproxy.store import write_atomic

from .rpcwire import MAX_SECRET, MIN_SECRET

Relays = Mapping[int, Sequence[tuple[str, int]]]


def proxy_multi_conf(relays: Relays, default_dc: int | None = None) -> str:
    """`proxy_for <dc> <host>:<port>;` lines, IPv6 hosts in brackets, each DC's lines together (the grammar of
    MTProxy mtproto/mtproto-config.c parse_config: a DC's lines may not be intermixed with another's; ids
    -32768..32767; `default <dc>;` names the cluster for unknown DCs)."""
    lines = ["# written for a test: fake relays on loopback"]
    if default_dc is not None:
        lines.append(f"default {_dc_id(default_dc)};")
    for dc, addresses in relays.items():
        for host, port in addresses:
            if not 0 < port < 0x10000:
                raise ValueError(f"port {port} out of range")
            address = ipaddress.ip_address(host)
            where = f"[{address}]" if address.version == 6 else str(address)
            lines.append(f"proxy_for {_dc_id(dc)} {where}:{port};")
    if not any(relays.values()):
        raise ValueError("a proxy-multi.conf names at least one relay")
    return "\n".join(lines) + "\n"


def _dc_id(dc: int) -> int:
    if not -0x8000 <= dc < 0x8000:
        raise ValueError(f"DC id {dc} is not in -32768..32767")
    return dc


@dataclass(frozen=True)
class RelayFiles:
    secret: Path
    config: Path
    config_v6: Path | None


def write_relay_files(directory: Path, secret: bytes, v4: Relays, v6: Relays | None = None,
                      default_dc: int | None = None) -> RelayFiles:
    """proxy-secret (the raw bytes, as getProxySecret serves them), proxy-multi.conf and, with `v6`,
    proxy-multi-v6.conf, written in `directory`."""
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise ValueError(f"a proxy secret is {MIN_SECRET}..{MAX_SECRET} bytes")
    directory.mkdir(parents=True, exist_ok=True)
    secret_path = directory / "proxy-secret"
    write_atomic(secret_path, secret)
    config = directory / "proxy-multi.conf"
    write_atomic(config, proxy_multi_conf(v4, default_dc).encode())
    config_v6 = None
    if v6 is not None:
        config_v6 = directory / "proxy-multi-v6.conf"
        write_atomic(config_v6, proxy_multi_conf(v6, default_dc).encode())
    return RelayFiles(secret_path, config, config_v6)
