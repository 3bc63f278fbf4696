"""The middle-proxy relays' configuration, obtained and kept: proxy-secret and proxy-multi.conf (and its IPv6
twin) fetched from Telegram at start and daily, or read from the operator's files, validated by the pure
parsers (protocol/proxyconfig.py) before anything is accepted, and the last good copy cached on disk.

Telegram being unreachable is never fatal while a cache or an operator-given file exists: the fetch failure
is logged (the URL and the reason) and the cache is used; the refresh retries with bounded exponential
backoff. Only a start with neither a fetched, cached nor given copy of proxy-secret or proxy-multi.conf
fails, with a message that says which. The IPv6 file is optional: without it the relays are IPv4 only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mtproxy.config import DEFAULT_RELAY_CONFIG_URL, EngineConfig

from ..protocol.errors import ProxyConfigError
from ..protocol.proxyconfig import ProxyConfig, ProxySecret, parse_proxy_config, parse_proxy_secret
from ..store import write_atomic
from .backoff import backoff_delay

# The addresses the official MTProxy README tells operators to curl (github.com/TelegramMessenger/MTProxy);
# the IPv6 relays are published beside them.
DEFAULT_SECRET_URL = f"{DEFAULT_RELAY_CONFIG_URL}/getProxySecret"
DEFAULT_CONFIG_URL = f"{DEFAULT_RELAY_CONFIG_URL}/getProxyConfig"
DEFAULT_CONFIG_V6_URL = f"{DEFAULT_RELAY_CONFIG_URL}/getProxyConfigV6"

MAX_DOCUMENT_BYTES = 1 << 20  # the published files are a few kilobytes; the parser's own cap is far above
DEFAULT_TIMEOUT = 10.0  # seconds for one whole request: connect, headers and body
REFRESH_INTERVAL = 24 * 3600.0  # the README: "update it once per day"
REFRESH_JITTER = 3600.0  # +- this much, so a fleet started together does not refresh together
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0

log = logging.getLogger("mtproxy.relayconfig")


class RelayConfigError(Exception):
    """Start-up cannot obtain a required relay document from anywhere; the message says what to do."""


class Document(enum.Enum):
    """The three published documents; the value is the cache file's name (the official files' names)."""

    SECRET = "proxy-secret"
    CONFIG = "proxy-multi.conf"
    CONFIG_V6 = "proxy-multi-v6.conf"


@dataclass(frozen=True)
class RelaySources:
    """Where each document comes from. An operator's file (`--aes-pwd FILE`, the positional
    proxy-multi.conf) wins over its URL and is re-read at each refresh, never fetched; a URL of None is
    not fetched (only the IPv6 one may be None: no IPv6 relays unless cached)."""

    cache_dir: Path
    secret_url: str = DEFAULT_SECRET_URL
    config_url: str = DEFAULT_CONFIG_URL
    config_v6_url: str | None = DEFAULT_CONFIG_V6_URL
    secret_file: Path | None = None
    config_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def under(cls, base_url: str, cache_dir: Path, *, secret_file: Path | None = None,
              config_file: Path | None = None) -> RelaySources:
        """The three documents at base_url's getProxySecret, getProxyConfig and getProxyConfigV6, as
        core.telegram.org publishes them (--relay-config-url)."""
        base = base_url.rstrip("/")
        return cls(cache_dir, f"{base}/getProxySecret", f"{base}/getProxyConfig", f"{base}/getProxyConfigV6",
                   secret_file, config_file)

    def url(self, doc: Document) -> str | None:
        return {Document.SECRET: self.secret_url, Document.CONFIG: self.config_url,
                Document.CONFIG_V6: self.config_v6_url}[doc]

    def given_file(self, doc: Document) -> Path | None:
        return {Document.SECRET: self.secret_file, Document.CONFIG: self.config_file}.get(doc)

    def cache_file(self, doc: Document) -> Path:
        return self.cache_dir / doc.value


class Origin(enum.Enum):
    FETCHED = "fetched"
    CACHE = "cache"
    FILE = "file"
    KEPT = "kept"  # a refresh failed everywhere: the copy in use stays


@dataclass(frozen=True)
class RelayMaterial:
    """What the relay pool needs: the key, the relays (IPv4 and, when known, IPv6 merged), and where each
    document came from this time; `complete` is False when some document fell back (retry sooner)."""

    secret: ProxySecret
    config: ProxyConfig
    origins: dict[Document, Origin]

    @property
    def complete(self) -> bool:
        return all(origin in (Origin.FETCHED, Origin.FILE) for origin in self.origins.values())


def retry_delay(failures: int, rng: random.Random) -> float:
    """The wait before retry number `failures` (1, 2, ...): doubling from RETRY_FIRST, never above
    RETRY_MAX, with up to 10% jitter downwards so retries spread."""
    return backoff_delay(RETRY_FIRST, RETRY_MAX, failures - 1, 0.1, rng.random)


def refresh_delay(rng: random.Random) -> float:
    return REFRESH_INTERVAL + rng.uniform(-REFRESH_JITTER, REFRESH_JITTER)


class FetchError(Exception):
    """One document could not be fetched or did not parse; the message is the reason, for the log."""


Fetch = Callable[[str, float], Awaitable[bytes]]


async def fetch_url(url: str, timeout: float) -> bytes:
    """GET `url` with a total timeout, at most MAX_DOCUMENT_BYTES; anything but 200 is a FetchError."""
    import aiohttp  # here: only a worker that runs the middle proxy fetches, the engine's start stays light

    limits = aiohttp.ClientTimeout(total=timeout, connect=timeout, sock_read=timeout)
    try:
        async with aiohttp.ClientSession(timeout=limits, trust_env=False) as session, \
                session.get(url, allow_redirects=True, max_redirects=3) as response:
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            body = bytearray()
            while len(body) <= MAX_DOCUMENT_BYTES:  # read(n) returns what has arrived, up to n
                chunk = await response.content.read(MAX_DOCUMENT_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise FetchError(str(exc) or type(exc).__name__) from None
    except OSError as exc:
        raise FetchError(exc.strerror or str(exc)) from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
    return bytes(body)


def _read_file(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ProxyConfigError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _validate(doc: Document, data: bytes) -> ProxySecret | ProxyConfig:
    return parse_proxy_secret(data) if doc is Document.SECRET else parse_proxy_config(data)


def sources_for(cfg: EngineConfig) -> RelaySources:
    """The engine's: --relay-config-url, relay/ under the data directory (beside the state file) as the
    cache, and the operator's --aes-pwd and proxy-multi.conf."""
    return RelaySources.under(cfg.relay_config_url, cfg.relay_cache_dir, secret_file=cfg.aes_pwd,
                              config_file=cfg.proxy_multi_conf)


