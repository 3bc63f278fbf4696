"""Telegram's middle-proxy configuration: proxy-multi.conf (the relays of each DC) and proxy-secret (the key
the relays authenticate us with), parsed and checked as the official MTProxy does, from text and bytes.

Both files are published by Telegram (core.telegram.org/getProxyConfig, getProxyConfigV6, getProxySecret)
and change now and then; fetching them is the runtime's. The grammar follows MTProxy
mtproto/mtproto-config.c `parse_config` and common/parse-config.c (its lexer): statements end with `;`,
whitespace includes newlines, `#` starts a comment, keywords are matched by prefix. What the official parser
rejects is rejected here, with the line; the one thing it does that the core cannot is resolve host names:
the published files carry only IP literals, and a name is refused."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ProxyConfigError

__all__ = ["ProxyConfig", "ProxyConfigError", "ProxySecret", "Relay", "parse_proxy_config", "parse_proxy_secret"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# MTProxy net/net-crypto-aes.h MIN_PWD_LEN / MAX_PWD_LEN: the secret file is refused outside these
PROXY_SECRET_MIN = 32
PROXY_SECRET_MAX = 256
MAX_CONFIG_SIZE = 16 << 20  # common/parse-config.c MAX_CONFIG_SIZE
MAX_TARGETS = 4096  # mtproto/mtproto-config.h MAX_CFG_TARGETS
MAX_CLUSTERS = 1024  # MAX_CFG_CLUSTERS
MAX_HOST_WORD = 63  # cfg_gethost_ex: a host word of 1..63 characters
DEFAULT_MIN_CONNECTIONS = 4  # mtproto/mtproto-proxy.c DEFAULT_CFG_MIN_CONNECTIONS
DEFAULT_MAX_CONNECTIONS = 8  # DEFAULT_CFG_MAX_CONNECTIONS
DEFAULT_TIMEOUT = 0.3  # preinit_config, seconds


@dataclass(frozen=True)
class ProxySecret:
    """The proxy-secret file's bytes, exactly as published (the official proxy hashes the whole file,
    newline included, if there is one). `key_select` is its first 4 bytes: the nonce packet names the key by
    them. repr never shows the bytes."""

    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not PROXY_SECRET_MIN <= len(self.data) <= PROXY_SECRET_MAX:
            raise ProxyConfigError(
                f"proxy-secret must be {PROXY_SECRET_MIN} to {PROXY_SECRET_MAX} bytes, got {len(self.data)}")

    @property
    def key_select(self) -> bytes:
        return self.data[:4]


def parse_proxy_secret(data: bytes) -> ProxySecret:
    """proxy-secret as read from the file (net/net-crypto-aes.c `aes_load_pwd_file`: raw bytes, length
    checked, nothing stripped)."""
    return ProxySecret(bytes(data))


@dataclass(frozen=True)
class Relay:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """The relays of each DC id in file order (negative ids are media DCs, as in the client's init), the
    default DC (used for any id without relays of its own), and the connection settings the file may set."""

    relays: Mapping[int, tuple[Relay, ...]]
    default_dc: int = 0
    timeout: float = DEFAULT_TIMEOUT
    min_connections: int = DEFAULT_MIN_CONNECTIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def relays_for(self, dc_id: int, version: int | None = None) -> tuple[Relay, ...]:
        """The relays for `dc_id`, or the default DC's when it has none (mtproto-config.c
        `mf_cluster_lookup` with force), optionally only IPv4 (version 4) or IPv6 (6) ones; () when
        neither the DC nor the default has any."""
        found = self.relays.get(dc_id)
        if found is None:
            found = self.relays.get(self.default_dc, ())
        return found if version is None else tuple(relay for relay in found if relay.ip.version == version)

    def merged(self, other: ProxyConfig) -> ProxyConfig:
        """This config with `other`'s relays added after its own (the IPv6 file beside the IPv4 one);
        default DC and settings stay this one's."""
        relays = {dc: list(found) for dc, found in self.relays.items()}
        for dc, found in other.relays.items():
            relays.setdefault(dc, []).extend(found)
        return ProxyConfig({dc: tuple(found) for dc, found in relays.items()}, self.default_dc, self.timeout,
                           self.min_connections, self.max_connections)


_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_WORD_V6 = _WORD | {":"}
_KEYWORDS = ("min_connections", "max_connections", "proxy_for", "proxy", "timeout", "default")


