"""Per-secret limits end to end through the real engine: admission, quota, rate, expiry, usage.json across a
kill -9, workers sharing one secret's limits, and the CLI's changes seen live."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mtproxy.accounts.limits import Limits, Quota
from mtproxy.config import resolve
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.runtime.accounting import AccountingTable
from mtproxy.runtime.secrets import SecretSet
from mtproxy.runtime.server import Server, bind_all
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import PEER_AES, ProxyClient, ProxyClientError, open_client

from .conftest import DOMAIN, ProxyFactory, run

READ = 65536  # --read-size in these tests: one relay read, part of the documented quota overshoot
FLOOR = 16 * 1024  # runtime/meter.py DEFAULT_FLOOR


def new_secret() -> Secret:
    return Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)


def write(path: Path, entries: list[tuple[str, Secret, Limits]]) -> None:
    write_store(path, StoreData(tuple(SecretRecord.from_secret(i, s, active=lim.enabled, limits=lim)
                                      for i, s, lim in entries)))


def stats_json(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5).read())
    return doc


def wait_until(predicate: Any, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


async def session(port: int, secret: Secret, source: str | None = None) -> ProxyClient | None:
    """An open session that carried one echo round trip; None when the proxy refused or masked it."""
    try:
        client = await open_client("127.0.0.1", port, secret, timeout=3, source=source)
    except (ProxyClientError, ProtocolError, OSError, TimeoutError):
        return None
    try:
        await client.send(b"ping")
        if await client.recv_exactly(4) == b"ping":
            return client
    except (ProxyClientError, OSError, TimeoutError):
        pass
    await client.close()
    return None


async def closed(client: ProxyClient, timeout: float) -> float:
    """Wait for the proxy to end the session; the wall time it was seen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = await asyncio.wait_for(client.reader.read(65536), 0.5)
        except TimeoutError:
            continue
        except OSError:
            return time.time()
        if not chunk:
            return time.time()
    raise TimeoutError("the session was not closed")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mtproxy_secrets.json"


def test_max_connections_refuses_the_next_session(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits(max_connections=1))])
    proxy = start_proxy("--secrets-file", str(store))

    async def scenario() -> None:
        first = await session(proxy.port, a)
        assert first is not None
        assert await session(proxy.port, a) is None  # the N+1th
        await first.close()
        for _ in range(40):  # the slot is freed once the proxy has seen the close
            again = await session(proxy.port, a)
            if again is not None:
                await again.close()
                return
            await asyncio.sleep(0.1)
        raise AssertionError("a freed connection slot was not given back")

    run(scenario())
    log = proxy.wait_log("reason=max-connections id=a")
    assert "refused session from 127.0.0.1 port" in log
    assert "rejected handshake" not in log  # a refusal is not a probe: fail2ban's filter does not match it
    doc = stats_json(proxy.stats_port)
    assert doc["refusals"]["max-connections"] >= 1
    mine = doc["secrets"]["a"]
    assert mine["refusals"]["max-connections"] >= 1
    assert mine["limits"]["max_connections"] == 1
    assert mine["usage"]["connections_total"] >= 2


def test_max_unique_ips(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits(max_unique_ips=2))])
    proxy = start_proxy("--secrets-file", str(store))

    async def scenario() -> None:
        for source in ("127.0.0.1", "127.0.0.2"):
            client = await session(proxy.port, a, source)
            assert client is not None, source
            await client.close()
        assert await session(proxy.port, a, "127.0.0.3") is None  # a third address within the window
        back = await session(proxy.port, a, "127.0.0.1")  # a known address still may
        assert back is not None
        await back.close()

    run(scenario())
    proxy.wait_log("refused session from 127.0.0.3 port")
    assert "reason=max-unique-ips id=a" in proxy.log
    assert stats_json(proxy.stats_port)["secrets"]["a"]["usage"]["unique_ips"] == 2


