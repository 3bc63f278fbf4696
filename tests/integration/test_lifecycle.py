"""SIGTERM: stop accepting, drain, exit 0; limits; the generated secret; healthcheck; official flags."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mtproxy.protocol.secret import Secret, SecretKind, parse_secret
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import ProxyClientError, open_client, secret_for_mode
from mtproxy.testkit.process import ProxyProcess, free_port

from .conftest import DOMAIN, ProxyFactory, run


def test_sigterm_drains_then_exits_zero(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--drain-timeout", "60")

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        proxy.signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, proxy.wait_log, "stopping")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await client.send(b"during drain")  # the established session keeps working
        assert await client.recv_exactly(12) == b"during drain"
        await client.close()
        # exits once its last session is gone: well before the 60 s deadline (wait raises otherwise)
        rc = await asyncio.get_running_loop().run_in_executor(None, proxy.wait, 15)
        assert rc == 0

    run(scenario())


def test_sigterm_deadline_closes_sessions(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--drain-timeout", "0.5")

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        proxy.signal(signal.SIGTERM)  # the session stays open: only the deadline can end it
        assert await asyncio.get_running_loop().run_in_executor(None, proxy.wait, 10) == 0
        with pytest.raises((ProxyClientError, OSError)):
            await client.recv_exactly(1)
        await client.close()

    run(scenario())


def test_per_ip_cap_and_max_connections(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--max-connections-per-ip", "2")

    async def scenario() -> None:
        held = [await open_client("127.0.0.1", proxy.port, secret) for _ in range(2)]
        with pytest.raises((ProxyClientError, OSError)):
            extra = await open_client("127.0.0.1", proxy.port, secret, timeout=3)
            await extra.send(b"x")
            await extra.recv_exactly(1)
        for client in held:
            await client.close()
        await asyncio.sleep(0.2)
        again = await open_client("127.0.0.1", proxy.port, secret)  # a slot is free again
        await again.close()

    run(scenario())
    stats = stats_of(proxy.stats_port)
    assert int(stats["refused_by_limit"]) >= 1


def test_idle_timeout_closes_session(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--idle-timeout", "0.4")

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        await client.send(b"ok")
        assert await client.recv_exactly(2) == b"ok"
        # closed by the proxy (ProxyClientError); the client's own 10 s wait would raise TimeoutError
        with pytest.raises(ProxyClientError):
            await client.recv_exactly(1)
        await client.close()

    run(scenario())


def test_a_session_that_keeps_talking_outlives_the_idle_timeout(start_proxy: ProxyFactory, secret: Secret) -> None:
    """The idle check looks at what moved between its sweeps: a session busy for several idle timeouts
    stays open, and goes once it falls silent."""
    proxy = start_proxy("-S", secret.to_hex(), "--idle-timeout", "1")

    async def scenario() -> None:
        client = await open_client("127.0.0.1", proxy.port, secret)
        for i in range(30):  # 3 s of traffic, a byte every 0.1 s
            await client.send(bytes([i]))
            assert await client.recv_exactly(1) == bytes([i])
            await asyncio.sleep(0.1)
        with pytest.raises(ProxyClientError):
            await client.recv_exactly(1)
        await client.close()

    run(scenario())


def stats_of(port: int) -> dict[str, str]:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5).read().decode()
    return dict(line.split("\t", 1) for line in body.splitlines())


def test_generated_secret_is_kept_across_restarts(start_proxy: ProxyFactory, peers: BackgroundPeers,
                                                  tmp_path: Path) -> None:
    first = start_proxy("-D", DOMAIN)
    links = re.findall(r"tg://proxy\?\S+", first.stdout)
    assert links and f"port={first.port}" in links[0]
    state = json.loads((tmp_path / "state.json").read_text())
    secret = parse_secret(state["secret"])
    assert secret.kind is SecretKind.FAKE_TLS and secret.domain == DOMAIN
    assert f"secret={secret.to_hex()}" in links[0]
    assert oct(os.stat(tmp_path / "state.json").st_mode & 0o777) == "0o600"

    async def echo(port: int) -> None:
        client = await open_client("127.0.0.1", port, secret)
        await client.send(b"gen!")
        assert await client.recv_exactly(4) == b"gen!"
        await client.close()

    run(echo(first.port))
    assert first.stop() == 0
    second = start_proxy("-D", DOMAIN)
    assert f"secret={secret.to_hex()}" in second.stdout
    run(echo(second.port))


def test_healthcheck(start_proxy: ProxyFactory, secret: Secret) -> None:
    from mtproxy.cli.healthcheck import healthcheck_command

    proxy = start_proxy("-S", secret.to_hex())
    assert healthcheck_command(["-p", str(proxy.stats_port), "--port", str(proxy.port), "-q"]) == 0
    assert healthcheck_command(["-p", str(free_port()), "-q", "--timeout", "1"]) == 1
    proxy.stop()
    assert healthcheck_command(["-p", str(proxy.stats_port), "-q", "--timeout", "1"]) == 1


def test_official_command_line(tmp_path: Path, peers: BackgroundPeers) -> None:
    """`-u nobody -p 8888 -H 443 -S <hex> --aes-pwd proxy-secret proxy-multi.conf -M 1` with our ports. The
    files name a relay that refuses (a loopback port nobody listens on): every client goes direct, served.
    test_middle_proxy.py runs the same command line with relays that answer."""
    secret = Secret(os.urandom(16), SecretKind.CLASSIC)
    (tmp_path / "proxy-secret").write_bytes(os.urandom(128))
    (tmp_path / "proxy-multi.conf").write_text(f"proxy_for 1 127.0.0.1:{free_port()};\n")
    port, stats_port = free_port(), free_port()
    args = ["-u", "nobody", "-p", str(stats_port), "-H", str(port), "-S", secret.to_hex(),
            "--aes-pwd", "proxy-secret", "proxy-multi.conf", "-M", "1", "-P", "0" * 32,
            "--dc-override", f"*=127.0.0.1:{peers.dc_port}", "--mask", f"127.0.0.1:{peers.mask_port}",
            "--cert-size", "2000", "--state-file", str(tmp_path / "state.json")]
    proxy = ProxyProcess(args, tmp_path / "official.log", cwd=tmp_path).wait_ready()
    try:
        proxy.wait_log("all relays down")
        assert "middle proxy: 1 relays for 1 DC ids (proxy-secret file, proxy-multi.conf file)" in proxy.log
        if os.getuid() == 0:
            assert "running as nobody" in proxy.log

        async def scenario(host: str) -> None:
            for mode in ("classic", "dd"):
                client = await open_client(host, port, secret_for_mode(secret, mode))
                await client.send(b"official")
                assert await client.recv_exactly(8) == b"official"
                await client.close()

        run(scenario("127.0.0.1"))
        if socket.has_ipv6:
            run(scenario("::1"))  # -H listens on IPv6 too
        assert stats_of(stats_port)["handshakes_ok"] in ("2", "4")
    finally:
        assert proxy.stop() == 0


def test_bad_flags_exit_2(tmp_path: Path) -> None:
    for args in (["-S", "nothex"], ["-M", "0", "-S", "00" * 16], ["--dc-override", "x=1", "-S", "00" * 16]):
        done = subprocess.run([sys.executable, "-m", "mtproxy.runtime", *args], capture_output=True, text=True,
                              timeout=20, env=dict(os.environ, MTPROXY_ROOT=str(tmp_path)))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("mtproxy run: ")


def test_max_connections(start_proxy: ProxyFactory, secret: Secret) -> None:
    proxy = start_proxy("-S", secret.to_hex(), "--max-connections", "2")

    async def scenario() -> None:
        held = [await open_client("127.0.0.1", proxy.port, secret) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once, nothing said
        writer.close()
        for client in held:
            await client.close()

    run(scenario())
    assert stats_of(proxy.stats_port)["refused_by_limit"] == "1"
