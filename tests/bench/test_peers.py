"""The peer wrappers (bench/peers): their command lines and config without the engines, and, when an
engine's binary is named in the environment, the load tool's smoke check through each wrapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from bench.peers import launch, telemt, teleproxy

from bench import netns
from mtproxy.protocol.secret import Secret, SecretKind

REPO = Path(__file__).resolve().parents[2]
KEYS = [bytes(range(i, i + 16)) for i in range(3)]
DOMAIN = "example.com"
PEER_ENV = {"teleproxy": "MTPROXY_PEER_TELEPROXY", "telemt": "MTPROXY_PEER_TELEMT"}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))


def _opts(kind: SecretKind, count: int = 1, workers: int = 1) -> launch.PeerOptions:
    secrets = [Secret(k, kind, DOMAIN if kind is SecretKind.FAKE_TLS else None) for k in KEYS[:count]]
    argv = ["/opt/engine", "--port", "8443", "--dc", "127.0.0.1:9443", "--mask", "127.0.0.1:9444"]
    argv += ["--workers", str(workers)]
    for s in secrets:
        argv += ["-S", s.to_hex()]
    return launch.parse(argv, "test", "")


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("kind", list(SecretKind))
def test_teleproxy_command(kind: SecretKind) -> None:
    argv = teleproxy.command(_opts(kind, count=2), nofile_hard=20_000)
    assert argv[:2] == ["/opt/engine", "--direct"]
    assert _pairs(argv, "-H") == ["8443"]
    # The raw keys only: teleproxy learns the transport from the client and from -D.
    assert _pairs(argv, "-S") == [KEYS[0].hex(), KEYS[1].hex()]
    assert _pairs(argv, "--dc-override") == [f"{dc}:127.0.0.1:9443" for dc in (1, 2, 3, 4, 5)]
    assert _pairs(argv, "-c") == ["19984"]  # it asks for -c + 16 descriptors and exits without them
    assert "-6" in argv and _pairs(argv, "-u") == ["root"]
    assert _pairs(argv, "-D") == ([f"{DOMAIN}:9444"] if kind is SecretKind.FAKE_TLS else [])
    assert "-M" not in argv


def test_teleproxy_workers_and_limits() -> None:
    argv = teleproxy.command(_opts(SecretKind.CLASSIC, workers=3), nofile_hard=1 << 20)
    assert _pairs(argv, "-M") == ["3"]
    assert _pairs(argv, "-c") == ["65536"]
    many = launch.PeerOptions(Path("/opt/engine"), 8443, (Secret(KEYS[0], SecretKind.CLASSIC),) * 17,
                              launch.Endpoint("127.0.0.1", 9443), launch.Endpoint("127.0.0.1", 9444), 1)
    with pytest.raises(launch.PeerError, match="at most 16 secrets"):
        teleproxy.command(many, nofile_hard=20_000)


@pytest.mark.parametrize("kind", list(SecretKind))
def test_telemt_config(kind: SecretKind, tmp_path: Path) -> None:
    opts = _opts(kind, count=3, workers=2)
    doc = tomllib.loads(telemt.config(opts))
    general = doc["general"]
    assert general["use_middle_proxy"] is False and general["ntp_check"] is False
    assert general["config_strict"] is True
    assert general["modes"] == {
        "classic": kind is SecretKind.CLASSIC,
        "secure": kind is SecretKind.PADDED,
        "tls": kind is SecretKind.FAKE_TLS,
    }
    assert doc["network"]["stun_use"] is False and doc["network"]["http_ip_detect_urls"] == []
    assert doc["server"]["port"] == 8443 and doc["server"]["listeners"] == [{"ip": "127.0.0.1"}]
    assert doc["server"]["api"]["enabled"] is False
    censorship = doc["censorship"]
    assert (censorship["mask_host"], censorship["mask_port"], censorship["tls_emulation"]) == ("127.0.0.1", 9444, False)
    assert censorship.get("tls_domain") == (DOMAIN if kind is SecretKind.FAKE_TLS else None)
    assert sorted(doc["access"]["users"].values()) == sorted(k.hex() for k in KEYS)
    # Every DC a client may name, and the CDN DC telemt knows an address for, go to the fake DC.
    assert doc["dc_overrides"] == {str(dc): "127.0.0.1:9443" for dc in (1, 2, 3, 4, 5, 203)}
    assert telemt.command(opts, tmp_path) == [
        "/opt/engine", "run", str(tmp_path / "config.toml"), "--data-path", str(tmp_path)
    ]
    assert telemt.environment(opts, {"PATH": "/bin"}) == {"PATH": "/bin", "TOKIO_WORKER_THREADS": "2"}


def _wrapper(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"bench.peers.{module}", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("module", ["teleproxy", "telemt"])
def test_bad_invocations_say_why(module: str, tmp_path: Path) -> None:
    common = ["--port", "8443", "-S", KEYS[0].hex(), "--mask", "127.0.0.1:9444"]
    missing = _wrapper(module, str(tmp_path / "nope"), *common, "--dc", "127.0.0.1:9443")
    assert missing.returncode == 1 and "no engine binary at" in missing.stderr
    plain = tmp_path / "engine"
    plain.write_text("")
    not_exec = _wrapper(module, str(plain), *common, "--dc", "127.0.0.1:9443")
    assert not_exec.returncode == 1 and "is not executable" in not_exec.stderr
    outside = _wrapper(module, str(plain), *common, "--dc", "192.0.2.1:443")  # TEST-NET-1: refused, never dialled
    assert outside.returncode == 2 and "not a loopback address" in outside.stderr
    mixed = _wrapper(module, str(plain), *common, "--dc", "127.0.0.1:9443", "-S", "dd" + KEYS[1].hex())
    assert mixed.returncode == 2 and "of one kind" in mixed.stderr


@pytest.mark.parametrize("module", ["teleproxy", "telemt"])
def test_wrappers_refuse_outside_a_private_namespace(module: str, tmp_path: Path) -> None:
    if not netns.foreign_interfaces():
        pytest.skip("only loopback is up here: the refusal cannot show")
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\nexit 0\n")
    engine.chmod(0o755)
    proc = _wrapper(module, str(engine), "--port", "8443", "-S", KEYS[0].hex(), "--dc", "127.0.0.1:9443",
                    "--mask", "127.0.0.1:9444")
    assert proc.returncode == 1 and "non-loopback interfaces are up" in proc.stderr


def test_private_dir_goes_when_its_process_does() -> None:
    code = "from bench.peers import launch; print(launch.private_dir('test'), flush=True)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=30)
    path = Path(out.stdout.strip())
    assert path.name.startswith("mtproxy-peer-test-")
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists()


def _peer_binary(name: str) -> str:
    value = os.environ.get(PEER_ENV[name], "")
    if not value:
        pytest.skip(f"set {PEER_ENV[name]} to the {name} binary (built from its public source, see "
                    "bench/peers/README.md) to run the load tool through it")
    return value


@pytest.mark.netns
@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", ["teleproxy", "telemt"])
def test_smoke_through_peer(name: str, tmp_path: Path) -> None:
    template = (f"{{python}} -m bench.peers.{name} {_peer_binary(name)} --port {{port}} {{secret_args}} "
                "--dc {dc_host}:{dc_port} --mask {mask_host}:{mask_port} --workers {workers}")
    proc = subprocess.run(
        # A stalled session fails its phase in 30 s instead of the default 300.
        [sys.executable, "-m", "bench.loadtool", "--smoke", "--phase-timeout", "30", "--out", str(tmp_path),
         "--engine-cmd", template],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = tmp_path.glob("bench-*.json")
    run = json.loads(result.read_text())["runs"][0]
    for mode in ("classic", "dd", "ee"):
        engine = run[f"engine-{mode}"]
        # The fake DC checks every byte's re-encryption and the clients check echoes: ok means relayed.
        # telemt 3.4.25 sometimes holds an upload's last bytes (BENCHMARKS.md, "Peers"): that fails here.
        assert engine["up1"]["ok"] == 1 and engine["down1"]["ok"] == 1, mode
        assert engine["upN"]["ok"] == 2 and engine["downN"]["ok"] == 2, mode
        assert engine["hs"]["ok"] == 20, mode
        assert engine["lat"]["n"] == 10, mode
