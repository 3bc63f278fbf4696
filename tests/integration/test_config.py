"""Command line and settings resolution, and the DC table (no real DC address is written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtproxy.config import DEFAULT_PORT, ConfigError, HostPort, resolve
from mtproxy.runtime.dc import DEFAULT_DC, DcTable
from mtproxy.settings import read_settings
from mtproxy.store import StoreError

KEY = "0123456789abcdef0123456789abcdef"


def test_official_flags() -> None:
    cfg = resolve(["-u", "nobody", "-p", "8888", "-H", "443,8443", "-S", KEY, "-S", "dd" + KEY,
                   "--aes-pwd", "proxy-secret", "proxy-multi.conf", "-M", "3", "-P", "ab" * 16], environ={})
    assert cfg.user == "nobody" and cfg.workers == 3
    assert cfg.stats == HostPort("127.0.0.1", 8888)
    assert set(cfg.listen) == {HostPort(h, p) for h in ("0.0.0.0", "::") for p in (443, 8443)}
    assert len(cfg.secrets) == 2 and cfg.allow_classic and cfg.allow_tls
    assert cfg.middle_proxy == "auto" and not cfg.warnings  # the official command line runs the relay path
    assert cfg.mask is None  # no domain: nothing to mask to unless --mask is given
    assert cfg.fast_mode
    assert cfg.proxy_tag == bytes.fromhex("ab" * 16)
    assert cfg.aes_pwd == Path("proxy-secret") and cfg.proxy_multi_conf == Path("proxy-multi.conf")


def test_middle_proxy_flags_are_validated_up_front() -> None:
    cfg = resolve(["-S", KEY, "--nat-info", "10.0.0.5:203.0.113.7", "--nat-info", "10.0.0.6:203.0.113.8"],
                  environ={})
    assert [(str(r.local), str(r.public)) for r in cfg.nat_rules] == [("10.0.0.5", "203.0.113.7"),
                                                                      ("10.0.0.6", "203.0.113.8")]
    assert not cfg.warnings
    off = resolve(["-S", KEY, "-P", "ab" * 16, "--nat-info", "10.0.0.5:203.0.113.7", "--middle-proxy", "off"],
                  environ={})
    assert off.warnings == ("-P, --nat-info unused: --middle-proxy off relays every client directly (no ad tag"
                            " is sent)",)
    assert resolve(["-S", KEY, "--relay-config-url", "http://127.0.0.1:8/x/"], environ={}).relay_config_url == \
        "http://127.0.0.1:8/x"
    for args, problem in ((["-P", "ab" * 15], "-P: an ad tag is exactly 32 hex digits"),
                          (["-P", "zz" * 16], "-P: an ad tag is 32 hex digits (from @MTProxybot); character 1"),
                          (["--nat-info", "10.0.0.5"], "--nat-info '10.0.0.5': expected <local-addr>:<global-addr>"),
                          (["--nat-info", "10.0.0.5:proxy.example"], "both sides must be IPv4 addresses"),
                          (["--relay-config-url", "ftp://x"], "--relay-config-url: 'ftp://x' is not an http")):
        with pytest.raises(ConfigError) as err:
            resolve(["-S", KEY, *args], environ={})
        assert problem in str(err.value), args


def test_domain_means_fake_tls_only_unless_allowed() -> None:
    cfg = resolve(["-S", KEY, "-D", "example.com"], environ={})
    assert not cfg.allow_classic and cfg.allow_tls
    assert cfg.mask == HostPort("example.com", 443) and cfg.domains == ("example.com",)
    assert resolve(["-S", KEY, "-D", "example.com", "--allow-classic"], environ={}).allow_classic


def test_listen_overrides_and_ipv6() -> None:
    cfg = resolve(["--listen", "[::1]:9443", "--listen", "127.0.0.1:9443", "-S", KEY,
                   "--dc-override", "2=[2001:db8::5]:443", "--dc-override", "*=127.0.0.1:5555",
                   "--mask", "[::1]:8080", "--prefer-ipv6"], environ={})
    assert cfg.listen == (HostPort("::1", 9443), HostPort("127.0.0.1", 9443))
    assert cfg.dc_overrides == {2: HostPort("2001:db8::5", 443), None: HostPort("127.0.0.1", 5555)}
    assert cfg.mask == HostPort("::1", 8080) and cfg.prefer_ipv6


@pytest.mark.parametrize("args", [
    ["-S", "zz"], ["-M", "0"], ["-M", "65"], ["-H", "70000"], ["--listen", "8443"], ["--dc-override", "a=b:1"],
    ["--mask", "127.0.0.1:443", "-H", "443"], ["-D", "x"], ["--handshake-timeout", "-1"],
    ["--cert-size", "10"], ["-D", "example.com", "--no-tls"],
])
def test_bad_values_name_the_flag(args: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        resolve([*args, "-S", KEY] if "-S" not in args else args, environ={})
    assert str(err.value).startswith("-") or str(err.value).startswith("--")


def test_settings_file_and_root(tmp_path: Path) -> None:
    settings = tmp_path / "mtproxy_config.json"
    settings.write_text(json.dumps({"version": 1, "port": 8443, "workers": 2, "domain": "example.com",
                                    "server": "proxy.example.net", "mask": "127.0.0.1:8080", "stats_port": 9999}))
    store = tmp_path / "config" / "mtproxy" / "mtproxy_secrets.json"
    store.parent.mkdir(parents=True)
    store.write_text("")
    cfg = resolve(["--config", str(settings), "-M", "4"], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert cfg.workers == 4  # flags win over the file
    assert cfg.listen == (HostPort("0.0.0.0", 8443), HostPort("::", 8443))
    assert cfg.domains == ("example.com",) and not cfg.allow_classic
    assert cfg.mask == HostPort("127.0.0.1", 8080) and cfg.public_host == "proxy.example.net"
    assert cfg.stats == HostPort("127.0.0.1", 9999)
    assert cfg.secrets_file == store  # the root's store is served when no secret is given
    assert cfg.state_file == tmp_path / "data" / "mtproxy" / "engine_state.json"


def test_dc_table_never_fails() -> None:
    table = DcTable({}, prefer_ipv6=False)
    default = table.lookup(DEFAULT_DC)
    for bogus in (0, 6, 99, 9999, -9999):
        assert table.lookup(bogus).addresses == default.addresses
    for bogus in (10099, 32767, -32768):  # the test-DC range: the default test DC
        assert table.lookup(bogus).addresses == table.lookup(10000 + DEFAULT_DC).addresses
    for dc in (1, 2, 3, 4, 5):
        assert table.lookup(-dc).addresses == table.lookup(dc).addresses  # media: same DC
        assert ":" not in table.lookup(dc).addresses[0].host
        assert ":" in DcTable({}, prefer_ipv6=True).lookup(dc).addresses[0].host
        assert table.lookup(dc + 10000).addresses != table.lookup(dc).addresses
    assert len(table.lookup(203).addresses) == 1


def test_dc_overrides() -> None:
    one, star = HostPort("127.0.0.1", 1111), HostPort("127.0.0.1", 2222)
    assert DcTable({2: one}, False).lookup(2).addresses == (one,)
    assert DcTable({2: one}, False).lookup(-2).addresses == (one,)
    assert DcTable({2: one, None: star}, False).lookup(4).addresses == (star,)
    assert DcTable({2: one, None: star}, False).lookup(2).addresses == (one,)


def test_root_settings_read_without_config_flag(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"version": 1, "port": 9443, "workers": 1, "domain": None, "server": None,
                                    "mask": None, "stats_port": 8888}))
    cfg = resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert cfg.listen == (HostPort("0.0.0.0", 9443), HostPort("::", 9443))
    assert cfg.domains == () and cfg.allow_classic and cfg.mask is None
    missing = resolve(["-S", KEY, "--config", str(tmp_path / "nope.json")], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert missing.listen == (HostPort("0.0.0.0", 8443), HostPort("::", 8443))


def test_command_line_listen_replaces_the_settings_port(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"version": 1, "port": 9443, "stats_port": 8888}))
    environ = {"MTPROXY_ROOT": str(tmp_path)}
    assert resolve(["-S", KEY, "--listen", "127.0.0.1:7000"], environ=environ).listen == (HostPort("127.0.0.1", 7000),)
    assert resolve(["-S", KEY, "-H", "7001"], environ=environ).listen == (
        HostPort("0.0.0.0", 7001), HostPort("::", 7001))


@pytest.mark.parametrize("doc", [
    {"version": 99},  # written by a newer mtproxy
    {"server": "https://proxy.example.net/"},  # not a bare host: links would be broken
    {"stats_port": 8443},  # the same port as the proxy
    {"port": "8443,8444"},  # the CLI manages one port; --listen is the key for several
    {"mask": "example.com"},  # the CLI's mask is HOST:PORT
    [1, 2],
])
def test_the_engine_refuses_what_the_cli_refuses(tmp_path: Path, doc: object) -> None:
    """One reader and validator for the settings file: `mtproxy run` never serves a file every other
    command refuses (before, the engine had its own, looser reader)."""
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as cli_error:
        read_settings(settings)
    with pytest.raises(ConfigError) as engine_error:
        resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert str(engine_error.value).startswith(str(cli_error.value)) and "\n" not in str(engine_error.value)
    assert "fix the file by hand" in str(engine_error.value)


def test_settings_both_readers_accept_mean_the_same(tmp_path: Path) -> None:
    """stats_port 0 (no stats endpoint, as `-p 0`) and null values (the default) read alike in both."""
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"version": 1, "port": None, "workers": None, "stats_port": 0,
                                    "listen": ["127.0.0.1:7000"], "tls_skew": 30}))
    read = read_settings(settings)
    assert (read.port, read.workers, read.stats_port) == (DEFAULT_PORT, 1, 0)
    cfg = resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert cfg.stats is None and cfg.workers == 1 and cfg.tls.skew == 30
    assert cfg.listen == (HostPort("127.0.0.1", 7000),)  # no default port beside the file's listen


def test_the_engine_and_the_cli_share_one_set_of_defaults(tmp_path: Path) -> None:
    """No settings file and no flags: the engine runs on what the CLI's settings say are the defaults."""
    from mtproxy.config import build_parser
    from mtproxy.host.install import InstallPlan
    from mtproxy.settings import Settings

    cfg = resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
    defaults = Settings()
    assert cfg.listen == (HostPort("0.0.0.0", defaults.port), HostPort("::", defaults.port))
    assert cfg.workers == defaults.workers and cfg.stats == HostPort("127.0.0.1", defaults.stats_port)
    assert InstallPlan.__dataclass_fields__["stats_port"].default == defaults.stats_port
    assert f"default {defaults.stats_port}" in build_parser().format_help()


