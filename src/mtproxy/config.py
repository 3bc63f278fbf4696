"""Engine configuration: the command line (official `mtproto-proxy` flags included) resolved into one object."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mtproxy.defaults import (
    DEFAULT_METRICS_MAX_SECRETS,
    DEFAULT_PORT,
    DEFAULT_STATS_PORT,
    DEFAULT_WORKERS,
    MAX_WORKERS,
)
from mtproxy.paths import Paths, choose_root
from mtproxy.protocol.adtag import AdTagError, ad_tag_bytes
from mtproxy.protocol.errors import SecretFormatError
from mtproxy.protocol.natinfo import NatInfoError, NatRule, parse_nat_rules
from mtproxy.protocol.secret import Secret, SecretKind, parse_secret, validate_domain
from mtproxy.protocol.socks5 import Credentials
from mtproxy.settings import read_settings
from mtproxy.store import StoreError
from mtproxy.usage import OneLineParser

# The defaults are defaults.py's, as the settings file's, so the CLI and the engine cannot disagree.
__all__ = ["DEFAULT_PORT", "DEFAULT_STATS_PORT", "DEFAULT_TRUSTED_PROXIES", "MAX_WORKERS", "ConfigError",
           "EngineConfig", "HostPort", "Limits", "ProxyProtocol", "TlsOptions", "Upstream", "build_parser",
           "parse_host_port", "parse_upstream", "resolve"]

# --proxy-protocol without --trusted-proxy: a balancer on this host (the stack's HAProxy) and nothing else
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")
MIDDLE_MODES = ("auto", "on", "off")
# where the official MTProxy README fetches proxy-secret and proxy-multi.conf (+ getProxyConfigV6)
DEFAULT_RELAY_CONFIG_URL = "https://core.telegram.org"


class ConfigError(Exception):
    """The operator wrote something the engine cannot use; the message names the flag, file or key."""


@dataclass(frozen=True)
class HostPort:
    """A host (name or literal address, IPv6 without brackets) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """A SOCKS5 proxy the DC leg leaves through (--upstream). Printed as HOST:PORT: str() and repr() never
    show the password, so neither can a log line, /stats or an error message."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return str(self.address)

    @property
    def address(self) -> HostPort:
        return HostPort(self.host, self.port)

    @property
    def credentials(self) -> Credentials | None:
        if self.username is None or self.password is None:
            return None
        return Credentials(self.username.encode(), self.password.encode())


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one client, one IP or a flood from exhausting the process."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connections: int = 10000
    max_connections_per_ip: int = 0  # 0 = no cap
    buffer_size: int = 256 * 1024  # pause reading the other side above this many queued bytes
    # bytes per socket read: each read costs wake-ups and syscalls whatever its size, and the buffers are per
    # process, not per session (BENCHMARKS.md: 1 MiB against 256 KiB cut the upload's CPU per GB by ~40 %)
    read_size: int = 1024 * 1024
    drain_timeout: float = 10.0
    connect_timeout: float = 10.0
    # once either side has sent its EOF, a connection quiet for this long is closed: a client that
    # ignores our FIN must not keep its slot and two descriptors until the idle timeout
    halfclose_timeout: float = 15.0
    # connections not authenticated yet (in the handshake, or handed to the mask): probes need no secret,
    # so they get their own, lower caps and can never crowd out users
    max_unauthenticated: int = 2500  # unless set: a quarter of max_connections, at least 64 (config.py)
    max_unauthenticated_per_ip: int = 64  # 0 = no cap
    # the share of one core each worker may spend scanning the secrets for clients no hint identifies
    # (runtime/scans.py): garbage can use up this much, never the worker
    scan_budget: float = 0.25


TLS_RECORD_MODES = ("shaped", "plain")


@dataclass(frozen=True)
class TlsOptions:
    """Fake-TLS knobs: clock skew window, replay cache, certificate size."""

    skew: float = 120.0
    replay_entries: int = 65536
    cert_size: int | None = None  # fixed size; None = learn from the mask site
    cert_jitter: int = 16  # each flight's record differs by up to this many bytes, as real sites' do
    cert_refresh: float = 3600.0
    check_sni: bool = True
    # DC->client records (--tls-records): "shaped" sends none shorter than a TLS 1.3 AEAD record can be
    shaped_records: bool = True


@dataclass(frozen=True)
class ProxyProtocol:
    """The PROXY protocol (HAProxy's send-proxy / send-proxy-v2): read before each client's bytes, and sent
    to the mask site before a refused client's bytes."""

    accept: bool = False  # every connection must open with a header from a trusted source (runtime/proxied.py)
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # sources allowed to send one
    to_mask: int = 0  # header version sent to the mask site: 0 (none), 1 or 2


@dataclass(frozen=True)
class EngineConfig:
    """Everything `mtproxy run` needs, resolved and validated up front."""

    listen: tuple[HostPort, ...]
    secrets: tuple[Secret, ...]
    secrets_file: Path | None
    state_file: Path
    domains: tuple[str, ...]
    allow_classic: bool  # classic obfuscated2 and dd clients
    allow_tls: bool
    mask: HostPort | None
    mask_disabled: bool  # --no-mask: otherwise an ee secret's domain on 443 is the mask when none is given
    dc_overrides: dict[int | None, HostPort]  # None key = "*"
    prefer_ipv6: bool
    fast_mode: bool
    stats: HostPort | None
    stats_allow_remote: bool
    workers: int
    user: str | None
    limits: Limits
    tls: TlsOptions
    log_file: Path | None
    reload_interval: float
    public_host: str | None
    usage_interval: float = 60.0  # seconds between writes of usage.json (runtime/ledger.py)
    warnings: tuple[str, ...] = field(default=())
    secret_ids: tuple[str, ...] = field(default=())  # ids for the -S secrets, parallel to `secrets`
    root_note: str | None = None  # where the engine keeps things, when worth saying (paths.choose_root)
    max_connections_auto: bool = False  # no --max-connections: start-up fits it to the descriptor limit
    metrics_max_secrets: int = DEFAULT_METRICS_MAX_SECRETS  # per-secret series in /metrics (stats/render.py)
    proxy: ProxyProtocol = field(default=ProxyProtocol())
    upstream: Upstream | None = None  # the SOCKS5 proxy DC legs go through; None: DCs are dialled directly
    # the middle proxy (runtime/middle.py)
    middle_proxy: str = "auto"  # off | auto | on
    relay_config_url: str = DEFAULT_RELAY_CONFIG_URL  # getProxySecret, getProxyConfig(V6) under it
    proxy_tag: bytes | None = None  # -P: the global ad tag, 16 bytes
    nat_rules: tuple[NatRule, ...] = ()  # --nat-info
    aes_pwd: Path | None = None  # --aes-pwd: the operator's proxy-secret, instead of fetching it
    proxy_multi_conf: Path | None = None  # the positional proxy-multi.conf, instead of fetching it
    # bulk fast-mode downloads on raw relays (runtime/rawrelay.py); MTPROXY_SPLICE=0 keeps them on the
    # transport path (A/B measurements, a kernel without splice)
    raw_relays: bool = True

    @property
    def relays_for_everyone(self) -> bool:
        """Every client through the middle proxies: `on`, or in `auto` the official command line (the
        operator gave proxy-secret or proxy-multi.conf, as one does only to run the official proxy's way)."""
        given = self.aes_pwd is not None or self.proxy_multi_conf is not None
        return self.middle_proxy == "on" or (self.middle_proxy == "auto" and given)

    def runs_middle_proxy(self, any_ad_tag: bool) -> bool:
        """Whether the relay path runs at all, given whether some served secret has its own ad tag."""
        return self.middle_proxy != "off" and (self.relays_for_everyone or self.proxy_tag is not None or any_ad_tag)

    @property
    def relay_cache_dir(self) -> Path:
        """Where the last good proxy-secret and proxy-multi.conf are kept: relay/ beside the state file."""
        return self.state_file.parent / "relay"


def parse_host_port(text: str, what: str, default_port: int | None = None) -> HostPort:
    """Parse HOST:PORT, [V6]:PORT or a bare port/host where a default exists."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{what}: {text!r} has an unclosed [")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise ConfigError(f"{what}: {text!r} is not [HOST]:PORT")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.isdigit():
        host, port_text = "", text
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{what}: {text!r} needs a :PORT")
        port_text = str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range")
    return HostPort(host, port)


def parse_upstream(text: str, what: str = "--upstream") -> Upstream:
    """socks5://[USER:PASS@]HOST:PORT (USER and PASS percent-encoded where they hold : @ / %). The
    message of a refusal shows the URL with its password hidden."""
    shown = _hide_password(text)
    form = "socks5://[USER:PASS@]HOST:PORT"
    parts = urlsplit(text.strip())
    if parts.scheme.lower() != "socks5":
        raise ConfigError(f"{what}: {shown!r} is not a SOCKS5 URL — write {form}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{what}: {shown!r} has more than {form}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{what}: {shown!r} has no valid port (1-65535) — write {form}") from None
    host = parts.hostname
    if not host or not port:
        raise ConfigError(f"{what}: {shown!r} needs a host and a port — write {form}")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if (username is None) != (password is None) or username == "" or password == "":
        raise ConfigError(f"{what}: {shown!r}: give both a username and a password (USER:PASS@), or neither")
    upstream = Upstream(host, port, username, password)
    try:
        upstream.credentials  # noqa: B018 - RFC 1929's bounds
    except ValueError as exc:
        raise ConfigError(f"{what}: {shown!r}: {exc}") from None
    return upstream


def _hide_password(text: str) -> str:
    scheme, sep, rest = text.strip().partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text.strip()
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def build_parser() -> argparse.ArgumentParser:
    """The `mtproxy run` argument parser; flag names and meanings follow the official binary."""
    p = OneLineParser(
        prog="mtproxy run",
        description="Run the MTProxy engine (direct mode).",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("proxy_multi_conf", nargs="?", help="official proxy-multi.conf: the relays, instead of fetching them")
    a("-u", "--user", help="drop privileges to this user after binding")
    a("-p", "--stats-port", type=int, help=f"stats HTTP port on 127.0.0.1 (default {DEFAULT_STATS_PORT}, 0=off)")
    a("--stats-host", help="stats HTTP bind address (default 127.0.0.1)")
    a("--stats-allow-remote", action="store_true", default=None, help="serve stats to non-loopback peers")
    a("--metrics-max-secrets", type=int, help="secrets /metrics names one by one, the busiest first; the rest"
      f" are summed as secret=\"_other\" (default {DEFAULT_METRICS_MAX_SECRETS}, 0: all summed)")
    a("-H", "--port", action="append", default=[], help="listen port(s), comma separated, on 0.0.0.0 and ::")
    a("--listen", action="append", default=[], metavar="HOST:PORT", help="listen address (repeatable)")
    a("-S", "--secret", action="append", default=[], help="secret: 32 hex, dd+hex or ee+hex+domain (repeatable)")
    a("--secrets-file", help="JSON secrets store, reloaded when it changes and on SIGHUP")
    a("--state-file", help="where a generated secret is kept across restarts")
    a("-D", "--domain", action="append", default=[], help="fake-TLS domain; alone it means fake-TLS only")
    a("--allow-classic", action="store_true", default=None, help="with -D, accept classic and dd clients too")
    a("--no-tls", action="store_true", default=None, help="refuse fake-TLS clients")
    a("-M", "--workers", type=int, help="worker processes sharing the port (SO_REUSEPORT)")
    a("-P", "--proxy-tag", help="ad tag, 32 hex digits from @MTProxybot: clients go through Telegram's middle"
      " proxies with it (the promoted channel)")
    a("--aes-pwd", help="official proxy-secret file, instead of fetching it (and every client through the"
      " middle proxies, as the official proxy)")
    a("--nat-info", action="append", default=[], metavar="LOCAL:GLOBAL", help="our public IPv4 address behind"
      " NAT, as the official flag (repeatable): what the middle proxies are told")
    a("--middle-proxy", choices=MIDDLE_MODES, help="through Telegram's middle proxies: `auto` (default) for"
      " clients with an ad tag, or everyone when proxy-secret/proxy-multi.conf are given; `on` everyone;"
      " `off` never (ad tags unused)")
    a("--relay-config-url", metavar="URL", help="where proxy-secret and proxy-multi.conf are fetched from:"
      " URL/getProxySecret, URL/getProxyConfig, URL/getProxyConfigV6 (default https://core.telegram.org)")
    a("--mask", help="where unauthenticated connections go, HOST:PORT (default DOMAIN:443)")
    a("--no-mask", action="store_true", default=None, help="close unauthenticated connections instead")
    a("--proxy-protocol", action="store_true", default=None, help="every connection starts with a PROXY"
      " protocol header (v1 or v2) from a trusted load balancer, naming the real client")
    a("--trusted-proxy", action="append", default=[], metavar="CIDR", help="with --proxy-protocol: an address or"
      " network allowed to send the header (repeatable; default 127.0.0.0/8 and ::1)")
    a("--mask-proxy-protocol", choices=("off", "v1", "v2"), help="send the mask site a PROXY header naming the"
      " real client (default off)")
    a("--dc-override", action="append", default=[], metavar="ID=HOST:PORT", help="DC address (`*` = all)")
    a("--prefer-ipv6", action="store_true", default=None, help="dial DCs over IPv6")
    a("--upstream", metavar="socks5://[USER:PASS@]HOST:PORT", help="dial DCs through this SOCKS5 proxy (e.g."
      " Xray's SOCKS inbound); the mask site is still reached directly")
    a("--no-fast-mode", action="store_true", default=None, help="re-encrypt DC->client bytes")
    a("--handshake-timeout", type=float)
    a("--idle-timeout", type=float)
    a("--max-connections", type=int)
    a("--max-connections-per-ip", type=int)
    a("--halfclose-timeout", type=float, help="seconds a half-closed connection may stay quiet (default 15)")
    a("--max-unauthenticated", type=int, help="per worker: connections not yet authenticated or masked"
      " (default a quarter of --max-connections)")
    a("--max-unauthenticated-per-ip", type=int, help="per worker and client IP (default 64, 0=off)")
    a("--scan-budget", type=float, metavar="SHARE", help="per worker: the share of one core (0-1] that secret"
      " scans for clients no hint identifies may take, with 64 or more secrets (default 0.25)")
    a("--buffer-size", type=int, help="bytes queued per direction before reading pauses")
    a("--read-size", type=int, help="bytes read per socket read (default 1048576)")
    a("--drain-timeout", type=float, help="seconds SIGTERM waits for sessions to finish")
    a("--tls-skew", type=float, help="accepted fake-TLS clock skew in seconds (default 120)")
    a("--replay-cache-size", type=int, help="fake-TLS/obfs2 replay cache entries")
    a("--cert-size", type=int, help="fixed fake certificate record size (default: learned from the mask)")
    a("--cert-refresh", type=float, help="seconds between certificate size probes")
    a("--tls-records", choices=TLS_RECORD_MODES, help="fake-TLS records to the client: `shaped` (default) none"
      " shorter than a TLS 1.3 server's can be (a read too short waits up to 10 ms for more), `plain` one per"
      " DC read as it came")
    a("--cert-jitter", type=int, help="vary the fake certificate size by up to N bytes (default 16; 0 with"
      " --cert-size)")
    a("--no-sni-check", action="store_true", default=None, help="accept any SNI")
    a("--reload-interval", type=float, help="seconds between secrets file checks (default 1)")
    a("--usage-interval", type=float, help="seconds between writes of the per-secret usage file (default 60)")
    a("--log-file", help="also write logs (rejected handshakes included) to this file")
    a("--public-host", help="host name or IP printed in links for a generated secret")
    a("--config", help="JSON settings file (keys as in docs/engine.md)")
    a("--root", help="installation root (default $MTPROXY_ROOT, else /opt/vless when installed there or run as"
      " root, else ~/.local/state/mtproxy)")
    return p


# Keys of the JSON settings file and the argparse destinations they fill.
_CONFIG_KEYS = {
    "port": "port", "listen": "listen", "workers": "workers", "domain": "domain", "mask": "mask",
    "stats_port": "stats_port", "stats_host": "stats_host", "stats_allow_remote": "stats_allow_remote",
    "metrics_max_secrets": "metrics_max_secrets",
    "allow_classic": "allow_classic", "prefer_ipv6": "prefer_ipv6", "dc_override": "dc_override",
    "handshake_timeout": "handshake_timeout", "idle_timeout": "idle_timeout",
    "max_connections": "max_connections", "max_connections_per_ip": "max_connections_per_ip",
    "halfclose_timeout": "halfclose_timeout", "max_unauthenticated": "max_unauthenticated",
    "max_unauthenticated_per_ip": "max_unauthenticated_per_ip", "scan_budget": "scan_budget",
    "buffer_size": "buffer_size", "read_size": "read_size", "drain_timeout": "drain_timeout", "tls_skew": "tls_skew",
    "replay_cache_size": "replay_cache_size", "cert_size": "cert_size", "cert_refresh": "cert_refresh",
    "cert_jitter": "cert_jitter", "tls_records": "tls_records",
    "secrets_file": "secrets_file", "user": "user", "log_file": "log_file", "server": "public_host",
    "public_host": "public_host", "fast_mode": "no_fast_mode", "upstream": "upstream",
    "middle_proxy": "middle_proxy", "relay_config_url": "relay_config_url", "proxy_tag": "proxy_tag",
    "nat_info": "nat_info",
    "proxy_protocol": "proxy_protocol", "trusted_proxy": "trusted_proxy", "mask_proxy_protocol": "mask_proxy_protocol",
}


def _apply_config_file(ns: argparse.Namespace, path: Path) -> None:
    """Fill options the command line left unset from the settings file (flags win), read and checked by
    settings.read_settings: the one reader of that file, for the CLI and the engine alike."""
    try:
        settings = read_settings(path)  # a missing or empty file: every setting has its default
    except StoreError as exc:
        raise ConfigError(str(exc) + (f" — {exc.hint}" if exc.hint else "")) from None
    written = {key: getattr(settings, key) for key in settings.given}
    data = {**settings.extra, **written}
    actions = {action.dest: action for action in build_parser()._actions}
    ns.from_file = (path, {})  # the options the file gave, so errors about them name the file and the key
    # Where to listen is one choice: -H or --listen on the command line replaces the file's port and listen.
    listen_given = bool(ns.listen) or bool(ns.port)
    for key, value in data.items():
        dest = _CONFIG_KEYS.get(key)
        if dest is None or value is None:
            continue  # other tools keep their own keys in this file; null means "the default"
        if listen_given and dest in ("port", "listen"):
            continue
        if dest == "port" and data.get("listen"):
            ns.public_port = value  # where to bind is the file's listen; its port is the one clients dial (links)
            continue
        value = _file_value(path, key, value, actions[dest])
        if dest == "no_fast_mode":
            value = not value
        current = getattr(ns, dest)
        if isinstance(current, list):
            if not current:
                setattr(ns, dest, [str(v) for v in value] if isinstance(value, list) else [str(value)])
                ns.from_file[1][dest] = key
        elif current is None:
            setattr(ns, dest, value)
            ns.from_file[1][dest] = key


def _file_value(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    """A settings-file value of the type its flag takes (numbers may be written as strings, as before);
    anything else is refused naming the file and the key, never taken for something it does not say."""
    want = ""
    if action.nargs == 0:  # a switch: "false" written as a string must not switch it on
        want = "" if isinstance(value, bool) else "true or false"
    elif isinstance(action.default, list):  # repeatable: one value or a list of them
        items = value if isinstance(value, list) else [value]
        want = "" if all(isinstance(v, str | int) and not isinstance(v, bool) for v in items) else \
            "a string or a list of strings"
    elif action.type in (int, float):
        try:
            if isinstance(value, bool | list | dict):
                raise TypeError
            return action.type(value)
        except (TypeError, ValueError):
            want = "a whole number" if action.type is int else "a number"
    elif not isinstance(value, str):
        want = "a string"
    elif action.choices is not None and value not in action.choices:
        want = "one of " + ", ".join(repr(choice) for choice in action.choices)
    if want:
        raise ConfigError(f"{path}: '{key}' must be {want}, not {value!r} — fix the file by hand")
    return value


def _in_file_terms(exc: ConfigError, ns: argparse.Namespace, parser: argparse.ArgumentParser) -> ConfigError:
    """A problem with a value the settings file gave (not a flag) is told as the file and its key."""
    origin: tuple[Path | None, dict[str, str]] = getattr(ns, "from_file", (None, {}))
    path, keys = origin
    message = str(exc)
    for action in parser._actions:
        key = keys.get(action.dest)
        flag = next((f for f in action.option_strings if message.startswith((f + ":", f + " "))), None)
        if key is not None and flag is not None:
            rest = message[len(flag):].lstrip(":")
            todo = "" if " — " in rest else " — fix the file by hand (or give the flag)"
            return ConfigError(f"{path}: '{key}'{':' if message[len(flag)] == ':' else ''}{rest}{todo}")
    return exc


def _parse_ports(values: list[str]) -> list[int]:
    ports: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 0 <= int(part) <= 65535:
                raise ConfigError(f"-H: {part!r} is not a port")
            ports.append(int(part))
    return ports


def _parse_dc_override(text: str) -> tuple[int | None, HostPort]:
    if "=" not in text:
        raise ConfigError(f"--dc-override: {text!r} is not ID=HOST:PORT")
    ident, target = text.split("=", 1)
    dc: int | None
    if ident.strip() == "*":
        dc = None
    else:
        try:
            dc = int(ident)
        except ValueError:
            raise ConfigError(f"--dc-override: DC id {ident!r} is not a number or *") from None
    return dc, parse_host_port(target, "--dc-override", 443)


def _exists(path: Path) -> bool:
    """Whether a file the root should hold is there; a directory we may not look into is an error saying so."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise ConfigError(f"{path}: permission denied while looking for it — run as its owner (or root), or"
                          " choose another place with --root / MTPROXY_ROOT") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror} — check the path and the disk") from None
    return True


