"""set-port, set-workers, set-server: validation (range, reserved, really free), saving, links rewritten."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest

from mtproxy.cli.errors import ExitStatus
from mtproxy.paths import Paths
from mtproxy.settings import read_settings
from mtproxy.testkit.process import free_port

from .conftest import SERVER, Result

Cli = Callable[..., Result]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on, on 127.0.0.1 only (as Xray does with 8443)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_set_port_saves_and_rewrites_links(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "a")
    value = json.loads(paths.secrets_file.read_text())["secrets"][0]["value"]
    port = free_port()
    result = cli("set-port", str(port))
    assert result.status == ExitStatus.OK, result.err
    assert read_settings(paths.settings_file).port == port
    assert f"port set to {port} (was 8443)" in result.out
    assert "no proxy is running" in result.out
    link = f"tg://proxy?server={SERVER}&port={port}&secret={value}"
    assert paths.default_link_file.read_text().splitlines()[0] == link
    assert cli("show-config", "--no-qr").out.count(link) == 1
    again = cli("set-port", str(port))
    assert again.status == ExitStatus.OK and "nothing to do" in again.out


def test_set_port_refuses_a_port_in_use_even_on_loopback_only(cli: Cli, paths: Paths, busy_port: int) -> None:
    result = cli("set-port", str(busy_port))
    assert result.status == ExitStatus.CONFLICT
    assert result.err.startswith(f"mtproxy: port {busy_port} cannot be used: already in use — pick")
    assert not paths.settings_file.exists()


@pytest.mark.parametrize(("port", "why"), [("443", "VLESS Reality"), ("8888", "stats endpoint"), ("22", "SSH")])
def test_set_port_refuses_reserved_ports(cli: Cli, paths: Paths, port: str, why: str) -> None:
    result = cli("set-port", port)
    assert result.status == ExitStatus.CONFLICT and why in result.err
    assert "mtproxy set-port" in result.err  # a suggestion of a free port
    assert not paths.settings_file.exists()


def test_set_port_refuses_the_vpn_stacks_xray_inbounds(cli: Cli, paths: Paths) -> None:
    port = free_port()
    (paths.root / "config").mkdir(parents=True)
    (paths.root / "config" / "config.json").write_text(json.dumps({"inbounds": [{"port": port, "tag": "vless"}]}))
    result = cli("set-port", str(port))
    assert result.status == ExitStatus.CONFLICT and "Xray inbound vless" in result.err


@pytest.mark.parametrize("port", ["0", "65536", "-5"])
def test_set_port_out_of_range(cli: Cli, port: str) -> None:
    result = cli("set-port", "--", port) if port.startswith("-") else cli("set-port", port)
    assert result.status == ExitStatus.USAGE


def test_set_port_not_a_number(cli: Cli) -> None:
    result = cli("set-port", "http")
    assert result.status == ExitStatus.USAGE and "not a valid integer" in result.err


def test_set_workers(cli: Cli, paths: Paths) -> None:
    result = cli("set-workers", "2")
    assert result.status == ExitStatus.OK, result.err
    assert read_settings(paths.settings_file).workers == 2
    assert cli("set-workers", "0").status == ExitStatus.USAGE
    assert cli("set-workers", "65").status == ExitStatus.USAGE
    assert read_settings(paths.settings_file).workers == 2


def test_settings_file_keeps_other_keys_and_is_atomic_json(cli: Cli, paths: Paths) -> None:
    paths.settings_file.parent.mkdir(parents=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "domain": "www.example.com", "workers": 3,
                                               "allow_classic": True, "dc_override": ["*=127.0.0.1:9"]}))
    assert cli("set-workers", "1").status == ExitStatus.OK
    doc = json.loads(paths.settings_file.read_text())
    assert doc["domain"] == "www.example.com" and doc["workers"] == 1 and doc["port"] == 8443
    # The engine's own keys in the shared file survive a CLI change.
    assert doc["allow_classic"] is True and doc["dc_override"] == ["*=127.0.0.1:9"]


def test_malformed_settings_file_is_reported_and_untouched(cli: Cli, paths: Paths) -> None:
    paths.settings_file.parent.mkdir(parents=True)
    paths.settings_file.write_text('{"port": "eighty"}')
    before = paths.settings_file.read_bytes()
    for args in (["set-port", str(free_port())], ["set-workers", "2"], ["add-secret"]):
        result = cli(*args)
        assert result.status == ExitStatus.DATA, args
        assert str(paths.settings_file) in result.err and "port must be" in result.err
    assert paths.settings_file.read_bytes() == before


def test_set_server_and_guess(cli: Cli, paths: Paths) -> None:
    cli("add-secret", "--label", "a")
    result = cli("set-server", "proxy.example.net", server_override=None)
    assert result.status == ExitStatus.OK, result.err
    assert read_settings(paths.settings_file).server == "proxy.example.net"
    assert "server=proxy.example.net&" in paths.default_link_file.read_text()
    assert cli("set-server", "http://x/y").status == ExitStatus.USAGE
    assert cli("set-server").status == ExitStatus.USAGE
    assert cli("set-server", "--guess").status == ExitStatus.OK
    assert read_settings(paths.settings_file).server is None


def test_proxy_protocol_reads_false_from_older_files_and_is_kept(cli: Cli, paths: Paths) -> None:
    """A file written before `proxy_protocol` existed means no PROXY header; once set by setup, CLI changes
    keep it, and a value that is not a boolean is refused as the other keys are."""
    paths.settings_file.parent.mkdir(parents=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "port": 443, "listen": ["127.0.0.1:8444"]}))
    assert read_settings(paths.settings_file).proxy_protocol is False
    assert cli("set-workers", "2").status == ExitStatus.OK
    doc = json.loads(paths.settings_file.read_text())
    assert doc["proxy_protocol"] is False and doc["listen"] == ["127.0.0.1:8444"]
    doc["proxy_protocol"] = True
    paths.settings_file.write_text(json.dumps(doc))
    assert cli("set-workers", "1").status == ExitStatus.OK
    assert json.loads(paths.settings_file.read_text())["proxy_protocol"] is True
    paths.settings_file.write_text(json.dumps({**doc, "proxy_protocol": "yes"}))
    refused = cli("set-workers", "2")
    assert refused.status != ExitStatus.OK and "'proxy_protocol' must be true or false" in refused.err


def test_set_secret_domain_base_saves_checks_and_clears(cli: Cli, paths: Paths) -> None:
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(json.dumps({"version": 1, "port": 8443, "allow_classic": True}))
    dry = cli("--dry-run", "set-secret-domain-base", "users.example.com")
    assert dry.status == ExitStatus.OK and read_settings(paths.settings_file).secret_domain_base is None
    result = cli("set-secret-domain-base", "Users.Example.com.")
    assert result.status == ExitStatus.OK, result.err
    assert "*.users.example.com" in result.out  # what it needs: wildcard DNS and certificate
    doc = json.loads(paths.settings_file.read_text())
    assert doc["secret_domain_base"] == "users.example.com" and doc["allow_classic"] is True
    before = paths.settings_file.read_bytes()
    for bad in ("localhost", "x" * 180 + ".com", "users.example.com/path"):
        refused = cli("set-secret-domain-base", bad)
        assert refused.status == ExitStatus.USAGE and "secret_domain_base" in refused.err, bad
    assert cli("set-secret-domain-base").status == ExitStatus.USAGE
    assert cli("set-secret-domain-base", "a.example.com", "--clear").status == ExitStatus.USAGE
    assert paths.settings_file.read_bytes() == before
    cleared = cli("set-secret-domain-base", "--clear")
    assert cleared.status == ExitStatus.OK and "was users.example.com" in cleared.out
    assert "secret_domain_base" not in json.loads(paths.settings_file.read_text())
