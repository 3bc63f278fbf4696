"""`mtproxy doctor` against real parts on loopback: a real HTTPS mask site with its own clock, names resolved by
an injected resolver (no real name is ever looked up), a real listener holding the port, a real engine, a
store the service user cannot read, --offline proven to open no socket, --json and the exit statuses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.host.layout import HostLayout
from mtproxy.host.record import InstallRecord
from mtproxy.host.templates import CONTAINER_UID
from mtproxy.paths import Paths
from mtproxy.testkit.process import ProxyProcess, free_port
from mtproxy.testkit.servers import self_signed_context

from .conftest import SRC, Result

Cli = Callable[..., Result]

pytestmark = pytest.mark.netns

DOMAIN = "www.mask.test"  # .test is reserved: never a real name, and only the injected resolver knows it
SITE_HOST = "127.0.0.5"
SERVER = "127.0.0.9"  # the links' server in these tests (what the domain must not resolve to)


class HttpsSite:
    """A TLS 1.3 web site on loopback that answers every request with a Date header from its own clock."""

    def __init__(self, host: str, clock: Callable[[], float] = time.time, extra_names: int = 20,
                 port: int = 0) -> None:
        self.context = self_signed_context(DOMAIN, extra_names=extra_names)
        self.clock = clock
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                conn.settimeout(5)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < 8192:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request)
                    date = formatdate(self.clock(), usegmt=True)
                    tls.sendall(f"HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Length: 0\r\n"
                                "Connection: close\r\n\r\n".encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not)
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def site() -> Iterator[HttpsSite]:
    served = HttpsSite(SITE_HOST)
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def dc() -> Iterator[int]:
    """A listener standing in for every DC (dc_override *=...): the DC check dials it, nothing else."""
    with socket.create_server(("127.0.0.7", 0)) as listener:
        yield listener.getsockname()[1]


def resolver(table: dict[str, list[str]]) -> Callable[[str], list[str]]:
    """Names in `table` resolve to their addresses, addresses to themselves; any other name is an error, so
    a test that would look up a real name fails instead."""

    def resolve(name: str) -> list[str]:
        if name in table:
            return table[name]
        raise AssertionError(f"the test resolver was asked for {name!r}")

    return resolve


def configure(cli: Cli, paths: Paths, mask_port: int, dc_port: int, port: int | None = None,
              **extra: object) -> int:
    """Settings as an installation has them, a fake-TLS secret for DOMAIN; returns the proxy's port."""
    port = port or free_port()
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "port": port, "stats_port": free_port(), "mask": f"{DOMAIN}:{mask_port}",
           "dc_override": [f"*=127.0.0.7:{dc_port}"], **extra}
    paths.settings_file.write_text(json.dumps(doc))
    if not paths.secrets_file.exists():
        assert cli("add-secret", "--fake-tls", DOMAIN, "--label", "phones").status == ExitStatus.OK
    return port


def doctor(cli: Cli, *args: str, table: dict[str, list[str]], **env: object) -> tuple[Result, dict]:  # type: ignore[type-arg]
    result = cli("--server", SERVER, "doctor", "--json", "--timeout", "2", *args, resolve=resolver(table), **env)
    doc = json.loads(result.out)
    assert result.status == doc["exit_status"]
    return result, doc


def finding(doc: dict, group: str, name: str | None = None) -> dict:  # type: ignore[type-arg]
    found = [f for f in doc["findings"] if f["group"] == group and (name is None or f["name"] == name)]
    assert len(found) == 1, (group, name, doc["findings"])
    return found[0]


def test_clock_skew_is_measured_against_the_mask_sites_date(cli: Cli, paths: Paths, dc: int) -> None:
    behind = HttpsSite(SITE_HOST, clock=lambda: time.time() - 600)  # the site is 10 min behind: we are ahead
    try:
        configure(cli, paths, behind.port, dc)
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        behind.close()
    clock = finding(doc, "clock")
    assert clock["severity"] == "error", clock
    assert "ahead of" in clock["message"] and "±120 s" in clock["message"]
    skew = int(clock["message"].split("clock is ")[1].split(" s ")[0])
    assert 597 <= skew <= 603  # the Date header has one-second resolution
    assert "timedatectl set-ntp true" in clock["fix"]
    assert behind.requests and behind.requests[0].startswith(b"HEAD / HTTP/1.1\r\nHost: www.mask.test\r\n")
    assert doc["exit_status"] == 2


