"""Make the guide's pictures from the real tools: `python3 -m tests.docs.pictures OUT_DIR` (scripts/doc-pictures
runs it in a private network namespace).

A temporary root gets settings as `mtproxy setup --behind-haproxy` leaves them (links name port 443, the engine
listens on a loopback port) and three secrets made by `mtproxy add-secret`; the engine serves them against a
fake DC on loopback while real clients use them and a few probes fail. Written to OUT_DIR:

- qr.png, qr.svg, link.txt: the QR files and links `add-secret` wrote for the secret "alice";
- qr-terminal.txt: `mtproxy show-config alice` as the terminal shows it (the QR code drawn in half blocks);
- stats-live.txt: `mtproxy stats --live` in a tmux pane, captured with `tmux capture-pane`;
- reject-lines.txt: the engine's `rejected handshake` lines for the probes, as fail2ban reads them;
- stack.txt: where the proxy sits in a vless stack, drawn from the HAProxy config `setup --behind-haproxy`
  makes of the stack's (the real `haproxy.with_block`, and the mask setup would choose from it).

The temporary root's path is written as /opt/vless and its free ports as 8444 (the proxy's loopback port)
and 8888 (stats), as an installation behind HAProxy has them. Nothing
leaves loopback: the links name proxy.example.org, never contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtproxy.host import haproxy
from mtproxy.protocol.secret import parse_secret
from mtproxy.testkit.client import ProxyClientError, open_client, send_raw
from mtproxy.testkit.process import ProxyProcess, free_port
from mtproxy.testkit.servers import FakeDc

SERVER = "proxy.example.org"
DOMAIN = "www.example.com"
INSTALLED_ROOT = "/opt/vless"
INSTALLED_PORT, INSTALLED_STATS_PORT = 8444, 8888  # the loopback port behind HAProxy, the stats port
LABELS = ("alice", "bob", "family")
# A vless stack's HAProxy config before setup: Xray (VLESS Reality) for every name but the stack's own site.
STACK_HAPROXY = """defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend vless_443
    bind :443
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend site if { req.ssl_sni -i site.example.org }
    default_backend xray

backend site
    server site 127.0.0.1:8080

backend xray
    server xray 127.0.0.1:8443
