"""With a large secret table, a client no hint identifies does not scan inline: the handshake says ScanNeeded
with the number of secrets left to try, keeps what arrives meanwhile, and `scan` resumes it with the same
outcome an inline scan had. Small tables, hinted clients and small SNI groups never ask."""

from __future__ import annotations

import os

import pytest

from mtproxy.crypto.backend import Backend
from mtproxy.protocol import faketls
from mtproxy.protocol.client import ClientConnection, build_client_hello
from mtproxy.protocol.errors import RejectReason
from mtproxy.protocol.handshake import (
    Authenticated,
    Handshake,
    HandshakeSettings,
    NeedMore,
    Rejected,
    ScanNeeded,
    SecretTable,
)
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind

NOW = 1_790_000_000.0
PAYLOAD = b"first frame after the init, 32b!"
LIMIT = HandshakeSettings().inline_scan_limit


def keys(n: int, kind: SecretKind = SecretKind.PADDED, domain: str | None = None) -> list[Secret]:
    return [Secret(os.urandom(16), kind, domain) for _ in range(n)]


def handshake(aes: Backend, secrets: list[Secret], hint: int | None = None,
              replay: ReplayFilter | None = None, settings: HandshakeSettings | None = None) -> Handshake:
    table = SecretTable([(f"s{i}", s) for i, s in enumerate(secrets)], aes)
    return Handshake(table, settings or HandshakeSettings(), replay or ReplayFilter.in_process(1024), os.urandom,
                     aes=aes, hint=hint)


def test_scan_is_only_for_a_waiting_handshake(aes: Backend) -> None:
    with pytest.raises(RuntimeError):
        handshake(aes, keys(LIMIT)).scan(NOW)


def test_an_unhinted_init_waits_for_its_scan_and_resumes_to_its_secret(aes: Backend) -> None:
    secrets = keys(LIMIT + 36)
    client = ClientConnection(secrets[70], os.urandom, NOW, aes=aes)
    server = handshake(aes, secrets)
    assert server.feed(client.first_bytes(), NOW) == ScanNeeded(len(secrets))
    assert server.feed(client.encrypt(PAYLOAD), NOW) == NeedMore()  # kept for after the scan
    step = server.scan(NOW)
    assert isinstance(step, Authenticated) and step.auth.secret_index == 70 and step.auth.secret_id == "s70"
    assert step.auth.from_client.update(step.auth.pending) == PAYLOAD
    with pytest.raises(RuntimeError):
        server.scan(NOW)


def test_a_wrong_hint_leaves_the_rest_to_scan(aes: Backend) -> None:
    secrets = keys(LIMIT)
    client = ClientConnection(secrets[5], os.urandom, NOW, aes=aes)
    server = handshake(aes, secrets, hint=9)
    assert server.feed(client.first_bytes(), NOW) == ScanNeeded(len(secrets) - 1)
    step = server.scan(NOW)
    assert isinstance(step, Authenticated) and step.auth.secret_index == 5


def test_a_hinted_client_never_waits(aes: Backend) -> None:
    secrets = keys(2 * LIMIT)
    client = ClientConnection(secrets[100], os.urandom, NOW, aes=aes)
    step = handshake(aes, secrets, hint=100).feed(client.first_bytes(), NOW)
    assert isinstance(step, Authenticated) and step.auth.secret_index == 100


def test_garbage_is_rejected_after_its_scan_with_everything_it_sent(aes: Backend) -> None:
    garbage = b"\x01" + os.urandom(63)  # no forbidden start, not TLS
    server = handshake(aes, keys(LIMIT), hint=3)
    assert server.feed(garbage[:40], NOW) == NeedMore()
    assert server.feed(garbage[40:], NOW) == ScanNeeded(LIMIT - 1)
    assert server.feed(b"more", NOW) == NeedMore()
    step = server.scan(NOW)
    assert isinstance(step, Rejected) and step.reason is RejectReason.UNKNOWN_SECRET and step.maskable
    assert step.received == garbage + b"more"


def test_a_replayed_init_costs_no_scan(aes: Backend) -> None:
    secrets = keys(LIMIT)
    replay = ReplayFilter.in_process(1024)
    init = ClientConnection(secrets[40], os.urandom, NOW, aes=aes).first_bytes()
    first = handshake(aes, secrets, replay=replay, hint=40).feed(init, NOW)
    assert isinstance(first, Authenticated)
    again = handshake(aes, secrets, replay=replay).feed(init, NOW + 1)
    assert isinstance(again, Rejected) and again.reason is RejectReason.REPLAY and again.received == init