def test_a_right_clock_a_reachable_mask_and_dcs(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc)
    _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    assert finding(doc, "clock")["severity"] == "ok"
    mask = finding(doc, "mask")
    assert mask["severity"] == "ok" and "TLS 1.3" in mask["message"], mask
    size = int(mask["message"].split("flight ")[1].split(" bytes")[0])
    assert size > 300  # twenty extra names make a certificate no smaller than that
    dcs = finding(doc, "telegram")
    assert dcs["severity"] == "ok" and dcs["message"] == "all 1 DCs accept TCP directly", dcs
    domain = finding(doc, "dns", f"domain {DOMAIN}")
    assert domain["severity"] == "ok" and "not to this server" in domain["message"]


def test_the_default_mask_is_the_secrets_domain_on_443(cli: Cli, paths: Paths, dc: int) -> None:
    """No mask in the settings (as setup leaves it): the engine masks to the ee secret's domain on 443, and
    doctor asks that site, found through the resolver, for its flight and its clock."""
    if os.geteuid() != 0:
        pytest.skip("binding port 443 needs root")
    default = HttpsSite(SITE_HOST, port=443)
    try:
        configure(cli, paths, 443, dc)
        settings = json.loads(paths.settings_file.read_text())
        del settings["mask"]
        paths.settings_file.write_text(json.dumps(settings))
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        default.close()
    assert finding(doc, "mask")["name"] == f"mask {DOMAIN}:443"
    assert finding(doc, "mask")["severity"] == "ok" and finding(doc, "clock")["severity"] == "ok"
    assert len(default.requests) == 1


def test_a_fixed_cert_size_unlike_the_masks_is_a_warning(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc, cert_size=9000)
    _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    mask = finding(doc, "mask")
    assert mask["severity"] == "warning" and "fixes the fake one at 9000" in mask["message"], mask
    assert mask["fix"].startswith("set cert_size to ")


def test_the_domain_resolving_to_this_server_is_an_error(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc)
    _, doc = doctor(cli, table={DOMAIN: [SERVER]})
    domain = finding(doc, "dns", f"domain {DOMAIN}")
    assert domain["severity"] == "error", domain
    assert f"resolves to this server ({SERVER})" in domain["message"]
    assert "real site that is not hosted here" in domain["fix"]
    assert doc["exit_status"] == 2


def test_a_domain_that_does_not_exist_and_an_unreachable_mask(cli: Cli, paths: Paths, dc: int) -> None:
    configure(cli, paths, free_port(SITE_HOST), dc)
    _, doc = doctor(cli, table={DOMAIN: []})
    domain = finding(doc, "dns", f"domain {DOMAIN}")
    assert domain["severity"] == "error" and "does not exist in DNS" in domain["message"], domain
    mask = finding(doc, "mask")
    assert mask["severity"] == "error" and "does not resolve" in mask["message"]
    assert finding(doc, "clock")["severity"] == "skipped"

    _, doc = doctor(cli, table={DOMAIN: ["127.0.0.6"]})  # resolves, but nothing listens there
    mask = finding(doc, "mask")
    assert mask["severity"] == "error" and "connection refused" in mask["message"], mask
    assert "choose another real site" in mask["fix"]


def test_the_port_held_by_another_program_is_named(cli: Cli, paths: Paths, site: HttpsSite, dc: int,
                                                   tmp_path: Path) -> None:
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys,time\n"
         f"s=socket.create_server(('127.0.0.1',{port}))\nprint('up',flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        configure(cli, paths, site.port, dc, port=port)
        _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
        held = finding(doc, "port")
        assert held["severity"] == "error", held
        assert f"(pid {holder.pid}) on 127.0.0.1, not by the proxy" in held["message"], held
        assert held["message"].startswith(f"{port}/tcp is held by python")
        assert "mtproxy set-port " in held["fix"]
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    _, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    free = finding(doc, "port")
    assert free["severity"] == "error" and f"nothing listens on {port}/tcp" in free["message"]


