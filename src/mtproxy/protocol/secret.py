"""Parse and format MTProxy secrets (classic, dd, ee + domain); the raw key never shows in a repr."""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass, field

from .errors import SecretFormatError

KEY_SIZE = 16
MIN_DOMAIN_BYTES = 4  # Telegram Desktop refuses shorter fake-TLS domains
MAX_DOMAIN_BYTES = 182

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class SecretKind(enum.Enum):
    """Which transport a client given this secret will use."""

    CLASSIC = "classic"  # 32 hex chars: plain obfuscated2, any framing tag
    PADDED = "dd"  # "dd" prefix: obfuscated2 with the padded-intermediate tag
    FAKE_TLS = "ee"  # "ee" prefix + domain: obfuscated2 inside fake TLS records


@dataclass(frozen=True)
class Secret:
    """One secret as handed to a client. Only `key` enters key derivation."""

    key: bytes = field(repr=False)
    kind: SecretKind
    domain: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise SecretFormatError(f"a secret key is {KEY_SIZE} bytes, got {len(self.key)}")
        if self.kind is SecretKind.FAKE_TLS:
            if self.domain is None:
                raise SecretFormatError("a fake-TLS (ee) secret needs a domain")
            validate_domain(self.domain)
        elif self.domain is not None:
            raise SecretFormatError("only fake-TLS (ee) secrets carry a domain")

    def __repr__(self) -> str:
        return f"Secret(kind={self.kind.value}, domain={self.domain!r}, key=<hidden>)"

    def to_hex(self) -> str:
        """The form clients accept in links: classic hex, dd+hex, or ee+hex+hex(domain)."""
        if self.kind is SecretKind.CLASSIC:
            return self.key.hex()
        if self.kind is SecretKind.PADDED:
            return "dd" + self.key.hex()
        assert self.domain is not None
        return "ee" + self.key.hex() + self.domain.encode("ascii").hex()

    def to_base64url(self) -> str:
        """The same bytes as unpadded base64url, which clients also accept."""
        return base64.urlsafe_b64encode(bytes.fromhex(self.to_hex())).rstrip(b"=").decode("ascii")

    def masked(self) -> str:
        """A shortened form safe to show in tables: prefix, first and last two key bytes."""
        text = self.to_hex()
        prefix = "" if self.kind is SecretKind.CLASSIC else text[:2]
        key_hex = self.key.hex()
        return f"{prefix}{key_hex[:4]}…{key_hex[-4:]}"


def validate_domain(domain: str) -> str:
    """Return the domain if it can stand in an ee secret and a TLS SNI, else raise."""
    raw = domain.encode("ascii", errors="replace")
    if not MIN_DOMAIN_BYTES <= len(raw) <= MAX_DOMAIN_BYTES:
        raise SecretFormatError(
            f"a fake-TLS domain must be {MIN_DOMAIN_BYTES} to {MAX_DOMAIN_BYTES} characters, got {len(raw)}"
        )
    if domain != domain.lower() or not all(_DOMAIN_LABEL.match(p) for p in domain.split(".")):
        raise SecretFormatError(f"{domain!r} is not a valid lowercase host name")
    return domain


def _decode_text(text: str) -> bytes:
    """Hex first (the usual form), then base64url as clients also accept."""
    if len(text) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", text):
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9_\-+/]+=*", text):
        padded = text + "=" * (-len(text) % 4)
        try:
            return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        except (binascii.Error, ValueError):
            pass
    raise SecretFormatError("a secret is hex (32 chars, or dd/ee-prefixed) or base64url")


def parse_secret(text: str) -> Secret:
    """Parse a secret as an operator or a link would write it."""
    text = text.strip()
    if not text:
        raise SecretFormatError("the secret is empty")
    raw = _decode_text(text)
    if len(raw) == KEY_SIZE:
        return Secret(raw, SecretKind.CLASSIC)
    if len(raw) == KEY_SIZE + 1 and raw[0] == 0xDD:
        return Secret(raw[1:], SecretKind.PADDED)
    if len(raw) > KEY_SIZE + 1 and raw[0] == 0xEE:
        try:
            domain = raw[KEY_SIZE + 1 :].decode("ascii")
        except UnicodeDecodeError:
            raise SecretFormatError("the domain in an ee secret is not ASCII") from None
        return Secret(raw[1 : KEY_SIZE + 1], SecretKind.FAKE_TLS, domain)
    raise SecretFormatError(
        "a secret is 16 bytes (32 hex chars), dd + 16 bytes, or ee + 16 bytes + domain;"
        f" got {len(raw)} bytes"
    )


def generate_secret(random_bytes: bytes, kind: SecretKind, domain: str | None = None) -> Secret:
    """Build a secret from 16 bytes the caller drew from the OS CSPRNG. A classic key never starts with
    0xdd or 0xee: some clients (Telethon) read a leading "dd"/"ee" of a classic secret's hex as the type
    marker and strip it, which fails 1 in 128 random keys; flipping one bit costs < 0.01 bit of entropy."""
    if kind is SecretKind.CLASSIC and random_bytes[:1] in (b"\xdd", b"\xee"):
        random_bytes = bytes([random_bytes[0] ^ 0x01]) + random_bytes[1:]
    return Secret(random_bytes, kind, domain if kind is SecretKind.FAKE_TLS else None)
