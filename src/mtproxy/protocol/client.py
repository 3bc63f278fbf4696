"""The client side of the handshake, sans-IO: for our test client, the fake DCs' peers and the load tool."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from . import faketls, obfs2
from .cipher import Aes
from .errors import ProtocolError
from .secret import Secret, SecretKind

RandomBytes = Callable[[int], bytes]
CLIENT_RECORD_PAYLOAD = 2878  # what Telegram clients put in one record
_GREASE = 0x0A0A


def _ext(ext_type: int, body: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def _vec16(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


_X25519_MLKEM768 = 0x11EC
_MLKEM_SHARE = 1216  # ML-KEM-768 encapsulation key (1184) + x25519 share (32)
_HELLO_SIZE = 1795  # the record size TDLib 1.8 sends (tests/data/tdlib_hellos)


_MLKEM_Q = 3329  # ML-KEM's modulus: an encapsulation key's 12-bit coefficients are below it (FIPS 203)
_MLKEM_COEFFICIENTS = 768  # ML-KEM-768: three polynomials of 256


def mlkem768_share(random_bytes: RandomBytes) -> bytes:
    """An X25519MLKEM768 client share a server accepts: an ML-KEM-768 encapsulation key whose coefficients
    are all below q (a server checks that, FIPS 203 7.2), its 32-byte seed, then an x25519 share. Random
    bytes alone fail the check; TDLib builds its share this way too."""
    drawn = random_bytes(2 * _MLKEM_COEFFICIENTS)
    values = [int.from_bytes(drawn[i : i + 2], "little") % _MLKEM_Q for i in range(0, len(drawn), 2)]
    packed = bytearray()
    for a, b in zip(values[::2], values[1::2], strict=True):
        packed += (a | b << 12).to_bytes(3, "little")
    return bytes(packed) + random_bytes(32) + random_bytes(32)


TDLIB_SUITES = (0x1301, 0x1302, 0x1303)  # TDLib's TLS 1.3 suites, in its order (Linux, Windows, Android)
DARWIN_SUITES = (0x1302, 0x1301, 0x1303)  # TDLib's order on Apple systems: AES-256 first


def build_client_hello(secret_key: bytes, domain: str, random_bytes: RandomBytes, now: float,
                       mlkem_share: bytes | None = None, tls13_suites: tuple[int, ...] = TDLIB_SUITES) -> bytes:
    """A ClientHello shaped like a current Telegram client's or browser's (GREASE, an X25519MLKEM768 and an
    x25519 key share: about 1.8 KB, so tests and the load tool cost the proxy what real clients cost),
    whose random carries the HMAC and the client's clock as protocol.md describes. The hybrid share is
    random bytes unless given (`mlkem768_share`: what a real server, not only the proxy, accepts)."""
    name = domain.encode("ascii")
    suites = [_GREASE, *tls13_suites, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014]
    if mlkem_share is None:
        mlkem_share = random_bytes(_MLKEM_SHARE)
    if len(mlkem_share) != _MLKEM_SHARE:
        raise ProtocolError(f"an X25519MLKEM768 client share is {_MLKEM_SHARE} bytes")
    shares = (
        b"\x0a\x0a\x00\x01\x00"
        + _X25519_MLKEM768.to_bytes(2, "big") + _MLKEM_SHARE.to_bytes(2, "big") + mlkem_share
        + b"\x00\x1d\x00\x20" + random_bytes(32)
    )
    extensions = b"".join(
        [
            _ext(_GREASE, b""),
            _ext(0x0000, _vec16(b"\x00" + _vec16(name))),
            _ext(0x0017, b""),
            _ext(0xFF01, b"\x00"),
            _ext(0x000A, _vec16(b"\x0a\x0a\x11\xec\x00\x1d\x00\x17\x00\x18")),
            _ext(0x000B, b"\x01\x00"),
            _ext(0x0023, b""),
            _ext(0x0010, _vec16(b"\x02h2\x08http/1.1")),
            _ext(0x0005, b"\x01\x00\x00\x00\x00"),
            _ext(0x000D, _vec16(b"\x04\x03\x08\x04\x04\x01\x05\x03\x08\x05\x05\x01\x08\x06\x06\x01")),
            _ext(0x0012, b""),
            _ext(0x0033, _vec16(shares)),
            _ext(0x002D, b"\x01\x01"),
            _ext(0x002B, b"\x06\x0a\x0a\x03\x04\x03\x03"),
            _ext(0x001B, b"\x02\x00\x02"),
            _ext(0x1A1A, b"\x00"),
        ]
    )
    head = (
        b"\x03\x03"
        + bytes(32)
        + b"\x20"
        + random_bytes(32)
        + _vec16(b"".join(s.to_bytes(2, "big") for s in suites))
        + b"\x01\x00"
    )
    unpadded = 5 + 4 + len(head) + 2 + len(extensions)
    extensions += _ext(0x0015, bytes(max(0, _HELLO_SIZE - unpadded - 4)))  # padding, as TDLib's 1795 bytes
    body = head + _vec16(extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = bytearray(faketls.HELLO_PREFIX + len(handshake).to_bytes(2, "big") + handshake)
    digest = hmac.new(secret_key, bytes(record), hashlib.sha256).digest()
    stamp = (int(now) & 0xFFFFFFFF).to_bytes(4, "little")
    random = digest[:28] + bytes(a ^ b for a, b in zip(digest[28:], stamp, strict=True))
    record[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32] = random
    return bytes(record)


def server_flight_length(data: bytes) -> int | None:
    """Length of the complete three-record server flight at the start of `data`, None if incomplete;
    raises if the shape is not exactly ServerHello, ChangeCipherSpec, application data."""
    if len(data) < 5:
        return None
    if data[:3] != faketls.SERVER_HELLO_PREFIX:
        raise ProtocolError("server flight does not start with a TLS 1.2-framed handshake record")
    hello_end = 5 + int.from_bytes(data[3:5], "big")
    ccs_end = hello_end + len(faketls.CHANGE_CIPHER_SPEC)
    if len(data) < ccs_end + 5:
        return None
    if data[hello_end:ccs_end] != faketls.CHANGE_CIPHER_SPEC or data[ccs_end : ccs_end + 3] != faketls.APPLICATION_DATA:
        raise ProtocolError("server flight is not ServerHello, ChangeCipherSpec, application data")
    end = ccs_end + 5 + int.from_bytes(data[ccs_end + 3 : ccs_end + 5], "big")
    return end if len(data) >= end else None


def verify_server_flight(secret_key: bytes, client_random: bytes, flight: bytes) -> bool:
    zeroed = faketls.zero_random(flight)
    expected = hmac.new(secret_key, client_random + zeroed, hashlib.sha256).digest()
    return hmac.compare_digest(expected, flight[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32])


class ClientConnection:
    """An MTProxy client: send `first_bytes()`, feed what the server sends; once `ready`, `encrypt`
    and `decrypt` carry the obfuscated (and for ee, TLS-framed) stream."""

    def __init__(
        self,
        secret: Secret,
        random_bytes: RandomBytes,
        now: float,
        *,
        aes: Aes,
        tag: bytes | None = None,
        dc_id: int = 2,
        fake_tls: bool | None = None,
        domain: str | None = None,
    ) -> None:
        self.fake_tls = secret.kind is SecretKind.FAKE_TLS if fake_tls is None else fake_tls
        if tag is None:
            tag = obfs2.TAG_INTERMEDIATE if secret.kind is SecretKind.CLASSIC else obfs2.TAG_PADDED
        self._key = secret.key
        built = obfs2.build_init(random_bytes, tag, dc_id, secret.key, aes)
        self._init = built.wire
        self._to_server = built.to_acceptor
        self._from_server = built.from_acceptor.new_cipher()
        self._inbox = bytearray()
        self._tls_reader = faketls.TlsRecordReader()
        self._prefix = b""
        if self.fake_tls:
            sni = domain or secret.domain
            if sni is None:
                raise ProtocolError("a fake-TLS client needs a domain for the SNI")
            self._hello = build_client_hello(secret.key, sni, random_bytes, now)
            self.ready = False
        else:
            self._hello = b""
            self.ready = True

    def first_bytes(self) -> bytes:
        return self._hello if self.fake_tls else self._init

    def feed_handshake(self, data: bytes) -> bytes:
        """Feed server bytes until `ready`; returns stream bytes that arrived after the flight (decrypted)."""
        if self.ready:
            return self.decrypt(data)
        self._inbox += data
        end = server_flight_length(bytes(self._inbox))
        if end is None:
            return b""
        flight = bytes(self._inbox[:end])
        if not verify_server_flight(self._key, self._hello[11:43], flight):
            raise ProtocolError("server flight HMAC does not verify")
        rest = bytes(self._inbox[end:])
        self._inbox.clear()
        self.ready = True
        self._prefix = faketls.CHANGE_CIPHER_SPEC
        self._pending_init = self._init
        return self.decrypt(rest) if rest else b""

    def encrypt(self, payload: bytes) -> bytes:
        if not self.ready:
            raise ProtocolError("handshake not finished")
        data = self._to_server.update(payload)
        if not self.fake_tls:
            return data
        if self._prefix:
            data = self._pending_init + data
        out = self._prefix + faketls.wrap_records(data, CLIENT_RECORD_PAYLOAD) if data else self._prefix
        self._prefix = b""
        return out

    def decrypt(self, data: bytes) -> bytes:
        if self.fake_tls:
            data = self._tls_reader.unwrap(data)
        return self._from_server.update(data)