"""
STACK_NOTES = {"site": "the stack's web site", "xray": "Xray, VLESS Reality"}
PANE = ("100", "34")  # columns, rows of the captured terminal
WAIT = 30.0  # seconds any one step may take
SETTLE = 3.0


def _cli(root: Path, *args: str) -> str:
    env = {**os.environ, "NO_COLOR": "1", "MTPROXY_ROOT": str(root)}
    done = subprocess.run([sys.executable, "-m", "mtproxy.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=WAIT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mtproxy {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def _as_installed(text: str, root: Path, ports: dict[int, int]) -> str:
    """The temporary root and ports written as an installation behind HAProxy has them."""
    text = text.replace(str(root), INSTALLED_ROOT)
    for temporary, installed in ports.items():
        text = text.replace(f"127.0.0.1:{temporary}", f"127.0.0.1:{installed}")
    return text


def _section(text: str, kind: str, name: str) -> list[str]:
    """The lines of one section of an HAProxy config, without comments and blank lines."""
    found = re.search(rf"^{kind}\s+{name}\s*\n((?:[ \t]+[^\n]*\n?|\n)*)", text, re.MULTILINE)
    assert found is not None, f"no {kind} {name}"
    return [line.strip() for line in found.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def stack_diagram() -> str:
    """The routes of the stack's 443 frontend once setup added the proxy, in HAProxy's order, each to its
    backend's server; the proxy's own branch says where its connections go."""
    config = haproxy.with_block(STACK_HAPROXY, [DOMAIN], INSTALLED_PORT, 443)
    mask = haproxy.stack_mask(STACK_HAPROXY, 443, DOMAIN, {8443: "Xray"}, INSTALLED_PORT).target or f"{DOMAIN}:443"
    routes: list[tuple[str, str]] = []
    for line in _section(config, "frontend", "vless_443"):
        rule = re.fullmatch(r"use_backend (\S+) if \{ req\.ssl_sni -i (.+) \}", line)
        if rule is not None:
            routes.append((f"SNI {rule.group(2)}", rule.group(1)))
        elif line.startswith("default_backend "):
            routes.append(("any other SNI", line.split()[1]))
    lines = ["Telegram apps, VLESS clients, browsers ──▶ :443 HAProxy, frontend vless_443 (mode tcp, by SNI)"]
    width = max(len(condition) for condition, _ in routes)
    for n, (condition, backend) in enumerate(routes):
        last = n == len(routes) - 1
        server = next(line for line in _section(config, "backend", backend) if line.startswith("server "))
        target = " ".join(server.split()[2:])
        note = "mtproxy" if backend == haproxy.BACKEND else STACK_NOTES[backend]
        head = f"  {'└' if last else '├'}─ {condition.ljust(width)} ─▶ backend {backend.ljust(7)} ─▶ "
        lines.append(f"{head}{target} ({note})")
        if backend == haproxy.BACKEND:
            pad = f"  {' ' if last else '│'}" + " " * (len(head) - 3)
            lines += [f"{pad}├─ with a secret ─▶ Telegram's DCs (or Xray's SOCKS5 inbound)",
                      f"{pad}└─ anything else ─▶ the mask, {mask}, byte for byte"]
    lines.append("Without HAProxy the apps connect straight to the proxy's own port (8443, 2053, …).")
    return "\n".join(lines) + "\n"


def _secret_value(root: Path, label: str) -> str:
    store = json.loads((root / "config" / "mtproxy" / "mtproxy_secrets.json").read_text())
    return next(str(s["value"]) for s in store["secrets"] if s["label"] == label)


def _capture_stats_live(root: Path, scratch: Path) -> str:
    """`mtproxy stats --live` in a detached tmux pane on a socket of our own; the pane once it shows secrets."""
    socket_path = str(scratch / "tmux.sock")
    # Colours on, as on an operator's terminal: --live then redraws in place; capture-pane drops the colours.
    command = f"env -u NO_COLOR MTPROXY_ROOT={root} {sys.executable} -m mtproxy.cli.main stats --live --interval 1"
    tmux = ["tmux", "-S", socket_path]
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-x", PANE[0], "-y", PANE[1], command],
                   check=True, timeout=WAIT, env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + WAIT
        time.sleep(SETTLE)  # usage figures are up to a second old: let a few redraws pass
        screen = ""
        while time.monotonic() < deadline:
            time.sleep(1.0)
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True,
                                    timeout=WAIT, check=True).stdout
            if all(label in screen for label in LABELS):
                return "\n".join(line.rstrip() for line in screen.rstrip().splitlines()) + "\n"
        raise RuntimeError(f"stats --live never showed the secrets:\n{screen}")
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=WAIT, check=False, capture_output=True)


async def _traffic_and_capture(root: Path, port: int, scratch: Path) -> str:
    """Clients of every secret (some stay open), probes that fail, then the stats screen."""
    clients = []
    for n, label in enumerate(LABELS):
        secret = parse_secret(_secret_value(root, label))
        for _ in range(n + 1):
            client = await open_client("127.0.0.1", port, secret, timeout=WAIT)
            await client.send(os.urandom(64 * 1024 * (n + 1)))
            await client.recv_exactly(64 * 1024 * (n + 1))
            clients.append(client)
    for _ in range(2):  # a scanner's random bytes, then a fake-TLS client with a secret this proxy never had
        await send_raw("127.0.0.1", port, os.urandom(64), timeout=WAIT)
    with contextlib.suppress(ProxyClientError):
        stranger = await open_client("127.0.0.1", port, parse_secret("ee" + os.urandom(16).hex() + DOMAIN.encode()
                                                                    .hex()), timeout=WAIT)
        await stranger.close()
        raise RuntimeError("the proxy let a client with an unknown secret in")
    try:
        return await asyncio.to_thread(_capture_stats_live, root, scratch)
    finally:
        for client in clients:
            await client.close()


async def _serve_and_capture(root: Path, port: int, scratch: Path) -> tuple[str, str]:
    dc = FakeDc(mode="echo")
    dc_port = await dc.start()
    engine = ProxyProcess(["--no-mask", "--dc-override", f"*=127.0.0.1:{dc_port}"], scratch / "engine.log",
                          root=root)
    try:
        await asyncio.to_thread(engine.wait_ready, WAIT)
        screen = await _traffic_and_capture(root, port, scratch)
        rejects = [line for line in engine.log.splitlines() if "rejected handshake" in line]
        return screen, "\n".join(rejects) + "\n"
    finally:
        await asyncio.to_thread(engine.stop)
        await dc.close()


def make_pictures(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="doc-pictures-") as tmp:
        scratch = Path(tmp)
        root = scratch / "root"
        port, stats_port = free_port(), free_port()
        settings = root / "config" / "mtproxy" / "mtproxy_config.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"version": 1, "port": 443, "listen": [f"127.0.0.1:{port}"],
                                        "stats_port": stats_port, "server": SERVER, "domain": DOMAIN}))
        for label in LABELS:
            _cli(root, "add-secret", "--label", label)
        _cli(root, "set-limits", "family", "--quota", "20G", "--quota-period", "month", "--max-ips", "5")
        shown = _cli(root, "show-config", "alice")
        secret_id = next(s["id"] for s in json.loads(_cli(root, "list-secrets", "--json"))["secrets"]
                         if s["label"] == "alice")
        files = root / "data" / "mtproxy" / "secrets" / str(secret_id)
        for name in ("qr.png", "qr.svg", "link.txt"):
            shutil.copyfile(files / name, out / name)
        ports = {port: INSTALLED_PORT, stats_port: INSTALLED_STATS_PORT}
        (out / "qr-terminal.txt").write_text(_as_installed(shown, root, ports))
        screen, rejects = asyncio.run(_serve_and_capture(root, port, scratch))
        (out / "stats-live.txt").write_text(_as_installed(screen, root, ports))
        (out / "reject-lines.txt").write_text(_as_installed(rejects, root, ports))
    (out / "stack.txt").write_text(stack_diagram())
    return [out / name for name in ("qr.png", "qr.svg", "link.txt", "qr-terminal.txt", "stats-live.txt",
                                    "reject-lines.txt", "stack.txt")]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m tests.docs.pictures OUT_DIR")
    for made in make_pictures(Path(sys.argv[1])):
        print(made)
