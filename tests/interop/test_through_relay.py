"""TDLib and Telethon through the engine's middle-proxy path: client → engine → fake relay → fake DC.

The engine runs as the official command line does (-P ad tag, --aes-pwd proxy-secret, proxy-multi.conf naming
one fake relay, testkit/fakerelay.py, on loopback); the relay forwards each conn id's packets to the MTProto
fake DC on one obfuscated2 connection of its own (intermediate framing, the relay's DC id in its header).
Every direct DC connection would go to a second fake DC, which must see nothing.

Pass: what the direct tests ask (TDLib's ping answered and its key exchange on to req_DH_params; Telethon's
req_DH_params at the DC), every request at the relay carrying the ad tag, the client's address and the
engine's, the client's transport in its flags, and each connection the fake DC saw being one of the relay's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)

from mtproxy.testkit.background import BackgroundRelays
from mtproxy.testkit.fakerelay import FakeRelay

from .conftest import RunningProxy, StartProxy, default_keys
from .fake_dc import TDLIB_FINGERPRINTS, TELETHON_FINGERPRINTS, FakeDC
from .tdlib_client import TdlibRun, run_tdlib
from .telethon_client import connect_until_dh_params

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:proxy argument will be ignored"),  # Telethon, as in test_telethon.py
]

RELAY_DC = 2  # the relay's DC id: every client's DC falls back to it (`default 2;`)
AD_TAG = bytes.fromhex("0123456789abcdef0123456789abcdef")
FLAG_ABRIDGED, FLAG_INTERMEDIATE = 0x40000000, 0x20000000  # RPC_PROXY_REQ: the client's transport


@pytest.fixture
def direct_dc() -> Iterator[FakeDC]:
    """Where a direct connection would land: nothing may."""
    with FakeDC() as dc:
        yield dc


@pytest.fixture
def relays(fake_dc: FakeDC) -> Iterator[BackgroundRelays]:
    started = BackgroundRelays(os.urandom(128), dc_ids=(RELAY_DC,), dc=(fake_dc.host, fake_dc.port)).start()
    yield started
    started.stop()


@pytest.fixture
def relayed(start_proxy: StartProxy, relays: BackgroundRelays, direct_dc: FakeDC, tmp_path: Path) -> RunningProxy:
    """The engine with the official command line's relay flags, once its relay link is up."""
    files = relays.write_files(tmp_path / "relay-files")
    proxy = start_proxy(default_keys(), "-P", AD_TAG.hex(), "--aes-pwd", str(files.secret), str(files.config),
                        dc=direct_dc)
    proxy.process.wait_log(f"DC {RELAY_DC}: relays up", timeout=15)
    return proxy


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_relayed(relay: FakeRelay, proxy: RunningProxy, fake_dc: FakeDC, direct_dc: FakeDC,
                   flags: int | None, context: str) -> None:
    """Every packet went client → engine → relay → DC: none direct, all with the ad tag and the addresses."""
    assert direct_dc.kinds() == [], context
    requests = list(relay.requests)
    assert requests, context
    assert {r.ad_tag for r in requests} == {AD_TAG}, context
    assert {r.remote[0] for r in requests} == {"127.0.0.1"}, context
    assert {r.local for r in requests} == {("127.0.0.1", proxy.port)}, context
    if flags is not None:
        assert {r.flags & (FLAG_ABRIDGED | FLAG_INTERMEDIATE) for r in requests} == {flags}, context
    # one DC connection per (relay link, conn id), opened by the relay at that conn id's first request, and
    # no other: the relay opens them after recording the request, so give the last one a moment
    legs = {(r.link, r.conn_id) for r in requests}
    assert wait_until(lambda: fake_dc.kinds().count("init") == len(legs), 5), (legs, context)
    assert fake_dc.kinds().count("accepted") == len(legs), context
    inits = [event.detail for event in fake_dc.events if event.kind == "init"]
    assert {(init["transport"], init["dc_id"]) for init in inits} == {("intermediate", RELAY_DC)}, context
    assert not relay.errors, list(relay.errors)


def assert_tdlib_got_through(run: TdlibRun, fake_dc: FakeDC, context: str) -> None:
    """What test_tdlib.py asks of a direct run, but the transport at the DC, which is the relay's."""
    assert run.ping_seconds and run.ping_seconds[0] > 0, context
    dh = fake_dc.wait_for("req_DH_params", 5)
    assert dh is not None, context
    assert (dh.detail["p"], dh.detail["q"]) == (1229739323, 1402015859)
    assert dh.detail["fingerprint"] in TDLIB_FINGERPRINTS


@pytest.mark.parametrize("kind", ["classic", "dd", "ee"])
def test_tdlib_through_relay(kind: str, relayed: RunningProxy, relays: BackgroundRelays, fake_dc: FakeDC,
                             direct_dc: FakeDC, tmp_path: Path) -> None:
    run = run_tdlib(relayed.port, relayed.keys[kind], fake_dc, tmp_path, timeout=25)
    relay = relays.relay(RELAY_DC)
    context = (f"tdlib events: {run.events}\nfake DC: {fake_dc.kinds()}\ndirect DC: {direct_dc.kinds()}\n"
               f"relay errors: {list(relay.errors)}\nproxy log:\n{relayed.process.log[-2000:]}")
    assert_tdlib_got_through(run, fake_dc, context)
    # TDLib frames classic as intermediate and dd/ee as padded, which RPC_PROXY_REQ flags alike
    assert_relayed(relay, relayed, fake_dc, direct_dc, FLAG_INTERMEDIATE, context)


TELETHON_CASES = [
    ("classic", ConnectionTcpMTProxyAbridged, FLAG_ABRIDGED),
    ("classic", ConnectionTcpMTProxyIntermediate, FLAG_INTERMEDIATE),
    ("dd", ConnectionTcpMTProxyRandomizedIntermediate, FLAG_INTERMEDIATE),
    ("dd", ConnectionTcpMTProxyAbridged, FLAG_ABRIDGED),
]


@pytest.mark.parametrize(("kind", "connection", "flags"), TELETHON_CASES,
                         ids=[f"{kind}-{connection.__name__}" for kind, connection, _ in TELETHON_CASES])
def test_telethon_through_relay(kind: str, connection: type, flags: int, relayed: RunningProxy,
                                relays: BackgroundRelays, fake_dc: FakeDC, direct_dc: FakeDC) -> None:
    secret = relayed.keys[kind]
    reached = asyncio.run(
        connect_until_dh_params(fake_dc, connection, proxy=("127.0.0.1", relayed.port, secret), timeout=25)
    )
    relay = relays.relay(RELAY_DC)
    context = (f"fake DC: {fake_dc.kinds()}\ndirect DC: {direct_dc.kinds()}\nrelay errors: {list(relay.errors)}\n"
               f"proxy log:\n{relayed.process.log[-2000:]}")
    assert reached, context
    dh = fake_dc.wait_for("req_DH_params", 0)
    assert dh is not None and dh.detail["fingerprint"] in TELETHON_FINGERPRINTS
    assert_relayed(relay, relayed, fake_dc, direct_dc, flags, context)