def test_quota_cuts_a_running_session_within_the_bound(start_proxy: ProxyFactory, store: Path) -> None:
    quota = 1_000_000
    a = new_secret()
    write(store, [("a", a, Limits(quota=Quota(limit_bytes=quota)))])
    proxy = start_proxy("--secrets-file", str(store), "--read-size", str(READ))
    chunk = os.urandom(16384)

    async def scenario() -> int:
        client = await session(proxy.port, a)
        assert client is not None
        echoed = 8  # the ping both ways
        try:
            for _ in range(4 * quota // len(chunk)):  # bounded: four times the quota
                await client.send(chunk)
                await client.recv_exactly(len(chunk))
                echoed += 2 * len(chunk)
        except (ProxyClientError, OSError, TimeoutError):
            return echoed
        finally:
            await client.close()
        raise AssertionError("the quota never closed the session")

    moved = run(scenario())
    proxy.wait_log("reason=quota id=a")
    assert quota - 2 * len(chunk) <= moved <= quota + FLOOR + READ
    wait_until(lambda: stats_json(proxy.stats_port)["secrets"]["a"]["active"] == 0)
    usage = stats_json(proxy.stats_port)["secrets"]["a"]["usage"]
    assert quota <= usage["period_bytes"] <= quota + FLOOR + READ
    assert run(session(proxy.port, a)) is None  # spent: new sessions are refused
    proxy.wait_log("reason=quota id=a", count=2)


def test_rate_limit_holds_both_directions(start_proxy: ProxyFactory, store: Path) -> None:
    rate, total = 200_000, 1_000_000
    burst = max(rate, 64 * 1024)  # accounts/bucket.py: a new session starts with a full bucket
    a = new_secret()
    write(store, [("a", a, Limits(rate_limit=rate))])
    proxy = start_proxy("--secrets-file", str(store), "--read-size", str(READ))
    payload = os.urandom(total)

    async def scenario() -> float:
        client = await session(proxy.port, a)
        assert client is not None
        client.timeout = 30

        async def upload() -> None:
            for at in range(0, total, 16384):
                await client.send(payload[at:at + 16384])

        started = time.monotonic()
        sender = asyncio.create_task(upload())
        got = await client.recv_exactly(total)
        elapsed = time.monotonic() - started
        await sender
        await client.close()
        assert got == payload
        return elapsed

    elapsed = run(scenario(), timeout=60)
    # each direction is held to the rate: by time t at most burst + rate * t + one read (the debt a read may
    # run up) have moved; measured 3.80 s against this floor of 3.68 s
    assert elapsed >= (total - burst - READ) / rate, elapsed
    wait_until(lambda: stats_json(proxy.stats_port)["secrets"]["a"]["active"] == 0)
    mine = stats_json(proxy.stats_port)["secrets"]["a"]
    assert mine["bytes_in"] == mine["bytes_out"] == total + 4


def test_a_reload_applies_new_limits_to_running_sessions(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits())])
    proxy = start_proxy("--secrets-file", str(store), "--read-size", str(READ))
    rate, total = 100_000, 400_000
    payload = os.urandom(total)

    def limits_live(**expected: Any) -> None:
        wait_until(lambda: all(stats_json(proxy.stats_port)["secrets"]["a"]["limits"][k] == v
                               for k, v in expected.items()))

    async def scenario() -> float:
        one, two = await session(proxy.port, a), await session(proxy.port, a)
        assert one is not None and two is not None
        write(store, [("a", a, Limits(max_connections=1, rate_limit=rate))])
        limits_live(max_connections=1, rate_limit=rate)
        await asyncio.sleep(0.2)  # the workers' reload and the stats' are not one step
        for client in (one, two):  # a lower max_connections cuts no running session ...
            await client.send(b"still")
            assert await client.recv_exactly(5) == b"still"
        assert await session(proxy.port, a) is None  # ... but refuses new ones
        one.timeout = 30
        started = time.monotonic()  # the new rate holds the running session
        sender = asyncio.create_task(one.send(payload))
        assert await one.recv_exactly(total) == payload
        elapsed = time.monotonic() - started
        await sender
        write(store, [("a", a, Limits(quota=Quota(limit_bytes=total)))])  # already spent: both close
        await closed(one, 10)
        await closed(two, 10)
        await one.close()
        await two.close()
        return elapsed

    elapsed = run(scenario(), timeout=60)
    assert elapsed >= (total - rate - READ) / rate, elapsed  # the bucket a reload made starts full (burst = rate)
    proxy.wait_log("reason=quota id=a", count=2)
    assert "reason=max-connections id=a" in proxy.log


