"""The SOCKS5 client codec (protocol/socks5.py) against RFC 1928 / RFC 1929 byte layouts, and the --upstream
URL (config.parse_upstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtproxy.config import ConfigError, HostPort, parse_upstream, resolve
from mtproxy.protocol.socks5 import (
    REPLY_MESSAGES,
    TARGET_REPLIES,
    Credentials,
    Socks5Client,
    Socks5Error,
    Stage,
    connect_request,
)

OK_V4 = b"\x05\x00\x00\x01\xc0\x00\x02\x07\x12\x34"  # bound 192.0.2.7:4660


def test_no_auth_connect_ipv4() -> None:
    client = Socks5Client("192.0.2.1", 443)
    assert client.greeting() == b"\x05\x01\x00"
    assert client.receive(b"\x05\x00") == b"\x05\x01\x00\x01\xc0\x00\x02\x01\x01\xbb"
    assert client.stage is Stage.REPLY
    assert client.receive(OK_V4) == b""
    assert client.connected
    assert client.bound == ("192.0.2.7", 0x1234)
    assert client.surplus == b""


def test_connect_ipv6_and_name_requests() -> None:
    assert connect_request("2001:db8::a", 443) == (b"\x05\x01\x00\x04" + bytes.fromhex("20010db8" + "00" * 10 + "000a")
                                                   + b"\x01\xbb")
    assert connect_request("dc.example", 8443) == b"\x05\x01\x00\x03\x0adc.example\x20\xfb"
    with pytest.raises(ValueError):
        connect_request("192.0.2.1", 0)
    with pytest.raises(ValueError):
        connect_request("a" * 256, 443)


def test_username_password() -> None:
    client = Socks5Client("192.0.2.1", 443, Credentials(b"user", b"pa:ss"))
    assert client.greeting() == b"\x05\x02\x00\x02"
    assert client.receive(b"\x05\x02") == b"\x01\x04user\x05pa:ss"
    assert client.stage is Stage.AUTH
    assert client.receive(b"\x01\x00") == connect_request("192.0.2.1", 443)
    client.receive(OK_V4)
    assert client.connected


def test_a_server_may_skip_authentication_even_when_offered() -> None:
    client = Socks5Client("192.0.2.1", 443, Credentials(b"u", b"p"))
    assert client.receive(b"\x05\x00") == connect_request("192.0.2.1", 443)


def test_auth_rejected() -> None:
    client = Socks5Client("192.0.2.1", 443, Credentials(b"u", b"p"))
    client.receive(b"\x05\x02")
    with pytest.raises(Socks5Error, match="rejected the username/password") as caught:
        client.receive(b"\x01\x01")
    assert not caught.value.target
    assert client.stage is Stage.FAILED
    with pytest.raises(Socks5Error, match="exchange is over"):
        client.receive(b"\x05\x00")


def test_authentication_required_but_not_configured() -> None:
    with pytest.raises(Socks5Error, match="requires authentication: give socks5://USER:PASS@HOST:PORT"):
        Socks5Client("192.0.2.1", 443).receive(b"\x05\xff")
    with pytest.raises(Socks5Error, match="accepts neither"):
        Socks5Client("192.0.2.1", 443, Credentials(b"u", b"p")).receive(b"\x05\xff")
    with pytest.raises(Socks5Error, match="method 0x01, which was not offered"):
        Socks5Client("192.0.2.1", 443).receive(b"\x05\x01")
    with pytest.raises(Socks5Error, match="method 0x02, which was not offered"):
        Socks5Client("192.0.2.1", 443).receive(b"\x05\x02")  # no credentials were given


@pytest.mark.parametrize("code", range(1, 10))
def test_every_reply_code_is_named(code: int) -> None:
    client = Socks5Client("192.0.2.1", 443)
    client.receive(b"\x05\x00")
    with pytest.raises(Socks5Error) as caught:
        client.receive(bytes((5, code)))  # the code is enough: a server may close before the rest
    error = caught.value
    assert error.reply == code
    expected = REPLY_MESSAGES.get(code, f"unassigned reply code {code:#04x}")
    assert str(error) == f"the SOCKS5 server answered: {expected}"
    # the target's fault (try the next address) for unreachable/refused/TTL/ruleset/address type only
    assert error.target == (code in (2, 3, 4, 5, 6, 8))
    assert TARGET_REPLIES == {2, 3, 4, 5, 6, 8}


def test_replies_byte_by_byte_and_with_surplus() -> None:
    for reply in (OK_V4, b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x50", b"\x05\x00\x00\x03\x04host\x00\x50"):
        client = Socks5Client("192.0.2.1", 443)
        assert client.receive(b"\x05") == b""
        assert client.receive(b"\x00") != b""
        for i in range(len(reply) - 1):
            assert client.receive(reply[i:i + 1]) == b""
            assert not client.connected
        client.receive(reply[-1:] + b"dc-bytes")
        assert client.connected
        assert client.surplus == b"dc-bytes"
    assert client.bound == ("host", 80)


def test_everything_in_one_read() -> None:
    client = Socks5Client("192.0.2.1", 443, Credentials(b"u", b"p"))
    # a server answering ahead (pipelined): the auth and the CONNECT go out together
    out = client.receive(b"\x05\x02" + b"\x01\x00" + OK_V4)
    assert out == b"\x01\x01u\x01p" + connect_request("192.0.2.1", 443)
    assert client.connected


@pytest.mark.parametrize(("stage_bytes", "reply", "message"), [
    (b"", b"\x04\x5a", "not a SOCKS5 server"),  # a SOCKS4 server's answer
    (b"", b"HTTP/1.1 400", "not a SOCKS5 server"),
    (b"\x05\x00", b"\x04\x00\x00\x01", "version 4, not 5"),
    (b"\x05\x00", b"\x05\x00\x01\x01" + bytes(6), "reserved byte 1"),
    (b"\x05\x00", b"\x05\x00\x00\x07" + bytes(6), "address type 7"),
])
def test_malformed(stage_bytes: bytes, reply: bytes, message: str) -> None:
    client = Socks5Client("192.0.2.1", 443)
    if stage_bytes:
        client.receive(stage_bytes)
    with pytest.raises(Socks5Error, match=message) as caught:
        client.receive(reply)
    assert not caught.value.target


def test_malformed_auth_reply() -> None:
    client = Socks5Client("192.0.2.1", 443, Credentials(b"u", b"p"))
    client.receive(b"\x05\x02")
    with pytest.raises(Socks5Error, match="authentication reply: version 5"):
        client.receive(b"\x05\x00")


def test_truncated_replies_wait_and_buffer_no_more_than_a_reply() -> None:
    client = Socks5Client("192.0.2.1", 443)
    client.receive(b"\x05\x00")
    assert client.receive(b"\x05\x00\x00\x03\xff") == b""  # a 255-byte name announced, not yet here
    assert client.receive(b"n" * 255) == b""
    assert not client.connected
    client.receive(b"\x00\x50")
    assert client.connected and client.bound == ("n" * 255, 80)


def test_credentials_bounds_and_repr() -> None:
    with pytest.raises(ValueError, match="username must be 1 to 255 bytes"):
        Credentials(b"", b"p")
    with pytest.raises(ValueError, match="password must be 1 to 255 bytes"):
        Credentials(b"u", b"p" * 256)
    assert "hunter2" not in repr(Credentials(b"u", b"hunter2"))


def test_upstream_urls() -> None:
    plain = parse_upstream("socks5://127.0.0.1:1080")
    assert (plain.host, plain.port, plain.credentials) == ("127.0.0.1", 1080, None)
    authed = parse_upstream("socks5://us%40er:p%3Ass@[2001:db8::1]:10808")
    assert str(authed) == "[2001:db8::1]:10808"
    assert authed.credentials == Credentials(b"us@er", b"p:ss")
    assert "p:ss" not in repr(authed) and "p:ss" not in str(authed)
    assert parse_upstream("SOCKS5://xray:10808").host == "xray"


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:1080", "is not a SOCKS5 URL"),
    ("127.0.0.1:1080", "is not a SOCKS5 URL"),
    ("socks5://127.0.0.1", "needs a host and a port"),
    ("socks5://127.0.0.1:0", "needs a host and a port"),
    ("socks5://127.0.0.1:70000", "no valid port"),
    ("socks5://127.0.0.1:x", "no valid port"),
    ("socks5://127.0.0.1:1080/path", "has more than"),
    ("socks5://user@127.0.0.1:1080", "both a username and a password"),
    ("socks5://user:@127.0.0.1:1080", "both a username and a password"),
    ("socks5://u:" + "p" * 256 + "@127.0.0.1:1080", "password must be 1 to 255 bytes"),
])
def test_bad_upstream_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_upstream(url)
    assert str(caught.value).startswith("--upstream: ")
    assert "p" * 256 not in str(caught.value)


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_upstream("socks5://admin:hunter2@127.0.0.1:99999")
    assert "hunter2" not in str(caught.value)
    assert "admin:***@127.0.0.1:99999" in str(caught.value)


KEY = "0123456789abcdef0123456789abcdef"


def test_run_takes_the_upstream_from_the_flag_or_the_settings_file(tmp_path: Path) -> None:
    env = {"MTPROXY_ROOT": str(tmp_path / "root")}
    assert resolve(["-S", KEY], environ=env).upstream is None
    cfg = resolve(["-S", KEY, "--upstream", "socks5://u:p@127.0.0.1:10808"], environ=env)
    assert cfg.upstream is not None and str(cfg.upstream) == "127.0.0.1:10808"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"version": 1, "upstream": "socks5://127.0.0.1:1080"}))
    from_file = resolve(["-S", KEY, "--config", str(settings)], environ=env).upstream
    assert from_file is not None and from_file.address == HostPort("127.0.0.1", 1080)
    flag_wins = resolve(["-S", KEY, "--config", str(settings), "--upstream", "socks5://127.0.0.1:2"], environ=env)
    assert flag_wins.upstream is not None and flag_wins.upstream.port == 2


def test_a_bad_upstream_in_the_settings_file_names_the_file_and_key(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"version": 1, "upstream": "socks4://admin:hunter2@127.0.0.1:1080"}))
    with pytest.raises(ConfigError) as caught:
        resolve(["-S", KEY, "--config", str(settings)], environ={"MTPROXY_ROOT": str(tmp_path / "root")})
    message = str(caught.value)
    assert message.startswith(f"{settings}: 'upstream': ")
    assert "is not a SOCKS5 URL" in message and "hunter2" not in message
    settings.write_text(json.dumps({"version": 1, "upstream": 1080}))
    with pytest.raises(ConfigError, match="'upstream' must be a string"):
        resolve(["-S", KEY, "--config", str(settings)], environ={"MTPROXY_ROOT": str(tmp_path / "root")})
