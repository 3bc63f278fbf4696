"""Firewall scenarios that must run in a fresh network AND mount namespace (`unshare -n -m`).

They use the real ufw, iptables, fail2ban and the real engine. The namespace's iptables play the host's
INPUT chain: the proxy is a process in that namespace, exactly as a host-networked container or the
systemd unit is in the host's. /etc/ufw, /etc/default, /etc/fail2ban and /run/fail2ban are replaced by
private copies through bind mounts that only this mount namespace sees, so nothing of the host changes.
A client namespace joined by a veth pair gives clients their own addresses (loopback would skip UFW).

`python3 -m tests.deploy.scenarios NAME WORKDIR [ARGS]` prints a JSON result on its last stdout line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mtproxy.host import fail2ban, ufw
from mtproxy.host.layout import HostLayout
from mtproxy.host.record import InstallRecord
from mtproxy.host.runner import Runner
from mtproxy.host.service import follow_port
from mtproxy.paths import Paths
from mtproxy.testkit.process import ProxyProcess
from mtproxy.testkit.servers import FakeDc

SERVER_IP = "10.213.0.1"
CLIENT_B = "10.213.0.2"  # the client namespace's primary address (default source)
CLIENT_A = "10.213.0.3"
SECRET = "dd0123456789abcdef0123456789abcdef"


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def refuse_unless_isolated(fresh: bool) -> None:
    """Never run against a real host: our network and mount namespaces must not be our parent's, and a
    fresh network namespace has no interface but lo."""
    parent = os.getppid()
    for kind in ("net", "mnt"):
        if os.readlink(f"/proc/self/ns/{kind}") == os.readlink(f"/proc/{parent}/ns/{kind}"):
            sys.exit(f"scenario refused: not in a private {kind} namespace")
    if fresh:
        # /proc/self/net follows the network namespace (/sys/class/net would show the host's).
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
        links = sorted(line.split(":", 1)[0].strip() for line in lines)
        if links != ["lo"]:
            sys.exit(f"scenario refused: not a fresh network namespace (interfaces: {links})")


def private_copy(source: str, workdir: Path) -> Path:
    copy = workdir / source.strip("/").replace("/", "_")
    shutil.copytree(source, copy, symlinks=True)
    sh("mount", "--bind", str(copy), source)
    return copy


def setup_mounts(workdir: Path) -> None:
    sh("mount", "--make-rprivate", "/")
    private_copy("/etc/ufw", workdir)
    default = private_copy("/etc/default", workdir)
    # ufw would also apply its sysctl file; keep even namespaced sysctls out of it.
    empty = workdir / "empty-sysctl.conf"
    empty.write_text("")
    ufw_default = default / "ufw"
    text = ufw_default.read_text()
    ufw_default.write_text(
        "\n".join(f"IPT_SYSCTL={empty}" if line.startswith("IPT_SYSCTL=") else line for line in text.splitlines())
        + "\n"
    )
    f2b = private_copy("/etc/fail2ban", workdir)
    # Debian's defaults enable sshd on the systemd journal; this scenario only wants our jail.
    (f2b / "jail.d" / "defaults-debian.conf").unlink(missing_ok=True)
    (f2b / "fail2ban.local").write_text(
        f"[Definition]\ndbfile = :memory:\nlogtarget = {workdir / 'fail2ban.log'}\n"
    )
    Path("/run/fail2ban").mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/fail2ban")


def client_namespace() -> subprocess.Popen[bytes]:
    """A sleeping process in a new network namespace, wired to this one by a veth pair."""
    holder = subprocess.Popen(["unshare", "-n", "--", "sleep", "600"])
    own = os.readlink("/proc/self/ns/net")
    for _ in range(200):
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                break
        except OSError:
            pass
        time.sleep(0.01)
    sh("ip", "link", "add", "mtp0", "type", "veth", "peer", "name", "mtp1")
    sh("ip", "link", "set", "mtp1", "netns", str(holder.pid))
    sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "mtp0")
    sh("ip", "link", "set", "mtp0", "up")
    inside = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    sh(*inside, "ip", "link", "set", "lo", "up")
    sh(*inside, "ip", "addr", "add", f"{CLIENT_B}/24", "dev", "mtp1")
    sh(*inside, "ip", "addr", "add", f"{CLIENT_A}/24", "dev", "mtp1")
    sh(*inside, "ip", "link", "set", "mtp1", "up")
    return holder


def from_client(holder: subprocess.Popen[bytes], *args: str) -> object:
    out = sh("nsenter", f"--net=/proc/{holder.pid}/ns/net", sys.executable, "-m", "tests.deploy.netclient",
             *args, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def listener(port: int) -> subprocess.Popen[bytes]:
    """A plain TCP acceptor on 0.0.0.0:port standing in for any host-networked service."""
    code = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(64)\n"
        "while True:\n    c, _ = s.accept(); c.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.3)
    return proc


def scenario_ufw_rules(workdir: Path) -> dict[str, object]:
    """Add, re-add (no-op), switch mode and remove the rule with ufw inactive, then active."""
    runner = Runner()
    out: dict[str, object] = {}
    out["inactive_add"] = ufw.add_rule(runner, 8443, "limit")
    out["inactive_readd"] = ufw.add_rule(runner, 8443, "limit")
    out["inactive_rules"] = list(ufw.state(runner).rules)
    sh("ufw", "--force", "enable")
    out["active"] = ufw.state(runner).active
    out["status"] = sh("ufw", "status").stdout
    out["switch_to_allow"] = ufw.add_rule(runner, 8443, "allow")
    out["after_switch"] = list(ufw.state(runner).rules)
    out["iptables_allow"] = sh("iptables", "-S", "ufw-user-input").stdout
    out["remove"] = ufw.remove_rule(runner, 8443)
    out["remove_again"] = ufw.remove_rule(runner, 8443)
    out["after_remove"] = list(ufw.state(runner).rules)
    out["iptables_after_remove"] = sh("iptables", "-S", "ufw-user-input").stdout
    # `mtproxy set-port` on an installed proxy: the rule follows the port (host/service.py).
    ufw.add_rule(runner, 8443, "limit")
    record = InstallRecord(8443, "none", "limit", "mtproxy:local", ufw_added=True)
    layout = HostLayout(workdir / "etc", workdir / "root")
    follow_port(runner, Paths(workdir / "root"), layout, record, 8444)
    out["after_port_change"] = list(ufw.state(runner).rules)
    out["record_port"] = InstallRecord.load(layout.install_record).port  # type: ignore[union-attr]
    # The operator's own rule for a port (no MTProxy comment) is never replaced or deleted.
    sh("ufw", "allow", "9443/tcp")
    out["operator_add"] = ufw.add_rule(runner, 9443, "limit")
    out["operator_remove"] = ufw.remove_rule(runner, 9443)
    out["operator_rules"] = [r for r in ufw.state(runner).rules if "9443" in r]
    return out


def scenario_ufw_traffic(workdir: Path) -> dict[str, object]:
    """Which new connections from one client address get through: no rule, limit, allow, removed."""
    runner = Runner()
    port = 8443
    holder = client_namespace()
    service = listener(port)
    out: dict[str, object] = {}
    try:
        out["ufw_off"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_B, "2")
        sh("ufw", "--force", "enable")
        out["no_rule"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_B, "1")
        ufw.add_rule(runner, port, "limit")
        out["limit_a"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_A, "8")
        out["limit_b"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_B, "1")
        ufw.add_rule(runner, port, "allow")
        out["allow_b"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_B, "12")
        ufw.remove_rule(runner, port)
        out["removed"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_B, "1")
    finally:
        service.kill()
        holder.kill()
        sh("ufw", "--force", "disable", check=False)
    return out


async def _fake_dc_forever(port: int, ready: Path) -> None:
    dc = FakeDc()
    await dc.start("127.0.0.1", port)
    ready.write_text("up")
    await asyncio.sleep(600)


def scenario_fail2ban_ban(workdir: Path) -> dict[str, object]:
    """The real engine logs 5 rejected handshakes from client A; the real fail2ban bans A only."""
    port, dc_port = 8443, 9443
    log_file = workdir / "logs" / "mtproxy.log"
    layout = HostLayout(Path("/etc"), workdir)
    runner = Runner()
    out: dict[str, object] = {}
    holder = client_namespace()
    dc_ready = workdir / "dc.ready"
    dc = subprocess.Popen([sys.executable, "-c",
                           "import asyncio, sys; from pathlib import Path; "
                           "from tests.deploy.scenarios import _fake_dc_forever; "
                           f"asyncio.run(_fake_dc_forever({dc_port}, Path({str(dc_ready)!r})))"])
    proxy = None
    try:
        fail2ban.install(runner, layout, log_file, port)  # fail2ban not running yet: files only
        sh("fail2ban-server", "-x", "-b")
        for _ in range(100):
            if fail2ban.running(runner):
                break
            time.sleep(0.1)
        out["jail_status"] = sh("fail2ban-client", "status", "mtproxy").stdout
        for _ in range(100):
            if dc_ready.exists():
                break
            time.sleep(0.05)
        proxy = ProxyProcess(["-H", str(port), "-S", SECRET, "--no-mask", "-p", "0",
                              "--dc-override", f"*=127.0.0.1:{dc_port}", "--log-file", str(log_file)],
                             workdir / "proxy.stderr").wait_ready()
        out["b_before"] = from_client(holder, "echo", SERVER_IP, str(port), CLIENT_B, SECRET)
        out["a_bad"] = from_client(holder, "bad", SERVER_IP, str(port), CLIENT_A, "5")
        proxy.wait_log("reason=", count=5, timeout=15)
        banned: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 60 and not banned:
            banned = fail2ban.banned(runner)
            time.sleep(0.2)
        out["ban_latency"] = round(time.monotonic() - started, 1)
        out["banned"] = banned
        out["a_after"] = from_client(holder, "connect", SERVER_IP, str(port), CLIENT_A, "1")
        out["b_after"] = from_client(holder, "echo", SERVER_IP, str(port), CLIENT_B, SECRET)
        out["iptables"] = sh("iptables", "-S").stdout
        out["log"] = log_file.read_text()
    finally:
        sh("fail2ban-client", "stop", check=False)
        if proxy is not None:
            proxy.stop()
        dc.kill()
        holder.kill()
    return out


def _in_container(net: str, image: str, code: str) -> object:
    out = sh("docker", "run", "--rm", "--network", net, "--entrypoint", "python3", image, "-c", code,
             timeout=120, check=False)
    if out.returncode != 0:
        return f"error: {out.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json, os, socket, sys
results = []
for _ in range({count}):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(({host!r}, {port}))
    except ConnectionRefusedError:
        results.append("refused"); continue
    except OSError:
        results.append("timeout"); continue
    if {bad}:
        s.sendall(os.urandom(64)); s.shutdown(socket.SHUT_WR)
        try:
            s.recv(100)
        except OSError:
            pass
    s.close(); results.append("ok")
print(json.dumps(results))
"""

