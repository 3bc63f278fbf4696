"""What two traffic classifiers make of the proxy's client-side traffic: nDPI (ndpiReader) and tshark.

Real sessions go through the real engine on loopback while tcpdump captures them: TDLib (the library of the
official apps) pinging through the proxy to the fake DC of tests/interop, and our own client pushing 1 MiB
each way to an echo DC; for each secret kind, on port 443 and on the engine's default port 8443. The mask is
a real TLS 1.3 site, so the fake certificate record has the size learned from it, as in production.

Must hold: ee is TLS to both tools, with the fake-TLS domain as SNI, every byte in well-formed TLS records;
classic and dd are not Telegram to either tool. What the tools say beyond that is pinned down (the exact risk
flags nDPI raises; for random bytes, the only guesses each tool may make), so a new signal fails here;
docs/undetectability.md explains each one. Control: a plain (unobfuscated) MTProto client in the same
capture IS found by nDPI's Telegram detector, so that detector is live in the build under test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtproxy.protocol.secret import Secret, SecretKind
from mtproxy.testkit.background import BackgroundPeers
from mtproxy.testkit.client import open_client
from mtproxy.testkit.process import ProxyProcess
from mtproxy.testkit.servers import TlsSite, self_signed_context

from ..interop.fake_dc import REQ_PQ_MULTI, FakeDC
from ..interop.tdlib_client import run_tdlib
from .classifiers import (
    HEURISTICS_OFF_BY_DEFAULT,
    FlowKey,
    NdpiFlow,
    TsharkFlow,
    capture,
    missing_tools,
    ndpi_flows,
    protocol_names,
    tcp_heuristics,
    tshark_expert,
    tshark_flows,
    versions,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]

DOMAIN = "www.example.com"
PORTS = (443, 8443)  # the port a deployment should use, and `mtproxy run`'s default
KINDS = ("classic", "dd", "ee")
TDLIB_SERVER = "127.0.0.1"  # the engine TDLib talks to (its DCs: the interop fake DC)
BULK_SERVER = "127.0.0.2"  # the engine our bulk client talks to (its DCs: an echo DC)
CONTROL_CLIENT = "127.0.0.3"  # source address of the plain-MTProto control connection
BULK_BYTES = 1 << 20

TELEGRAM_WORDS = ("telegram", "mtproto", "mtproxy", "obfs", "obfuscated")
SSL_2_0 = 0x0002  # the record version tshark gives what its SSL 2.0 reading finds in random bytes
# What nDPI 4.2 calls a uniformly random TCP stream besides Unknown (measured on classic and dd flows):
# - TLS "Match by port": always on 443; elsewhere when its TLS dissector, reading the random bytes as record
#   headers, meets 0x17 (application data) where it expects a record to start (3 of 100 1 MiB flows on 8443);
# - WebSocket "DPI": a short packet whose second byte happens to equal its length and whose first byte is one of
#   ten frame types (about 1 in 3300 short packets; once in a dozen runs of this file).
# - Mining "Match by port", with the risk nDPI gives that name ("Unsafe Protocol"): when byte 2 of the client's
#   first segment is 0x04 (1 flow in 256: the client's random init; found by changing the bytes of a capture
#   that failed here, one at a time, under ndpiReader).
RANDOM_BYTES_TO_NDPI = {("TLS", "Match by port"), ("WebSocket", "DPI"), ("Mining", "Match by port")}
NDPI_RISKS_OF_GUESSES = {("Mining", "Match by port"): frozenset({"Unsafe Protocol"})}  # none for the others
# The extensions TDLib's Chrome-like ClientHello carries that nDPI 4.2 does not know (application_settings'
# new code point, encrypted_client_hello): nDPI raises "TLS Suspicious Extension" for them, as it would for the
# Chrome whose hello TDLib copies. Our own test client's hello has neither and gets no flag from the same server.
UNKNOWN_TO_NDPI = {17613, 65037}


@dataclass
class Captured:
    kind: str
    pcap: Path
    ndpi: dict[FlowKey, NdpiFlow]
    tshark: dict[FlowKey, TsharkFlow]  # default dissection
    tshark_heuristics: dict[FlowKey, TsharkFlow]  # every TCP heuristic dissector on as well
    expert: dict[str, set[str]]

    def sessions(self, flows: dict[FlowKey, TsharkFlow] | None = None) -> list[TsharkFlow]:
        """The flows that carried the kind's sessions (TDLib's and the bulk client's), not the control."""
        table = self.tshark if flows is None else flows
        return [f for f in table.values() if f.payload["up"] > 0 and f.client[0] != CONTROL_CLIENT]