def test_a_running_engine_holds_its_port_and_only_warnings_remain(cli: Cli, paths: Paths, site: HttpsSite,
                                                                  dc: int, tmp_path: Path) -> None:
    """An engine run by hand for the root: the port is ours, the store served; what is left are warnings
    (no installed service, and the links' address is not public), so the exit status is 1."""
    port = configure(cli, paths, site.port, dc)
    settings = json.loads(paths.settings_file.read_text())
    proxy = ProxyProcess(["--listen", f"127.0.0.1:{port}", "-p", str(settings["stats_port"]),
                          "--secrets-file", str(paths.secrets_file), "--mask", f"{SITE_HOST}:{site.port}",
                          "--dc-override", f"*=127.0.0.7:{dc}"], tmp_path / "engine.log")
    try:
        proxy.wait_ready()
        result, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    finally:
        proxy.stop()
    assert finding(doc, "port")["severity"] == "ok", finding(doc, "port")
    assert "accepts a local connection" in finding(doc, "port")["message"]
    assert finding(doc, "installation", "secrets")["severity"] == "ok"
    bad = {(f["group"], f["name"]): f["severity"] for f in doc["findings"] if f["severity"] not in ("ok", "skipped")}
    assert bad == {("installation", "service"): "warning", ("dns", f"server {SERVER}"): "warning"}, doc
    assert result.status == doc["exit_status"] == 1
    assert doc["counts"] == {"skipped": 0, "ok": len(doc["findings"]) - 2, "warning": 2, "error": 0}


