"""Secrets with their own host names (`add-secret --own-domain`) through the real engine: with thousands of
secrets configured, a new client (no hint) is found by its SNI, and an SNI that is no secret's is refused."""

from __future__ import annotations

import os
from pathlib import Path

from mtproxy.operations.secrets import own_domain_label
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.secret import Secret, SecretKind, generate_secret
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.client import ProxyClientError, open_client

from .conftest import ProxyFactory, run
from .test_lifecycle import stats_of

BASE = "users.example.com"
COUNT = 3000


def _store(path: Path) -> list[Secret]:
    records: list[SecretRecord] = []
    used: set[str] = set()
    for index in range(COUNT):
        label = own_domain_label(lambda: os.urandom(16), lambda name: name in used)
        used.add(label)
        secret = generate_secret(os.urandom(16), SecretKind.FAKE_TLS, f"{label}.{BASE}")
        records.append(SecretRecord(id=f"s{index}", value=secret.to_hex(), type="ee", domain=secret.domain,
                                    padding_enabled=True, own_domain=True))
    write_store(path, StoreData(tuple(records)))
    return [record.secret() for record in records]


async def _echo(port: int, secret: Secret, source: str, domain: str | None = None) -> bool:
    try:
        client = await open_client("127.0.0.1", port, secret, timeout=5, source=source, domain=domain)
    except (ProxyClientError, ProtocolError, OSError, TimeoutError):
        return False
    try:
        await client.send(b"hello")
        return await client.recv_exactly(5) == b"hello"
    except (ProxyClientError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def test_thousands_of_own_domains_a_new_client_is_found_by_its_sni(start_proxy: ProxyFactory,
                                                                     tmp_path: Path) -> None:
    store = tmp_path / "secrets.json"
    secrets = _store(store)
    proxy = start_proxy("--secrets-file", str(store))
    proxy.wait_log(f"ready: {COUNT} secrets")
    picks = [0, COUNT // 2, COUNT - 1]

    async def scenario() -> None:
        for number, index in enumerate(picks):  # each from its own address: no hint to start from
            assert await _echo(proxy.port, secrets[index], f"127.0.0.{number + 2}"), index
        # a real key with a host name under the base that is no secret's: the engine refuses the SNI
        assert not await _echo(proxy.port, secrets[0], "127.0.0.9", domain=f"zzzzzzzz.{BASE}")

    run(scenario(), timeout=60)
    # found by the SNI alone: a scan of the table (which would find them too, only dearer) never ran
    assert stats_of(proxy.stats_port)["secret_scans"] == "0"
    proxy.wait_log("reason=tls-bad-sni")
    assert proxy.log.count("rejected handshake") == 1  # the three clients got in
    assert proxy.stop() == 0
