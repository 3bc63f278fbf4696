"""The proxy behind HAProxy, with Debian's haproxy for real: the PROXY headers it sends parse with our parser,
and the integration edits a stack-like config, which `haproxy -c` accepts and a running HAProxy then routes
by SNI (the proxy's domain to the proxy's loopback port with a v2 header, any other name to the TLS stand-in
for Xray Reality); a failed check or reload leaves the file as it was; removal gives it back byte for byte.

The tests that start HAProxy run only in a private network namespace (see tests/integration/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.host import haproxy
from mtproxy.host.runner import Runner
from mtproxy.protocol.client import build_client_hello
from mtproxy.protocol.proxyheader import Command, Endpoint, Family, ProxyHeader, parse
from mtproxy.testkit.haproxy import HaproxyProcess
from mtproxy.testkit.process import free_port
from mtproxy.testkit.servers import self_signed_context

from .test_wizard import Terminal, _cli, _env

DOMAIN = "www.example.com"
SITE = "site.example.org"
HAPROXY = shutil.which("haproxy")
WAIT = 10.0  # every wait on HAProxy or a socket is bounded by this


def only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


needs_netns = pytest.mark.skipif(not only_loopback(), reason="starts HAProxy: only in a private network namespace")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="Debian's haproxy is not installed")


# ---------------------------------------------------------------- real processes and sockets


class Recorder:
    """A TCP listener that keeps what each connection sent (until the sender stops or WAIT passes)."""

    def __init__(self, host: str = "127.0.0.1", want: int = 4096, port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.want = want
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(1.0)
        deadline = time.monotonic() + WAIT
        with conn:
            while len(data) < self.want and time.monotonic() < deadline:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                data += chunk
        with self.lock:
            self.received.append(data)

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received)} connections recorded, {count} expected")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(WAIT)
        self.sock.close()


class TlsStandIn:
    """The stand-in for Xray Reality: a real TLS server that completes handshakes and notes each SNI."""

    def __init__(self) -> None:
        self.context = self_signed_context("reality.invalid")
        self.names: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _ctx: self.names.append(name)  # type: ignore[assignment]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(WAIT)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"reality")
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(WAIT)
        self.sock.close()


def tls_reaches_stand_in(port: int, name: str) -> bool:
    """A real TLS client through HAProxy: True when the handshake completes with the stand-in."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            return tls.recv(16) == b"reality"
    except (OSError, ssl.SSLError):
        return False


def send_fake_tls_hello(port: int, name: str = DOMAIN) -> tuple[Endpoint, bytes]:
    """The ClientHello an ee client sends for `name`; returns the client's own address and the hello."""
    hello = build_client_hello(os.urandom(16), name, os.urandom, time.time())
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        host, client_port = sock.getsockname()[:2]
        sock.sendall(hello)
        sock.shutdown(socket.SHUT_WR)
        try:
            sock.recv(1)  # until HAProxy closes: the backend took what it was going to take
        except OSError:
            pass
    return Endpoint(host, client_port), hello


def header_of(data: bytes) -> ProxyHeader:
    result = parse(data)
    assert isinstance(result, ProxyHeader), result
    return result


# ---------------------------------------------------------------- the parser against HAProxy's own headers


@needs_haproxy
@needs_netns
def test_parser_reads_the_headers_haproxy_sends(tmp_path: Path) -> None:
    v1, v2, checks = Recorder(), Recorder(), Recorder()
    p1, p2 = free_port(), free_port()
    config = tmp_path / "pp.cfg"
    config.write_text(f"""defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend v1
    bind 127.0.0.1:{p1}
    bind ::1:{p1}
    default_backend v1
frontend v2
    bind 127.0.0.1:{p2}
    bind ::1:{p2}
    default_backend v2
backend v1
    server s 127.0.0.1:{v1.port} send-proxy
backend v2
    server s 127.0.0.1:{v2.port} send-proxy-v2
backend health
    server s 127.0.0.1:{checks.port} send-proxy-v2 check check-send-proxy inter 200ms
""")
    proxy = HaproxyProcess(config)
    try:
        sent = []
        for port in (p1, p2):
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(WAIT)
                    sock.connect((host, port))
                    sent.append((port, Endpoint(*sock.getsockname()[:2]), Endpoint(host, port)))
                    sock.sendall(b"payload")
                    sock.shutdown(socket.SHUT_WR)
                    with contextlib.suppress(OSError):
                        sock.recv(1)
        by_source = {}
        for data in v1.wait_for(2) + v2.wait_for(2):
            header = header_of(data)
            assert data[header.consumed:] == b"payload"
            assert header.command is Command.PROXY and header.source is not None
            by_source[header.source] = header
        for port, client, frontend in sent:
            header = by_source[client]
            assert header.version == (1 if port == p1 else 2)
            assert header.family is (Family.TCP6 if ":" in client.host else Family.TCP4)
            assert header.destination == frontend
        # HAProxy's health checks send a v2 header with the LOCAL command: no client to take.
        check = header_of(checks.wait_for(1)[0])
        assert (check.version, check.command, check.client) == (2, Command.LOCAL, None)
    finally:
        proxy.stop()
        for recorder in (v1, v2, checks):
            recorder.close()


