"""Client side of fake-TLS for the load tool: a ClientHello shaped like a modern Telegram client's
(X25519MLKEM768 + x25519 key shares, ~1.7 KB, so the proxy's HMAC cost is that of real clients; the
protocol core's client builds a 517-byte browser-like hello) and the flight check from the core."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time

from mtproxy.protocol import client, faketls
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.secret import Secret

_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8)
_GROUPS = (0x11EC, 0x001D, 0x0017, 0x0018)
_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def _u16_list(values: tuple[int, ...]) -> bytes:
    raw = b"".join(struct.pack(">H", v) for v in values)
    return struct.pack(">H", len(raw)) + raw


def build_client_hello(secret: Secret, now: float | None = None) -> tuple[bytes, bytes]:
    """The hello record and its 32-byte random (needed to check the server flight)."""
    assert secret.domain is not None
    name = secret.domain.encode("ascii")
    sni = struct.pack(">HBH", len(name) + 3, 0, len(name)) + name
    shares = struct.pack(">HH", 0x11EC, 1216) + os.urandom(1216) + struct.pack(">HH", 0x001D, 32) + os.urandom(32)
    extensions = b"".join(
        (
            _ext(0x0000, sni),
            _ext(0x0017, b""),
            _ext(0xFF01, b"\x00"),
            _ext(0x000A, _u16_list(_GROUPS)),
            _ext(0x000B, b"\x01\x00"),
            _ext(0x0023, b""),
            _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
            _ext(0x0005, b"\x01\x00\x00\x00\x00"),
            _ext(0x000D, _u16_list(_SIGALGS)),
            _ext(0x0012, b""),
            _ext(0x0033, struct.pack(">H", len(shares)) + shares),
            _ext(0x002D, b"\x01\x01"),
            _ext(0x002B, b"\x06\x03\x04\x03\x03\x03\x02"),
            _ext(0x001B, b"\x02\x00\x02"),
        )
    )
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x20"
        + os.urandom(32)
        + _u16_list(_SUITES)
        + b"\x01\x00"
        + struct.pack(">H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = bytearray(b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake)
    digest = bytearray(hmac.new(secret.key, bytes(record), hashlib.sha256).digest())
    stamp = struct.pack("<I", int(time.time() if now is None else now) & 0xFFFFFFFF)
    for i in range(4):
        digest[28 + i] ^= stamp[i]
    record[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32] = digest
    return bytes(record), bytes(digest)


def flight_length(data: bytes | bytearray) -> int | None:
    """Length of the complete server flight, None while incomplete; ValueError on a wrong shape."""
    try:
        return client.server_flight_length(bytes(data))
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None


def check_flight(secret: Secret, hello_random: bytes, flight: bytes) -> bool:
    return client.verify_server_flight(secret.key, hello_random, flight)
