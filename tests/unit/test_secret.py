"""Secrets as operators and links write them."""

from __future__ import annotations

import pytest

from mtproxy.protocol.errors import SecretFormatError
from mtproxy.protocol.secret import Secret, SecretKind, parse_secret

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_three_forms_round_trip() -> None:
    for text, kind, domain in [
        (KEY.hex(), SecretKind.CLASSIC, None),
        ("dd" + KEY.hex(), SecretKind.PADDED, None),
        ("ee" + KEY.hex() + b"www.example.com".hex(), SecretKind.FAKE_TLS, "www.example.com"),
    ]:
        secret = parse_secret(text)
        assert (secret.key, secret.kind, secret.domain) == (KEY, kind, domain)
        assert secret.to_hex() == text
        assert parse_secret(secret.to_base64url()) == secret
        assert parse_secret(text.upper()) == secret


def test_ee_example_from_protocol_notes() -> None:
    secret = parse_secret("ee" + KEY.hex() + "6578616d706c652e636f6d")
    assert secret.domain == "example.com"


def test_key_never_in_repr_or_masked_form() -> None:
    secret = parse_secret("dd" + KEY.hex())
    assert KEY.hex() not in repr(secret)
    assert secret.masked() == "dd0011…eeff"


@pytest.mark.parametrize(
    "text",
    ["", "zz", KEY.hex()[:-2], "ab" + KEY.hex(), "ee" + KEY.hex(), "ee" + KEY.hex() + b"a.b".hex(),
     "ee" + KEY.hex() + b"ffff0000".hex().upper() + "zz", "ee" + KEY.hex() + b"Bad Domain".hex()],
)
def test_bad_secrets_get_a_clear_error(text: str) -> None:
    with pytest.raises(SecretFormatError):
        parse_secret(text)


def test_domain_limits() -> None:
    with pytest.raises(SecretFormatError):
        Secret(KEY, SecretKind.FAKE_TLS, "a" * 60 + "." + "b" * 60 + "." + "c" * 63)
    with pytest.raises(SecretFormatError):
        Secret(KEY, SecretKind.PADDED, "example.com")
    with pytest.raises(SecretFormatError):
        Secret(KEY[:8], SecretKind.CLASSIC)


def test_a_generated_classic_secret_never_reads_as_dd_or_ee() -> None:
    """Telethon strips a leading "dd"/"ee" from any secret string: a classic key starting with 0xdd or 0xee
    would fail there, so the generator never makes one (and keeps every other key as drawn)."""
    from mtproxy.protocol.secret import generate_secret

    for first in range(256):
        drawn = bytes([first]) + bytes(range(1, 16))
        secret = generate_secret(drawn, SecretKind.CLASSIC)
        assert secret.to_hex()[:2] not in ("dd", "ee")
        assert secret.key[1:] == drawn[1:]
        if first not in (0xDD, 0xEE):
            assert secret.key == drawn
    assert generate_secret(b"\xdd" + bytes(15), SecretKind.PADDED).key[0] == 0xDD  # dd/ee kinds are untouched
