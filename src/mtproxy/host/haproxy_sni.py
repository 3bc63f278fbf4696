"""Where the stack's HAProxy sends a TLS name today, read from its config alone (no IO, no network): the
proxy's default mask behind HAProxy is the stack's own web site for that name, when the config shows one.

What is read: in the frontend that serves the public port (our own marked block taken away), its `acl`
lines and its `use_backend`/`default_backend` lines in order. A `use_backend … if COND` is understood when
COND is made of anonymous ACLs `{ req.ssl_sni … }` / `{ req_ssl_sni … }` and names of `acl` lines on those
fetches, joined by AND (juxtaposition) and `||`/`or`, with the flags `-i` and `-m str|end|dom|beg|sub` (str
when none is given). Not read, and so an answer of "cannot tell": `unless`, negation (`!`), other fetches
(`req.ssl_alpn`, `src`, …), `-m reg`, pattern files (`-f`), map lookups and dynamic backend names
(`use_backend %[…]`). The first rule that cannot be read and comes before any match stops the search: it
might catch the name, so no guess is made past it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mtproxy.addresses import is_loopback

_SNI_FETCHES = frozenset({"req.ssl_sni", "req_ssl_sni"})
_METHODS = frozenset({"str", "end", "dom", "beg", "sub"})
_PROXY_HEADER = re.compile(r"^send-proxy(?:-v2(?:-ssl(?:-cn)?)?)?$")


class Unreadable(Exception):
    """A rule this module does not understand; its text says which and why."""


@dataclass(frozen=True)
class SniAcl:
    """One `req.ssl_sni` match: the values, how they match, and whether case is ignored."""

    method: str
    values: tuple[str, ...]
    ignore_case: bool

    def matches(self, name: str) -> bool:
        subject = name.lower() if self.ignore_case else name
        for raw in self.values:
            value = raw.lower() if self.ignore_case else raw
            if self.method == "str" and subject == value:
                return True
            if self.method == "end" and subject.endswith(value):
                return True
            if self.method == "beg" and subject.startswith(value):
                return True
            if self.method == "sub" and value in subject:
                return True
            # HAProxy's `dom`: the value as a run of whole labels, delimited by dots or the ends
            if self.method == "dom" and f".{value.strip('.')}." in f".{subject}.":
                return True
        return False


def parse_acl(words: Sequence[str]) -> SniAcl:
    """`req.ssl_sni [-i] [-m METHOD] VALUE…` (the words after `acl NAME`, or inside `{ }`)."""
    if not words or words[0] not in _SNI_FETCHES:
        raise Unreadable(f"`{' '.join(words)}` does not match on req.ssl_sni")
    method, ignore_case, values = "str", False, list[str]()
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-i":
            ignore_case = True
        elif word == "-m" and index + 1 < len(words):
            method = words[index + 1]
            index += 1
        elif word == "--":
            values.extend(words[index + 1:])
            break
        elif word.startswith("-"):
            raise Unreadable(f"the ACL flag {word} is not read")
        else:
            values.append(word)
        index += 1
    if method not in _METHODS:
        raise Unreadable(f"the match method -m {method} is not read")
    if not values:
        raise Unreadable(f"`{' '.join(words)}` has no value to match")
    return SniAcl(method, tuple(values), ignore_case)


def condition_matches(words: Sequence[str], acls: Mapping[str, Sequence[SniAcl]], name: str) -> bool:
    """Whether the condition after `if` holds for a ClientHello naming `name` (Unreadable if unsure)."""
    groups: list[list[bool]] = [[]]
    index = 0
    while index < len(words):
        word = words[index]
        if word in ("||", "or"):
            groups.append([])
        elif word == "{":
            close = index + 1
            while close < len(words) and words[close] != "}":
                close += 1
            if close == len(words):
                raise Unreadable("an anonymous ACL without its closing brace")
            groups[-1].append(parse_acl(words[index + 1:close]).matches(name))
            index = close
        elif word.startswith("!"):
            raise Unreadable(f"the negation {word} is not read")
        elif word in acls:
            groups[-1].append(any(acl.matches(name) for acl in acls[word]))
        else:
            raise Unreadable(f"the ACL {word} is not one on req.ssl_sni")
        index += 1
    if any(not group for group in groups):
        raise Unreadable("an empty term in the condition")
    return any(all(group) for group in groups)


@dataclass(frozen=True)
class Route:
    """Where HAProxy sends `name`: the backend, and the rule that decided (line number, 1-based)."""

    backend: str
    line: int
    by_default: bool


def route_of(lines: Sequence[str], start: int, end: int, name: str) -> Route | None:
    """Follow the frontend's lines [start, end) in HAProxy's order: the first `use_backend` whose condition
    holds, else `default_backend`; None when neither routes the name. Raises Unreadable at the first rule
    that might catch the name but cannot be read."""
    acls: dict[str, list[SniAcl]] = {}
    unread_acls: dict[str, str] = {}
    default: Route | None = None
    for index in range(start, end):
        words = lines[index].split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "acl" and len(words) >= 3:
            try:
                acls.setdefault(words[1], []).append(parse_acl(words[2:]))
            except Unreadable as exc:
                unread_acls[words[1]] = str(exc)
        elif words[0] == "default_backend" and len(words) >= 2:
            default = Route(words[1], index + 1, True)
        elif words[0] == "use_backend" and len(words) >= 2:
            where = f"line {index + 1}, `{' '.join(words)}`"
            if "%[" in words[1]:
                raise Unreadable(f"{where}: a backend name computed at run time is not read")
            if len(words) == 2:
                return Route(words[1], index + 1, False)
            if words[2] != "if":
                raise Unreadable(f"{where}: only `if` conditions are read")
            unread = [w for w in words[3:] if w in unread_acls]
            if unread:
                raise Unreadable(f"{where}: {unread_acls[unread[0]]}")
            try:
                if condition_matches(words[3:], acls, name):
                    return Route(words[1], index + 1, False)
            except Unreadable as exc:
                raise Unreadable(f"{where}: {exc}") from None
    return default


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    options: tuple[str, ...]


def servers_of(lines: Sequence[str], start: int, end: int) -> list[Server | str]:
    """The `server` lines of a backend section: each a Server, or why its address is not usable."""
    found: list[Server | str] = []
    for line in lines[start:end]:
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "server":
            continue
        address = re.sub(r"^(?:ipv4|ipv6)@", "", words[2])
        host, sep, port = address.rpartition(":")
        if address.startswith(("/", "unix@", "abns@")) or not sep or not port.isdigit():
            found.append(f"the server address {words[2]} is not HOST:PORT")
            continue
        found.append(Server(host.strip("[]"), int(port), tuple(words[3:])))
    return found


@dataclass(frozen=True)
class MaskChoice:
    """The mask the stack's config points at (`target`, HOST:PORT), or None; `why` says either way."""

    target: str | None
    why: str