def test_expiry_closes_running_sessions_at_the_instant(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    expires = math.ceil(time.time()) + 3  # the store keeps whole seconds
    write(store, [("a", a, Limits(expires_at=datetime.fromtimestamp(expires, UTC)))])
    proxy = start_proxy("--secrets-file", str(store))

    async def scenario() -> float:
        client = await session(proxy.port, a)
        assert client is not None
        try:
            return await closed(client, 10)
        finally:
            await client.close()

    seen = run(scenario())
    assert seen >= expires  # never before the instant (the proxy's clock is this machine's)
    assert seen < expires + 2.0  # by the worker's expiry timer, not at some later check
    proxy.wait_log("reason=expired id=a")
    assert run(session(proxy.port, a)) is None
    proxy.wait_log("reason=expired id=a", count=2)


def test_expiry_is_exact_on_the_engines_own_clock(peers: BackgroundPeers, tmp_path: Path) -> None:
    """An in-process server whose clock runs 0.3 s behind this machine's: the session ends when *its* clock
    reaches expires_at (sub-second, which the store cannot write), not when the machine's does."""
    secret = new_secret()
    shift = -0.3

    def clock() -> float:
        return time.time() + shift

    cfg = resolve(["--listen", "127.0.0.1:0", "--dc-override", f"*=127.0.0.1:{peers.dc_port}", "--mask",
                   f"127.0.0.1:{peers.mask_port}", "--cert-size", "2345", "--state-file", str(tmp_path / "s.json"),
                   "-p", "0", "-S", secret.to_hex()], environ={"MTPROXY_ROOT": str(tmp_path)})
    expires = datetime.fromtimestamp(clock() + 1.5, UTC)
    secrets = SecretSet((("cli-1", secret),), {"cli-1": Limits(expires_at=expires)})

    async def scenario() -> tuple[float, Server]:
        table = AccountingTable(b"key", capacity=8)
        server = Server(cfg, secrets, bytearray(ReplayFilter.memory_size(cfg.tls.replay_entries)), aes=PEER_AES,
                        accounting=table, clock=clock)
        await server.start(bind_all(cfg.listen, reuse_port=False))
        try:
            client = await session(server.listening[0].port, secret)
            assert client is not None
            await closed(client, 5)
            seen = clock()
            await client.close()
            return seen, server
        finally:
            await server.shutdown(0.5)
            table.close()

    seen, server = run(scenario())
    assert expires.timestamp() <= seen < expires.timestamp() + 0.25
    assert server.counters.refusals["expired"] == 1


def test_usage_survives_kill_9_and_restart(start_proxy: ProxyFactory, store: Path, tmp_path: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits(quota=Quota(limit_bytes=10**9)))])
    usage_file = tmp_path / "usage.json"  # beside --state-file (the data directory)
    port = None

    async def moved(port: int, n: int) -> None:
        client = await session(port, a)
        assert client is not None
        await client.send(b"u" * n)
        assert await client.recv_exactly(n) == b"u" * n
        await client.close()

    proxy = start_proxy("--secrets-file", str(store), "--usage-interval", "0.2")
    port = proxy.port
    run(moved(port, 100_000))

    def persisted() -> int:
        try:
            entry = json.loads(usage_file.read_text())["secrets"]["a"]
        except (OSError, ValueError, KeyError):
            return -1
        return int(entry["bytes_in"])

    wait_until(lambda: persisted() == 100_004)
    assert oct(usage_file.stat().st_mode & 0o777) == "0o600"
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(5)

    again = start_proxy("--secrets-file", str(store), "--usage-interval", "0.2", port=port)
    usage = stats_json(again.stats_port)["secrets"]["a"]["usage"]
    assert usage["bytes_in"] == usage["bytes_out"] == 100_004
    assert usage["period_bytes"] == 200_008
    run(moved(port, 1000))
    assert again.stop() == 0
    entry = json.loads(usage_file.read_text())["secrets"]["a"]  # written once more at shutdown
    assert entry["bytes_in"] == 101_008
    assert entry["connections_total"] == 2


def test_workers_share_a_secrets_connection_limit(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits(max_connections=1))])
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", ready=2)
    tries = 16  # SO_REUSEPORT hashes each connection to a worker: all 16 on one has odds of 2 ** -15

    async def scenario() -> None:
        first = await session(proxy.port, a)
        assert first is not None
        for _ in range(tries):  # spread over both workers: each one refuses
            assert await session(proxy.port, a) is None
        await first.close()

    run(scenario())
    proxy.wait_log("reason=max-connections id=a", count=tries)

    def refused() -> int:
        return int(stats_json(proxy.stats_port)["secrets"]["a"].get("refusals", {}).get("max-connections", 0))

    wait_until(lambda: refused() == tries)  # merged over both workers
    workers = {line.split("mtproxy[", 1)[1].split("]", 1)[0]
               for line in proxy.log.splitlines() if "reason=max-connections" in line}
    assert len(workers) == 2  # both refused: the worker holding the session and the one that does not
    assert proxy.stop() == 0