def resolve(argv: list[str], environ: dict[str, str] | None = None, euid: int | None = None) -> EngineConfig:
    """Parse a `mtproxy run` command line and resolve it; raises ConfigError, UsageError (a bad flag) or
    SystemExit(0) (--help)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return _resolve(ns, environ, euid)
    except ConfigError as exc:
        raise _in_file_terms(exc, ns, parser) from None


def _resolve(ns: argparse.Namespace, environ: dict[str, str] | None, euid: int | None) -> EngineConfig:
    env = dict(os.environ) if environ is None else environ
    choice = choose_root(ns.root, env, os.geteuid() if euid is None else euid)
    paths = choice.paths
    if ns.config:
        _apply_config_file(ns, Path(ns.config))
    elif _exists(paths.settings_file):
        _apply_config_file(ns, paths.settings_file)  # the settings the CLI manages, as for the secrets store
    secrets = _secrets(ns)
    domains, allow_classic, allow_tls = _modes(ns, secrets)
    listen = _listen(ns)
    proxy = _proxy_protocol(ns)
    mask = _mask(ns, domains, listen, proxy, getattr(ns, "public_port", None))
    overrides = dict(_parse_dc_override(str(text)) for text in _as_list(ns.dc_override))

    d = Limits()
    max_connections = int(_positive(ns.max_connections, d.max_connections, "--max-connections"))
    limits = Limits(
        handshake_timeout=_positive(ns.handshake_timeout, d.handshake_timeout, "--handshake-timeout"),
        idle_timeout=_positive(ns.idle_timeout, d.idle_timeout, "--idle-timeout"),
        max_connections=max_connections,
        max_connections_per_ip=int(_positive(ns.max_connections_per_ip or 0, 0, "--max-connections-per-ip",
                                             allow_zero=True)),
        buffer_size=int(_positive(ns.buffer_size, d.buffer_size, "--buffer-size")),
        read_size=int(_positive(ns.read_size, d.read_size, "--read-size")),
        drain_timeout=_positive(ns.drain_timeout, d.drain_timeout, "--drain-timeout", allow_zero=True),
        halfclose_timeout=_positive(ns.halfclose_timeout, d.halfclose_timeout, "--halfclose-timeout"),
        max_unauthenticated=int(_positive(ns.max_unauthenticated, _unauthenticated_cap(max_connections),
                                            "--max-unauthenticated")),
        max_unauthenticated_per_ip=int(_positive(ns.max_unauthenticated_per_ip, d.max_unauthenticated_per_ip,
                                                 "--max-unauthenticated-per-ip", allow_zero=True)),
        scan_budget=_share(ns.scan_budget, d.scan_budget, "--scan-budget"),
    )
    t = TlsOptions()
    if ns.cert_size is not None and not 64 <= int(ns.cert_size) <= 16384:
        raise ConfigError("--cert-size must be 64..16384 bytes")
    tls = TlsOptions(
        skew=_positive(ns.tls_skew, t.skew, "--tls-skew"),
        replay_entries=int(_positive(ns.replay_cache_size, t.replay_entries, "--replay-cache-size")),
        cert_size=None if ns.cert_size is None else int(ns.cert_size),
        cert_refresh=_positive(ns.cert_refresh, t.cert_refresh, "--cert-refresh"),
        check_sni=not ns.no_sni_check,
        cert_jitter=_cert_jitter(ns.cert_jitter, ns.cert_size, t.cert_jitter),
        shaped_records=_tls_records(ns.tls_records),
    )
    secrets_file, state_file = _storage(ns, paths, bool(secrets))
    return EngineConfig(
        listen=tuple(dict.fromkeys(listen)),
        secrets=tuple(secrets),
        secrets_file=secrets_file,
        state_file=state_file,
        domains=tuple(dict.fromkeys(domains)),
        allow_classic=allow_classic,
        allow_tls=allow_tls,
        mask=mask,
        mask_disabled=bool(ns.no_mask),
        dc_overrides=overrides,
        prefer_ipv6=bool(ns.prefer_ipv6),
        fast_mode=not ns.no_fast_mode,
        stats=_stats(ns),
        stats_allow_remote=bool(ns.stats_allow_remote),
        metrics_max_secrets=_metrics_max_secrets(ns.metrics_max_secrets),
        upstream=parse_upstream(str(ns.upstream)) if ns.upstream else None,
        workers=_workers(ns),
        user=ns.user,
        limits=limits,
        tls=tls,
        log_file=Path(ns.log_file) if ns.log_file else None,
        reload_interval=_positive(ns.reload_interval, 1.0, "--reload-interval"),
        usage_interval=_positive(ns.usage_interval, 60.0, "--usage-interval"),
        public_host=ns.public_host,
        warnings=_middle_proxy_warnings(ns) + _proxy_warnings(ns),
        middle_proxy=str(ns.middle_proxy or "auto"),
        relay_config_url=_relay_config_url(ns),
        secret_ids=tuple(f"cli-{i + 1}" for i in range(len(secrets))),
        root_note=choice.note,
        max_connections_auto=ns.max_connections is None,
        proxy=proxy,
        proxy_tag=_proxy_tag(ns),
        nat_rules=_nat_rules(ns),
        aes_pwd=Path(ns.aes_pwd) if ns.aes_pwd else None,
        proxy_multi_conf=Path(ns.proxy_multi_conf) if ns.proxy_multi_conf else None,
        raw_relays=env.get("MTPROXY_SPLICE", "1") != "0",
    )


def _tls_records(value: Any) -> bool:
    """--tls-records (or the file's tls_records; both checked against its choices): True for shaped, the
    default."""
    return bool(value != "plain")


def _unauthenticated_cap(max_connections: int) -> int:
    """A quarter of the connections, but never so few that a small server refuses its own users' handshakes."""
    return max(min(max_connections, 64), max_connections // 4)


def _as_list(value: Any) -> list[Any]:
    """An option that repeats on the command line and may be one value or a list in the settings file."""
    return value if isinstance(value, list) else [value]


def _proxy_tag(ns: argparse.Namespace) -> bytes | None:
    if not ns.proxy_tag:
        return None
    try:
        return ad_tag_bytes(str(ns.proxy_tag))
    except AdTagError as exc:
        raise ConfigError(f"-P: {exc}") from None


def _nat_rules(ns: argparse.Namespace) -> tuple[NatRule, ...]:
    try:
        return parse_nat_rules(str(text) for text in _as_list(ns.nat_info))
    except NatInfoError as exc:
        raise ConfigError(str(exc)) from None


def _middle_proxy_warnings(ns: argparse.Namespace) -> tuple[str, ...]:
    if ns.middle_proxy != "off":
        return ()
    middle = [flag for flag, v in (("-P", ns.proxy_tag), ("--aes-pwd", ns.aes_pwd),
                                   ("proxy-multi.conf", ns.proxy_multi_conf), ("--nat-info", ns.nat_info)) if v]
    if not middle:
        return ()
    return (f"{', '.join(middle)} unused: --middle-proxy off relays every client directly (no ad tag is sent)",)


def _relay_config_url(ns: argparse.Namespace) -> str:
    url = str(ns.relay_config_url or DEFAULT_RELAY_CONFIG_URL).rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("/")[2]) == 0:
        raise ConfigError(f"--relay-config-url: {url!r} is not an http:// or https:// URL")
    return url


def _secrets(ns: argparse.Namespace) -> list[Secret]:
    secrets: list[Secret] = []
    for text in ns.secret:
        try:
            secrets.append(parse_secret(text))
        except SecretFormatError as exc:
            raise ConfigError(f"-S: {exc}") from None
    return secrets


def _domains(ns: argparse.Namespace) -> list[str]:
    domains: list[str] = []
    for d in _as_list(ns.domain):
        try:
            domains.append(validate_domain(str(d).strip().lower()))
        except SecretFormatError as exc:
            raise ConfigError(f"-D: {exc}") from None
    return domains


def _modes(ns: argparse.Namespace, secrets: list[Secret]) -> tuple[list[str], bool, bool]:
    """The fake-TLS domains, and whether classic/dd and fake-TLS clients are accepted."""
    domains = _domains(ns)
    # The official binary turns classic -S secrets into ee secrets for the -D domain; clients configured with
    # the ee form of the same key then authenticate. Keep both forms: the mode switches decide what is accepted.
    domains += [s.domain for s in secrets if s.kind is SecretKind.FAKE_TLS and s.domain and s.domain not in domains]
    # only -D restricts the modes; domains that come from ee secrets alone leave classic and dd allowed
    allow_classic = bool(ns.allow_classic) or not ns.domain
    allow_tls = not ns.no_tls
    if not allow_classic and not allow_tls:
        raise ConfigError("--no-tls with -D and without --allow-classic leaves no mode enabled")
    return domains, allow_classic, allow_tls


def _stats(ns: argparse.Namespace) -> HostPort | None:
    stats_port = DEFAULT_STATS_PORT if ns.stats_port is None else int(ns.stats_port)
    return HostPort(ns.stats_host or "127.0.0.1", stats_port) if stats_port else None


def _metrics_max_secrets(value: Any) -> int:
    if value is None:
        return DEFAULT_METRICS_MAX_SECRETS
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"--metrics-max-secrets: must be a whole number, 0 or more, got {value!r}")
    return value


