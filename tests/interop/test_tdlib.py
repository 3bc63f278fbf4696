"""TDLib (the library behind the official apps) through the real proxy to the fake DC: classic, dd and ee.

Pass, seen from the client: pingProxy returns `seconds` (TDLib sent req_pq_multi through the proxy and
accepted the resPQ that came back). Pass, seen from the DC: req_DH_params arrived, so TDLib's main
session factored pq, found its RSA key in our list and went on with the key exchange.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DOMAIN, RunningProxy, StartProxy, default_keys
from .fake_dc import TDLIB_FINGERPRINTS, FakeDC
from .tdlib_client import TdlibRun, run_tdlib

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

# What TDLib puts in the init for each secret kind (see tests/data/tdlib_hellos/index.json).
EXPECTED_TRANSPORT = {"classic": "intermediate", "dd": "padded", "ee": "padded"}


def assert_got_through(run: TdlibRun, kind: str, proxy: RunningProxy, fake_dc: FakeDC) -> None:
    context = f"tdlib events: {run.events}\nfake DC: {fake_dc.kinds()}\nproxy log:\n{proxy.process.log[-2000:]}"
    assert run.ping_seconds, context
    assert run.ping_seconds[0] > 0, context
    dh = fake_dc.wait_for("req_DH_params", 5)
    assert dh is not None, context
    assert (dh.detail["p"], dh.detail["q"]) == (1229739323, 1402015859)
    assert dh.detail["fingerprint"] in TDLIB_FINGERPRINTS
    # The proxy passed TDLib's framing tag on to the DC unchanged.
    init = fake_dc.wait_for("init", 0)
    assert init is not None and init.detail["transport"] == EXPECTED_TRANSPORT[kind], context


@pytest.mark.parametrize("kind", ["classic", "dd", "ee"])
def test_tdlib_through_proxy(kind: str, proxy: RunningProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    run = run_tdlib(proxy.port, proxy.keys[kind], fake_dc, tmp_path, timeout=25)
    assert_got_through(run, kind, proxy, fake_dc)


VARIANTS = {
    "two-workers": (["-M", "2"], "127.0.0.1", 2),
    "no-fast-mode": (["--no-fast-mode"], "127.0.0.1", 1),
    "ipv6-loopback": ([], "::1", 1),
}


@pytest.mark.parametrize("kind", ["classic", "ee"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tdlib_through_engine_variants(
    variant: str, kind: str, start_proxy: StartProxy, fake_dc: FakeDC, tmp_path: Path
) -> None:
    flags, host, ready = VARIANTS[variant]
    proxy = start_proxy(default_keys(), *flags, host=host, ready=ready)
    run = run_tdlib(proxy.port, proxy.keys[kind], fake_dc, tmp_path, timeout=25, server=host)
    assert_got_through(run, kind, proxy, fake_dc)


def test_official_command_line_means_fake_tls_only(start_proxy: StartProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    """As with the official binary, `-S <hex> -D <domain>` serves that key as fake-TLS only: TDLib given
    the ee form gets through, TDLib given the classic form is refused with one log line."""
    key = default_keys()["classic"]
    keys = {"ee": "ee" + key + DOMAIN.encode("ascii").hex(), "classic": key}
    proxy = start_proxy(keys, "-D", DOMAIN, secrets=[key])
    refused = run_tdlib(proxy.port, keys["classic"], fake_dc, tmp_path, timeout=10, pings=1, need_dh=False)
    assert not refused.ping_seconds, refused.events
    assert fake_dc.kinds() == []
    log = proxy.process.wait_log("reason=mode-disabled")
    assert "rejected handshake from 127.0.0.1 port " in log
    run = run_tdlib(proxy.port, keys["ee"], fake_dc, tmp_path, timeout=25)
    assert_got_through(run, "ee", proxy, fake_dc)


def test_tdlib_with_unknown_secret_gets_nowhere(proxy: RunningProxy, fake_dc: FakeDC, tmp_path: Path) -> None:
    """A client whose key the proxy does not know never reaches a DC (no mask here, so it is closed),
    and the proxy writes the documented rejection line."""
    wrong = "ee" + bytes(16).hex() + DOMAIN.encode("ascii").hex()
    run = run_tdlib(proxy.port, wrong, fake_dc, tmp_path, timeout=15, pings=1, need_dh=False)
    assert not run.ping_seconds, run.events
    assert fake_dc.kinds() == [], fake_dc.kinds()
    log = proxy.process.wait_log("reason=tls-bad-hmac")
    assert f"on 127.0.0.1:{proxy.port}: reason=tls-bad-hmac" in log