def test_a_dead_workers_sessions_free_their_slots(start_proxy: ProxyFactory, store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits(max_connections=1))])
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", ready=2)

    def kill_workers() -> None:
        with open(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children") as f:
            for pid in f.read().split():
                os.kill(int(pid), signal.SIGKILL)
        proxy.wait_log("ready:", count=4)  # both replaced

    async def scenario() -> None:
        client = await session(proxy.port, a)
        assert client is not None
        assert await session(proxy.port, a) is None
        await asyncio.sleep(0.7)  # workers publish twice a second; the supervisor frees what they last said
        kill_workers()
        await client.close()
        for _ in range(40):
            again = await session(proxy.port, a)
            if again is not None:
                await again.close()
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the dead worker's session still holds the secret's only slot")

    run(scenario())
    assert proxy.stop() == 0


def test_a_secret_without_limits_is_counted_and_a_new_limit_applies_at_once(start_proxy: ProxyFactory,
                                                                          store: Path) -> None:
    """Sessions of a secret without limits are admitted on each worker's own count and reach the shared
    figures within a sync; a reload that adds a connection limit counts the sessions already running."""
    a = new_secret()
    write(store, [("a", a, Limits())])
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", ready=2)
    tries = 16  # SO_REUSEPORT spreads these over both workers (all on one: odds of 2 ** -15)

    def usage() -> dict[str, Any]:
        figures: dict[str, Any] = stats_json(proxy.stats_port)["secrets"]["a"]["usage"]
        return figures

    async def scenario() -> None:
        running = [await session(proxy.port, a, source=f"127.0.0.{i + 2}") for i in range(3)]
        assert all(c is not None for c in running)
        wait_until(lambda: (usage()["connections"], usage()["connections_total"], usage()["unique_ips"]) == (3, 3, 3))
        assert usage()["first_seen"] is not None and usage()["last_seen"] is not None
        write(store, [("a", a, Limits(max_connections=3))])
        proxy.wait_log("secrets reloaded", count=2)
        for _ in range(tries):
            assert await session(proxy.port, a) is None
        first = running[0]
        assert first is not None
        await first.close()
        for _ in range(40):  # the closed session's slot is free as soon as its worker sees the close
            again = await session(proxy.port, a)
            if again is not None:
                running[0] = again
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a closed session still holds its slot")
        for client in running:
            assert client is not None
            await client.close()
        wait_until(lambda: usage()["connections"] == 0)

    run(scenario(), timeout=60)
    proxy.wait_log("reason=max-connections id=a", count=tries)
    assert proxy.stop() == 0


def test_a_dead_workers_sessions_of_a_secret_without_limits_leave_the_count(start_proxy: ProxyFactory,
                                                                             store: Path) -> None:
    a = new_secret()
    write(store, [("a", a, Limits())])
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", ready=2)

    def connections() -> int:
        return int(stats_json(proxy.stats_port)["secrets"]["a"]["usage"]["connections"])

    async def scenario() -> None:
        clients = [await session(proxy.port, a) for _ in range(4)]
        assert all(c is not None for c in clients)
        wait_until(lambda: connections() == 4)
        with open(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children") as f:
            for pid in f.read().split():
                os.kill(int(pid), signal.SIGKILL)
        proxy.wait_log("ready:", count=4)  # both replaced
        for client in clients:
            assert client is not None
            await client.close()
        wait_until(lambda: connections() == 0)
        again = await session(proxy.port, a)
        assert again is not None
        wait_until(lambda: connections() == 1)
        await asyncio.sleep(1.5)  # two more syncs and reports: the figure stays
        assert connections() == 1
        await again.close()

    run(scenario(), timeout=60)
    assert proxy.stop() == 0


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "MTPROXY_ROOT": str(root), "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mtproxy.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def test_disable_enable_and_reset_usage_through_the_cli(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = root / "config" / "mtproxy" / "mtproxy_secrets.json"
    store.parent.mkdir(parents=True)
    a = new_secret()
    write(store, [("a", a, Limits())])
    proxy = start_proxy("--secrets-file", str(store), "--usage-interval", "0.2")

    async def hold() -> ProxyClient:
        client = await session(proxy.port, a)
        assert client is not None
        await client.send(b"x" * 5000)
        assert await client.recv_exactly(5000) == b"x" * 5000
        return client

    async def disabled_closes_it() -> None:
        client = await hold()
        done = cli(root, "disable", "a", "--yes")
        assert done.returncode == 0, done.stderr
        await closed(client, 10)
        await client.close()
        assert await session(proxy.port, a) is None

    run(disabled_closes_it())
    proxy.wait_log("reason=disabled id=a")
    wait_until(lambda: stats_json(proxy.stats_port)["secrets"]["a"]["usage"]["bytes_in"] == 5004)
    assert stats_json(proxy.stats_port)["secrets"]["a"]["limits"]["enabled"] is False

    done = cli(root, "enable", "a")
    assert done.returncode == 0, done.stderr

    async def works_again() -> None:
        for _ in range(40):
            client = await session(proxy.port, a)
            if client is not None:
                await client.close()
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the enabled secret was not served again")

    run(works_again())
    done = cli(root, "reset-usage", "a", "--yes")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: stats_json(proxy.stats_port)["secrets"]["a"]["usage"]["bytes_in"] == 0)
    usage = stats_json(proxy.stats_port)["secrets"]["a"]["usage"]
    assert usage["period_bytes"] == 0 and usage["connections_total"] == 0
    assert usage["reset_at"] == json.loads(store.read_text())["secrets"][0]["usage_reset_at"]
