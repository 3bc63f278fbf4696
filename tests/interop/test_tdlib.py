"""TDLib (the library behind the official apps) through the real proxy to the fake DC: classic, dd and ee.

Pass, seen from the client: pingProxy returns `seconds` (TDLib sent req_pq_multi through the proxy and
accepted the resPQ that came back). Pass, seen from the DC: req_DH_params arrived, so TDLib's main
session factored pq, found its RSA key in our list and went on with the key exchange.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import RunningProxy
from .fake_dc import TDLIB_FINGERPRINTS, FakeDC
from .tdlib_client import run_tdlib

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

# What TDLib puts in the init for each secret kind (see tests/data/tdlib_hellos/index.json).
EXPECTED_TRANSPORT = {"classic": "intermediate", "dd": "padded", "ee": "padded"}


@pytest.mark.parametrize("kind", ["classic", "dd", "ee"])
def test_tdlib_through_proxy(kind: str, proxy: RunningProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    run = run_tdlib(proxy.port, proxy.keys[kind], fake_dc, tmp_path, timeout=25)
    context = f"tdlib events: {run.events}\nfake DC: {fake_dc.kinds()}\nproxy log:\n{proxy.process.log[-2000:]}"
    assert run.ping_seconds, context
    assert 0 < run.ping_seconds[0] < 10, context
    dh = fake_dc.wait_for("req_DH_params", 5)
    assert dh is not None, context
    assert (dh.detail["p"], dh.detail["q"]) == (1229739323, 1402015859)
    assert dh.detail["fingerprint"] in TDLIB_FINGERPRINTS
    # The proxy passed TDLib's framing tag on to the DC unchanged.
    init = fake_dc.wait_for("init", 0)
    assert init is not None and init.detail["transport"] == EXPECTED_TRANSPORT[kind], context


def test_tdlib_with_unknown_secret_gets_nowhere(proxy: RunningProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    """A client whose key the proxy does not know never reaches a DC (here: no mask, so it is closed)."""
    wrong = "ee" + bytes(16).hex() + "www.example.com".encode("ascii").hex()
    run = run_tdlib(proxy.port, wrong, fake_dc, tmp_path, timeout=15, pings=1, need_dh=False)
    assert not run.ping_seconds, run.events
    assert fake_dc.kinds() == [], fake_dc.kinds()
