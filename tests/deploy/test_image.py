"""The image and the Compose service for real: build (local debootstrapped base), run on an --internal
network against a fake DC, health, restart after a crash, graceful SIGTERM, the log fail2ban reads.

The wizard's Compose file is used unchanged except for one override: `network_mode: host` becomes
`container:<holder>`, a container on the internal network whose namespace plays the host's (the proxy
shares it exactly as it shares the host's), and the container name gets a test suffix.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtproxy.crypto import native
from mtproxy.host import docker as host_docker
from mtproxy.host import templates
from mtproxy.host.runner import Runner

from .conftest import REPO

pytestmark = pytest.mark.docker
IMAGE = "mtproxy:test"
SECRET = "dd00112233445566778899aabbccddeeff"
DC_PORT = 9443


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def inspect(name: str, fmt: str) -> str:
    return sh("docker", "inspect", "--format", fmt, name).stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    started = time.monotonic()
    proc = subprocess.run([str(REPO / "deploy/docker/build-image.sh"), "--local-base", "--tag", IMAGE],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"\nimage build (base cached or not): {time.monotonic() - started:.0f} s\n{proc.stderr[-600:]}")
    yield IMAGE


@dataclass
class Stack:
    net: str
    holder: str
    holder_ip: str
    dc: str
    container: str
    compose: list[str]
    root: Path


def _ip(name: str, net: str) -> str:
    return inspect(name, f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}')


def _client(net: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return sh("docker", "run", "--rm", "--network", net, "--entrypoint", "python3", IMAGE, "-c", code,
              check=False, timeout=timeout)


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    net, holder, dc = f"mtptest-{tag}", f"mtptest-host-{tag}", f"mtptest-dc-{tag}"
    container = f"vless_mtproxy_test_{tag}"
    root = tmp_path_factory.mktemp("root")
    runner = Runner()
    sh("docker", "network", "create", "--internal", net)
    compose: list[str] = []
    try:
        sh("docker", "run", "-d", "--name", holder, "--network", net, "--entrypoint", "sleep", image, "900")
        sh("docker", "run", "-d", "--name", dc, "--network", net, "--entrypoint", "python3", image, "-c",
           "import asyncio\nfrom mtproxy.testkit.servers import FakeDc\n"
           f"async def main():\n    await FakeDc().start('0.0.0.0', {DC_PORT})\n    await asyncio.sleep(900)\n"
           "asyncio.run(main())")
        dc_ip = _ip(dc, net)
        config = root / "config/mtproxy"
        for sub in ("config/mtproxy", "logs/mtproxy", "data/mtproxy"):
            (root / sub).mkdir(parents=True)
            os.chown(root / sub, templates.CONTAINER_UID, templates.CONTAINER_UID)
        (config / "mtproxy_config.json").write_text(json.dumps(
            {"version": 1, "port": 8443, "workers": 1, "stats_port": 8888,
             "dc_override": [f"*={dc_ip}:{DC_PORT}"]}))
        (config / "mtproxy_secrets.json").write_text(json.dumps(
            {"secrets": [{"id": "s1", "label": "default", "value": SECRET, "type": "dd", "domain": None,
                          "padding_enabled": True, "created_at": "2026-11-25T00:00:00Z", "created_by": "test",
                          "active": True, "description": ""}],
             "metadata": {"last_modified": "2026-11-25T00:00:00Z", "version": 1}}))
        for f in config.iterdir():
            os.chown(f, templates.CONTAINER_UID, templates.CONTAINER_UID)
            f.chmod(0o600)
        compose_file = root / "docker-compose.yml"
        compose_file.write_text(templates.compose_file(image, root, 8443, 8888))
        override = root / "override.yml"
        override.write_text(f'version: "3.8"\nservices:\n  vless_mtproxy:\n    network_mode: "container:{holder}"\n'
                            f"    container_name: {container}\n")
        base = host_docker.compose_argv(runner, compose_file)[:-4]  # the v1/v2 program, without -p/-f
        compose = [*base, "-p", f"mtptest{tag}", "-f", str(compose_file), "-f", str(override)]
        yield Stack(net, holder, _ip(holder, net), dc, container, compose, root)
    finally:
        if compose:
            sh(*compose, "down", "-t", "5", check=False, timeout=120)
        sh("docker", "rm", "-f", holder, dc, check=False)
        sh("docker", "network", "rm", net, check=False)


def _wait_health(container: str, want: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}") == want:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{container} not {want} after {timeout} s:\n"
                         + inspect(container, "{{json .State}}") + "\n"
                         + sh("docker", "logs", container, check=False).stderr[-3000:])


def test_image_is_small_and_unprivileged(image: str) -> None:
    size = int(inspect(image, "{{.Size}}"))
    print(f"\nimage size: {size / 1e6:.1f} MB")
    assert size < 180e6
    assert inspect(image, "{{.Config.User}}") == "10001:10001"
    assert "mtproxy" in inspect(image, "{{json .Config.Healthcheck.Test}}")
    assert "healthcheck" in inspect(image, "{{json .Config.Healthcheck.Test}}")
    no_pip = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                "import importlib.util as u; print(u.find_spec('pip') is None)").stdout.strip()
    assert no_pip == "True"
    # the wheel is built on this host: where the native AES library loads here, it must load in the image
    loads = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
               "from mtproxy.crypto import native; print(native.open_library() is not None)").stdout.strip()
    assert loads == str(native.open_library() is not None)


def test_compose_service_healthy_within_10s_and_relays(stack: Stack) -> None:
    sh(*stack.compose, "up", "-d", timeout=180)
    elapsed = _wait_health(stack.container, "healthy", 10)
    print(f"\nhealthy after {elapsed:.1f} s")
    cfg = json.loads(sh("docker", "inspect", stack.container).stdout)[0]
    host = cfg["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}
    assert cfg["Config"]["User"] == "10001:10001"
    assert SECRET[2:] not in json.dumps(cfg)  # secrets only in the mounted store, never in the config
    code = (
        "import asyncio, os\n"
        "from mtproxy.protocol.secret import parse_secret\n"
        "from mtproxy.testkit.client import open_client\n"
        "async def main():\n"
        f"    c = await open_client('{stack.holder_ip}', 8443, parse_secret('{SECRET}'), timeout=10)\n"
        "    data = os.urandom(200000)\n"
        "    await c.send(data)\n"
        "    assert await c.recv_exactly(len(data)) == data\n"
        "    await c.close()\n"
        "    print('echo-ok')\n"
        "asyncio.run(main())\n"
    )
    result = _client(stack.net, code)
    assert "echo-ok" in result.stdout, result.stderr[-3000:]


def test_rejected_handshake_lines_match_the_filter(stack: Stack, tmp_path: Path) -> None:
    """A prober container sends garbage; the container's log file names exactly its address."""
    prober = f"mtptest-prober-{uuid.uuid4().hex[:6]}"
    code = (
        "import os, socket\n"
        "for _ in range(3):\n"
        f"    s = socket.create_connection(('{stack.holder_ip}', 8443), timeout=5)\n"
        "    s.sendall(os.urandom(64)); s.shutdown(socket.SHUT_WR)\n"
        "    s.settimeout(5)\n"
        "    try:\n        s.recv(100)\n    except OSError:\n        pass\n"
        "    s.close()\n"
        "import time; time.sleep(3)\n"
    )
    sh("docker", "run", "-d", "--name", prober, "--network", stack.net, "--entrypoint", "python3", IMAGE,
       "-c", code)
    try:
        prober_ip = _ip(prober, stack.net)
        sh("docker", "wait", prober, timeout=60)
    finally:
        sh("docker", "rm", "-f", prober, check=False)
    log_file = stack.root / "logs/mtproxy" / templates.LOG_NAME
    deadline = time.monotonic() + 10
    while log_file.read_text().count(f"rejected handshake from {prober_ip} ") < 3:
        assert time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.2)
    filter_file = tmp_path / "mtproxy.conf"
    filter_file.write_text(templates.fail2ban_filter())
    out = sh("fail2ban-regex", "-o", "ip", str(log_file), str(filter_file)).stdout.split()
    assert out and set(out) == {prober_ip}