# ---------------------------------------------------------------- the integration, on a stack-like config


STACK = """global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s

frontend vless_443
    bind :{public}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend site if {{ req.ssl_sni -i {site} }}
    default_backend xray

backend xray
    server xray 127.0.0.1:{reality}

backend site
    server site 127.0.0.1:{reality}
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, int, TlsStandIn]]:
    reality = TlsStandIn()
    public = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(STACK.format(public=public, site=SITE, reality=reality.port))
    yield config, public, reality
    reality.close()


@needs_haproxy
@needs_netns
def test_sni_routing_behind_a_running_haproxy(stack: tuple[Path, int, TlsStandIn]) -> None:
    config, public, reality = stack
    original = config.read_bytes()
    proxy_side = Recorder()
    proxy = HaproxyProcess(config)
    try:
        assert tls_reaches_stand_in(public, DOMAIN) and tls_reaches_stand_in(public, SITE)
        runner = Runner()
        ctl = haproxy.Control(("haproxy", "-c", "-f", "{file}"), proxy.reload_argv)
        assert haproxy.add(runner, config, [DOMAIN], proxy_side.port, ctl, public_port=public) is True
        proxy.wait_loaded(2)
        edited = config.read_text()
        assert subprocess.run([HAPROXY or "haproxy", "-c", "-f", str(config)], capture_output=True,
                              timeout=WAIT).returncode == 0
        assert edited.count(haproxy.BEGIN) == 2 and f"127.0.0.1:{proxy_side.port} send-proxy-v2" in edited
        # Re-running changes nothing (no reload either).
        assert haproxy.add(runner, config, [DOMAIN], proxy_side.port, ctl, public_port=public) is False

        client, hello = _routed_hello(public, proxy_side)
        data = proxy_side.received[-1]
        header = header_of(data)
        assert (header.version, header.command, header.source) == (2, Command.PROXY, client)
        assert header.destination == Endpoint("127.0.0.1", public)
        assert data[header.consumed:] == hello  # the client's bytes, untouched, after the header
        assert tls_reaches_stand_in(public, SITE) and tls_reaches_stand_in(public, "other.example.net")
        assert reality.names[-2:] == [SITE, "other.example.net"]
        assert DOMAIN not in reality.names[2:]

        assert haproxy.remove(runner, config, ctl) is True
        proxy.wait_loaded(3)
        assert config.read_bytes() == original
        assert haproxy.remove(runner, config, ctl) is False
        assert _eventually(lambda: tls_reaches_stand_in(public, DOMAIN))
    finally:
        proxy.stop()
        proxy_side.close()


def _routed_hello(public: int, proxy_side: Recorder, name: str = DOMAIN) -> tuple[Endpoint, bytes]:
    """After a reload the old worker may still take a connection or two: retry, bounded."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        before = len(proxy_side.received)
        client, hello = send_fake_tls_hello(public, name)
        try:
            proxy_side.wait_for(before + 1)
            return client, hello
        except AssertionError:
            continue
    raise AssertionError("the proxy's domain never reached the proxy's port")