@pytest.mark.parametrize(("doc", "says"), [
    ({"stats_allow_remote": "false"}, "'stats_allow_remote' must be true or false, not 'false'"),
    ({"cert_jitter": "lots"}, "'cert_jitter' must be a whole number, not 'lots'"),
    ({"tls_skew": [30]}, "'tls_skew' must be a number, not [30]"),
    ({"user": 1000}, "'user' must be a string, not 1000"),
    ({"dc_override": {"2": "x"}}, "'dc_override' must be a string or a list of strings"),
    ({"idle_timeout": -1}, "'idle_timeout': must be a finite positive number, got -1"),
    ({"cert_size": 10}, "'cert_size' must be 64..16384 bytes"),
    ({"listen": ["7000"]}, "'listen': 7000 needs a host"),
    ({"dc_override": ["2=host:notaport"]}, "'dc_override': port 'notaport' is not a number"),
    ({"tls_records": "padded"}, "'tls_records' must be one of 'shaped', 'plain', not 'padded'"),
])
def test_a_bad_engine_key_in_the_settings_file_names_the_file_and_the_key(
        tmp_path: Path, doc: dict[str, object], says: str) -> None:
    """Before, such values reached the engine as they were ("false" switched stats on for everyone; a word
    for cert_jitter was an internal error) or were blamed on a flag the operator never typed."""
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as error:
        resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
    message = str(error.value)
    assert message.startswith(f"{settings}: {says}"), message
    assert " — fix the file by hand" in message and "\n" not in message


