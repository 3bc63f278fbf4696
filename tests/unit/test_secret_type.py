"""The one rule for a new secret's type (operations.secrets.choose_type) and secrets' own host names."""

from __future__ import annotations

import os
import re
import time

import pytest

from mtproxy.crypto.backend import openssl_ctr
from mtproxy.operations.errors import Failure, OpError
from mtproxy.operations.secrets import AddRequest, SecretType, choose_type, own_domain_label
from mtproxy.protocol import faketls
from mtproxy.protocol.client import build_client_hello
from mtproxy.protocol.handshake import Handshake, HandshakeSettings, NeedMore, SecretTable
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import SecretKind, generate_secret, validate_domain
from mtproxy.settings import OWN_LABEL_LENGTH, Settings, check_secret_domain_base, parse_settings

NONE = Settings()
DOMAIN = Settings(domain="www.example.com")
BASE = Settings(domain="www.example.com", secret_domain_base="users.example.com")
CLASSIC_OK = Settings(domain="www.example.com", extra={"allow_classic": True})


@pytest.mark.parametrize(("request_", "settings", "expected"), [
    (AddRequest(), NONE, SecretType(SecretKind.PADDED)),
    (AddRequest(), DOMAIN, SecretType(SecretKind.FAKE_TLS, "www.example.com")),
    (AddRequest(kind=SecretKind.FAKE_TLS), DOMAIN, SecretType(SecretKind.FAKE_TLS, "www.example.com")),
    (AddRequest(domain=" WWW.Example.ORG "), NONE, SecretType(SecretKind.FAKE_TLS, "www.example.org")),
    (AddRequest(kind=SecretKind.FAKE_TLS, domain="www.example.org"), DOMAIN,
     SecretType(SecretKind.FAKE_TLS, "www.example.org")),
    (AddRequest(kind=SecretKind.CLASSIC), NONE, SecretType(SecretKind.CLASSIC)),
    (AddRequest(kind=SecretKind.PADDED), CLASSIC_OK, SecretType(SecretKind.PADDED)),
    (AddRequest(own_domain=True), BASE, SecretType(SecretKind.FAKE_TLS, "users.example.com", own_domain=True)),
    (AddRequest(kind=SecretKind.FAKE_TLS, own_domain=True), BASE,
     SecretType(SecretKind.FAKE_TLS, "users.example.com", own_domain=True)),
])
def test_the_rule(request_: AddRequest, settings: Settings, expected: SecretType) -> None:
    assert choose_type(request_, settings) == expected


def test_a_type_the_configured_domain_refuses_carries_a_note() -> None:
    chosen = choose_type(AddRequest(kind=SecretKind.PADDED), DOMAIN)
    assert chosen.kind is SecretKind.PADDED and len(chosen.notes) == 1 and "allow_classic" in chosen.notes[0]


@pytest.mark.parametrize(("request_", "settings", "problem"), [
    (AddRequest(kind=SecretKind.PADDED, domain="www.example.org"), NONE, "for ee (fake-TLS) secrets only"),
    (AddRequest(kind=SecretKind.FAKE_TLS), NONE, "needs a domain"),
    (AddRequest(domain="not a domain"), NONE, "domain:"),
    (AddRequest(own_domain=True), DOMAIN, "no secret domain base"),
    (AddRequest(own_domain=True, kind=SecretKind.CLASSIC), BASE, "its own domain is ee"),
    (AddRequest(own_domain=True, domain="www.example.org"), BASE, "its own domain is ee"),
])
def test_what_cannot_be_served_is_refused(request_: AddRequest, settings: Settings, problem: str) -> None:
    with pytest.raises(OpError, match=re.escape(problem)) as caught:
        choose_type(request_, settings)
    assert caught.value.failure is Failure.INVALID


def test_own_labels_are_valid_first_labels_and_skip_taken_ones() -> None:
    labels = {own_domain_label(lambda: os.urandom(16), lambda _label: False) for _ in range(500)}
    assert len(labels) == 500
    for label in labels:
        assert re.fullmatch(f"[a-z][a-z0-9]{{{OWN_LABEL_LENGTH - 1}}}", label)
        assert validate_domain(f"{label}.users.example.com")
    # bytes the alphabet cannot take evenly are skipped (26 letters take 0..233, 36 letters and digits 0..251)
    blocks = iter([bytes([255, 240, 252, 0, 251, 1, 2, 3, 4, 5, 6, 252, 35, 0, 0, 0]), bytes([1] * 16)])
    first = own_domain_label(lambda: next(blocks), lambda _label: False)
    assert first == "a9bcdefg"  # 0 -> a; 251 -> 9 (the 36th), 1.. -> b..
    blocks = iter([bytes([0] * 16), bytes([1] * 16)])
    taken = {"a" * OWN_LABEL_LENGTH}
    assert own_domain_label(lambda: next(blocks), lambda label: label in taken) == "b" * OWN_LABEL_LENGTH


def test_the_base_setting_is_checked_where_the_file_is_read() -> None:
    assert check_secret_domain_base(" Users.Example.COM. ") == "users.example.com"
    for bad in ("localhost", "a b.example.com", "x" * 180 + ".com"):
        with pytest.raises(ValueError, match="secret_domain_base"):
            check_secret_domain_base(bad)
    with pytest.raises(ValueError, match="lowercase"):
        parse_settings({"secret_domain_base": "Users.example.com"})
    assert parse_settings({"secret_domain_base": "users.example.com"}).secret_domain_base == "users.example.com"
    assert "secret_domain_base" not in Settings().to_json()  # written only when set


def test_a_secrets_own_host_name_finds_it_without_a_scan_among_thousands() -> None:
    """What makes the lookup O(1): the secret whose domain is the SNI is tried inline, so a new client of
    5,000 secrets gets its server flight at once, where a shared domain would need a scan (ScanNeeded)."""
    used: set[str] = set()
    entries = []
    for index in range(5000):
        label = own_domain_label(lambda: os.urandom(16), lambda name: name in used)
        used.add(label)
        domain = f"{label}.users.example.com"
        entries.append((f"s{index}", generate_secret(os.urandom(16), SecretKind.FAKE_TLS, domain)))
    aes = openssl_ctr()
    table = SecretTable(entries, aes)
    now = time.time()
    for index in (0, 2500, 4999):
        secret = entries[index][1]
        assert secret.domain is not None
        hello = build_client_hello(secret.key, secret.domain, os.urandom, now)
        handshake = Handshake(table, HandshakeSettings(), ReplayFilter.in_process(64), os.urandom, aes=aes)
        step = handshake.feed(hello, now)
        assert isinstance(step, NeedMore) and step.send.startswith(faketls.SERVER_HELLO_PREFIX), step