def test_a_store_the_service_user_cannot_read(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    """Docker's image runs as a fixed uid; a store left root 0600 (the VPN installer's doing) is an error
    with the chown that fixes it, even while the proxy is stopped."""
    configure(cli, paths, site.port, dc)
    layout = HostLayout.resolve(paths.root)
    InstallRecord.new(paths, 8443, "docker", "limit", "mtproxy:local", [], False, False, 8888).save(
        layout.install_record)
    paths.secrets_file.chmod(0o600)
    if paths.secrets_file.stat().st_uid == CONTAINER_UID:
        pytest.skip("the test user is the container's uid")
    _, doc = doctor(cli, "--offline", table={})
    store = finding(doc, "installation", "secrets")
    assert store["severity"] == "error", store
    assert f"the proxy (uid {CONTAINER_UID}) cannot read {paths.secrets_file}" in store["message"]
    assert store["fix"].startswith(f"chown {CONTAINER_UID} {paths.secrets_file}")
    docker = finding(doc, "installation", "docker")
    assert docker["severity"] == "error" and "docker command is not installed" in docker["message"]
    paths.secrets_file.chmod(0o644)
    _, doc = doctor(cli, "--offline", table={})
    assert finding(doc, "installation", "secrets")["severity"] == "ok"


def test_human_output_groups_findings_with_marks(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc)
    result = cli("--server", SERVER, "doctor", "--timeout", "2", resolve=resolver({DOMAIN: [SERVER]}))
    lines = result.out.splitlines()
    assert lines[0].startswith("MTProxy doctor: ") and "error" in lines[0]
    groups = [line for line in lines if line and not line.startswith(" ")][1:]
    assert groups == ["installation", "port", "clock", "dns", "mask", "telegram"]
    assert f"  ✗ domain {DOMAIN}: {DOMAIN} resolves to this server ({SERVER})" in result.out
    assert "  ✓ DCs: all 1 DCs accept TCP directly" in result.out
    assert any(line.startswith("      fix: ") for line in lines)
    assert result.status == 2


def test_json_schema(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    configure(cli, paths, site.port, dc)
    result, doc = doctor(cli, table={DOMAIN: [SITE_HOST]})
    assert set(doc) == {"kind", "version", "offline", "exit_status", "counts", "findings"}
    assert doc["kind"] == "doctor" and doc["version"] == 1 and doc["offline"] is False
    assert set(doc["counts"]) == {"ok", "warning", "error", "skipped"}
    assert sum(doc["counts"].values()) == len(doc["findings"])
    for item in doc["findings"]:
        assert set(item) == {"group", "name", "severity", "message", "fix"}
        assert item["severity"] in ("ok", "warning", "error", "skipped")
        assert item["group"] in ("installation", "port", "clock", "dns", "mask", "telegram")
        assert item["message"] and "\n" not in item["message"]
        if item["severity"] == "error":
            assert item["fix"], item
        if item["severity"] in ("ok", "skipped"):
            assert not item["fix"], item
    worst = {"error": 2, "warning": 1}
    expected = max((worst.get(f["severity"], 0) for f in doc["findings"]), default=0)
    assert result.status == expected


# Run as an operator would (Env.from_process), except that names come from DOCTOR_HOSTS when it is set.
_RUN = """
import json, os, sys
events = []
def hook(event, args):
    if event.startswith("socket."):
        events.append([event, repr(args)[:400]])
sys.addaudithook(hook)
from mtproxy.cli.env import Env
from mtproxy.cli.main import main
env = Env.from_process(None, colour=False, dry_run=False, server=None, debug=False)
hosts = json.loads(os.environ.get("DOCTOR_HOSTS", "null"))
def resolve(name):
    if name not in hosts:
        raise OSError(f"the test resolver does not know {name}")
    return hosts[name]
if hosts is not None:
    env.resolve = resolve
status = main(sys.argv[1:], env=env)
print(json.dumps(events), file=sys.stderr)
sys.exit(status)
"""


def _doctor_process(root: Path, hosts: dict[str, list[str]] | None, *args: str,
                    trace: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = root.parent / "doctor_run.py"
    script.write_text(_RUN)
    env = {**os.environ, "PYTHONPATH": SRC, "MTPROXY_ROOT": str(root), "MTPROXY_SERVER": SERVER}
    if hosts is not None:
        env["DOCTOR_HOSTS"] = json.dumps(hosts)
    strace = ["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace)] if trace else []
    return subprocess.run([*strace, sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _offline_run(root: Path, hosts: dict[str, list[str]] | None, *args: str) -> tuple[
        subprocess.CompletedProcess[str], list[list[str]]]:
    """doctor in its own process with an audit hook that records every socket the interpreter creates,
    connects, binds or resolves with (a hook cannot be removed once added, and nothing is patched)."""
    done = _doctor_process(root, hosts, *args)
    return done, json.loads(done.stderr.strip().splitlines()[-1])


def test_offline_opens_no_socket(cli: Cli, paths: Paths, site: HttpsSite, dc: int) -> None:
    """Offline, the process creates no socket of any kind: the audit hook sees every socket.socket(),
    connect, bind and getaddrinfo. The same run without --offline is seen making them (the hook works)."""
    configure(cli, paths, site.port, dc)
    done, events = _offline_run(paths.root, None, "doctor", "--offline", "--json")
    assert events == [], events
    doc = json.loads(done.stdout)
    assert doc["offline"] is True and done.returncode == doc["exit_status"]
    for group in ("clock", "dns", "mask", "telegram"):
        assert finding(doc, group)["message"] == "skipped (offline)"
    assert finding(doc, "port")["severity"] == "error"  # still read from /proc/net/tcp, without a socket
    done, events = _offline_run(paths.root, {DOMAIN: [SITE_HOST]}, "doctor", "--json", "--timeout", "1")
    assert any(e[0] == "socket.connect" and f"'127.0.0.7', {dc}" in e[1] for e in events), events
    assert any(e[0] == "socket.connect" and f"'{SITE_HOST}', {site.port}" in e[1] for e in events), events


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_offline_opens_no_network_socket_in_any_process(paths: Paths, cli: Cli, site: HttpsSite, dc: int,
                                                        tmp_path: Path) -> None:
    """The audit hook sees this interpreter only; strace -f sees every process doctor starts too."""
    configure(cli, paths, site.port, dc)
    trace = tmp_path / "trace"
    done = _doctor_process(paths.root, None, "doctor", "--offline", trace=trace)
    if "ptrace" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip("ptrace is not permitted here")
    assert done.returncode in (1, 2), done.stderr
    calls = trace.read_text().splitlines()
    assert not [c for c in calls if "AF_INET" in c], calls
    done = _doctor_process(paths.root, {DOMAIN: [SITE_HOST]}, "doctor", "--timeout", "1", trace=trace)
    assert [c for c in trace.read_text().splitlines() if "AF_INET" in c]  # online, strace does see them