def test_small_tables_scan_inline_as_before(aes: Backend) -> None:
    secrets = keys(LIMIT - 1)
    client = ClientConnection(secrets[-1], os.urandom, NOW, aes=aes)
    step = handshake(aes, secrets).feed(client.first_bytes(), NOW)
    assert isinstance(step, Authenticated) and step.auth.secret_index == LIMIT - 2
    garbage = handshake(aes, secrets).feed(b"\x01" * 64, NOW)
    assert isinstance(garbage, Rejected) and garbage.reason is RejectReason.UNKNOWN_SECRET
    hello = build_client_hello(os.urandom(16), "a.example", os.urandom, NOW)
    bad = handshake(aes, keys(LIMIT - 1, SecretKind.FAKE_TLS, "a.example")).feed(hello, NOW)
    assert isinstance(bad, Rejected) and bad.reason is RejectReason.TLS_BAD_HMAC


def test_a_small_sni_group_is_tried_inline(aes: Backend) -> None:
    """Per-user-group domains: a new fake-TLS client costs its group's few tries, whatever the table."""
    secrets = keys(3 * LIMIT, SecretKind.FAKE_TLS, "crowd.example") + keys(5, SecretKind.FAKE_TLS, "own.example")
    hello = build_client_hello(secrets[-2].key, "own.example", os.urandom, NOW)
    step = handshake(aes, secrets).feed(hello, NOW)
    assert isinstance(step, NeedMore) and step.send.startswith(faketls.SERVER_HELLO_PREFIX)
    # not one of the group: the scan is the whole table (the group's few tries come first again)
    stranger = build_client_hello(secrets[10].key, "own.example", os.urandom, NOW)
    server = handshake(aes, secrets)
    assert server.feed(stranger, NOW) == ScanNeeded(3 * LIMIT + 5)
    flight = server.scan(NOW)
    assert isinstance(flight, NeedMore) and flight.send.startswith(faketls.SERVER_HELLO_PREFIX)


def test_a_hello_of_a_crowded_domain_waits_and_completes(aes: Backend) -> None:
    secrets = keys(2 * LIMIT, SecretKind.FAKE_TLS, "crowd.example")
    client = ClientConnection(secrets[77], os.urandom, NOW, aes=aes)
    server = handshake(aes, secrets, hint=1, settings=HandshakeSettings(tls_domains=frozenset({"crowd.example"})))
    assert server.feed(client.first_bytes(), NOW) == ScanNeeded(2 * LIMIT - 1)
    flight = server.scan(NOW)
    assert isinstance(flight, NeedMore) and flight.send
    client.feed_handshake(flight.send)
    step = server.feed(client.encrypt(PAYLOAD), NOW)
    assert isinstance(step, Authenticated) and step.auth.secret_index == 77 and step.auth.fake_tls


def test_a_hello_and_its_records_sent_together_complete_in_the_scan(aes: Backend) -> None:
    secrets = keys(2 * LIMIT, SecretKind.FAKE_TLS, "crowd.example")
    client = ClientConnection(secrets[5], os.urandom, NOW, aes=aes)
    hello = client.first_bytes()
    helper = handshake(aes, [secrets[5]])  # what the flight holds does not change what the client sends next
    flight = helper.feed(hello, NOW)
    assert isinstance(flight, NeedMore)
    client.feed_handshake(flight.send)
    server = handshake(aes, secrets)
    assert isinstance(server.feed(hello, NOW), ScanNeeded)
    assert server.feed(client.encrypt(PAYLOAD), NOW) == NeedMore()
    step = server.scan(NOW)
    assert isinstance(step, Authenticated) and step.send.startswith(faketls.SERVER_HELLO_PREFIX)
    assert step.auth.tls_reader is not None


@pytest.mark.parametrize("offset, reason", [(0, RejectReason.TLS_BAD_HMAC), (-86400, RejectReason.TLS_SKEW)])
def test_a_scanned_hello_is_rejected_for_the_same_reasons(aes: Backend, offset: float, reason: RejectReason) -> None:
    secrets = keys(2 * LIMIT, SecretKind.FAKE_TLS, "crowd.example")
    key = os.urandom(16) if reason is RejectReason.TLS_BAD_HMAC else secrets[9].key
    hello = build_client_hello(key, "crowd.example", os.urandom, NOW + offset)
    server = handshake(aes, secrets)
    assert server.feed(hello, NOW) == ScanNeeded(2 * LIMIT)
    step = server.scan(NOW)
    assert isinstance(step, Rejected) and step.reason is reason and step.received == hello and step.maskable


def test_a_replayed_hello_costs_no_scan(aes: Backend) -> None:
    secrets = keys(2 * LIMIT, SecretKind.FAKE_TLS, "crowd.example")
    replay = ReplayFilter.in_process(1024)
    hello = build_client_hello(secrets[3].key, "crowd.example", os.urandom, NOW)
    assert isinstance(handshake(aes, secrets, hint=3, replay=replay).feed(hello, NOW), NeedMore)
    step = handshake(aes, secrets, replay=replay).feed(hello, NOW + 1)
    assert isinstance(step, Rejected) and step.reason is RejectReason.REPLAY
