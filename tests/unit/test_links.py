"""Links (tg:// and t.me), the offline public-address guess, and QR codes decoded back by zbarimg."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest

from mtproxy.links import AddressGuess, ServerUnknownError, guess_public_address, link_host, make_links
from mtproxy.protocol.secret import SecretKind, generate_secret
from mtproxy.qr import png_bytes, svg_bytes, terminal_text, write_qr_files

from ..qr_decode import decode_terminal_qr

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
SECRETS = [
    generate_secret(KEY, SecretKind.CLASSIC),
    generate_secret(KEY, SecretKind.PADDED),
    generate_secret(KEY, SecretKind.FAKE_TLS, "www.example.com"),
    generate_secret(KEY, SecretKind.FAKE_TLS, "x" * 60 + ".example.com"),
]


def test_link_format_is_telegrams() -> None:
    links = make_links("203.0.113.5", 8443, SECRETS[1])
    assert links.tg == "tg://proxy?server=203.0.113.5&port=8443&secret=dd00112233445566778899aabbccddeeff"
    assert links.https == "https://t.me/proxy?server=203.0.113.5&port=8443&secret=dd00112233445566778899aabbccddeeff"
    ee = make_links("proxy.example.net", 443, SECRETS[2])
    assert ee.tg.endswith("&secret=ee00112233445566778899aabbccddeeff" + b"www.example.com".hex())


@pytest.mark.parametrize("server", ["203.0.113.5", "Proxy.Example.NET", "2001:db8:0:0::5"])
def test_link_query_parses_back(server: str) -> None:
    for secret in SECRETS:
        links = make_links(server, 2053, secret)
        for link in (links.tg, links.https):
            query = parse_qs(urlsplit(link).query, strict_parsing=True)
            assert query == {"server": [link_host(server)], "port": ["2053"], "secret": [secret.to_hex()]}
    assert link_host("2001:db8:0:0::5") == "2001:db8::5"
    assert link_host("Proxy.Example.NET") == "proxy.example.net"


def test_public_address_guess_prefers_ipv4_and_flags_private_addresses() -> None:
    def route(family: socket.AddressFamily, _probe: str) -> str | None:
        return "198.51.100.7" if family == socket.AF_INET else "2001:db8::1"

    guess = guess_public_address(route)
    assert guess.address == "198.51.100.7"
    assert guess.public is False  # documentation ranges are not global either
    assert AddressGuess("10.0.0.5", False).warning is not None
    assert "--server" in (AddressGuess("10.0.0.5", False).warning or "")
    assert AddressGuess("8.8.4.4", True).warning is None


def test_public_address_guess_falls_back_to_ipv6_then_fails_clearly() -> None:
    assert guess_public_address(lambda f, _p: "2a00:1450::1" if f == socket.AF_INET6 else None).public is True
    with pytest.raises(ServerUnknownError):
        guess_public_address(lambda _f, _p: None)


def _guess_in_a_private_namespace(setup: str) -> list[str]:
    """Run the real guess (its own route lookup) in a fresh network namespace prepared by `setup`; returns
    the guess (or the error's class name) and the probe interface's transmit count before and after."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make a private network namespace")
    guess = ("from mtproxy.links import ServerUnknownError, guess_public_address\n"
             "try:\n    g = guess_public_address(); print(g.address, g.public)\n"
             "except ServerUnknownError as exc:\n    print(type(exc).__name__)\n")
    # /proc/net/dev is the namespace's own (sysfs still shows the host's); field 11 is packets sent
    count = """awk '/probe0:/ {n = $11} END {print (n == "" ? "none" : n)}' /proc/net/dev"""
    script = f"set -e; ip link set lo up; {setup}; {count}; {sys.executable} -c {shlex.quote(guess)}; {count}"
    done = subprocess.run(["unshare", "-n", "--", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[:3]


def test_public_address_guess_fails_clearly_without_a_route() -> None:
    """Only loopback, as in the test namespaces: a clear error, no exception from the socket layer."""
    assert _guess_in_a_private_namespace("true") == ["none", "ServerUnknownError", "none"]


def test_public_address_guess_takes_the_default_route_and_sends_nothing() -> None:
    """With a default route on one end of a veth pair (the other end in the same private namespace), the
    guess is that interface's address, found without a single packet leaving it."""
    setup = ("sysctl -qw net.ipv6.conf.default.disable_ipv6=1; ip link add probe0 type veth peer name probe1; "
             "ip addr add 198.51.100.7/24 dev probe0; ip link set probe1 up; ip link set probe0 up; "
             "ip route add default via 198.51.100.1 dev probe0")
    before, guess, after = _guess_in_a_private_namespace(setup)
    assert guess == "198.51.100.7 False"  # a documentation range: not a public address
    assert before == after


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return width, height


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (zbar-tools) is not installed")
@pytest.mark.parametrize("secret", SECRETS, ids=["classic", "dd", "ee", "ee-long"])
@pytest.mark.parametrize("server", ["203.0.113.5", "proxy.example.net", "2001:db8::5"])
def test_qr_png_is_300px_and_decodes_to_exactly_the_link(tmp_path: Path, secret: object, server: str) -> None:
    links = make_links(server, 8443, secret)  # type: ignore[arg-type]
    for link in (links.tg, links.https):
        png = tmp_path / "qr.png"
        write_qr_files(link, png, tmp_path / "qr.svg")
        assert _png_size(png.read_bytes()) == (300, 300)
        decoded = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(png)],
                                 capture_output=True, text=True, timeout=30, check=True)
        assert decoded.stdout == link + "\n"
        ElementTree.fromstring((tmp_path / "qr.svg").read_bytes())  # well-formed SVG


def test_png_is_exactly_the_requested_size_for_short_and_long_text() -> None:
    for text in ("x", "tg://proxy?server=a&port=1&secret=" + "ee" + "00" * 16 + "61" * 180):
        assert _png_size(png_bytes(text)) == (300, 300)


def test_svg_and_terminal_text() -> None:
    link = make_links("203.0.113.5", 8443, SECRETS[0]).tg
    root = ElementTree.fromstring(svg_bytes(link))
    assert root.tag.endswith("svg")
    drawing = terminal_text(link)
    lines = drawing.splitlines()
    assert len({len(line) for line in lines}) == 1  # a rectangle
    assert set(drawing) <= set("█▀▄ \n")


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (zbar-tools) is not installed")
@pytest.mark.parametrize("secret", SECRETS, ids=["classic", "dd", "ee", "ee-long"])
def test_terminal_qr_decodes_to_exactly_the_link(tmp_path: Path, secret: object) -> None:
    link = make_links("proxy.example.net", 8443, secret).tg  # type: ignore[arg-type]
    assert decode_terminal_qr(terminal_text(link), tmp_path) == link