def read_given(sources: RelaySources) -> dict[Document, bytes]:
    """The operator's files, read and checked at start-up, before privileges are dropped (the official
    proxy reads --aes-pwd as root too); a file that cannot be used is a RelayConfigError naming it."""
    given: dict[Document, bytes] = {}
    for doc in Document:
        path = sources.given_file(doc)
        if path is None:
            continue
        try:
            data = _read_file(path)
            _validate(doc, data)
        except (OSError, ProxyConfigError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RelayConfigError(f"{path}: cannot use it as {doc.value}: {reason}") from None
        given[doc] = data
    return given


class RelayConfigSource:
    """Obtains the documents (`load`, at start and at each refresh) and refreshes them on a schedule
    (`run`). Fetching, sleeping and randomness are injected so tests are exact and never wait. `given`:
    the operator's files as `read_given` read them at start-up, used by the first load (later loads read
    the files again, and keep the copy in use if that fails)."""

    def __init__(self, sources: RelaySources, *, fetch: Fetch = fetch_url,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, given: Mapping[Document, bytes] | None = None) -> None:
        self.sources = sources
        self._given_at_start = dict(given or {})
        self._fetch = fetch
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self.current: RelayMaterial | None = None
        # each document as last accepted, unmerged: what a failed refresh keeps
        self._last: dict[Document, ProxySecret | ProxyConfig] = {}

    async def load(self) -> RelayMaterial:
        """Obtain every document once; raises RelayConfigError only when a required one has no copy at all
        (neither given, fetched, cached nor already in use)."""
        found: dict[Document, tuple[ProxySecret | ProxyConfig, Origin]] = {}
        for doc in Document:
            if doc is Document.CONFIG_V6 and self.sources.config_file is not None:
                continue  # the operator's proxy-multi.conf is the whole list, as for the official proxy
            got = await self._obtain(doc)
            if got is not None:
                found[doc] = got
        secret, secret_origin = found[Document.SECRET]
        config, config_origin = found[Document.CONFIG]
        assert isinstance(secret, ProxySecret) and isinstance(config, ProxyConfig)
        origins = {Document.SECRET: secret_origin, Document.CONFIG: config_origin}
        if Document.CONFIG_V6 in found:
            config_v6, origins[Document.CONFIG_V6] = found[Document.CONFIG_V6]
            assert isinstance(config_v6, ProxyConfig)
            config = config.merged(config_v6)
        material = RelayMaterial(secret, config, origins)
        self._last = {doc: parsed for doc, (parsed, _) in found.items()}
        self.current = material
        return material

    async def run(self, publish: Callable[[RelayMaterial], None], *, rounds: int | None = None) -> None:
        """Refresh forever (or `rounds` times, for tests): daily with jitter after a complete refresh,
        with backoff after one that fell back (or before any load succeeded). `publish` gets every
        refreshed set and must not raise."""
        failures = 0 if self.current is not None and self.current.complete else 1
        done = 0
        while rounds is None or done < rounds:
            await self._sleep(retry_delay(failures, self._rng) if failures else refresh_delay(self._rng))
            done += 1
            try:
                material = await self.load()
            except RelayConfigError as exc:  # only reachable without a current set: start-up failed
                log.warning("relay configuration refresh failed: %s", exc)
                failures += 1
                continue
            publish(material)
            failures = 0 if material.complete else failures + 1

    async def _obtain(self, doc: Document) -> tuple[ProxySecret | ProxyConfig, Origin] | None:
        given = self.sources.given_file(doc)
        if given is not None:
            return self._given(doc, given)
        url = self.sources.url(doc)
        if url is not None:
            try:
                data = await self._fetch(url, self.sources.timeout)
                parsed = _validate(doc, data)
            except FetchError as exc:
                log.warning("relay configuration: cannot fetch %s (%s); falling back to the cache", url, exc)
            except ProxyConfigError as exc:
                log.warning("relay configuration: %s is not a valid %s (%s); falling back to the cache",
                            url, doc.value, exc)
            else:
                self._store(doc, data)
                return parsed, Origin.FETCHED
        return self._fallback(doc)

    def _given(self, doc: Document, path: Path) -> tuple[ProxySecret | ProxyConfig, Origin]:
        try:
            read = self._given_at_start.pop(doc, None)
            return _validate(doc, read if read is not None else _read_file(path)), Origin.FILE
        except (OSError, ProxyConfigError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            kept = self._kept(doc)
            if kept is None:
                raise RelayConfigError(f"{path}: cannot use it as {doc.value}: {reason}") from None
            log.warning("relay configuration: %s: %s; keeping the copy in use", path, reason)
            return kept, Origin.KEPT

    def _fallback(self, doc: Document) -> tuple[ProxySecret | ProxyConfig, Origin] | None:
        cache = self.sources.cache_file(doc)
        try:
            return _validate(doc, _read_file(cache)), Origin.CACHE
        except FileNotFoundError:
            problem = "there is no cached copy"
        except (OSError, ProxyConfigError) as exc:
            problem = f"the cached copy {cache} is unusable ({exc})"
            log.warning("relay configuration: %s", problem)
        kept = self._kept(doc)
        if kept is not None:
            return kept, Origin.KEPT
        if doc is Document.CONFIG_V6:
            log.warning("relay configuration: no IPv6 relay list (%s); IPv4 relays only", problem)
            return None
        flag = "--aes-pwd FILE" if doc is Document.SECRET else "the proxy-multi.conf argument"
        raise RelayConfigError(
            f"cannot obtain {doc.value}: the fetch from {self.sources.url(doc)} failed and {problem}"
            f" in {self.sources.cache_dir}; let the server reach it once, or give the file with {flag}")

    def _kept(self, doc: Document) -> ProxySecret | ProxyConfig | None:
        return self._last.get(doc)

    def _store(self, doc: Document, data: bytes) -> None:
        cache = self.sources.cache_file(doc)
        try:
            if cache.read_bytes() == data:
                return
        except OSError:
            pass
        try:
            write_atomic(cache, data)
        except OSError as exc:
            log.warning("relay configuration: cannot cache %s at %s (%s)", doc.value, cache, exc.strerror or exc)
