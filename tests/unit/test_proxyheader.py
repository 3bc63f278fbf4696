"""The PROXY protocol header parser and builder: the spec's examples, every malformed and truncated form,
every split of the input, and random bytes (only ProxyHeaderError, never another exception)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.proxyheader import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Endpoint,
    Family,
    NeedMore,
    ProxyHeader,
    ProxyHeaderError,
    build_v1,
    build_v2,
    parse,
)

PAYLOAD = b"\x16\x03\x01\x02\x00client bytes"


def v2(version_command: int, family_protocol: int, body: bytes, length: int | None = None) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family_protocol,
                                      len(body) if length is None else length) + body


IPV4_BODY = bytes([192, 0, 2, 10, 127, 0, 0, 1]) + struct.pack("!HH", 51000, 443)
IPV6_BODY = (bytes.fromhex("20010db8000000000000000000000001") + bytes.fromhex("00000000000000000000000000000001")
             + struct.pack("!HH", 40000, 8443))

VALID = [
    (b"PROXY TCP4 192.0.2.10 127.0.0.1 51000 443\r\n",
     ProxyHeader(1, Command.PROXY, Family.TCP4, Endpoint("192.0.2.10", 51000), Endpoint("127.0.0.1", 443), 43)),
    (b"PROXY TCP6 2001:db8::1 ::1 40000 8443\r\n",
     ProxyHeader(1, Command.PROXY, Family.TCP6, Endpoint("2001:db8::1", 40000), Endpoint("::1", 8443), 39)),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     ProxyHeader(1, Command.PROXY, Family.TCP4, Endpoint("255.255.255.255", 65535),
                 Endpoint("255.255.255.255", 65535), 56)),
    (b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
     ProxyHeader(1, Command.PROXY, Family.TCP4, Endpoint("0.0.0.0", 0), Endpoint("0.0.0.0", 0), 32)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, Command.PROXY, Family.UNKNOWN, None, None, 15)),
    # After UNKNOWN the spec says to ignore the rest of the line, whatever it says.
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
     ProxyHeader(1, Command.PROXY, Family.UNKNOWN, None, None, 59)),
    (v2(0x21, 0x11, IPV4_BODY),
     ProxyHeader(2, Command.PROXY, Family.TCP4, Endpoint("192.0.2.10", 51000), Endpoint("127.0.0.1", 443), 28)),
    (v2(0x21, 0x21, IPV6_BODY),
     ProxyHeader(2, Command.PROXY, Family.TCP6, Endpoint("2001:db8::1", 40000), Endpoint("::1", 8443), 52)),
    # LOCAL: the balancer's own health check; whatever address block it carries is discarded.
    (v2(0x20, 0x00, b""), ProxyHeader(2, Command.LOCAL, Family.UNKNOWN, None, None, 16)),
    (v2(0x20, 0x11, IPV4_BODY), ProxyHeader(2, Command.LOCAL, Family.UNKNOWN, None, None, 28)),
    (v2(0x21, 0x00, b""), ProxyHeader(2, Command.PROXY, Family.UNKNOWN, None, None, 16)),
    # UNSPEC or LOCAL with bytes: the spec says to ignore them, TLV-shaped or not.
    (v2(0x20, 0x11, IPV4_BODY + b"\x01\x00"), ProxyHeader(2, Command.LOCAL, Family.UNKNOWN, None, None, 30)),
    (v2(0x21, 0x00, b"\x00" * 5), ProxyHeader(2, Command.PROXY, Family.UNKNOWN, None, None, 21)),
    (v2(0x21, 0x12, IPV4_BODY), ProxyHeader(2, Command.PROXY, Family.UNKNOWN, None, None, 28)),  # UDP over v4
    (v2(0x21, 0x31, b"/a".ljust(108, b"\x00") + b"/b".ljust(108, b"\x00")),
     ProxyHeader(2, Command.PROXY, Family.UNKNOWN, None, None, 232)),  # UNIX stream
    # TLVs after the addresses: ALPN "h2", authority, a NOOP with no value; all skipped.
    (v2(0x21, 0x11, IPV4_BODY + b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x04\x00\x00"),
     ProxyHeader(2, Command.PROXY, Family.TCP4, Endpoint("192.0.2.10", 51000), Endpoint("127.0.0.1", 443),
                 28 + 5 + 14 + 3)),
]


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_headers(wire: bytes, expected: ProxyHeader) -> None:
    assert parse(wire + PAYLOAD) == expected
    assert (wire + PAYLOAD)[expected.consumed:] == PAYLOAD


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_every_prefix_needs_more(wire: bytes, expected: ProxyHeader) -> None:
    """Fed in any two pieces, the answer is NeedMore until the last byte, then the same header."""
    for cut in range(len(wire)):
        assert isinstance(parse(wire[:cut]), NeedMore), cut
    assert parse(wire) == expected


def test_need_more_counts_the_missing_bytes_of_v2() -> None:
    wire = v2(0x21, 0x11, IPV4_BODY)
    assert parse(wire[:10]) == NeedMore(6)
    assert parse(wire[:20]) == NeedMore(8)


def test_client_is_the_source_only_for_proxy() -> None:
    proxied = parse(v2(0x21, 0x11, IPV4_BODY))
    local = parse(v2(0x20, 0x11, IPV4_BODY))
    assert isinstance(proxied, ProxyHeader) and isinstance(local, ProxyHeader)
    assert proxied.client == Endpoint("192.0.2.10", 51000)
    assert local.client is None
    assert str(Endpoint("2001:db8::1", 5)) == "[2001:db8::1]:5"


MALFORMED = [
    (b"GET / HTTP/1.1\r\n", "starts with byte 0x47"),
    (b"\x16\x03\x01\x00", "starts with byte 0x16"),
    (b"PROXX TCP4", "does not start with 'PROXY '"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "exactly 4 fields"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "exactly 4 fields"),
    (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "exactly 4 fields"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "exactly 4 fields"),
    (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "not a TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not a TCP6 address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 0443 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "line break without CR"),
    (b"PROXY UNKNOWN\n", "line break without CR"),
    (b"PROXY UNKNOWN\rX\r\n", "line break without CR"),
    (b"PROXY TCP4 1.2.3.4\x00", "NUL"),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n", "longer than 107"),
    (b"PROXY UNKNOWN " + b"x" * 200, "longer than 107"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "signature does not match"),
    (v2(0x11, 0x11, IPV4_BODY), "version 1, not 2"),
    (v2(0x31, 0x11, IPV4_BODY), "version 3, not 2"),
    (v2(0x22, 0x11, IPV4_BODY), "unknown command 0x2"),
    (v2(0x2F, 0x11, IPV4_BODY), "unknown command 0xf"),
    (v2(0x21, 0x13, IPV4_BODY), "family/transport byte 0x13"),
    (v2(0x21, 0x41, IPV4_BODY), "family/transport byte 0x41"),
    (v2(0x21, 0x01, b""), "family/transport byte 0x01"),
    (v2(0x21, 0x11, IPV4_BODY[:11]), "too short for its address family"),
    (v2(0x21, 0x21, IPV4_BODY), "too short for its address family"),
    (v2(0x21, 0x31, b"\x00" * 215), "too short for its address family"),
    (v2(0x21, 0x11, b"", length=2049), "more than the 2048 accepted"),
    (v2(0x21, 0x11, b"", length=65535), "more than the 2048 accepted"),
    (v2(0x21, 0x11, IPV4_BODY + b"\x01\x00"), "inside a TLV"),
    (v2(0x21, 0x11, IPV4_BODY + b"\x01\x00\x05abc"), "TLV longer than the header"),
    (v2(0x21, 0x11, IPV4_BODY + b"\x04\x00\x00\x01"), "inside a TLV"),
]


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_malformed_headers_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message.replace("+", r"\+")):
        parse(wire + PAYLOAD)


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_a_malformed_header_is_never_accepted_in_pieces(wire: bytes, message: str) -> None:
    """A prefix of a bad header is NeedMore or the error, never a header."""
    for cut in range(len(wire) + 1):
        try:
            result = parse(wire[:cut])
        except ProxyHeaderError:
            continue
        assert isinstance(result, NeedMore), cut


def test_bad_first_byte_is_refused_at_once() -> None:
    """A client that sends no header (a probe, a misrouted client) is refused on its first byte."""
    for first in range(256):
        if first in (ord("P"), 0x0D):
            assert isinstance(parse(bytes([first])), NeedMore)
        else:
            with pytest.raises(ProxyHeaderError):
                parse(bytes([first]))


def test_v2_bound_can_be_raised_for_a_balancer_sending_many_tlvs() -> None:
    wire = v2(0x21, 0x11, IPV4_BODY + b"\xe0" + struct.pack("!H", 3000) + b"\x00" * 3000)
    with pytest.raises(ProxyHeaderError, match="more than the 2048"):
        parse(wire)
    header = parse(wire, v2_max_length=4096)
    assert isinstance(header, ProxyHeader) and header.consumed == len(wire)


def test_v1_at_exactly_107_bytes_is_accepted() -> None:
    wire = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(wire) == V1_MAX_LENGTH
    assert parse(wire) == ProxyHeader(1, Command.PROXY, Family.UNKNOWN, None, None, V1_MAX_LENGTH)
    # The longest real TCP6 line is 104 bytes.
    longest = build_v1(Endpoint("ffff:" * 7 + "ffff", 65535), Endpoint("ffff:" * 7 + "ffff", 65535))
    assert len(longest) == 104 and isinstance(parse(longest), ProxyHeader)


ENDPOINTS = [
    (Endpoint("192.0.2.7", 50123), Endpoint("127.0.0.1", 8443)),
    (Endpoint("2001:db8::7", 1), Endpoint("::1", 65535)),
]


@pytest.mark.parametrize(("source", "destination"), ENDPOINTS)
def test_built_headers_parse_back(source: Endpoint, destination: Endpoint) -> None:
    for wire, version in ((build_v1(source, destination), 1), (build_v2(source, destination), 2)):
        header = parse(wire + PAYLOAD)
        assert isinstance(header, ProxyHeader)
        assert (header.version, header.command, header.source, header.destination, header.consumed) == (
            version, Command.PROXY, source, destination, len(wire))


def test_builders_without_addresses() -> None:
    mixed = (Endpoint("192.0.2.7", 1), Endpoint("::1", 2))
    assert build_v1(*mixed) == b"PROXY UNKNOWN\r\n"
    assert build_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert build_v2(*mixed) == V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert build_v2(None, None, Command.LOCAL) == V2_SIGNATURE + b"\x20\x00\x00\x00"
    with pytest.raises(ValueError, match="port 70000"):
        build_v2(Endpoint("192.0.2.7", 70000), Endpoint("127.0.0.1", 1))


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_only_the_parsers_answers(data: bytes) -> None:
    for start in (b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11"):
        try:
            result = parse(start + data)
        except ProxyHeaderError:
            continue
        assert isinstance(result, (NeedMore, ProxyHeader))
        if isinstance(result, ProxyHeader):
            assert 0 < result.consumed <= len(start + data)