def test_killed_process_is_restarted(stack: Stack) -> None:
    _wait_health(stack.container, "healthy", 20)
    restarts = int(inspect(stack.container, "{{.RestartCount}}"))
    pid = int(inspect(stack.container, "{{.State.Pid}}"))
    os.kill(pid, 9)  # the engine dies (not `docker stop`): the restart policy must bring it back
    deadline = time.monotonic() + 30
    while int(inspect(stack.container, "{{.RestartCount}}")) <= restarts:
        assert time.monotonic() < deadline, "Docker did not restart the container"
        time.sleep(0.2)
    _wait_health(stack.container, "healthy", 30)


def test_fail2ban_ban_blocks_a_container_client(stack: Stack, tmp_path: Path) -> None:
    """The real fail2ban with the shipped jail, in the namespace the proxy container shares: the client
    container that sent 5 bad handshakes is refused, another client container still gets through."""
    _wait_health(stack.container, "healthy", 20)
    holder_pid = inspect(stack.holder, "{{.State.Pid}}")
    log_file = stack.root / "logs/mtproxy" / templates.LOG_NAME
    proc = subprocess.run(
        ["nsenter", f"--net=/proc/{holder_pid}/ns/net", "unshare", "-m", "--", sys.executable, "-m",
         "tests.deploy.scenarios", "fail2ban_container", str(tmp_path), stack.net, IMAGE, stack.holder_ip,
         str(log_file), SECRET],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nban latency after the 5th bad handshake: {r['ban_latency']} s")
    assert r["a_bad"] == ["ok"] * 5
    assert r["banned"] == [r["a_ip"]]
    assert r["a_after"] == ["refused"]
    assert r["b_after"] == "ok"
    assert f"-A f2b-mtproxy -s {r['a_ip']}/32 -j REJECT" in r["iptables"]


def test_sigterm_stops_gracefully_before_the_deadline(stack: Stack) -> None:
    """SIGTERM with a live session: the engine stops accepting, drains for up to its 10 s, exits 0 —
    well inside the 20 s Docker waits before SIGKILL."""
    _wait_health(stack.container, "healthy", 30)
    holder = f"mtptest-session-{uuid.uuid4().hex[:6]}"
    code = (
        "import asyncio, os, time\n"
        "from mtproxy.protocol.secret import parse_secret\n"
        "from mtproxy.testkit.client import open_client\n"
        "async def main():\n"
        f"    c = await open_client('{stack.holder_ip}', 8443, parse_secret('{SECRET}'), timeout=10)\n"
        "    await c.send(b'x' * 100)\n"
        "    assert await c.recv_exactly(100) == b'x' * 100\n"
        "    print('session-up', flush=True)\n"
        "    t = time.monotonic()\n"
        "    while not await c.reader.read(65536):\n"
        "        break\n"
        "    print(f'closed-after {time.monotonic() - t:.1f}', flush=True)\n"
        "asyncio.run(main())\n"
    )
    sh("docker", "run", "-d", "--name", holder, "--network", stack.net, "--entrypoint", "python3", IMAGE,
       "-c", code)
    try:
        deadline = time.monotonic() + 30
        while "session-up" not in sh("docker", "logs", holder).stdout:
            assert time.monotonic() < deadline, sh("docker", "logs", holder).stderr
            time.sleep(0.2)
        started = time.monotonic()
        sh("docker", "stop", "-t", "20", stack.container, timeout=60)
        took = time.monotonic() - started
        print(f"\ndocker stop with a live session took {took:.1f} s")
        assert inspect(stack.container, "{{.State.ExitCode}}") == "0"  # Docker's SIGKILL at 20 s gives 137
        logs = sh("docker", "logs", "--tail", "5", stack.container).stderr
        assert "draining" in logs and "stopped" in logs, logs
        sh("docker", "wait", holder, timeout=30)
        assert "closed-after" in sh("docker", "logs", holder).stdout
    finally:
        sh("docker", "rm", "-f", holder, check=False)


def test_wizard_docker_dry_run_checks_and_changes_nothing(tmp_path: Path) -> None:
    """With the Docker manager the wizard checks the engine and the image (or its build script) and,
    in a dry run, stops there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(MTPROXY_SYSCONF=str(tmp_path / "etc"), MTPROXY_ROOT=str(tmp_path / "root"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "mtproxy.cli.main", "setup", "-n", "--manager", "docker", "--ufw", "skip",
         "--port", str(port), "--type", "dd", "--image", "mtproxy:not-built-yet", "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would install docker" in result.stdout and "nothing changed" in result.stdout
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


def test_wizard_installs_the_container_and_uninstall_removes_everything(image: str, tmp_path: Path) -> None:
    """The wizard for real with Docker: Compose service (host networking), healthy, port answers; then
    uninstall leaves no container, no image tag, no host files. The secret is dd (no mask site to probe)
    and nobody authenticates, so the proxy never dials out."""
    if host_docker.state(Runner()) is not None:
        pytest.skip("a vless_mtproxy container already exists on this host; not touching it")
    tag = f"mtproxy:wizard-{uuid.uuid4().hex[:6]}"
    sh("docker", "tag", image, tag)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(MTPROXY_SYSCONF=str(tmp_path / "etc"), MTPROXY_ROOT=str(tmp_path / "root"))
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    port, stats_port = ports
    config = tmp_path / "root/config/mtproxy"
    config.mkdir(parents=True)
    (config / "mtproxy_config.json").write_text(json.dumps({"version": 1, "stats_port": stats_port}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mtproxy.cli.main", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    try:
        started = time.monotonic()
        setup = cli("setup", "-n", "--manager", "docker", "--ufw", "skip", "--type", "dd", "--port", str(port),
                    "--server", "192.0.2.1", "--image", tag)
        print(f"\nwizard with Docker: {time.monotonic() - started:.1f} s")
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "healthy" in setup.stdout and f"server=192.0.2.1&port={port}&secret=dd" in setup.stdout
        assert inspect("vless_mtproxy", "{{.State.Health.Status}}") == "healthy"
        assert inspect("vless_mtproxy", "{{.HostConfig.NetworkMode}}") == "host"
        again = cli("setup", "-n", "--manager", "docker", "--ufw", "skip", "--type", "dd", "--port", str(port),
                    "--server", "192.0.2.1", "--image", tag)
        assert again.returncode == 0, again.stdout + again.stderr  # its own running proxy is no conflict
        removed = cli("uninstall", "--yes")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert host_docker.state(Runner()) is None
        assert not host_docker.image_exists(Runner(), tag)
        files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                       if p.is_file() and not p.name.endswith(".lock"))
        assert files == ["root/config/mtproxy/mtproxy_config.json", "root/config/mtproxy/mtproxy_secrets.json"]
    finally:
        sh("docker", "rm", "-f", "vless_mtproxy", check=False)
        sh("docker", "image", "rm", tag, check=False)
