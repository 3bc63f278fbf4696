"""The one set of checks for what an operator gives: port, workers, link server, fake-TLS domain, secret type
and UFW mode. `mtproxy setup` (flags, variables and answers), `set-port`, `set-workers`, `set-server` and the
global `--server` all call these, so a value refused by one is refused by all, with the same words."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ..defaults import MAX_WORKERS
from ..host.install import UFW_MODES
from ..host.ports import RESERVED, bind_error, suggest_free, vpn_ports
from ..protocol.errors import SecretFormatError
from ..protocol.secret import validate_domain
from .errors import CliError, ExitStatus, mask_secrets, secret_tokens

SECRET_TYPES = {"ee": "ee", "fake-tls": "ee", "tls": "ee", "dd": "dd", "padded": "dd",
                "plain": "plain", "classic": "plain"}
T = TypeVar("T", covariant=True)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class Invalid(ValueError):
    """A value that cannot be used: what is wrong and what to do; `free_port` when a port was refused."""

    def __init__(self, what: str, todo: str, status: ExitStatus = ExitStatus.USAGE,
                 free_port: int | None = None) -> None:
        what = mask_secrets(what)
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.status = status
        self.free_port = free_port

    def __str__(self) -> str:
        return f"{self.what} — {self.todo}" if self.todo else self.what

    def cli_error(self, todo: str | None = None) -> CliError:
        return CliError(self.what, self.todo if todo is None else todo, self.status)


@dataclass(frozen=True)
class Checked(Generic[T]):
    """A usable value and what the operator should still hear about it."""

    value: T
    warnings: tuple[str, ...] = ()


def shown(value: str) -> str:
    """How an operator's value is quoted back: short, and with any secret in it masked."""
    return repr(mask_secrets(value[:80]))


def whole_number(text: str | int | None, what: str) -> int:
    """A whole number from a flag, a variable or an answer; the empty text is not 0."""
    if isinstance(text, int):
        if isinstance(text, bool):
            raise Invalid(f"{what} must be a whole number, not {text}", f"give {what} as digits")
        return text
    stripped = (text or "").strip()
    if not stripped.isdigit():
        raise Invalid(f"{what} must be a whole number, not {shown(stripped)}", f"give {what} as digits")
    return int(stripped)


def port_number(value: str | int | None, what: str = "port") -> int:
    """1 to 65535. 0 is refused, never read as "the default" (that is what leaving it out means)."""
    port = whole_number(value, what)
    if port == 0:
        raise Invalid(f"{what} 0 is not a port (0 does not mean the default)", "give a port from 1 to 65535")
    if not 1 <= port <= 65535:
        raise Invalid(f"{what} {port} is out of range", "give a port from 1 to 65535")
    return port


def check_port(
    value: str | int | None,
    root: Path,
    stats_port: int,
    bind_check: Callable[[int], str | None] = bind_error,
) -> Checked[int]:
    """A port the proxy can listen on: in range, not reserved for the VPN stack or SSH, not the stats port,
    and free (bound as the proxy will, so Xray's 127.0.0.1:8443 counts). Setup passes a `bind_check` that
    knows its own running proxy may hold the port it already uses."""
    port = port_number(value)
    taken = {**RESERVED, **vpn_ports(root), stats_port: "the proxy's stats endpoint"}
    if port in taken:
        free = suggest_free(set(taken) | {port})
        raise Invalid(f"port {port} is reserved for {taken[port]}", _pick(free), ExitStatus.CONFLICT, free)
    problem = bind_check(port)
    if problem is not None:
        free = suggest_free(set(taken) | {port})
        raise Invalid(f"port {port} cannot be used: {problem}", _pick(free), ExitStatus.CONFLICT, free)
    warnings: tuple[str, ...] = ()
    if port < 1024:
        warnings = (f"port {port} is privileged: the proxy needs CAP_NET_BIND_SERVICE (the image grants it)",)
    return Checked(port, warnings)


def _pick(free: int | None) -> str:
    return f"pick a free port, e.g. {free}" if free else "pick another port"