def site_mask(text: str, sections: Sequence[tuple[str, str, int, int]], frontend: tuple[int, int], name: str,
              not_sites: Mapping[int, str], own_port: int) -> MaskChoice:
    """The local TLS site HAProxy serves `name` with today. `text` is the config without our block,
    `sections` its (kind, name, first line, end), `frontend` the body's line range; `not_sites` the loopback
    ports known to be something else (Xray's inbounds), `own_port` the proxy's own loopback port.

    A backend that an SNI rule names for `name` is taken as the site for it; the default_backend only when
    Xray's ports are known (`not_sites`) and its server is none of them. Whether the server really speaks
    TLS is not checked (no network contact): `mtproxy doctor` asks the mask site."""
    lines = text.split("\n")
    try:
        route = route_of(lines, frontend[0], frontend[1], name)
    except Unreadable as exc:
        return MaskChoice(None, f"cannot tell where HAProxy sends {name}: {exc}")
    if route is None:
        return MaskChoice(None, f"HAProxy's frontend has no rule and no default_backend for {name}")
    how = "its default_backend" if route.by_default else "an SNI rule"
    routed = f"HAProxy sends {name} to backend {route.backend} ({how}, line {route.line})"
    backend = [s for s in sections if s[0] in ("backend", "listen") and s[1] == route.backend]
    if len(backend) != 1:
        return MaskChoice(None, f"{routed}, which the config does not define once")
    servers = servers_of(lines, backend[0][2] + 1, backend[0][3])
    if len(servers) != 1:
        return MaskChoice(None, f"{routed}, which has {len(servers)} servers, not one site")
    server = servers[0]
    if isinstance(server, str):
        return MaskChoice(None, f"{routed}: {server}")
    where = f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    if not is_loopback(server.host):
        return MaskChoice(None, f"{routed}, whose server {where} is not on this host's loopback")
    if route.by_default and not not_sites:
        # the default is Xray's on a Reality stack; without its config a site cannot be told from Xray
        return MaskChoice(None, f"{routed}, whose server {where} may be Xray's: no Xray config says which "
                                "local ports are Xray's")
    if server.port in not_sites:
        return MaskChoice(None, f"{routed}, whose server {where} is the {not_sites[server.port]}, not a web site")
    if server.port == own_port:
        return MaskChoice(None, f"{routed}, whose server {where} is this proxy's own port")
    proxy_header = [o for o in server.options if _PROXY_HEADER.match(o)]
    if proxy_header:
        return MaskChoice(None, f"{routed}, whose server {where} expects a PROXY header ({proxy_header[0]}) "
                                "the proxy's mask connection does not send")
    return MaskChoice(where, f"{routed}, whose one server {where} is a local site")