def _eventually(predicate: object) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@needs_haproxy
def test_a_refused_check_leaves_the_file_as_it_was(stack: tuple[Path, int, TlsStandIn]) -> None:
    config, public, _ = stack
    broken = config.read_text().replace("    server xray 127.0.0.1:", "    server xray 127.0.0.1:not-a-port ")
    config.write_text(broken)
    ctl = haproxy.Control(("haproxy", "-c", "-f", "{file}"), ("true",))
    with pytest.raises(haproxy.HaproxyError, match="HAProxy refuses the edited config") as caught:
        haproxy.add(Runner(), config, [DOMAIN], 8444, ctl, public_port=public)
    assert "ALERT" in caught.value.what
    assert config.read_text() == broken
    assert sorted(p.name for p in config.parent.iterdir()) == ["haproxy.cfg"]  # no check file left behind


@needs_haproxy
def test_a_failed_reload_puts_the_previous_file_back(stack: tuple[Path, int, TlsStandIn]) -> None:
    config, public, _ = stack
    original = config.read_bytes()
    ctl = haproxy.Control(("haproxy", "-c", "-f", "{file}"), ("false",))
    with pytest.raises(haproxy.HaproxyError, match=r"reloading HAProxy failed.*previous config was put back"):
        haproxy.add(Runner(), config, [DOMAIN], 8444, ctl, public_port=public)
    assert config.read_bytes() == original


# ---------------------------------------------------------------- the edit itself, without HAProxy running


def _edit(text: str, port: int = 443, domains: tuple[str, ...] = (DOMAIN,)) -> str:
    return haproxy.with_block(text, list(domains), 8444, port)


PLAIN = """frontend https
    mode tcp
    bind :443
    default_backend xray

backend xray
    server xray 127.0.0.1:8443"""


def test_rules_go_before_the_routing_and_only_what_is_missing() -> None:
    edited = _edit(STACK.format(public=443, site=SITE, reality=9000))
    lines = edited.splitlines()
    mine = lines.index(f"    use_backend mtproxy if {{ req.ssl_sni -i {DOMAIN} }}")
    assert mine < lines.index(f"    use_backend site if {{ req.ssl_sni -i {SITE} }}")
    assert edited.count("tcp-request inspect-delay") == 1 and edited.count("req_ssl_hello_type 1") == 1
    bare = _edit(PLAIN, domains=(DOMAIN, "Cdn.Example.NET", DOMAIN))
    assert "    tcp-request inspect-delay 5s\n    tcp-request content accept if { req_ssl_hello_type 1 }" in bare
    assert bare.count("use_backend mtproxy") == 2 and "-i cdn.example.net }" in bare
    assert bare.endswith("send-proxy-v2\n# END mtproxy")  # the file had no final newline; still none
    assert haproxy.without_block(bare) == PLAIN


def test_re_running_replaces_the_block() -> None:
    once = _edit(PLAIN)
    again = haproxy.with_block(once, ["new.example.com"], 9555, 443)
    assert again.count(haproxy.BEGIN) == 2 and DOMAIN not in again and "127.0.0.1:9555" in again
    assert haproxy.without_block(again) == PLAIN


@pytest.mark.parametrize(("text", "message"), [
    (PLAIN.replace(":443", ":8443"), "no frontend in the HAProxy config binds port 443"),
    (PLAIN.replace("mode tcp", "mode http"), "mode http, not tcp"),
    ("defaults\n    mode http\n" + PLAIN.replace("    mode tcp\n", ""), "mode http, not tcp"),
    (PLAIN + "\nlisten other\n    bind 0.0.0.0:443\n", "several frontends bind port 443"),
    (PLAIN + "\nbackend mtproxy\n    server x 127.0.0.1:1\n", "already has a backend named mtproxy"),
])
def test_configs_we_cannot_edit_are_refused(text: str, message: str) -> None:
    with pytest.raises(haproxy.HaproxyError, match=message):
        _edit(text)


def test_bind_forms_that_serve_the_port() -> None:
    for bind in ("bind *:443", "bind 0.0.0.0:443 v4v6", "bind :::443", "bind [::]:443", "bind ipv4@:443",
                 "bind 192.0.2.1:80,192.0.2.1:443"):
        assert haproxy.find_frontend(PLAIN.replace("bind :443", bind), 443).name == "https", bind
    with pytest.raises(haproxy.HaproxyError):
        haproxy.find_frontend(PLAIN.replace("bind :443", "bind :4430"), 443)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    ctl = haproxy.Control(("true",), ("true",))
    missing = tmp_path / "nothing.cfg"
    with pytest.raises(haproxy.HaproxyError, match="does not exist"):
        haproxy.locate(missing, tmp_path)
    directory = tmp_path / "dir.cfg"
    directory.mkdir()
    with pytest.raises(haproxy.HaproxyError, match="cannot read the HAProxy config"):
        haproxy.add(Runner(), directory, [DOMAIN], 8444, ctl)
    binary = tmp_path / "bin.cfg"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(haproxy.HaproxyError, match="not UTF-8"):
        haproxy.add(Runner(), binary, [DOMAIN], 8444, ctl)
    assert haproxy.remove(Runner(), missing, ctl) is False