def secrets() -> dict[str, str]:
    return {
        "classic": os.urandom(16).hex(),
        "dd": "dd" + os.urandom(16).hex(),
        "ee": "ee" + os.urandom(16).hex() + DOMAIN.encode("ascii").hex(),
    }


def as_secret(text: str) -> Secret:
    if text.startswith("ee"):
        return Secret(bytes.fromhex(text[2:34]), SecretKind.FAKE_TLS, DOMAIN)
    if text.startswith("dd"):
        return Secret(bytes.fromhex(text[2:34]), SecretKind.PADDED)
    return Secret(bytes.fromhex(text), SecretKind.CLASSIC)


async def bulk_session(port: int, secret: Secret) -> None:
    """1 MiB up and the same back through the echo DC, both directions in flight at once."""
    client = await open_client(BULK_SERVER, port, secret)
    data = os.urandom(BULK_BYTES)
    echo = asyncio.ensure_future(client.recv_exactly(len(data)))
    for offset in range(0, len(data), 1 << 16):
        await client.send(data[offset : offset + (1 << 16)])
    assert await asyncio.wait_for(echo, 20) == data
    await client.close()


def plain_mtproto_control(port: int) -> None:
    """What nDPI's Telegram detector looks for: the abridged transport's 0xef marker, unobfuscated, to port
    443, then frames of unencrypted MTProto (two req_pq_multi). The proxy treats it as a failed handshake and
    hands it to the mask site."""
    frame = struct.pack("<qqi", 0, 0x5F00000000000004, 20) + struct.pack("<I", REQ_PQ_MULTI) + os.urandom(16)
    payload = b"\xef" + (bytes([len(frame) // 4]) + frame) * 2
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.bind((CONTROL_CLIENT, 0))
        sock.connect((BULK_SERVER, port))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def start_engine(host: str, dc_port: int, mask_port: int, keys: dict[str, str], tmp_path: Path) -> ProxyProcess:
    args = [f"--listen={host}:{port}" for port in PORTS]
    args += ["--dc-override", f"*=127.0.0.1:{dc_port}", "--mask", f"127.0.0.1:{mask_port}", "-p", "0",
             "--state-file", str(tmp_path / f"state-{host}.json")]
    for secret in keys.values():
        args += ["-S", secret]
    proxy = ProxyProcess(args, tmp_path / f"proxy-{host}.log").wait_ready(timeout=20)
    proxy.wait_log("fake certificate size learned")  # the ee flight has the mask site's size before we capture
    return proxy


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Captured]]:
    tmp_path = tmp_path_factory.mktemp("captures")
    keys = secrets()
    peers = BackgroundPeers().start()
    site = TlsSite(self_signed_context(DOMAIN))
    engines: list[ProxyProcess] = []
    try:
        mask_port = peers.call(site.start())
        with FakeDC() as dc:
            engines.append(start_engine(TDLIB_SERVER, dc.port, mask_port, keys, tmp_path))
            engines.append(start_engine(BULK_SERVER, peers.dc_port, mask_port, keys, tmp_path))
            result: dict[str, Captured] = {}
            for kind in KINDS:
                pcap = tmp_path / f"{kind}.pcap"
                with capture(pcap, PORTS):
                    for port in PORTS:
                        run = run_tdlib(port, keys[kind], dc, tmp_path, timeout=20, server=TDLIB_SERVER)
                        assert run.ping_seconds, f"TDLib ({kind}, port {port}) got no answer: {run.events}"
                        asyncio.run(asyncio.wait_for(bulk_session(port, as_secret(keys[kind])), 30))
                    if kind == "classic":
                        plain_mtproto_control(443)
                result[kind] = Captured(
                    kind, pcap, ndpi_flows(pcap, PORTS), tshark_flows(pcap, PORTS, all_heuristics=False),
                    tshark_flows(pcap, PORTS, all_heuristics=True), tshark_expert(pcap),
                )
        yield result
    finally:
        for engine in engines:
            engine.stop()
        peers.call(site.close())
        peers.stop()


def context(captured: Captured, extra: object = "") -> str:
    return f"{versions()}\n{captured.kind}: {captured.pcap}\n{extra}"


def test_every_session_is_in_the_capture(captured: dict[str, Captured]) -> None:
    """Each kind's capture holds TDLib's and the bulk client's flows on both ports, and nDPI saw each of them."""
    for cap in captured.values():
        sessions = cap.sessions()
        seen = {(f.server[0], f.server[1]) for f in sessions}
        assert seen == {(s, p) for s in (TDLIB_SERVER, BULK_SERVER) for p in PORTS}, context(cap, seen)
        for flow in sessions:
            assert (flow.client, flow.server) in cap.ndpi, context(cap, flow)
            if flow.server[0] == BULK_SERVER:
                assert min(flow.payload.values()) >= BULK_BYTES, context(cap, flow)


def test_tshark_heuristics_and_dissectors_are_all_in_play() -> None:
    """The all-heuristics run really turns on every TCP heuristic this tshark has (the map in classifiers.py
    covers its listing), and tshark has no Telegram dissector to turn on: if one appears, use it here."""
    off = {name for name, on in tcp_heuristics().items() if not on}
    assert off == set(HEURISTICS_OFF_BY_DEFAULT), versions()
    telegramish = {name for name in protocol_names() if any(word in name.lower() for word in TELEGRAM_WORDS)}
    assert telegramish == set(), f"tshark now dissects {telegramish}: add it to the checks of this file"


def expected_ee_risks(flow: NdpiFlow, hello_extensions: set[int]) -> set[str]:
    risks = set()
    if flow.server[1] != 443:
        risks.add("Known Protocol on Non Standard Port")  # TLS on a port that is not TLS's
    if hello_extensions & UNKNOWN_TO_NDPI:
        risks.add("TLS Suspicious Extension")  # the client's own (Chrome-like) hello, not ours
    return risks


def test_ndpi_sees_ee_as_tls_to_the_fake_domain(captured: dict[str, Captured]) -> None:
    cap = captured["ee"]
    server_fingerprints = set()
    tdlib_flagged = 0
    for session in cap.sessions():
        flow = cap.ndpi[(session.client, session.server)]
        assert (flow.protocol, flow.confidence, flow.sni, flow.tls_version) == (
            "TLS", "DPI", DOMAIN, "TLSv1.3"), context(cap, flow.line)
        extensions = set(session.offered_extensions)
        assert set(flow.risks) == expected_ee_risks(flow, extensions), context(cap, flow.line)
        if session.server[0] == TDLIB_SERVER:
            tdlib_flagged += bool(extensions & UNKNOWN_TO_NDPI)
        else:
            assert not extensions & UNKNOWN_TO_NDPI, context(cap, extensions)
        server_fingerprints.add(flow.ja3s)
    # Every ServerHello looks alike to JA3S, whoever the client: one server, one fingerprint.
    assert len(server_fingerprints) == 1 and None not in server_fingerprints, context(cap, server_fingerprints)
    assert tdlib_flagged >= len(PORTS), context(cap, "TDLib's hello no longer carries the extensions nDPI flags")


def test_tshark_sees_ee_as_well_formed_tls_to_the_fake_domain(captured: dict[str, Captured]) -> None:
    cap = captured["ee"]
    for flow in cap.sessions():
        where = context(cap, flow)
        assert flow.protocols == {"tls"}, where
        assert flow.sni == [DOMAIN], where  # one ClientHello, naming the fake-TLS domain
        assert (flow.handshake_types["up"], flow.handshake_types["down"]) == ([1], [2]), where
        assert flow.content_types["down"][:3] == [22, 20, 23], where  # ServerHello, ChangeCipherSpec, AppData
        assert 21 not in flow.content_types["up"] + flow.content_types["down"], where  # no alert either way
        assert flow.tls_record_bytes == flow.payload, where  # every byte, both ways, inside a TLS record
        assert flow.chosen_version == ["0x0304"], where  # TLS 1.3, as the client asked
        assert flow.chosen_cipher and set(flow.chosen_cipher) <= set(flow.offered_ciphers), where
        # the server's key share is for a group the client sent a share of (else it would have to ask again)
        assert len(flow.chosen_share) == 1 and flow.chosen_share[0] in flow.offered_shares, where
    assert set(cap.expert) <= {"TCP"}, context(cap, cap.expert)  # no TLS warning, nothing malformed


def test_tshark_heuristics_do_not_take_ee_for_anything_else(captured: dict[str, Captured]) -> None:
    """With every heuristic on, port 443 stays TLS (its port's dissector goes first). On 8443, found by TLS's
    own heuristic, a conversation can be taken over mid-stream by the TCPROS heuristic (off by default), which
    then waits for a message of an absurd length: it does so to OpenSSL-to-OpenSSL TLS 1.3 too (2 of 40 sessions
    on 8443, docs/undetectability.md), so it is tshark's, not a mark of ours."""
    cap = captured["ee"]
    for flow in cap.sessions(cap.tshark_heuristics):
        where = context(cap, flow)
        if flow.server[1] == 443:
            assert flow.protocols == {"tls"} and flow.sni == [DOMAIN], where
            assert flow.tls_record_bytes == flow.payload, where
        else:
            assert flow.protocols <= {"tls", "tcpros"}, where


@pytest.mark.parametrize("kind", ["classic", "dd"])
def test_ndpi_does_not_see_classic_or_dd_as_telegram(captured: dict[str, Captured], kind: str) -> None:
    """nDPI finds no protocol in the obfuscated2 stream and raises no risk of its own (4.2 has no randomness
    check for TCP: its "Suspicious Entropy" is about ICMP payloads; see docs/undetectability.md). What it names
    instead is a guess about random bytes: TLS by the port (443), Unknown elsewhere, and by chance the outcomes
    in RANDOM_BYTES_TO_NDPI, with only the risk such a name carries. Any other name fails here, to be looked
    at."""
    cap = captured[kind]
    for session in cap.sessions():
        flow = cap.ndpi[(session.client, session.server)]
        allowed = set(RANDOM_BYTES_TO_NDPI)
        if flow.server[1] != 443:
            allowed.add(("Unknown", "Unknown"))
        outcome = (flow.protocol, flow.confidence)
        assert outcome in allowed, context(cap, flow.line)
        assert flow.risks == NDPI_RISKS_OF_GUESSES.get(outcome, frozenset()), context(cap, flow.line)


def test_ndpi_telegram_detector_is_live(captured: dict[str, Captured]) -> None:
    cap = captured["classic"]
    control = [flow for flow in cap.ndpi.values() if flow.client[0] == CONTROL_CLIENT]
    assert [flow.protocol for flow in control] == ["Telegram"], context(cap, [f.line for f in control])


@pytest.mark.parametrize("kind", ["classic", "dd"])
def test_tshark_does_not_see_classic_or_dd_as_anything(captured: dict[str, Captured], kind: str) -> None:
    """tshark hands port 443 to its TLS dissector, which finds no handshake and no SNI in the stream; the rest
    is data, except where a heuristic dissector happens to like a few bytes of a random segment (with every
    heuristic on, websocket's 2-byte frame header fits one flow in ten on 8443; lbmsrs and thrift now and then,
    even by default): a guess by some bits, named after the heuristic, and tshark's expert notes what such a
    guess then fails to decode. Nothing is Telegram, with or without every heuristic on.

    The TLS dissector itself guesses too: a segment of random bytes that opens with a byte of 0x80 or more
    (SSL 2.0's two-byte record header), a known SSL 2.0 message type and lengths that fit is read as SSL 2.0
    records (seen: a "Client Master Key" from the server's side, 650 KiB into a download). Both directions of a
    classic or dd stream are random bytes, as any encrypted stream on 443, so that happens now and then and is
    allowed; a record of any TLS version, a handshake outside SSL 2.0 or a server name is not."""
    cap = captured[kind]
    guesses = set(tcp_heuristics())
    for flow in cap.sessions() + cap.sessions(cap.tshark_heuristics):
        where = context(cap, flow)
        assert flow.first_layers <= {"tls", "data"} | guesses, where
        assert flow.server[1] == 443 or "tls" not in flow.first_layers, where
        assert not any(word in p for p in flow.protocols for word in TELEGRAM_WORDS), where
        assert not flow.sni, where
        versions = flow.record_versions["up"] + flow.record_versions["down"]
        assert set(versions) <= {SSL_2_0}, where
        if not versions:
            assert not flow.handshake_types["up"] + flow.handshake_types["down"], where