def test_the_same_bad_value_as_a_flag_still_names_the_flag(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"idle_timeout": 30, "tls_skew": "60", "stats_allow_remote": False}))
    with pytest.raises(ConfigError) as error:
        resolve(["-S", KEY, "--idle-timeout", "-1"], environ={"MTPROXY_ROOT": str(tmp_path)})
    assert str(error.value) == "--idle-timeout: must be a finite positive number, got -1.0"
    cfg = resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})  # numbers as strings still read
    assert cfg.limits.idle_timeout == 30 and cfg.tls.skew == 60 and not cfg.stats_allow_remote


def test_tls_records_is_shaped_unless_flag_or_file_says_plain(tmp_path: Path) -> None:
    environ = {"MTPROXY_ROOT": str(tmp_path)}
    assert resolve(["-S", KEY], environ=environ).tls.shaped_records
    assert not resolve(["-S", KEY, "--tls-records", "plain"], environ=environ).tls.shaped_records
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"tls_records": "plain"}))
    assert not resolve(["-S", KEY], environ=environ).tls.shaped_records
    assert resolve(["-S", KEY, "--tls-records", "shaped"], environ=environ).tls.shaped_records  # the flag wins


def test_the_settings_files_listen_replaces_its_port(tmp_path: Path) -> None:
    """Behind HAProxy the file's `port` is the one clients dial (443, in links) and `listen` the loopback
    address the engine binds: the port must not add wildcard listeners of its own."""
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"version": 1, "port": 443, "listen": ["127.0.0.1:8444"], "stats_port": 8888,
                                    "proxy_protocol": True}))
    environ = {"MTPROXY_ROOT": str(tmp_path)}
    assert resolve(["-S", KEY], environ=environ).listen == (HostPort("127.0.0.1", 8444),)
    assert resolve(["-S", KEY, "-H", "7001"], environ=environ).listen == (
        HostPort("0.0.0.0", 7001), HostPort("::", 7001))


