"""runtime/relayconfig.py against a real HTTP server on loopback: fetch and cache, every way a fetch fails
falling back to the cache with a warning naming the URL, the fatal error without any copy, operator files
winning, and the refresh schedule's bounded backoff (injected sleep: nothing waits)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from mtproxy.config import resolve
from mtproxy.paths import Paths
from mtproxy.runtime.relayconfig import (
    RETRY_FIRST,
    RETRY_MAX,
    Document,
    Origin,
    RelayConfigError,
    RelayConfigSource,
    RelayMaterial,
    RelaySources,
    fetch_url,
    refresh_delay,
    retry_delay,
)

from .conftest import run
from .test_dial import closed_port

SECRET = bytes(range(64))
CONFIG = b"# relays\ndefault 2;\nproxy_for 2 127.0.0.2:8888;\nproxy_for -2 127.0.0.2:8888;\n"
CONFIG_V6 = b"proxy_for 2 [::1]:8888;\n"
OTHER_CONFIG = b"proxy_for 2 127.0.0.3:8888;\n"


class Site:
    """What each path answers; a test changes it between loads."""

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[], web.StreamResponse]] = {
            "/secret": lambda: web.Response(body=SECRET),
            "/config": lambda: web.Response(body=CONFIG),
            "/config6": lambda: web.Response(body=CONFIG_V6),
        }
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path == "/slow":
            await asyncio.sleep(5)
        answer = self.answers.get(request.path)
        return answer() if answer is not None else web.Response(status=404)


@asynccontextmanager
async def serving(site: Site) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", site.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def sources(base: str, cache: Path, **overrides: object) -> RelaySources:
    values: dict[str, object] = {"secret_url": f"{base}/secret", "config_url": f"{base}/config",
                                 "config_v6_url": f"{base}/config6", "timeout": 0.3, **overrides}
    return RelaySources(cache_dir=cache, **values)  # type: ignore[arg-type]


def load(src: RelaySources) -> RelayMaterial:
    async def go() -> RelayMaterial:
        return await RelayConfigSource(src).load()
    return run(go(), 10)


def test_fetch_ok_validates_merges_and_caches(tmp_path: Path) -> None:
    cache = resolve(["--root", str(tmp_path), "-S", "00" * 16], environ={}).relay_cache_dir
    assert cache == Paths(tmp_path).data_dir / "relay"  # under the data directory the rest of the engine uses

    async def go() -> RelayMaterial:
        async with serving(Site()) as base:
            return await RelayConfigSource(sources(base, cache)).load()
    material = run(go(), 10)
    assert material.secret.data == SECRET
    assert [str(r) for r in material.config.relays_for(2)] == ["127.0.0.2:8888", "[::1]:8888"]
    assert material.complete and set(material.origins.values()) == {Origin.FETCHED}
    assert (cache / "proxy-secret").read_bytes() == SECRET
    assert (cache / "proxy-multi.conf").read_bytes() == CONFIG
    assert (cache / "proxy-multi-v6.conf").read_bytes() == CONFIG_V6
    assert (cache / "proxy-secret").stat().st_mode & 0o777 == 0o600


def _seed_cache(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "proxy-secret").write_bytes(SECRET)
    (cache / "proxy-multi.conf").write_bytes(OTHER_CONFIG)


@pytest.mark.parametrize("failure", ["refused", "timeout", "http500", "garbage", "short-secret"])
def test_a_failed_fetch_falls_back_to_the_cache(tmp_path: Path, failure: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "relay"
    _seed_cache(cache)
    site = Site()
    site.answers["/config"] = {
        "http500": lambda: web.Response(status=500),
        "garbage": lambda: web.Response(body=b"<html>proxy_for nonsense</html>"),
    }.get(failure, site.answers["/config"])
    if failure == "short-secret":
        site.answers["/secret"] = lambda: web.Response(body=b"tiny")

    async def go() -> RelayMaterial:
        async with serving(site) as base:
            config_url = {"refused": f"http://127.0.0.1:{closed_port().port}/config",
                          "timeout": f"{base}/slow"}.get(failure, f"{base}/config")
            return await RelayConfigSource(sources(base, cache, config_url=config_url)).load()
    with caplog.at_level(logging.WARNING, "mtproxy.relayconfig"):
        material = run(go(), 10)
    assert material.secret.data == SECRET
    failed = Document.SECRET if failure == "short-secret" else Document.CONFIG
    assert material.origins[failed] is Origin.CACHE and not material.complete
    if failed is Document.CONFIG:
        assert [str(r) for r in material.config.relays_for(2, 4)] == ["127.0.0.3:8888"]
        assert (cache / "proxy-multi.conf").read_bytes() == OTHER_CONFIG  # the bad fetch is never cached
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "falling back to the cache" in warning and "127.0.0.1:" in warning
    assert {"refused": "Cannot connect", "timeout": "no answer within 0.3 s", "http500": "HTTP 500",
            "garbage": "not a valid proxy-multi.conf", "short-secret": "proxy-secret must be"}[
        failure] in warning


def test_neither_fetch_nor_cache_is_a_clear_fatal_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port().port}"
    with pytest.raises(RelayConfigError) as caught:
        load(sources(url, tmp_path / "relay"))
    message = str(caught.value)
    assert "proxy-secret" in message and f"{url}/secret" in message and "--aes-pwd FILE" in message
    assert "no cached copy" in message


def test_missing_ipv6_list_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = Site()
    del site.answers["/config6"]

    async def go() -> RelayMaterial:
        async with serving(site) as base:
            return await RelayConfigSource(sources(base, tmp_path)).load()
    with caplog.at_level(logging.WARNING, "mtproxy.relayconfig"):
        material = run(go(), 10)
    assert Document.CONFIG_V6 not in material.origins
    assert [str(r) for r in material.config.relays_for(2)] == ["127.0.0.2:8888"]
    assert "IPv4 relays only" in caplog.text and "HTTP 404" in caplog.text


def test_operator_files_win_and_are_reread(tmp_path: Path) -> None:
    given_secret, given_config = tmp_path / "proxy-secret", tmp_path / "proxy-multi.conf"
    given_secret.write_bytes(SECRET[::-1])
    given_config.write_bytes(OTHER_CONFIG)
    site = Site()

    async def go() -> tuple[RelayMaterial, RelayMaterial]:
        async with serving(site) as base:
            source = RelayConfigSource(sources(base, tmp_path / "relay", secret_file=given_secret,
                                               config_file=given_config, config_v6_url=None))
            first = await source.load()
            given_config.write_bytes(CONFIG)
            return first, await source.load()
    first, second = run(go(), 10)
    assert site.hits == []  # nothing fetched
    assert first.secret.data == SECRET[::-1] and first.origins[Document.SECRET] is Origin.FILE
    assert [str(r) for r in first.config.relays_for(2)] == ["127.0.0.3:8888"]
    assert [str(r) for r in second.config.relays_for(2)] == ["127.0.0.2:8888"]
    assert not (tmp_path / "relay").exists()


def test_a_bad_operator_file_is_fatal_at_start_and_kept_after(tmp_path: Path) -> None:
    given = tmp_path / "proxy-secret"
    url = f"http://127.0.0.1:{closed_port().port}"
    with pytest.raises(RelayConfigError, match=r"proxy-secret: cannot use it as proxy-secret: No such file"):
        load(sources(url, tmp_path / "relay", secret_file=given))
    given.write_bytes(SECRET)
    (tmp_path / "relay").mkdir()
    (tmp_path / "relay" / "proxy-multi.conf").write_bytes(CONFIG)

    async def go() -> RelayMaterial:
        source = RelayConfigSource(sources(url, tmp_path / "relay", secret_file=given, config_v6_url=None))
        await source.load()
        given.write_bytes(b"x")
        return await source.load()
    again = run(go(), 10)
    assert again.secret.data == SECRET and again.origins[Document.SECRET] is Origin.KEPT


def test_backoff_doubles_and_is_bounded() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, rng) for n in range(1, 40)]
    assert RETRY_FIRST * 0.9 <= delays[0] <= RETRY_FIRST
    assert RETRY_FIRST * 1.8 <= delays[1] <= RETRY_FIRST * 2
    assert all(d <= RETRY_MAX for d in delays) and delays[-1] >= RETRY_MAX * 0.9
    assert all(23 * 3600 <= refresh_delay(rng) <= 25 * 3600 for _ in range(100))


def test_refresh_backs_off_while_failing_then_goes_daily(tmp_path: Path) -> None:
    cache = tmp_path / "relay"
    _seed_cache(cache)
    site = Site()
    site.answers["/config"] = lambda: web.Response(status=503)
    slept: list[float] = []
    published: list[RelayMaterial] = []

    async def go() -> None:
        async def sleep(delay: float) -> None:
            slept.append(delay)
            if len(slept) == 3:
                site.answers["/config"] = lambda: web.Response(body=CONFIG)
        async with serving(site) as base:
            source = RelayConfigSource(sources(base, cache), sleep=sleep, rng=random.Random(1))
            assert not (await source.load()).complete
            await source.run(published.append, rounds=5)
    run(go(), 10)
    assert len(slept) == 5 and len(published) == 5
    assert RETRY_FIRST * 0.9 <= slept[0] <= RETRY_FIRST and slept[1] > slept[0] and slept[2] > slept[1]
    assert all(d > 23 * 3600 for d in slept[3:])  # complete from the third refresh on: daily again
    assert [m.complete for m in published] == [False, False, True, True, True]
    assert (cache / "proxy-multi.conf").read_bytes() == CONFIG


def test_refresh_without_a_first_load_retries_soon(tmp_path: Path) -> None:
    slept: list[float] = []

    async def go() -> None:
        async def sleep(delay: float) -> None:
            slept.append(delay)
        url = f"http://127.0.0.1:{closed_port().port}"
        await RelayConfigSource(sources(url, tmp_path), sleep=sleep).run(lambda _: None, rounds=2)
    run(go(), 10)
    assert slept[0] <= RETRY_FIRST and RETRY_FIRST < slept[1] <= 2 * RETRY_FIRST


def test_fetch_url_bounds_the_body(tmp_path: Path) -> None:
    site = Site()
    site.answers["/big"] = lambda: web.Response(body=b"#" * ((1 << 20) + 10))

    async def go() -> str:
        async with serving(site) as base:
            try:
                await fetch_url(f"{base}/big", 2.0)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return "fetched"
    assert run(go(), 10) == "FetchError: larger than 1048576 bytes"
