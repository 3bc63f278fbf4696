"""The server handshake state machine: every mode, every way the bytes can arrive, every rejection."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.client import ClientConnection, build_client_hello
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import (
    Authenticated,
    Handshake,
    HandshakeSettings,
    NeedMore,
    Rejected,
    SecretTable,
    Step,
)
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind

from .vectors import stream

NOW = 1_790_000_000.0
DOMAIN = "www.example.com"
KEY = bytes(range(16))
OTHER_KEY = bytes(range(100, 116))
PAYLOAD = b"first frame after the init, 32b!"


def table(aes: Backend, *secrets: Secret) -> SecretTable:
    return SecretTable([(f"s{i}", s) for i, s in enumerate(secrets)], aes)


SECRETS = {
    "classic": Secret(KEY, SecretKind.CLASSIC),
    "dd": Secret(KEY, SecretKind.PADDED),
    "ee": Secret(KEY, SecretKind.FAKE_TLS, DOMAIN),
}
TAGS = {"abridged": obfs2.TAG_ABRIDGED, "intermediate": obfs2.TAG_INTERMEDIATE, "padded": obfs2.TAG_PADDED}


def new_handshake(aes: Backend, settings: HandshakeSettings | None = None, replay: ReplayFilter | None = None,
                  secrets: SecretTable | None = None) -> Handshake:
    return Handshake(
        secrets or table(aes, Secret(OTHER_KEY, SecretKind.CLASSIC), SECRETS["ee"]),
        settings or HandshakeSettings(tls_domains=frozenset({DOMAIN})),
        replay or ReplayFilter.in_process(1024),
        stream(b"server"),
        aes=aes,
    )


def client_bytes(aes: Backend, mode: str, tag: bytes = obfs2.TAG_PADDED, now: float = NOW,
                 domain: str | None = None) -> bytes:
    """Everything a client sends up to and including its first payload (for ee: after a server flight
    computed by a throwaway server, since the flight's content does not change what the client sends)."""
    client = ClientConnection(SECRETS[mode], stream(b"client"), now, aes=aes, tag=tag, dc_id=-3, domain=domain)
    if not client.fake_tls:
        return client.first_bytes() + client.encrypt(PAYLOAD)
    hello = client.first_bytes()
    server = new_handshake(aes, settings=HandshakeSettings())
    step = server.feed(hello, now)
    assert isinstance(step, NeedMore) and step.send
    client.feed_handshake(step.send)
    return hello + client.encrypt(PAYLOAD)


def feed_chunks(handshake: Handshake, chunks: Iterator[bytes]) -> tuple[Step, bytes, bytes]:
    """Feed until the handshake ends; returns the last step, what the server sent, and the unfed rest."""
    sent = b""
    step: Step = NeedMore()
    for chunk in chunks:
        step = handshake.feed(chunk, NOW)
        sent += step.send if not isinstance(step, Rejected) else b""
        if not isinstance(step, NeedMore):
            break
    return step, sent, b"".join(chunks)


def splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def assert_authenticated(step: Step, mode: str, tag: bytes, rest: bytes) -> None:
    assert isinstance(step, Authenticated), step
    session = step.auth
    assert session.secret_id == "s1" and session.tag == tag and session.dc_id == -3
    assert session.fake_tls is (mode == "ee")
    if session.tls_reader is not None:
        rest = session.tls_reader.unwrap(rest)
    assert session.from_client.update(session.pending + rest) == PAYLOAD


@pytest.mark.parametrize("mode", ["classic", "dd", "ee"])
@pytest.mark.parametrize("tag_name", list(TAGS))
def test_every_split_authenticates(aes: Backend, mode: str, tag_name: str) -> None:
    tag = TAGS[tag_name]
    data = client_bytes(aes, mode, tag)
    secrets = table(aes, Secret(OTHER_KEY, SecretKind.CLASSIC), SECRETS[mode])
    count = 0
    for chunks in splits(data):
        step, sent, rest = feed_chunks(new_handshake(aes, secrets=secrets), iter(chunks))
        assert_authenticated(step, mode, tag, rest)
        if mode == "ee":
            assert sent.startswith(faketls.SERVER_HELLO_PREFIX)
        count += 1
    assert count == len(data) + 1


def test_server_flight_shape(aes: Backend) -> None:
    hello = build_client_hello(KEY, DOMAIN, stream(b"c"), NOW)
    step = new_handshake(aes, settings=HandshakeSettings(cert_size=3000)).feed(hello, NOW)
    assert isinstance(step, NeedMore)
    flight = step.send
    hello_len = int.from_bytes(flight[3:5], "big")
    rest = flight[5 + hello_len :]
    assert rest[:9] == faketls.CHANGE_CIPHER_SPEC + faketls.APPLICATION_DATA
    assert int.from_bytes(rest[9:11], "big") == 3000 and len(rest) == 11 + 3000
    assert flight[5] == 0x02 and b"\x00\x2b\x00\x02\x03\x04" in flight[: 5 + hello_len]


def rejected(aes: Backend, data: bytes, handshake: Handshake | None = None) -> Rejected:
    step, _, _ = feed_chunks(handshake or new_handshake(aes), iter([data]))
    assert isinstance(step, Rejected), step
    assert step.received == data or not step.maskable
    return step


def test_wrong_secret_is_unknown(aes: Backend) -> None:
    data = ClientConnection(Secret(bytes(16), SecretKind.PADDED), os.urandom, NOW, aes=aes).first_bytes()
    assert rejected(aes, data).reason is RejectReason.UNKNOWN_SECRET


def test_random_bytes_and_http_are_unknown(aes: Backend) -> None:
    assert rejected(aes, os.urandom(64)).reason is RejectReason.UNKNOWN_SECRET
    http = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"
    assert rejected(aes, http).reason is RejectReason.UNKNOWN_SECRET


def test_short_http_probe_goes_to_the_mask_at_once(aes: Backend) -> None:
    for probe in [b"GET / HTTP/1.0\r\n\r\n", b"HEAD", b"OPTIONS * HTTP/1.1\r\n", b"\xef", b"\xee\xee\xee\xee"]:
        step = new_handshake(aes).feed(probe, NOW)
        assert isinstance(step, Rejected) and step.received == probe, probe


def test_short_random_probe_waits_like_a_server_would(aes: Backend) -> None:
    assert isinstance(new_handshake(aes).feed(b"\x01\x02\x03\x04\x05", NOW), NeedMore)


def test_received_is_exactly_what_was_fed_after_the_flight(aes: Backend) -> None:
    hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
    bad = b"\x17\x03\x03\x00\x05xxxxx" + b"\x15\x03\x03\x00\x01\x00"
    data = hello + bad
    handshake = new_handshake(aes)
    step: Step = NeedMore()
    for i in range(0, len(data), 11):
        step = handshake.feed(data[i : i + 11], NOW)
        if not isinstance(step, NeedMore):
            break
    assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_BAD_INIT
    assert step.received == data[: i + 11]


def test_certificate_size_jitter_stays_in_range(aes: Backend) -> None:
    settings = HandshakeSettings(cert_size=2000, cert_size_jitter=40)
    sizes = set()
    for _ in range(60):
        hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
        handshake = Handshake(table(aes, SECRETS["ee"]), settings, ReplayFilter.in_process(64), os.urandom, aes=aes)
        step = handshake.feed(hello, NOW)
        assert isinstance(step, NeedMore)
        hello_len = int.from_bytes(step.send[3:5], "big")
        sizes.add(int.from_bytes(step.send[5 + hello_len + 9 : 5 + hello_len + 11], "big"))
    assert min(sizes) >= 1960 and max(sizes) <= 2040 and len(sizes) > 10


def test_bad_hmac(aes: Backend) -> None:
    hello = build_client_hello(bytes(16), DOMAIN, os.urandom, NOW)
    assert rejected(aes, hello).reason is RejectReason.TLS_BAD_HMAC


def test_skew_window_both_ways(aes: Backend) -> None:
    settings = HandshakeSettings(tls_domains=frozenset({DOMAIN}), max_skew_past=120, max_skew_future=60)
    for offset, ok in [(-119, True), (-121, False), (59, True), (61, False), (-86400, False)]:
        hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW + offset)
        step = new_handshake(aes, settings=settings).feed(hello, NOW)
        if ok:
            assert isinstance(step, NeedMore) and step.send, offset
        else:
            assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_SKEW, offset