def _workers(ns: argparse.Namespace) -> int:
    workers = DEFAULT_WORKERS if ns.workers is None else int(ns.workers)
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"-M: workers must be 1..{MAX_WORKERS}, got {workers}")
    return workers


def _listen(ns: argparse.Namespace) -> list[HostPort]:
    listen: list[HostPort] = [parse_host_port(x, "--listen") for x in ns.listen]
    for port in _parse_ports(_as_list(ns.port)):
        listen += [HostPort("0.0.0.0", port), HostPort("::", port)]
    if not listen:
        listen = [HostPort("0.0.0.0", DEFAULT_PORT), HostPort("::", DEFAULT_PORT)]
    for hp in listen:
        if not hp.host:
            raise ConfigError(f"--listen: {hp.port} needs a host (use 0.0.0.0:{hp.port} or [::]:{hp.port})")
    return listen


def _mask(ns: argparse.Namespace, domains: list[str], listen: list[HostPort], proxy: ProxyProtocol,
          public_port: int | None) -> HostPort | None:
    """--mask, else the first fake-TLS domain on 443, unless --no-mask; never one of our own listeners, nor
    (behind a balancer) the balancer's port that leads back to them."""
    if ns.no_mask:
        return None
    mask = parse_host_port(ns.mask, "--mask", 443) if ns.mask else HostPort(domains[0], 443) if domains else None
    if mask is not None:
        _refuse_self_mask(mask, listen)
        if proxy.accept and public_port is not None and public_port not in {hp.port for hp in listen}:
            _refuse_balancer_mask(mask, public_port, ns.public_host)
    return mask