def test_proxy_protocol_from_the_settings_file_and_flags(tmp_path: Path) -> None:
    """`proxy_protocol` (written by setup --behind-haproxy), `trusted_proxy` and `mask_proxy_protocol` are read
    like the other engine keys; without a trusted list the balancer must be on this host (loopback)."""
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    environ = {"MTPROXY_ROOT": str(tmp_path)}
    settings.write_text(json.dumps({"port": 443, "listen": ["127.0.0.1:8444"], "proxy_protocol": True}))
    cfg = resolve(["-S", KEY], environ=environ)
    assert cfg.proxy.accept and cfg.proxy.to_mask == 0
    assert [str(n) for n in cfg.proxy.trusted] == ["127.0.0.0/8", "::1/128"]
    settings.write_text(json.dumps({"proxy_protocol": True, "trusted_proxy": ["10.1.2.3", "fd00::/8"],
                                    "mask_proxy_protocol": "v2"}))
    cfg = resolve(["-S", KEY], environ=environ)
    assert [str(n) for n in cfg.proxy.trusted] == ["10.1.2.3/32", "fd00::/8"] and cfg.proxy.to_mask == 2
    cfg = resolve(["-S", KEY, "--trusted-proxy", "192.0.2.0/24", "--mask-proxy-protocol", "off"], environ=environ)
    assert [str(n) for n in cfg.proxy.trusted] == ["192.0.2.0/24"] and cfg.proxy.to_mask == 0
    off = resolve(["-S", KEY, "--trusted-proxy", "192.0.2.1"], environ={})
    assert not off.proxy.accept and off.proxy.trusted == ()
    assert "--trusted-proxy has no effect without --proxy-protocol" in off.warnings


def test_bad_proxy_protocol_values_name_the_flag_or_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--trusted-proxy: 'haproxy' is not an IP address"):
        resolve(["-S", KEY, "--proxy-protocol", "--trusted-proxy", "haproxy"], environ={})
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    for doc, says in (({"proxy_protocol": True, "trusted_proxy": ["10.0.0.0/33"]}, "'trusted_proxy'"),
                      ({"mask_proxy_protocol": "v3"}, "'mask_proxy_protocol'")):
        settings.write_text(json.dumps(doc))
        with pytest.raises(ConfigError) as error:
            resolve(["-S", KEY], environ={"MTPROXY_ROOT": str(tmp_path)})
        assert str(error.value).startswith(f"{settings}: {says}"), error.value


def test_middle_proxy_keys_from_the_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "mtproxy" / "mtproxy_config.json"
    settings.parent.mkdir(parents=True)
    environ = {"MTPROXY_ROOT": str(tmp_path)}
    settings.write_text(json.dumps({"middle_proxy": "on", "proxy_tag": "cd" * 16, "nat_info": ["10.0.0.5:203.0.113.7"],
                                    "relay_config_url": "http://127.0.0.1:9/base"}))
    cfg = resolve(["-S", KEY], environ=environ)
    assert cfg.middle_proxy == "on" and cfg.proxy_tag == bytes.fromhex("cd" * 16)
    assert [(str(r.local), str(r.public)) for r in cfg.nat_rules] == [("10.0.0.5", "203.0.113.7")]
    assert cfg.relay_config_url == "http://127.0.0.1:9/base"
    assert resolve(["-S", KEY, "--middle-proxy", "off"], environ=environ).middle_proxy == "off"  # the flag wins
    for doc, says in (({"middle_proxy": "sometimes"}, "'middle_proxy'"), ({"proxy_tag": "xyz"}, "proxy_tag")):
        settings.write_text(json.dumps(doc))
        with pytest.raises(ConfigError) as error:
            resolve(["-S", KEY], environ=environ)
        assert says in str(error.value), str(error.value)
