"""-M 2: two worker processes share the port, a dead one is replaced, stats merge, replays are seen by all."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mtproxy.protocol import client as core
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import open_client, send_raw
from mtproxy.testkit.servers import expected_mask_reply

from .conftest import DOMAIN, ProxyFactory, run
from .test_lifecycle import stats_of


def worker_pids(supervisor: int) -> list[int]:
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        return [int(x) for x in f.read().split()]


def test_two_workers_share_port_merge_stats_and_restart(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "-M", "2", ready=2)
    pids = worker_pids(proxy.proc.pid)
    assert len(pids) == 2

    async def sessions(n: int) -> None:
        for _ in range(n):
            client = await open_client("127.0.0.1", proxy.port, secret)
            await client.send(b"w" * 100)
            assert await client.recv_exactly(100) == b"w" * 100
            await client.close()

    run(sessions(12))
    deadline = time.monotonic() + 5
    while stats_of(proxy.stats_port)["handshakes_ok"] != "12":
        assert time.monotonic() < deadline, stats_of(proxy.stats_port)
        time.sleep(0.1)
    stats = stats_of(proxy.stats_port)
    assert stats["workers"] == "2"
    assert stats["bytes_client_to_dc"] == str(1200)

    os.kill(pids[0], signal.SIGKILL)
    proxy.wait_log("ready:", count=3)  # a replacement started
    new = worker_pids(proxy.proc.pid)
    assert len(new) == 2 and pids[0] not in new
    run(sessions(4))
    deadline = time.monotonic() + 5
    while int(stats_of(proxy.stats_port)["handshakes_ok"]) < 16:  # the dead worker's totals are kept
        assert time.monotonic() < deadline, stats_of(proxy.stats_port)
        time.sleep(0.1)
    assert proxy.stop() == 0


def test_replay_is_caught_by_every_worker(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                         secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "-M", "2", ready=2)
    hello = core.build_client_hello(secret.key, DOMAIN, os.urandom, time.time())
    first = run(send_raw("127.0.0.1", proxy.port, hello))
    assert first.startswith(b"\x16\x03\x03")  # accepted once: a server flight, and nothing from the mask
    assert b"mask-site" not in first
    # SO_REUSEPORT spreads these over both workers; every single one must be a replay
    for _ in range(16):
        assert run(send_raw("127.0.0.1", proxy.port, hello)) == expected_mask_reply(hello)
    log = proxy.wait_log("reason=replay", count=16)
    pids = {line.split("[")[1].split("]")[0] for line in log.splitlines() if "reason=replay" in line}
    assert len(pids) == 2, "all replays landed on one worker; the test proves nothing"


def test_workers_reload_on_sighup_and_file_change(start_proxy: ProxyFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mtproxy.protocol.secret import SecretKind
    from mtproxy.store import SecretRecord, StoreData, write_store

    store = tmp_path / "secrets.json"
    a = Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)
    b = Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)
    write_store(store, StoreData((SecretRecord.from_secret("a", a),)))
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", "--reload-interval", "0.1", ready=2)
    write_store(store, StoreData((SecretRecord.from_secret("a", a), SecretRecord.from_secret("b", b))))
    proxy.wait_log("secrets reloaded", count=2)  # each worker on its own
    proxy.signal(signal.SIGHUP)
    proxy.wait_log("secrets reloaded", count=4)  # the supervisor forwards SIGHUP to both

    async def sessions() -> None:
        for _ in range(6):
            client = await open_client("127.0.0.1", proxy.port, b)
            await client.send(b"new!")
            assert await client.recv_exactly(4) == b"new!"
            await client.close()

    run(sessions())


def test_workers_exit_when_the_supervisor_is_killed(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "-M", "2", ready=2)
    pids = worker_pids(proxy.proc.pid)
    proxy.proc.kill()
    proxy.proc.wait(5)
    deadline = time.monotonic() + 10
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
            time.sleep(0.05)


def test_a_respawned_worker_does_not_serve_a_revoked_secret(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    store = tmp_path / "secrets.json"
    revoked = Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)
    kept = Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN)
    write_store(store, StoreData((SecretRecord.from_secret("a", revoked),)))
    proxy = start_proxy("--secrets-file", str(store), "-M", "2", "--reload-interval", "0.1", ready=2)
    write_store(store, StoreData((SecretRecord.from_secret("b", kept),)))
    proxy.wait_log("secrets reloaded", count=2)
    os.kill(worker_pids(proxy.proc.pid)[0], signal.SIGKILL)
    proxy.wait_log("ready:", count=3)
    time.sleep(1.0)  # a few reload ticks of the new worker
    accepted = 0
    for _ in range(16):  # SO_REUSEPORT spreads these over both workers
        hello = core.build_client_hello(revoked.key, DOMAIN, os.urandom, time.time())
        reply = run(send_raw("127.0.0.1", proxy.port, hello))
        accepted += reply.startswith(b"\x16\x03\x03")
    assert accepted == 0