def test_missing_haproxy_binary_is_named(tmp_path: Path) -> None:
    runner = Runner(which=lambda _name: None)
    with pytest.raises(haproxy.HaproxyError, match="haproxy program is not installed") as caught:
        haproxy.control(runner, tmp_path / "haproxy.cfg", None, "true")
    assert "--haproxy-check" in caught.value.todo
    given = haproxy.control(runner, tmp_path / "h.cfg", "docker exec vless_haproxy haproxy -c -f {file}", "true")
    assert given.check == ("docker", "exec", "vless_haproxy", "haproxy", "-c", "-f", "{file}")


def test_discovery_says_which_file_and_never_guesses(tmp_path: Path) -> None:
    root, etc = tmp_path / "opt" / "vless", tmp_path / "etc"
    with pytest.raises(haproxy.HaproxyError, match="no HAProxy config found"):
        haproxy.locate(None, root, etc)
    assert haproxy.stack_config(root, etc) is None
    stack_file = root / "config" / "haproxy.cfg"
    stack_file.parent.mkdir(parents=True)
    stack_file.write_text(PLAIN)
    found = haproxy.locate(None, root, etc)
    assert found.path == stack_file and "VPN stack's" in found.why
    system = etc / "haproxy" / "haproxy.cfg"
    system.parent.mkdir(parents=True)
    system.write_text(PLAIN)
    with pytest.raises(haproxy.HaproxyError, match="several HAProxy configs exist") as caught:
        haproxy.locate(None, root, etc)
    assert "--haproxy-config" in caught.value.todo
    assert haproxy.locate(system, root, etc).why == "given with --haproxy-config"


# ---------------------------------------------------------------- setup and uninstall, as an operator runs them