def test_wrong_sni(aes: Backend) -> None:
    hello = build_client_hello(KEY, "www.other.org", os.urandom, NOW)
    assert rejected(aes, hello).reason is RejectReason.TLS_BAD_SNI


def test_replayed_hello_and_init(aes: Backend) -> None:
    replay = ReplayFilter.in_process(1024)
    hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
    assert isinstance(new_handshake(aes, replay=replay).feed(hello, NOW), NeedMore)
    assert rejected(aes, hello, new_handshake(aes, replay=replay)).reason is RejectReason.REPLAY

    init = ClientConnection(Secret(OTHER_KEY, SecretKind.CLASSIC), os.urandom, NOW, aes=aes).first_bytes()
    assert isinstance(new_handshake(aes, replay=replay).feed(init, NOW), Authenticated)
    assert rejected(aes, init, new_handshake(aes, replay=replay)).reason is RejectReason.REPLAY


def test_unauthenticated_hello_does_not_poison_the_replay_cache(aes: Backend) -> None:
    replay = ReplayFilter.in_process(1024)
    hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
    wrong_sni = new_handshake(aes, replay=replay, settings=HandshakeSettings(tls_domains=frozenset({"a.example"})))
    assert isinstance(wrong_sni.feed(hello, NOW), Rejected)
    assert isinstance(new_handshake(aes, replay=replay).feed(hello, NOW), NeedMore)