def _proxy_protocol(ns: argparse.Namespace) -> ProxyProtocol:
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in _as_list(ns.trusted_proxy) if ns.proxy_protocol else []:
        try:
            trusted.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--trusted-proxy: {text!r} is not an IP address or network (CIDR)") from None
    if ns.proxy_protocol and not trusted:
        trusted = [ipaddress.ip_network(text) for text in DEFAULT_TRUSTED_PROXIES]
    to_mask = {None: 0, "off": 0, "v1": 1, "v2": 2}.get(ns.mask_proxy_protocol)
    if to_mask is None:
        raise ConfigError(f"--mask-proxy-protocol: {ns.mask_proxy_protocol!r} is not off, v1 or v2")
    return ProxyProtocol(accept=bool(ns.proxy_protocol), trusted=tuple(dict.fromkeys(trusted)), to_mask=to_mask)


def _proxy_warnings(ns: argparse.Namespace) -> tuple[str, ...]:
    if ns.trusted_proxy and not ns.proxy_protocol:
        return ("--trusted-proxy has no effect without --proxy-protocol",)
    return ()


def _storage(ns: argparse.Namespace, paths: Paths, secrets_given: bool) -> tuple[Path | None, Path]:
    """The secrets file to serve and where a generated secret is kept; an unconfigured `mtproxy run` serves
    the store the CLI manages."""
    secrets_file = Path(ns.secrets_file) if ns.secrets_file else None
    if secrets_file is None and not secrets_given and _exists(paths.secrets_file):
        secrets_file = paths.secrets_file
    return secrets_file, Path(ns.state_file) if ns.state_file else paths.engine_state_file