def check_workers(value: str | int | None, cores: int | None = None) -> Checked[int]:
    """1 to MAX_WORKERS worker processes; more than the CPU count is allowed, with a warning."""
    workers = whole_number(value, "workers")
    if not 1 <= workers <= MAX_WORKERS:
        raise Invalid(f"{workers} workers is out of range", f"give 1 to {MAX_WORKERS} (one per CPU core is usual)")
    cores = cores or os.cpu_count() or 1
    if workers > cores:
        return Checked(workers, (f"{workers} workers on {cores} CPU core(s): more workers than cores only adds "
                                 "overhead",))
    return Checked(workers)


def check_server(value: str) -> Checked[str]:
    """The address written into links: a bare IP address or DNS name. A link, URL or host:port is refused
    (never echoed: it may carry a secret); an address clients on the Internet cannot reach is warned."""
    text = value.strip().lower().rstrip(".")
    bare = "give only the host, e.g. proxy.example.com or 203.0.113.5"
    if "://" in text or text.startswith(("t.me/", "tg:")) or (secret_tokens(text) and "." not in text):
        raise Invalid("the server must be a bare host name or IP address, not a link or a secret", bare)
    if not text or any(c in text for c in "/?#&=@ \t[]"):
        raise Invalid(f"the server must be a bare host name or IP address, not {shown(value)}", bare)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is not None:
        if address.is_unspecified or address.is_multicast:
            raise Invalid(f"{text} cannot be a server address", bare)
        if not address.is_global:
            return Checked(text, (f"{text} is a private or reserved address: clients on the Internet cannot "
                                  "reach it (set the public address or a domain name)",))
        return Checked(text)
    if ":" in text:
        raise Invalid(f"{shown(value)} is not a bare address: a port or scheme does not belong in it",
                      f"{bare}; the port comes from `mtproxy set-port`")
    if text.replace(".", "").isdigit():
        raise Invalid(f"{shown(value)} is not a valid IPv4 address", bare)
    labels = text.split(".")
    if len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise Invalid(f"{shown(value)} is not a valid host name",
                      "use letters, digits, hyphens and dots (an international name in its xn-- form)")
    if len(labels) == 1 or text == "localhost" or text.endswith((".local", ".localhost", ".internal", ".lan")):
        return Checked(text, (f"{text} is not a public DNS name: clients on the Internet cannot resolve it",))
    return Checked(text)


def check_domain(value: str, source: str = "the fake-TLS domain") -> str:
    """The fake-TLS domain: a real HTTPS site's host name that fits in an ee secret and a TLS SNI."""
    text = value.strip().lower()
    hint = "give the host name of a real HTTPS site, e.g. www.example.com"
    if secret_tokens(text) or "://" in text:
        raise Invalid(f"{source}: that looks like a secret or a link, not a domain", hint)
    if "." not in text.strip("."):
        raise Invalid(f"{source}: {shown(value)} is not a public host name (no dot)", hint)
    try:
        return validate_domain(text)
    except SecretFormatError as exc:
        raise Invalid(f"{source}: {exc}",
                      "give the host name of a real HTTPS site, e.g. www.example.com") from None


def check_secret_type(value: str) -> str:
    """ee, dd or plain (also: fake-tls, tls, padded, classic)."""
    word = SECRET_TYPES.get(value.strip().lower())
    if word is None:
        raise Invalid(f"secret type {shown(value)} is not one of ee, dd, plain",
                      "answer ee (fake-TLS, recommended), dd (padded) or plain")
    return word


def check_ufw_mode(value: str, source: str = "the UFW mode") -> str:
    """limit, allow or skip: the rule setup adds for the port (MTPROXY_UFW, --ufw or the answer)."""
    mode = value.strip().lower()
    if mode not in UFW_MODES:
        raise Invalid(f"{source} {shown(value)} is not one of {', '.join(UFW_MODES)}",
                      "limit (rate-limited, the default), allow, or skip (no rule)")
    return mode
