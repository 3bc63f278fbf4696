"""One set of checks everywhere: setup (flags, variables, answers), set-port, set-workers, set-server and the
global --server refuse the same values with the same one-line error, never a traceback, never a secret."""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtproxy.cli import setup, validation
from mtproxy.cli.errors import ExitStatus, mask_secrets
from mtproxy.cli.validation import Invalid
from mtproxy.host.layout import HostLayout
from mtproxy.host.runner import Runner
from mtproxy.paths import Paths
from mtproxy.settings import DEFAULT_STATS_PORT, read_settings
from mtproxy.testkit.process import free_port

from .conftest import Result, cli_env, no_host_tools

Cli = Callable[..., Result]
SECRET = "dd00112233445566778899aabbccddeeff"
LINK = f"tg://proxy?server=203.0.113.7&port=443&secret={SECRET}"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """Held on 127.0.0.1 only, as Xray holds 8443: a wildcard bind then fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("value", [0, "0", " 0 "])
def test_port_zero_is_an_error_not_the_default(value: object) -> None:
    with pytest.raises(Invalid, match="0 does not mean the default"):
        validation.port_number(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["65536", "-1", "abc", "", "80.5", True])
def test_port_must_be_a_whole_number_in_range(value: object) -> None:
    with pytest.raises(Invalid) as caught:
        validation.port_number(value)  # type: ignore[arg-type]
    assert caught.value.status == ExitStatus.USAGE and caught.value.todo


def test_port_checks_reserved_stats_vpn_and_in_use(tmp_path: Path, busy_port: int) -> None:
    for port, why in ((443, "VLESS Reality"), (22, "SSH"), (80, "HTTP fallback"),
                      (DEFAULT_STATS_PORT, "stats endpoint")):
        with pytest.raises(Invalid, match=why) as caught:
            validation.check_port(port, tmp_path, DEFAULT_STATS_PORT)
        assert caught.value.status == ExitStatus.CONFLICT
    with pytest.raises(Invalid, match="already in use") as caught:
        validation.check_port(busy_port, tmp_path, DEFAULT_STATS_PORT)
    assert caught.value.free_port is not None and str(caught.value.free_port) in caught.value.todo
    port = free_port()
    assert validation.check_port(str(port), tmp_path, DEFAULT_STATS_PORT).value == port


def test_workers_zero_and_too_many_are_errors_and_more_than_cores_warns() -> None:
    for value in (0, "0", 65, "x"):
        with pytest.raises(Invalid):
            validation.check_workers(value)
    assert validation.check_workers(4, cores=2).warnings
    assert validation.check_workers(2, cores=2).warnings == ()


@pytest.mark.parametrize("value", ["10.0.0.1", "192.168.1.5", "127.0.0.1", "100.64.0.1", "fd00::1", "localhost",
                                   "proxy.local", "myhost"])
def test_server_private_or_unresolvable_is_warned(value: str) -> None:
    checked = validation.check_server(value)
    assert checked.value == value and checked.warnings


@pytest.mark.parametrize("value", ["1.1.1.1", "proxy.example.com", "Proxy.Example.com.", "2606:4700::1111"])
def test_server_public_is_accepted_quietly(value: str) -> None:
    checked = validation.check_server(value)
    assert checked.warnings == () and checked.value == value.lower().rstrip(".")


@pytest.mark.parametrize("value", [LINK, f"https://t.me/proxy?server=1.1.1.1&port=443&secret={SECRET}", SECRET,
                                   "host:443", "1.2.3.999", "0.0.0.0", "a b", "-bad-.example.com", "", "ex_ample.com"])
def test_server_refused_without_echoing_a_secret(value: str) -> None:
    with pytest.raises(Invalid) as caught:
        validation.check_server(value)
    assert SECRET not in str(caught.value) and caught.value.todo


def test_domain_type_and_ufw_mode() -> None:
    assert validation.check_domain(" WWW.Example.com ") == "www.example.com"
    assert validation.check_secret_type("Fake-TLS") == "ee" and validation.check_secret_type("classic") == "plain"
    assert validation.check_ufw_mode(" Allow") == "allow"
    for check, bad in ((validation.check_domain, "not a domain"), (validation.check_secret_type, "xx"),
                       (validation.check_ufw_mode, "bogus")):
        with pytest.raises(Invalid) as caught:
            check(bad)
        assert caught.value.todo


def test_mask_secrets_only_masks_what_parses_as_a_secret() -> None:
    text = f"port {SECRET} is not a valid integer; /tmp/pytest-of-root/test_something_long_name0"
    masked = mask_secrets(text, [SECRET])
    assert SECRET not in masked and "dd0011…eeff" in masked and "test_something_long_name0" in masked


# ------------------------------------------------------------------------------------------- the commands


def test_set_port_zero_is_an_error(cli: Cli, paths: Paths) -> None:
    result = cli("set-port", "0")
    assert result.status == ExitStatus.USAGE and "0 does not mean the default" in result.err
    assert not paths.settings_file.exists()


def test_set_workers_zero_is_an_error(cli: Cli, paths: Paths) -> None:
    result = cli("set-workers", "0")
    assert result.status == ExitStatus.USAGE and result.err.count("\n") == 1
    assert not paths.settings_file.exists()


def test_set_server_warns_about_a_private_address(cli: Cli, paths: Paths) -> None:
    result = cli("set-server", "10.1.2.3")
    assert result.status == ExitStatus.OK
    assert "warning: 10.1.2.3 is a private or reserved address" in result.err
    assert read_settings(paths.settings_file).server == "10.1.2.3"


@pytest.mark.parametrize("args", [("set-server", LINK), ("set-server", SECRET), ("set-port", SECRET),
                                  ("--server", LINK, "list-secrets"), ("show-config", SECRET),
                                  ("add-secret", "--fake-tls", SECRET), ("list-secrets", SECRET),
                                  ("set-port", LINK)])
def test_errors_never_echo_a_secret(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.status != ExitStatus.OK
    assert result.err.startswith("mtproxy: ") and result.err.count("\n") == 1, result.err
    assert SECRET not in result.err + result.out


def test_bad_global_server_is_one_line(cli: Cli) -> None:
    result = cli("--server", "a b", "list-secrets")
    assert result.status == ExitStatus.USAGE
    assert result.err.startswith("mtproxy: --server: ") and " — give only the host" in result.err


def test_bad_server_variable_is_named(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path / "root"), "MTPROXY_SERVER": "host:443"}
    proc = subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "list-secrets"], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == ExitStatus.USAGE
    assert proc.stderr.startswith("mtproxy: MTPROXY_SERVER: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [("set-port", "PORT"), ("set-workers", "2"), ("set-server", "proxy.example.com"),
                                  ("add-secret", "--label", "x"), ("regenerate-secret", "a", "--yes"),
                                  ("remove-secret", "a", "--yes")])
def test_global_dry_run_never_claims_a_change(cli: Cli, paths: Paths, args: tuple[str, ...]) -> None:
    assert cli("add-secret", "--label", "a").status == ExitStatus.OK
    before = {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file() and p.suffix != ".lock"}
    argv = [str(free_port()) if a == "PORT" else a for a in args]
    result = cli("--dry-run", *argv)
    assert result.status == ExitStatus.OK, result.err
    assert "✓ saved" not in result.out and "would" in result.out
    assert not any(line.startswith("✓") and "would" not in line for line in result.out.splitlines()), result.out
    after = {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file() and p.suffix != ".lock"}
    assert after == before


# ------------------------------------------------------------------------------------------- setup


def _setup(tmp_path: Path, *args: str, **variables: str) -> tuple[int, str]:
    environ = {"MTPROXY_ROOT": str(tmp_path / "root"), "MTPROXY_SYSCONF": str(tmp_path / "etc"), **variables}
    out, err = io.StringIO(), io.StringIO()
    status = setup.main(["-n", "--manager", "none", "--dry-run", *args], env=environ, stdin=io.StringIO(),
                        stdout=out, runner=Runner(dry_run=True, which=no_host_tools), stderr=err)
    return status, err.getvalue() + out.getvalue()  # a refusal is on stderr (the CLI's edge), before any output


@pytest.mark.parametrize(("args", "variables", "words"), [
    (("--type", "xx"), {}, "secret type 'xx' is not one of ee, dd, plain — answer ee"),
    (("--type", "ee", "--domain", "bad domain"), {}, "fake-TLS domain"),
    (("--type", "dd", "--server", LINK), {}, "not a link or a secret — give only the host"),
    (("--type", "dd", "--server", "host:8443"), {}, "the port comes from"),
    (("--type", "dd"), {"MTPROXY_UFW": "bogus"}, "MTPROXY_UFW 'bogus' is not one of limit, allow, skip — "),
    (("--type", "dd", "--port", "0"), {}, "--port: port 0 is not a port"),
    (("--type", "dd"), {"MTPROXY_PORT": "0"}, "MTPROXY_PORT: port 0 is not a port"),
    (("--type", "dd", "--workers", "0"), {}, "--workers: 0 workers is out of range"),
    (("--type", "dd"), {"MTPROXY_WORKERS": "two"}, "MTPROXY_WORKERS must be a whole number, not 'two'"),
])
def test_setup_bad_values_are_one_line_with_a_hint(tmp_path: Path, args: tuple[str, ...],
                                                   variables: dict[str, str], words: str) -> None:
    port = [] if "--port" in args or "MTPROXY_PORT" in variables else ["--port", str(free_port())]
    status, out = _setup(tmp_path, *port, *args, **variables)
    assert status == 1, out
    assert out.startswith("mtproxy-setup: ") and out.count("\n") == 1 and " — " in out, out
    assert words in out and SECRET not in out
    assert not (tmp_path / "root").exists() and not (tmp_path / "etc").exists()


@pytest.mark.parametrize("port", ["443", "22", str(DEFAULT_STATS_PORT), "BUSY"])
def test_setup_and_set_port_refuse_the_same_ports(tmp_path: Path, cli: Cli, busy_port: int, port: str) -> None:
    value = str(busy_port) if port == "BUSY" else port
    status, out = _setup(tmp_path, "--type", "dd", "--port", value)
    refused = cli("set-port", value)
    assert status == 1 and refused.status == ExitStatus.CONFLICT
    what = refused.err.removeprefix("mtproxy: ").split(" — ")[0]
    assert out.startswith(f"mtproxy-setup: {what} — pick a free port"), (out, refused.err)


def test_setup_warns_about_a_private_server(tmp_path: Path) -> None:
    status, out = _setup(tmp_path, "--type", "dd", "--port", str(free_port()), "--server", "192.168.0.10")
    assert status == 0, out
    assert "warning: 192.168.0.10 is a private or reserved address" in out


def test_setup_questions_use_the_same_checks(tmp_path: Path) -> None:
    """Bad answers are explained and asked again; the accepted values are what the plan carries."""
    paths = Paths(tmp_path / "root")
    port = free_port()
    answers = "\n".join(["y", "0", "443", str(port), "0", "2", "xx", "ee", "bad domain", "www.example.com",
                         LINK, "10.0.0.7", "bogus", "allow"]) + "\n"
    out = io.StringIO()
    ns = argparse.Namespace(port=None, workers=None, domain=None, server=None, secret_type=None, ufw=None,
                            manager="none", image=None, build_script=None, local_base=False,
                            behind_haproxy=False, haproxy_config=None, haproxy_port=443, haproxy_check=None,
                            haproxy_reload=None, mask=None)
    plan = setup.gather(ns, {}, setup.Asker(io.StringIO(answers), out), Runner(which=no_host_tools), paths,
                        HostLayout.resolve(paths.root, {"MTPROXY_SYSCONF": str(tmp_path / "etc")}))
    text = out.getvalue()
    assert plan is not None
    assert (plan.port, plan.workers, plan.secret_type, plan.domain, plan.server, plan.ufw_mode) == (
        port, 2, "ee", "www.example.com", "10.0.0.7", "allow")
    for said in ("port 0 is not a port", "port 443 is reserved for VLESS Reality", "0 workers is out of range",
                 "secret type 'xx' is not one of", "fake-TLS domain", "not a link or a secret",
                 "warning: 10.0.0.7 is a private", "'bogus' is not one of limit, allow, skip"):
        assert said in text, said
    assert SECRET not in text


def test_setup_process_never_shows_a_traceback(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path / "root"), "MTPROXY_SYSCONF": str(tmp_path / "etc")}
    proc = subprocess.run([sys.executable, "-m", "mtproxy.cli.main", "setup", "-n", "--manager", "none", "--type",
                           "nonsense", "--dry-run"], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    # errors go to stderr through the CLI's one edge, as every other command's do
    assert proc.stderr.startswith("mtproxy-setup: secret type 'nonsense'") and proc.stderr.count("\n") == 1