@needs_haproxy
@needs_netns
def test_setup_behind_haproxy_then_uninstall(tmp_path: Path, stack: tuple[Path, int, TlsStandIn]) -> None:
    """`mtproxy setup -n --behind-haproxy`: the proxy's settings name the loopback port and the PROXY header,
    links carry HAProxy's port, HAProxy routes the domain there; uninstall gives the config back."""
    config, public, _ = stack
    original = config.read_bytes()
    port = free_port()
    proxy = HaproxyProcess(config)
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.10")
    try:
        args = ["setup", "-n", "--manager", "none", "--port", str(port), "--type", "ee", "--domain", DOMAIN,
                "--behind-haproxy", "--haproxy-config", str(config), "--haproxy-port", str(public),
                "--haproxy-reload", shlex.join(proxy.reload_argv)]
        result = _cli(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"HAProxy: {config} (given with --haproxy-config)" in result.stdout
        # DOMAIN goes to the default backend, and no Xray config says whether that is Xray: no guess
        assert f"Mask: {DOMAIN}:443, the engine's default (HAProxy sends {DOMAIN} to backend xray" in result.stdout
        assert "may be Xray's" in result.stdout
        proxy.wait_loaded(2)
        root = tmp_path / "root"
        settings = json.loads((root / "config/mtproxy/mtproxy_config.json").read_text())
        assert (settings["port"], settings["listen"], settings["proxy_protocol"]) == (
            public, [f"127.0.0.1:{port}"], True)
        assert f"server=192.0.2.10&port={public}&secret=ee" in (root / "data/mtproxy/mtproxy_link.txt").read_text()
        record = json.loads((root / "mtproxy/install.json").read_text())
        assert record["schema"] == 3 and record["port"] == port and record["ufw_mode"] == "skip"
        assert record["haproxy"]["config"] == str(config) and record["haproxy"]["public_port"] == public
        assert f"127.0.0.1:{port} send-proxy-v2" in config.read_text()
        # fail2ban bans where clients connect (the engine names them by the PROXY header): HAProxy's port
        jail = (tmp_path / "etc/fail2ban/jail.d/mtproxy.conf").read_text()
        assert re.search(rf"^port\s*=\s*{public}$", jail, re.M), jail

        # A re-run changes nothing in HAProxy's file and does not reload it.
        again = _cli(tmp_path, *args, env=env)
        assert again.returncode == 0 and "already in place" in again.stdout, again.stdout + again.stderr

        proxy_side = Recorder(port=port)
        try:
            client, hello = _routed_hello(public, proxy_side)
            header = header_of(proxy_side.received[-1])
            assert header.source == client and proxy_side.received[-1][header.consumed:] == hello
        finally:
            proxy_side.close()
        assert tls_reaches_stand_in(public, SITE)

        removed = _cli(tmp_path, "uninstall", "--yes", env=env)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert f"removed the mtproxy rules in {config}" in removed.stdout
        assert config.read_bytes() == original
        proxy.wait_loaded(3)
        assert _eventually(lambda: tls_reaches_stand_in(public, DOMAIN))
    finally:
        proxy.stop()


@needs_haproxy
def test_setup_refusals_change_nothing(tmp_path: Path, stack: tuple[Path, int, TlsStandIn]) -> None:
    config, _, _ = stack
    original = config.read_bytes()
    base = ["setup", "-n", "--manager", "none", "--port", str(free_port()), "--haproxy-config", str(config),
            "--haproxy-reload", "true", "--behind-haproxy"]
    plain = _cli(tmp_path, *base, "--type", "dd")
    assert plain.returncode != 0 and "needs a fake-TLS (ee) secret" in plain.stderr
    wrong_port = _cli(tmp_path, *base, "--type", "ee", "--domain", DOMAIN, "--haproxy-port", "4430")
    assert wrong_port.returncode != 0 and "no frontend in the HAProxy config binds port 4430" in wrong_port.stderr
    missing = _cli(tmp_path, "setup", "-n", "--manager", "none", "--port", str(free_port()), "--behind-haproxy",
                   "--haproxy-reload", "true", "--type", "ee", "--domain", DOMAIN)
    assert missing.returncode != 0 and "no HAProxy config found" in missing.stderr
    assert config.read_bytes() == original and not (tmp_path / "root").exists()


@needs_haproxy
def test_the_wizard_asks_only_when_it_finds_the_stacks_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "config").mkdir(parents=True)
    stack_file = root / "config" / "haproxy.cfg"
    public = free_port()
    stack_file.write_text(STACK.format(public=public, site=SITE, reality=free_port()))
    argv = [sys.executable, "-m", "mtproxy.cli.main", "setup", "--manager", "none", "--haproxy-port", str(public),
            "--haproxy-reload", "true"]
    term = Terminal(argv, _env(tmp_path))
    term.answer("Install the MTProxy add-on now?", "y")
    term.answer("Public port", str(free_port()))
    term.answer("Worker processes", "1")
    term.answer("Secret type", "ee")
    term.answer("Fake-TLS domain", DOMAIN)
    term.expect(f"HAProxy config found: {stack_file}")
    term.answer("through HAProxy", "y")
    term.answer("Server address or domain for links", "192.0.2.10")
    term.expect("mtproxy is installed.")
    assert term.finish() == 0, term.screen
    assert "UFW rule" not in term.screen  # behind HAProxy the loopback port needs none
    assert "the VPN stack's HAProxy config" in term.screen
    assert f"use_backend mtproxy if {{ req.ssl_sni -i {DOMAIN} }}" in stack_file.read_text()