ECHO = """
import asyncio, json, os
from mtproxy.protocol.secret import parse_secret
from mtproxy.testkit.client import open_client
async def main():
    c = await open_client({host!r}, {port}, parse_secret({secret!r}), timeout=10)
    data = os.urandom(5000)
    await c.send(data)
    ok = await c.recv_exactly(len(data)) == data
    await c.close()
    return "ok" if ok else "mismatch"
print(json.dumps(asyncio.run(main())))
"""


def scenario_fail2ban_container(workdir: Path, net: str, image: str, host_ip: str, log_file: str,
                                secret: str) -> dict[str, object]:
    """In the network namespace a host-networked proxy container shares (the test's holder container):
    the shipped jail bans the container that sent 5 bad handshakes; another container still gets through."""
    port = 8443
    runner = Runner()
    layout = HostLayout(Path("/etc"), workdir)
    out: dict[str, object] = {}
    fail2ban.install(runner, layout, Path(log_file), port)
    sh("fail2ban-server", "-x", "-b")
    try:
        for _ in range(100):
            if fail2ban.running(runner):
                break
            time.sleep(0.1)
        for _ in range(100):
            if sh("fail2ban-client", "status", "mtproxy", check=False).returncode == 0:
                break
            time.sleep(0.1)
        # One prober container for all of A's attempts, kept alive until B has run: a container that exits
        # frees its address and Docker hands it to the next one, which would then be "A" to the firewall.
        prober = f"mtptest-a-{os.getpid()}"
        probe = PROBE.format(count=5, host=host_ip, port=port, bad=True)
        recheck = PROBE.format(count=1, host=host_ip, port=port, bad=False)
        code = ("import os, sys, time\n"
                "def wait(flag):\n"
                "    for _ in range(1200):\n"
                "        if os.path.exists(flag):\n            return\n"
                "        time.sleep(0.1)\n"
                f"exec({probe!r})\nsys.stdout.flush()\nopen('/tmp/phase1', 'w').close()\n"
                f"wait('/tmp/go')\nexec({recheck!r})\nsys.stdout.flush()\nopen('/tmp/phase2', 'w').close()\n"
                "wait('/tmp/done')\n")
        sh("docker", "run", "-d", "--name", prober, "--network", net, "--tmpfs", "/tmp", "--entrypoint",
           "python3", image, "-c", code)

        def wait_flag(flag: str) -> None:
            deadline = time.monotonic() + 60
            while sh("docker", "exec", prober, "test", "-e", flag, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prober never reached {flag}")
                time.sleep(0.2)

        try:
            a_ip = sh("docker", "inspect", "--format",
                      f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', prober).stdout.strip()
            out["a_ip"] = a_ip
            wait_flag("/tmp/phase1")
            started = time.monotonic()
            banned: list[str] = []
            while time.monotonic() - started < 60 and not banned:
                banned = fail2ban.banned(runner)
                time.sleep(0.2)
            out["ban_latency"] = round(time.monotonic() - started, 1)
            out["banned"] = banned
            sh("docker", "exec", prober, "touch", "/tmp/go")
            wait_flag("/tmp/phase2")
            lines = sh("docker", "logs", prober).stdout.strip().splitlines()
            out["a_bad"], out["a_after"] = json.loads(lines[0]), json.loads(lines[-1])
            out["b_after"] = _in_container(net, image, ECHO.format(host=host_ip, port=port, secret=secret))
            sh("docker", "exec", prober, "touch", "/tmp/done")
        finally:
            sh("docker", "rm", "-f", prober, check=False)
        out["iptables"] = sh("iptables", "-S").stdout
    finally:
        sh("fail2ban-client", "stop", check=False)
    return out


SCENARIOS = {
    "ufw_rules": scenario_ufw_rules,
    "ufw_traffic": scenario_ufw_traffic,
    "fail2ban_ban": scenario_fail2ban_ban,
    "fail2ban_container": scenario_fail2ban_container,
}


def main(argv: list[str]) -> None:
    name, workdir, extra = argv[0], Path(argv[1]), argv[2:]
    fresh = name != "fail2ban_container"
    refuse_unless_isolated(fresh)
    if fresh:
        sh("ip", "link", "set", "lo", "up")
    setup_mounts(workdir)
    result = SCENARIOS[name](workdir, *extra)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
