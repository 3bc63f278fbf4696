"""Reference obfuscated2 and fake-TLS arithmetic for the interop tests, written apart from the code under test.

These few lines follow shared/protocol.md directly, so the captured TDLib vectors and the fake DC are
checked against an independent reading of the protocol, not against the proxy's own protocol core.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

TAGS = {
    b"\xef\xef\xef\xef": "abridged",
    b"\xee\xee\xee\xee": "intermediate",
    b"\xdd\xdd\xdd\xdd": "padded",
}


def ctr(key: bytes, iv: bytes) -> CipherContext:
    """AES-256-CTR with the IV as a 128-bit big-endian counter (what `cryptography` does)."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


@dataclass
class AcceptedInit:
    """A decrypted 64-byte init, from the acceptor's side."""

    tag: bytes
    dc_id: int
    decrypt: CipherContext  # initiator→acceptor stream, positioned after the init
    encrypt: CipherContext  # acceptor→initiator stream, at position 0

    @property
    def transport(self) -> str | None:
        return TAGS.get(self.tag)


def accept_init(init: bytes, secret16: bytes | None) -> AcceptedInit:
    """Derive both streams from a received init. With `secret16` (client→proxy) the keys are
    SHA-256(material ‖ secret); without (proxy→DC) the raw material is the key."""
    if len(init) < 64:
        raise ValueError("an init is 64 bytes")
    material = bytes(init[8:56])
    reverse = material[::-1]
    key_in, iv_in = material[:32], material[32:48]
    key_out, iv_out = reverse[:32], reverse[32:48]
    if secret16 is not None:
        key_in = hashlib.sha256(key_in + secret16).digest()
        key_out = hashlib.sha256(key_out + secret16).digest()
    decrypt = ctr(key_in, iv_in)
    plain = decrypt.update(bytes(init[:64]))
    dc_id = int.from_bytes(plain[60:62], "little", signed=True)
    return AcceptedInit(plain[56:60], dc_id, decrypt, ctr(key_out, iv_out))


def tls_hello_timestamp(record: bytes, secret16: bytes) -> int | None:
    """The client's unix time hidden in a fake-TLS ClientHello record, or None if the HMAC does not match.
    `record` is the whole first TLS record (5-byte header included)."""
    if len(record) < 43 or record[:3] != b"\x16\x03\x01":
        return None
    received = record[11:43]
    zeroed = record[:11] + bytes(32) + record[43:]
    digest = hmac.new(secret16, zeroed, hashlib.sha256).digest()
    if not hmac.compare_digest(digest[:28], received[:28]):
        return None
    stamp = bytes(a ^ b for a, b in zip(digest[28:], received[28:], strict=True))
    return int.from_bytes(stamp, "little")


def tls_sni(record: bytes) -> str | None:
    """The server_name of a ClientHello record, parsed with explicit bounds; None when absent/malformed."""
    try:
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + record[pos]  # session id
        pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
        pos += 1 + record[pos]  # compression methods
        end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            ext_type = int.from_bytes(record[pos : pos + 2], "big")
            ext_len = int.from_bytes(record[pos + 2 : pos + 4], "big")
            body = record[pos + 4 : pos + 4 + ext_len]
            if ext_type == 0 and len(body) >= 5:
                name_len = int.from_bytes(body[3:5], "big")
                return body[5 : 5 + name_len].decode("ascii")
            pos += 4 + ext_len
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def tls_server_flight(secret16: bytes, hello_record: bytes, cert_size: int, random: bytes) -> bytes:
    """The three-record server flight of shared/protocol.md for one ClientHello record: ServerHello
    (x25519 key share, TLS 1.3, the client's session id echoed), ChangeCipherSpec, and `cert_size` bytes
    of application data; the ServerHello random is HMAC(secret, client random ‖ flight with it zeroed).
    `random` supplies 32 + `cert_size` bytes."""
    session_id = hello_record[44 : 44 + hello_record[43]]
    key_share = b"\x00\x1d\x00\x20" + random[:32]
    extensions = b"\x00\x33" + len(key_share).to_bytes(2, "big") + key_share + b"\x00\x2b\x00\x02\x03\x04"
    body = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(session_id)])
        + session_id
        + b"\x13\x01"  # TLS_AES_128_GCM_SHA256: every Telegram client offers it
        + b"\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    flight = bytearray(
        b"\x16\x03\x03"
        + len(handshake).to_bytes(2, "big")
        + handshake
        + b"\x14\x03\x03\x00\x01\x01"
        + b"\x17\x03\x03"
        + cert_size.to_bytes(2, "big")
        + random[32 : 32 + cert_size]
    )
    digest = hmac.new(secret16, hello_record[11:43] + bytes(flight), hashlib.sha256).digest()
    flight[11:43] = digest
    return bytes(flight)


def tls_client_payload(data: bytes) -> bytes | None:
    """Payload of what a fake-TLS client sends after the server flight: one optional ChangeCipherSpec
    record, then application-data records (a trailing partial record is ignored). None on any other shape."""
    pos = 0
    if data[:6] == b"\x14\x03\x03\x00\x01\x01":
        pos = 6
    out = bytearray()
    while pos + 5 <= len(data):
        if data[pos : pos + 3] != b"\x17\x03\x03":
            return None
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)