def test_modes_can_be_disabled(aes: Backend) -> None:
    tls_only = HandshakeSettings(allow_obfuscated=False)
    dd_where_tls_only = rejected(aes, client_bytes(aes, "dd"), new_handshake(aes, settings=tls_only))
    assert dd_where_tls_only.reason is RejectReason.MODE_DISABLED
    obfs_only = HandshakeSettings(allow_faketls=False)
    hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
    assert rejected(aes, hello, new_handshake(aes, settings=obfs_only)).reason is RejectReason.UNKNOWN_SECRET


def test_malformed_tls(aes: Backend) -> None:
    assert rejected(aes, b"\x16\x03\x01\x00\x10" + bytes(16)).reason is RejectReason.TLS_MALFORMED
    hello = bytearray(build_client_hello(KEY, DOMAIN, os.urandom, NOW))
    hello[5] = 0x02
    assert rejected(aes, bytes(hello)).reason is RejectReason.TLS_MALFORMED


def test_bad_init_after_tls_is_closed_not_masked(aes: Backend) -> None:
    hello = build_client_hello(KEY, DOMAIN, os.urandom, NOW)
    handshake = new_handshake(aes)
    assert isinstance(handshake.feed(hello, NOW), NeedMore)
    step = handshake.feed(faketls.CHANGE_CIPHER_SPEC + faketls.wrap_records(os.urandom(80)), NOW)
    assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_BAD_INIT and not step.maskable
    handshake = new_handshake(aes)
    handshake.feed(hello, NOW)
    step = handshake.feed(b"\x15\x03\x03\x00\x02\x02\x28", NOW)
    assert isinstance(step, Rejected) and step.reason is RejectReason.TLS_BAD_INIT


def test_feeding_after_the_end_is_a_bug(aes: Backend) -> None:
    handshake = new_handshake(aes)
    handshake.feed(os.urandom(64), NOW)
    with pytest.raises(RuntimeError):
        handshake.feed(b"x", NOW)


@pytest.mark.parametrize("hint", [None, 0, 2, 3])
def test_an_obfuscated2_client_is_found_whichever_secret_is_tried_first(aes: Backend, hint: int | None) -> None:
    """The hinted secret is decoded outright, the rest through the cheaper trial: either way the
    client's own secret is the one found, and a key none of them holds is refused."""
    secrets = [Secret(os.urandom(16), SecretKind.PADDED) for _ in range(4)]
    for client_key, expected in ((secrets[2], 2), (Secret(os.urandom(16), SecretKind.PADDED), None)):
        client = ClientConnection(client_key, os.urandom, NOW, aes=aes)
        handshake = Handshake(table(aes, *secrets), HandshakeSettings(), ReplayFilter.in_process(1024), os.urandom,
                              aes=aes, hint=hint)
        step = handshake.feed(client.first_bytes() + client.encrypt(PAYLOAD), NOW)
        if expected is None:
            assert isinstance(step, Rejected) and step.reason is RejectReason.UNKNOWN_SECRET
        else:
            assert isinstance(step, Authenticated) and step.auth.secret_index == expected
            assert step.auth.from_client.update(step.auth.pending) == PAYLOAD