@needs_haproxy
def test_leaving_haproxy_on_a_re_run_takes_the_block_away(tmp_path: Path, stack: tuple[Path, int, TlsStandIn]) -> None:
    config, public, _ = stack
    config.write_bytes(config.read_bytes().replace(b"\n", b"\r\n"))  # CRLF lines, too, come back byte for byte
    original = config.read_bytes()
    port = free_port()
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.10")
    args = ["setup", "-n", "--manager", "none", "--port", str(port), "--type", "ee", "--domain", DOMAIN,
            "--haproxy-config", str(config), "--haproxy-port", str(public), "--haproxy-reload", "true"]
    bad_mask = _cli(tmp_path, *args, "--behind-haproxy", "--mask", "site.example.org", env=env)
    assert bad_mask.returncode != 0 and "--mask: mask must be HOST:PORT" in bad_mask.stderr
    first = _cli(tmp_path, *args, "--behind-haproxy", "--mask", "127.0.0.1:9443", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Mask: 127.0.0.1:9443 (given with --mask)" in first.stdout
    assert haproxy.has_block(config.read_text()) and config.read_bytes() != original
    kept = _cli(tmp_path, *args, env=env)  # no flag: the earlier run's choice stands
    assert kept.returncode == 0 and "already in place" in kept.stdout, kept.stdout + kept.stderr
    assert "Mask: 127.0.0.1:9443 (kept from the settings file" in kept.stdout
    # doctor looks at the port the proxy binds (loopback), not HAProxy's port in the links
    doctor = _cli(tmp_path, "doctor", "--offline", "--json", env=env)
    ports = [f for f in json.loads(doctor.stdout)["findings"] if f["group"] == "port"]
    assert [f["name"] for f in ports] == [f"port {port}"], doctor.stdout + doctor.stderr
    left = _cli(tmp_path, *args, "--no-behind-haproxy", "--ufw", "skip", env=env)
    assert left.returncode == 0, left.stdout + left.stderr
    assert config.read_bytes() == original
    settings = json.loads((tmp_path / "root/config/mtproxy/mtproxy_config.json").read_text())
    assert settings["port"] == port and settings["proxy_protocol"] is False and "listen" not in settings
    jail = (tmp_path / "etc/fail2ban/jail.d/mtproxy.conf").read_text()
    assert re.search(rf"^port\s*=\s*{port}$", jail, re.M), jail  # back on the proxy's own port
    assert json.loads((tmp_path / "root/mtproxy/install.json").read_text())["haproxy"] is None


# ---------------------------------------------------------------- the block follows the secrets and the settings


@needs_haproxy
@needs_netns
def test_the_block_follows_secrets_domain_base_and_port(tmp_path: Path, stack: tuple[Path, int, TlsStandIn]) -> None:
    """Behind a running HAProxy: setup takes the stack's site as the mask; the domain base routes every own
    host name (a ClientHello for a new --own-domain secret reaches the proxy's loopback port); other ee
    domains come and go with their secrets; a failed reload keeps the store change and says how to re-apply;
    set-port moves the loopback port and the block; uninstall gives the file back."""
    config, public, reality = stack
    original = config.read_bytes()
    port = free_port()
    proxy = HaproxyProcess(config)
    loads = 1
    env = _env(tmp_path, MTPROXY_SERVER="192.0.2.10")
    root = tmp_path / "root"
    settings_file = root / "config/mtproxy/mtproxy_config.json"

    def reloaded() -> None:
        nonlocal loads
        loads += 1
        proxy.wait_loaded(loads)

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        result = _cli(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    try:
        setup = ok("setup", "-n", "--manager", "none", "--port", str(port), "--type", "ee", "--domain", SITE,
                   "--behind-haproxy", "--haproxy-config", str(config), "--haproxy-port", str(public),
                   "--haproxy-reload", shlex.join(proxy.reload_argv))
        reloaded()
        # The stack routes SITE to its own site: that is the mask, shown and saved.
        site = f"127.0.0.1:{reality.port}"
        assert f"Mask: {site}, the stack's own site (HAProxy sends {SITE} to backend site" in setup.stdout
        assert json.loads(settings_file.read_text())["mask"] == site

        based = ok("set-secret-domain-base", "users.example.com")
        reloaded()
        assert "haproxy: routes *.users.example.com" in based.stdout
        assert "{ req.ssl_sni -i -m end .users.example.com }" in config.read_text()

        added = ok("add-secret", "--own-domain", "--label", "carol", "--json")
        own_name = json.loads(added.stdout)["domain"]
        assert own_name.endswith(".users.example.com")
        assert own_name not in config.read_text()  # the base's rule covers it: no reload needed
        proxy_side = Recorder(port=port)
        try:
            _routed_hello(public, proxy_side, own_name)
            other = ok("add-secret", "--fake-tls", "other.example.net", "--label", "other")
            reloaded()
            assert "haproxy: routes" in other.stdout and "other.example.net" in config.read_text()
            _routed_hello(public, proxy_side, "other.example.net")
        finally:
            proxy_side.close()
        ok("remove-secret", "other", "--yes")
        reloaded()
        assert "other.example.net" not in config.read_text()
        assert _eventually(lambda: tls_reaches_stand_in(public, "other.example.net"))

        # A reload that fails: the secret stays, the file is as it was, the message says how to re-apply.
        record_file = root / "mtproxy/install.json"
        record = json.loads(record_file.read_text())
        record["haproxy"]["reload"] = ["false"]
        record_file.write_text(json.dumps(record))
        before = config.read_bytes()
        failed = ok("add-secret", "--fake-tls", "third.example.net", "--label", "third")
        assert "HAProxy NOT updated: reloading HAProxy failed" in failed.stderr
        assert "the change above stands" in failed.stderr and "`mtproxy setup -n` re-applies" in failed.stderr
        assert config.read_bytes() == before
        assert "third" in ok("list-secrets").stdout
        record["haproxy"]["reload"] = list(proxy.reload_argv)
        record_file.write_text(json.dumps(record))
        again = ok("setup", "-n", "--manager", "none")  # the recorded file, port and commands
        reloaded()
        assert "third.example.net" in config.read_text() and "already in place" not in again.stdout

        # set-port moves the loopback port and HAProxy's server line; links keep HAProxy's port.
        links = (root / "data/mtproxy/mtproxy_link.txt").read_text()
        refused = _cli(tmp_path, "set-port", str(free_port()), "--no-restart", env=env)
        assert refused.returncode == 2 and "needs the restart" in refused.stderr
        moved_to = free_port()
        moved = ok("set-port", str(moved_to))
        reloaded()
        assert f"loopback port set to {moved_to} (was {port}); links keep HAProxy's port {public}" in moved.stdout
        settings = json.loads(settings_file.read_text())
        assert (settings["port"], settings["listen"]) == (public, [f"127.0.0.1:{moved_to}"])
        assert f"127.0.0.1:{moved_to} send-proxy-v2" in config.read_text()
        assert (root / "data/mtproxy/mtproxy_link.txt").read_text() == links
        assert json.loads(record_file.read_text())["port"] == moved_to
        proxy_side = Recorder(port=moved_to)
        try:
            _routed_hello(public, proxy_side, own_name)
            status = _cli(tmp_path, "status", "--json", env=env)
            shown = json.loads(status.stdout)
            assert (shown["port"], shown["listen"]) == (public, [f"127.0.0.1:{moved_to}"])
            checks = {c["name"]: c for c in shown["checks"]}
            # the loopback port is probed (a recorder, not an engine, holds it), not HAProxy's port
            assert f"{moved_to}/tcp accepts connections" in checks["port"]["detail"]
            assert checks["firewall"]["ok"] is None and "behind HAProxy" in checks["firewall"]["detail"]
        finally:
            proxy_side.close()

        ok("uninstall", "--yes")
        reloaded()
        assert config.read_bytes() == original
    finally:
        proxy.stop()


def test_a_restart_behind_haproxy_keeps_the_loopback_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' `port` is HAProxy's (443) behind it: applying the settings (set-workers, set-port) must
    record and bind the `listen` port, never move the install to HAProxy's port."""
    from mtproxy.host.layout import HostLayout
    from mtproxy.host.record import HaproxyRecord, InstallRecord, ownership
    from mtproxy.host.service import restart_proxy
    from mtproxy.paths import Paths
    from mtproxy.settings import update_settings

    monkeypatch.setenv("MTPROXY_SYSCONF", str(tmp_path / "etc"))
    paths = Paths(tmp_path / "root")
    paths.settings_file.parent.mkdir(parents=True)
    update_settings(paths.settings_file, port=443, extra={"listen": ["127.0.0.1:8444"]})
    layout = HostLayout.resolve(paths.root)
    layout.install_record.parent.mkdir(parents=True)
    InstallRecord.new(paths, 8444, "none", "skip", "mtproxy:local", [], False, False, 8888,
                      HaproxyRecord("/nonexistent/haproxy.cfg", 443, ("true",), ("true",))).save(layout.install_record)
    restart_proxy(Runner(), paths, ownership(paths, layout))
    assert InstallRecord.load(layout.install_record).port == 8444  # type: ignore[union-attr]