def _share(value: Any, default: float, flag: str) -> float:
    number = _positive(value, default, flag)
    if number > 1:
        raise ConfigError(f"{flag}: a share of one core, more than 0 and at most 1 (0.25 is a quarter), got {value}")
    return number


def _positive(value: Any, default: float, flag: str, allow_zero: bool = False) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{flag}: must be a finite positive number, got {value}")
    return number


def _cert_jitter(value: Any, fixed_size: Any, default: int) -> int:
    """A fixed --cert-size means exactly that size unless a jitter is asked for too."""
    if value is None:
        return 0 if fixed_size is not None else default
    if not 0 <= int(value) <= 1024:
        raise ConfigError("--cert-jitter must be 0..1024 bytes")
    return int(value)


def _refuse_self_mask(mask: HostPort, listen: list[HostPort]) -> None:
    """A mask target that is one of our own listeners would loop every probe back into the proxy."""
    try:
        mask_ip = ipaddress.ip_address(mask.host)
    except ValueError:
        if mask.host in ("localhost",) and any(hp.port == mask.port for hp in listen):
            raise ConfigError(f"--mask {mask} points at this proxy's own port") from None
        return
    for hp in listen:
        if hp.port != mask.port:
            continue
        listen_ip = ipaddress.ip_address(hp.host)
        if listen_ip == mask_ip or (listen_ip.is_unspecified and
                                    (mask_ip.is_loopback or mask_ip.is_unspecified)):
            raise ConfigError(f"--mask {mask} points at this proxy's own listener {hp}")
    wildcard = "::" if mask_ip.version == 6 else "0.0.0.0"
    if any(hp.port == mask.port and hp.host == wildcard for hp in listen) and _is_local_address(mask_ip):
        raise ConfigError(f"--mask {mask} is an address of this host, where this proxy listens on port {mask.port}")


