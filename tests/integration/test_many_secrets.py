"""An engine with over a thousand secrets finds a new client's secret by scanning them all, whether the
scan runs in the native library or in Python."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtproxy.crypto import backend, native
from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.store import SecretRecord, StoreData, write_store
from mtproxy.testkit.client import open_client, secret_for_mode, send_raw

from .conftest import DOMAIN, ProxyFactory, run

SECRETS = 1200


@pytest.mark.parametrize("keystream", ["native", "ctr"])
def test_a_client_whose_secret_is_last_of_many_authenticates(start_proxy: ProxyFactory, tmp_path: Path,
                                                             keystream: str) -> None:
    """MTPROXY_KEYSTREAM=native gives the native scan, ctr the Python loops. Each client comes from its own
    loopback address, so no per-address hint points at its secret: the whole table is scanned."""
    if keystream == "native" and native.open_library() is None:
        pytest.skip("the native library is not built here")
    secrets = [Secret(os.urandom(16), SecretKind.FAKE_TLS, DOMAIN) for _ in range(SECRETS)]
    store = tmp_path / "secrets.json"
    write_store(store, StoreData(tuple(SecretRecord.from_secret(f"s{i}", s) for i, s in enumerate(secrets))))
    proxy = start_proxy("--secrets-file", str(store), "--allow-classic", env={"MTPROXY_KEYSTREAM": keystream})
    assert f"AES-CTR runs on {backend.KEYSTREAMS[keystream]} (MTPROXY_KEYSTREAM={keystream})" in proxy.log
    last = secrets[-1]

    async def scenario() -> None:
        for source, mode in (("127.0.0.2", "classic"), ("127.0.0.3", "dd"), ("127.0.0.4", "ee")):
            client = await open_client("127.0.0.1", proxy.port, secret_for_mode(last, mode), source=source)
            try:
                payload = os.urandom(1000)
                await client.send(payload)
                assert await client.recv_exactly(len(payload)) == payload
            finally:
                await client.close()
        await send_raw("127.0.0.1", proxy.port, os.urandom(100))  # no secret of the 1200: refused

    run(scenario())
    proxy.wait_log("rejected handshake")
