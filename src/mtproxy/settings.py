"""The proxy settings file: its one reader and validator, and the defaults, for the CLI and the engine alike.

The CLI manages port, workers, fake-TLS domain, link server, mask, stats port, the base for secrets' own
host names, and whether a PROXY protocol header precedes every client's bytes (`proxy_protocol`, set by
`mtproxy setup --behind-haproxy`; files written before it lack the key and read as false); the engine's own keys
(allow_classic, tls_skew, …) ride along in `extra` and are checked by config.resolve as their flags are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_PORT, DEFAULT_STATS_PORT, DEFAULT_WORKERS, MAX_WORKERS
from .protocol.errors import SecretFormatError
from .protocol.secret import MAX_DOMAIN_BYTES, validate_domain
from .store import StoreAccessError, StoreFormatError, _read_bytes, locked, write_atomic

SETTINGS_VERSION = 1

_MANAGED = frozenset({"version", "port", "workers", "domain", "server", "mask", "stats_port", "proxy_protocol",
                      "secret_domain_base"})
OWN_LABEL_LENGTH = 8  # the random first label of a secret's own host name under secret_domain_base

__all__ = ["DEFAULT_PORT", "DEFAULT_STATS_PORT", "DEFAULT_WORKERS", "MAX_WORKERS", "OWN_LABEL_LENGTH",
           "SETTINGS_VERSION", "Settings", "SettingsError", "check_mask", "check_port", "check_secret_domain_base",
           "check_server", "check_stats_port", "check_workers", "parse_settings", "read_settings", "update_settings"]

SettingsError = StoreFormatError  # same shape: names the file and the problem


@dataclass(frozen=True)
class Settings:
    """What the operator chose; `server` None means "guess the public IP when making links"."""

    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    domain: str | None = None
    server: str | None = None
    mask: str | None = None
    stats_port: int = DEFAULT_STATS_PORT
    # Behind a load balancer (HAProxy with send-proxy-v2): each connection starts with a PROXY protocol
    # header naming the real client, which the engine reads first (`mtproxy run --proxy-protocol`,
    # runtime/proxied.py); false: no header.
    proxy_protocol: bool = False
    # `add-secret --own-domain`: a new ee secret gets a random host name under this domain (wildcard DNS and
    # a wildcard certificate at the mask site), so its SNI alone finds it
    secret_domain_base: str | None = None
    # Keys this module does not manage (the engine's allow_classic, tls_skew, …): kept as written, so
    # `set-port` never drops what the operator or the setup wizard put in the shared file.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The managed keys the file wrote (not null): the engine lets only these override its own defaults,
    # so a file with `listen` and no `port` does not also listen on the default port.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def bound(self) -> list[tuple[str, int]]:
        """Where the engine listens: the file's `listen` entries (HOST:PORT; behind HAProxy the loopback
        address), else every address ("") on `port`. `port` stays the port in links either way."""
        entries = self.extra.get("listen")
        found = []
        for entry in [entries] if isinstance(entries, str) else entries if isinstance(entries, list) else []:
            host, sep, port = str(entry).rpartition(":")
            if sep and port.isdigit():
                found.append((host.strip("[]"), int(port)))
        return found or [("", self.port)]

    @property
    def bound_port(self) -> int:
        """The port the engine binds (the loopback port behind HAProxy): what local checks probe."""
        return self.bound[0][1]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "version": SETTINGS_VERSION,
            "port": self.port,
            "workers": self.workers,
            "domain": self.domain,
            "server": self.server,
            "mask": self.mask,
            "stats_port": self.stats_port,
            "proxy_protocol": self.proxy_protocol,
            **({"secret_domain_base": self.secret_domain_base} if self.secret_domain_base else {}),
        }


def check_port(value: int, what: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what} must be a whole number from 1 to 65535, not {value!r}")
    return value


def check_stats_port(value: int) -> int:
    """The stats port, or 0 for none (as `mtproxy run -p 0`)."""
    if value == 0 and not isinstance(value, bool):
        return 0
    return check_port(value, "stats_port")


def check_workers(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be a whole number from 1 to {MAX_WORKERS}, not {value!r}")
    return value


def check_server(value: str) -> str:
    """A host name or an IP address clients can reach; no scheme, port or path."""
    text = value.strip()
    if not text or len(text) > 253 or any(c in text for c in "/?#&=@ \t") or text.count(":") == 1:
        raise ValueError(f"server must be a bare host name or IP address, not {value!r}")
    return text


def check_secret_domain_base(value: str) -> str:
    """A base for secrets' own host names: a lowercase host name with a dot, with room for one more
    label in an ee secret."""
    text = value.strip().lower().strip(".")
    if "." not in text:
        raise ValueError(f"secret_domain_base must be a domain with a dot, e.g. users.example.com, not {value!r}")
    try:
        validate_domain(text)
    except SecretFormatError as exc:
        raise ValueError(f"secret_domain_base: {exc}") from None
    room = MAX_DOMAIN_BYTES - OWN_LABEL_LENGTH - 1
    if len(text) > room:
        raise ValueError(f"secret_domain_base must be at most {room} characters (a secret's own label and the"
                         f" base fit in {MAX_DOMAIN_BYTES}), not {len(text)}")
    return text


def check_mask(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"mask must be HOST:PORT, not {value!r}")
    check_port(int(port), "mask port")
    return value


def parse_settings(doc: Any) -> Settings:
    """Validate the document; missing keys take their defaults, other keys ride along in `extra`."""
    if not isinstance(doc, dict):
        raise ValueError("the top level must be an object")
    version = doc.get("version", SETTINGS_VERSION)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise ValueError(f"version {version!r} is not one this mtproxy reads (up to {SETTINGS_VERSION})")
    domain = doc.get("domain")
    if domain is not None:
        if not isinstance(domain, str):
            raise ValueError("'domain' must be a string or null")
        try:
            validate_domain(domain)
        except SecretFormatError as exc:
            raise ValueError(f"'domain': {exc}") from None
    server = doc.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise ValueError("'server' must be a string or null")
        server = check_server(server)
    mask = doc.get("mask")
    if mask is not None:
        if not isinstance(mask, str):
            raise ValueError("'mask' must be HOST:PORT or null")
        check_mask(mask)
    proxy_protocol = doc.get("proxy_protocol")
    if proxy_protocol is not None and not isinstance(proxy_protocol, bool):
        raise ValueError(f"'proxy_protocol' must be true or false, not {proxy_protocol!r}")
    base = doc.get("secret_domain_base")
    if base is not None:
        if not isinstance(base, str):
            raise ValueError("'secret_domain_base' must be a string or null")
        if check_secret_domain_base(base) != base:
            raise ValueError(f"'secret_domain_base' must be written lowercase without a trailing dot, not {base!r}")
    settings = Settings(
        port=check_port(_or_default(doc, "port", DEFAULT_PORT)),
        workers=check_workers(_or_default(doc, "workers", DEFAULT_WORKERS)),
        domain=domain or None,
        server=server or None,
        mask=mask or None,
        stats_port=check_stats_port(_or_default(doc, "stats_port", DEFAULT_STATS_PORT)),
        proxy_protocol=bool(proxy_protocol),
        secret_domain_base=base or None,
        extra={k: v for k, v in doc.items() if k not in _MANAGED},
        given=frozenset(k for k in _MANAGED - {"version"} if doc.get(k) is not None),
    )
    if settings.stats_port == settings.port:
        raise ValueError("stats_port and port must differ")
    return settings


def _or_default(doc: dict[str, Any], key: str, default: int) -> Any:
    """null means "the default", as the engine has always read it."""
    value = doc.get(key)
    return default if value is None else value


def read_settings(path: str | os.PathLike[str]) -> Settings:
    """Read the settings file; a missing or empty file means the defaults."""
    file = Path(path)
    data = _read_bytes(file)
    if data is None or not data.strip():
        return Settings()
    try:
        return parse_settings(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(file, f"not valid JSON ({exc})", "fix the file by hand") from None
    except ValueError as exc:
        raise SettingsError(file, str(exc), "fix the file by hand") from None


def update_settings(path: str | os.PathLike[str], **changes: Any) -> tuple[Settings, Settings]:
    """Change some fields under the lock and write atomically; returns (old, new)."""
    file = Path(path)
    with locked(file):
        old = read_settings(file)
        new = replace(old, **changes)
        parse_settings(new.to_json())  # the same validation as on read
        payload = (json.dumps(new.to_json(), indent=2) + "\n").encode()
        try:
            write_atomic(file, payload)
        except OSError as exc:
            raise StoreAccessError(file, f"cannot write: {exc.strerror}", "run as root or fix permissions") from None
        return old, new
