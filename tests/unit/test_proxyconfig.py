"""proxy-multi.conf and proxy-secret (protocol/proxyconfig.py) against the grammar of MTProxy
mtproto/mtproto-config.c `parse_config` and common/parse-config.c, and the secret's length rule of
net/net-crypto-aes.c `aes_load_pwd_file`. Addresses are documentation ranges (RFC 5737, RFC 3849)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.proxyconfig import (
    IPAddress,
    ProxyConfig,
    ProxyConfigError,
    ProxySecret,
    Relay,
    parse_proxy_config,
    parse_proxy_secret,
)

# The shape Telegram publishes: a comment header, `default`, then each DC's relays together.
PUBLISHED_SHAPE = """# force_probability 10 10
default 2;
proxy_for 1 192.0.2.1:8888;
proxy_for -1 192.0.2.1:8888;
proxy_for 2 192.0.2.2:8888;
proxy_for 2 192.0.2.3:80;
proxy_for -2 192.0.2.2:8888;
proxy_for 203 192.0.2.203:443;
"""

V6_SHAPE = """proxy_for 1 [2001:db8::1]:8888;
proxy_for 2 [2001:db8::2]:8888;
"""


def relay(text: str) -> Relay:
    host, port = text.rsplit(":", 1)
    return Relay(ipaddress.ip_address(host.strip("[]")), int(port))


def test_the_published_shape_parses_into_relays_per_dc() -> None:
    config = parse_proxy_config(PUBLISHED_SHAPE)
    assert config.default_dc == 2
    assert dict(config.relays) == {
        1: (relay("192.0.2.1:8888"),),
        -1: (relay("192.0.2.1:8888"),),
        2: (relay("192.0.2.2:8888"), relay("192.0.2.3:80")),
        -2: (relay("192.0.2.2:8888"),),
        203: (relay("192.0.2.203:443"),),
    }
    assert (config.timeout, config.min_connections, config.max_connections) == (0.3, 4, 8)


def test_an_unlisted_dc_gets_the_default_dcs_relays() -> None:
    config = parse_proxy_config(PUBLISHED_SHAPE)
    assert config.relays_for(4) == config.relays[2]
    assert config.relays_for(-1) == (relay("192.0.2.1:8888"),)
    assert parse_proxy_config("default 9; proxy_for 1 192.0.2.1:1;").relays_for(4) == ()
    # without `default`, the default DC is 0 (preinit_config), which `proxy` without a DC fills
    assert parse_proxy_config("proxy 192.0.2.9:443;").relays_for(7) == (relay("192.0.2.9:443"),)


def test_the_v6_file_merges_beside_the_v4_one() -> None:
    config = parse_proxy_config(PUBLISHED_SHAPE).merged(parse_proxy_config(V6_SHAPE))
    assert config.relays_for(1) == (relay("192.0.2.1:8888"), relay("[2001:db8::1]:8888"))
    assert config.relays_for(1, 6) == (relay("[2001:db8::1]:8888"),)
    assert config.relays_for(1, 4) == (relay("192.0.2.1:8888"),)
    assert config.default_dc == 2
    assert str(relay("[2001:db8::1]:8888")) == "[2001:db8::1]:8888"


def test_what_the_official_lexer_tolerates() -> None:
    """Comments anywhere, CRLF, tabs, a statement across lines (the `:` and `;` are found across
    whitespace and comments), several statements on one line, bytes input, the other directives."""
    text = (b"# header\r\n\tproxy_for\t3 192.0.2.30  # trailing comment\r\n : 443 ;proxy_for 4 192.0.2.40:1;"
            b"\ntimeout 500; min_connections 2; max_connections 16;\n# end without newline")
    config = parse_proxy_config(text)
    assert config.relays == {3: (relay("192.0.2.30:443"),), 4: (relay("192.0.2.40:1"),)}
    assert (config.timeout, config.min_connections, config.max_connections) == (0.5, 2, 16)
    assert parse_proxy_config("default -2;proxy_for -32768 192.0.2.1:65535;").default_dc == -2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("proxy_for 1 192.0.2.1:", 1, "port number expected"),  # a truncated line
        ("proxy_for 1 192.0.2.1:8888", 1, "';' expected at the end"),  # no terminator
        ("proxy_for 1 192.0.2.1", 1, "':' expected at the end"),
        ("proxy_for 1", 1, "space expected after target id"),
        ("proxy_for 1 ", 1, "relay address expected"),
        ("# a\nproxy_for 1 192.0.2.1:8888;\nproxy_for x 192.0.2.1:8888;", 3, "invalid target id"),
        ("proxy_for 1,192.0.2.1:8888;", 1, "space expected after target id"),
        ("proxy_for 40000 192.0.2.1:8888;", 1, "invalid target id"),
        ("proxy_for 1 192.0.2.1:65536;", 1, "port number 65536 out of range"),
        ("proxy_for 1 192.0.2.1:0;", 1, "port number expected"),
        ("proxy_for 1 relay.example:8888;", 1, "'relay.example' is not an IPv4 address"),
        ("proxy_for 1 [2001:db8::1:8888;", 1, "is not an IPv4 address or a bracketed IPv6"),
        ("proxy_for 1 [192.0.2.1]:8888;", 1, "is not an IPv4 address or a bracketed IPv6"),
        ("proxy_for 1 192.0.2.1:8888;\nproxy_for 2 192.0.2.2:8888;\nproxy_for 1 192.0.2.3:8888;", 3,
         "relays for DC 1 intermixed"),
        ("proxy_for 1 192.0.2.1:8888;\nforce_probability 10 10;", 2, "'proxy_for <dc> <ip>:<port>;' expected"),
        ("proxy_for 1 192.0.2.1:8888;;", 1, "expected near ';'"),
        ("timeout 5; proxy_for 1 192.0.2.1:8888;", 1, "invalid timeout"),
        ("max_connections 3; proxy_for 1 192.0.2.1:8888;", 1, "invalid max connections"),
        ("min_connections 9; proxy_for 1 192.0.2.1:8888;", 1, "invalid min connections"),
        ("default 2;\n# only a default\n", 3, "no relays"),
        ("", 1, "no relays"),
        ("proxy_for 1 " + "1" * 64 + ":1;", 1, "relay address expected"),
    ],
)
def test_malformed_configs_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ProxyConfigError, match=message) as caught:
        parse_proxy_config(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")
    assert isinstance(caught.value, ProtocolError) and isinstance(caught.value, ValueError)


def test_limits_of_the_official_parser() -> None:
    many = "".join(f"proxy_for {dc} 192.0.2.1:1;\n" for dc in range(1025))
    with pytest.raises(ProxyConfigError, match="too many DCs") as caught:
        parse_proxy_config(many)
    assert caught.value.line == 1025
    with pytest.raises(ProxyConfigError, match="over 16777216 bytes"):
        parse_proxy_config("#" * ((16 << 20) + 1))


def test_proxy_secret_length_rules_and_selector() -> None:
    secret = parse_proxy_secret(bytes(range(128)))  # the published file is 128 bytes
    assert secret.key_select == b"\x00\x01\x02\x03"
    assert "data" not in repr(secret) and "\\x00" not in repr(secret)
    assert len(ProxySecret(bytes(32)).data) == 32 and len(ProxySecret(bytes(256)).data) == 256
    for size in (0, 31, 257, 16385):
        with pytest.raises(ProxyConfigError, match=f"32 to 256 bytes, got {size}"):
            parse_proxy_secret(bytes(size))


def test_a_config_is_a_plain_value() -> None:
    config = parse_proxy_config(PUBLISHED_SHAPE)
    assert config == parse_proxy_config(PUBLISHED_SHAPE)
    assert isinstance(config, ProxyConfig)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("proxy_for default timeout 0123456789-.:;[]# \t\r\nabcdef"), max_size=120))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        config = parse_proxy_config(text)
    except ProxyConfigError as error:
        assert 1 <= error.line <= text.count("\n") + 1
        return
    assert config.relays and all(config.relays.values())


relays_strategy = st.lists(
    st.tuples(st.integers(-0x8000, 0x7FFF),
              st.lists(st.tuples(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 0xFFFF)),
                       min_size=1, max_size=3)),
    min_size=1, max_size=6, unique_by=lambda entry: entry[0])


@settings(max_examples=100)
@given(relays_strategy, st.integers(-0x8000, 0x7FFF))
def test_written_configs_parse_back(entries: list[tuple[int, list[tuple[IPAddress, int]]]], default: int) -> None:
    lines = [f"default {default};"]
    for dc, found in entries:
        lines += [f"proxy_for {dc} {Relay(ip, port)};  # DC {dc}" for ip, port in found]
    config = parse_proxy_config("\n".join(lines))
    assert config.default_dc == default
    assert config.relays == {dc: tuple(Relay(ip, port) for ip, port in found) for dc, found in entries}