class _Lexer:
    """common/parse-config.c's cursor: `skip_space` crosses lines and comments, `skip_inline` only blanks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> str:
        text, end = self.text, len(self.text)
        while self.pos < end and text[self.pos] in " \t\r\n#":
            if text[self.pos] == "#":
                newline = text.find("\n", self.pos)
                self.pos = end if newline < 0 else newline
                continue
            if text[self.pos] == "\n":
                self.line += 1
            self.pos += 1
        return self.peek()

    def skip_inline(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.pos += 1

    def error(self, message: str) -> ProxyConfigError:
        near = self.text[self.pos : self.pos + 20].split("\n", 1)[0].rstrip("\r")
        return ProxyConfigError(f"{message} near {near!r}" if near else f"{message} at the end", self.line)

    def keyword(self) -> str | None:
        for word in _KEYWORDS:
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return word
        return None

    def digits(self) -> str:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        return self.text[start : self.pos]

    def unsigned(self) -> int:
        """cfg_getint: blanks, then digits; none reads as 0."""
        self.skip_inline()
        digits = self.digits()
        return int(digits) if digits else 0

    def signed(self) -> int | None:
        """cfg_getint_signed_zero: blanks, an optional minus, digits; None when there are no digits."""
        self.skip_inline()
        start = self.pos
        negative = self.peek() == "-"
        if negative:
            self.pos += 1
        digits = self.digits()
        if not digits:
            self.pos = start
            return None
        return -int(digits) if negative else int(digits)

    def word(self) -> str:
        """cfg_getword: a host, `[v6]` with its brackets, or letters, digits, `.`, `-`, `_`."""
        self.skip_inline()
        start = self.pos
        allowed = _WORD
        if self.peek() == "[":
            self.pos += 1
            allowed = _WORD_V6
        while self.peek() and self.peek() in allowed:
            self.pos += 1
        if allowed is _WORD_V6 and self.peek() == "]":
            self.pos += 1
        return self.text[start : self.pos]

    def expect(self, lexem: str) -> None:
        """cfg_getlex_ext, then expect_lexem: whitespace and comments, then this one character."""
        if self.skip_space() != lexem:
            raise self.error(f"{lexem!r} expected")
        self.pos += 1


def _relay(lexer: _Lexer) -> Relay:
    start = lexer.pos
    host = lexer.word()
    if not 0 < len(host) <= MAX_HOST_WORD:
        lexer.pos = start
        raise lexer.error("relay address expected")
    try:
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError(host)
            ip: IPAddress = ipaddress.IPv6Address(host[1:-1])
        else:
            ip = ipaddress.IPv4Address(host)
    except ValueError:
        lexer.pos = start
        raise lexer.error(f"{host!r} is not an IPv4 address or a bracketed IPv6 address "
                          "(the core resolves no names)") from None
    lexer.expect(":")
    port = lexer.unsigned()
    if not port:
        raise lexer.error("port number expected")
    if port >= 0x10000:
        raise lexer.error(f"port number {port} out of range")
    return Relay(ip, port)


def _dc_id(lexer: _Lexer) -> int:
    dc_id = lexer.signed()
    if dc_id is None or not -0x8000 <= dc_id < 0x8000:
        raise lexer.error("invalid target id (integer -32768..32767 expected)")
    return dc_id


def parse_proxy_config(text: str | bytes) -> ProxyConfig:
    """proxy-multi.conf (either address family's) as a ProxyConfig; raises ProxyConfigError with the line.
    Bytes are read one character per byte, as the C parser does."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if len(text) > MAX_CONFIG_SIZE:
        raise ProxyConfigError(f"the configuration is over {MAX_CONFIG_SIZE} bytes")
    lexer = _Lexer(text)
    relays: dict[int, list[Relay]] = {}
    last_dc: int | None = None
    targets = 0
    default_dc, timeout_ms = 0, None
    min_connections, max_connections = DEFAULT_MIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS
    while lexer.skip_space():
        keyword = lexer.keyword()
        if keyword == "timeout":
            timeout_ms = lexer.unsigned()
            if not 10 <= timeout_ms <= 30000:
                raise lexer.error("invalid timeout (10..30000 ms expected)")
        elif keyword == "default":
            default_dc = _dc_id(lexer)
        elif keyword in ("proxy_for", "proxy"):
            dc_id = 0
            if keyword == "proxy_for":
                dc_id = _dc_id(lexer)
                if lexer.peek() not in (" ", "\t") or not lexer.peek():
                    raise lexer.error("space expected after target id")
            if targets >= MAX_TARGETS:
                raise lexer.error(f"too many relays (at most {MAX_TARGETS})")
            relay = _relay(lexer)
            if dc_id in relays and dc_id != last_dc:
                raise lexer.error(f"relays for DC {dc_id} intermixed with other DCs'")
            if dc_id not in relays and len(relays) >= MAX_CLUSTERS:
                raise lexer.error(f"too many DCs (at most {MAX_CLUSTERS})")
            relays.setdefault(dc_id, []).append(relay)
            last_dc = dc_id
            targets += 1
        elif keyword == "max_connections":
            max_connections = lexer.unsigned()
            if max_connections < min_connections or max_connections > 1000:
                raise lexer.error("invalid max connections")
        elif keyword == "min_connections":
            min_connections = lexer.unsigned()
            if min_connections < 1 or min_connections > max_connections:
                raise lexer.error("invalid min connections")
        else:
            raise lexer.error("'proxy_for <dc> <ip>:<port>;' expected")
        lexer.expect(";")
    if not relays:
        raise ProxyConfigError("no relays: expected `proxy_for <dc> <ip>:<port>;` lines", lexer.line)
    return ProxyConfig({dc: tuple(found) for dc, found in relays.items()}, default_dc,
                       DEFAULT_TIMEOUT if timeout_ms is None else timeout_ms / 1000, min_connections,
                       max_connections)