def _refuse_balancer_mask(mask: HostPort, public_port: int, public_host: str | None) -> None:
    """Behind a balancer on this host's `public_port` (HAProxy routing the fake-TLS domain to us), a mask on
    that port of this host gets the refused client's ClientHello, whose SNI the balancer routes back to us.
    Checked without network contact: a literal address of this host, or the host the links name; a name
    that only DNS could resolve to this host is not caught here."""
    loop = f"--mask {mask} is the load balancer's port {public_port} on this host, which routes the fake-TLS" \
           " domain back to this proxy: point --mask at the real site"
    if mask.port != public_port:
        return
    if mask.host == "localhost" or (public_host is not None and mask.host.lower() == public_host.lower()):
        raise ConfigError(loop)
    try:
        mask_ip = ipaddress.ip_address(mask.host)
    except ValueError:
        return
    if mask_ip.is_loopback or mask_ip.is_unspecified or _is_local_address(mask_ip):
        raise ConfigError(loop)


def _is_local_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `address` is one of this host's own: the kernel lets a socket bind only to those (no packet
    is sent)."""
    if address.is_loopback or address.is_unspecified:
        return True
    try:  # with non-local binding allowed every address binds: then this cannot tell
        if Path(f"/proc/sys/net/ipv{address.version}/ip_nonlocal_bind").read_text().strip() != "0":
            return False
    except OSError:
        pass
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True
