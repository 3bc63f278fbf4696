"""A TLS 1.3 server's first flight as a passive observer sees it: the ServerHello's cipher suite, extension
order and key share, whether ChangeCipherSpec follows, and the application-data records that carry the
encrypted EncryptedExtensions, Certificate, CertificateVerify and Finished. What the fake-TLS flight imitates.
Sans-IO: the engine's mask probe (runtime/mask.py) and `mtproxy doctor` feed them the bytes they read."""

from __future__ import annotations

from dataclasses import dataclass

from . import faketls
from .errors import TlsFormatError

# Fewer application-data bytes than this before the handshake ends: no TLS 1.3 certificate flight to imitate.
MIN_FLIGHT = 100
_TLS13 = b"\x03\x04"
_HANDSHAKE, _CCS, _ALERT = 0x16, 0x14, 0x15
_SERVER_HELLO = 0x02
# the random of a HelloRetryRequest, which is a ServerHello in form (RFC 8446 4.1.3)
_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def merged_size(total: int, records: int) -> int:
    """The one record that stands in for `records` application-data records of `total` payload bytes: their
    payloads and the headers between them, so the flight is as long on the wire."""
    return total + faketls.RECORD_HEADER_SIZE * max(records - 1, 0)


class FlightMeter:
    """Feed the server's bytes as they arrive (`mtproxy doctor`'s handshake); `total` is the application-data
    payload in whole records, `records` their count."""

    def __init__(self) -> None:
        self.total = 0
        self.records = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        pending = self._pending + chunk
        while len(pending) >= faketls.RECORD_HEADER_SIZE:
            length = int.from_bytes(pending[3:5], "big")
            if len(pending) < faketls.RECORD_HEADER_SIZE + length:
                break
            if pending[:3] == faketls.APPLICATION_DATA:
                self.total += length
                self.records += 1
            pending = pending[faketls.RECORD_HEADER_SIZE + length :]
        self._pending = pending


@dataclass(frozen=True)
class SiteFlight:
    """A server's answer to a ClientHello, up to where it waits for the client's Finished."""

    cipher: int
    extensions: tuple[int, ...]  # the ServerHello's extension types, in its order
    group: int  # of its key share (0: none)
    share_size: int
    ccs: bool  # ChangeCipherSpec between the ServerHello and the encrypted records
    records: tuple[int, ...]  # the application-data records' payload sizes
    hello_size: int  # the ServerHello record's payload
    # whether the site takes the client's first TLS 1.3 suite (`follows_client_order`), then each client gets
    # its own first, not `cipher`
    client_order: bool = False

    def hello_shape(self) -> faketls.HelloShape:
        """What of it the fake ServerHello copies: the cipher (or each client's first, `client_order`) and the
        extension order as they are, the group when its share can be imitated (faketls.SERVER_SHARE_SIZES)
        and has that size."""
        answered = (faketls.EXT_KEY_SHARE, faketls.EXT_SUPPORTED_VERSIONS)
        extensions = self.extensions if sorted(self.extensions) == sorted(answered) else answered
        imitable = faketls.SERVER_SHARE_SIZES.get(self.group) == self.share_size
        cipher = 0 if self.client_order else self.cipher
        shape = faketls.HelloShape(cipher, extensions, self.group if imitable else faketls.X25519, self.cipher)
        return faketls.DEFAULT_SHAPE if shape == faketls.DEFAULT_SHAPE else shape  # the one its builders know

    def cert_size(self) -> int | None:
        """The one record that stands in for the encrypted records: their bytes on the wire, headers between
        them included, so the flight is as long; None below MIN_FLIGHT (no certificate flight), capped at
        the largest record the clients take."""
        if sum(self.records) < MIN_FLIGHT:
            return None
        return min(merged_size(sum(self.records), len(self.records)), faketls.MAX_RECORD_PAYLOAD)

    def describe(self) -> str:
        names = {faketls.EXT_KEY_SHARE: "key_share", faketls.EXT_SUPPORTED_VERSIONS: "supported_versions"}
        order = ", ".join(names.get(ext, f"{ext:#06x}") for ext in self.extensions)
        cipher = "the client's first" if self.client_order else f"{self.cipher:#06x}"
        return (f"cipher {cipher}, key share {self.group:#06x} ({self.share_size} bytes), ServerHello"
                f" extensions {order}, {'' if self.ccs else 'no '}ChangeCipherSpec,"
                f" {len(self.records)} encrypted records ({', '.join(map(str, self.records))} bytes)")


def follows_client_order(choices: dict[int, int]) -> bool:
    """Whether a site that chose `choices[first]` for ClientHellos listing `first` first among their TLS 1.3
    suites (two or more such hellos) takes the client's preference: it chose each client's first."""
    return len(choices) > 1 and all(first == chosen for first, chosen in choices.items())


class FlightReader:
    """Feed a server's bytes as they arrive, from its first; `flight()` says what it sent in whole records.
    TlsFormatError when it is not a TLS 1.3 ServerHello's flight (an alert, a HelloRetryRequest, TLS 1.2, or
    not TLS at all)."""

    def __init__(self) -> None:
        self._pending = b""
        self._hello: bytes | None = None
        self._ccs = False
        self._records: list[int] = []

    def feed(self, chunk: bytes) -> None:
        pending = self._pending + chunk
        while len(pending) >= faketls.RECORD_HEADER_SIZE:
            length = int.from_bytes(pending[3:5], "big")
            if pending[1] != 3 or length > faketls.MAX_CLIENT_RECORD:  # no TLS record: no need to wait for it
                raise TlsFormatError("the server's answer is not TLS records")
            end = faketls.RECORD_HEADER_SIZE + length
            if len(pending) < end:
                break
            self._record(pending[0], pending[1:3], pending[faketls.RECORD_HEADER_SIZE : end])
            pending = pending[end:]
        self._pending = pending

    def _record(self, content_type: int, version: bytes, payload: bytes) -> None:
        if self._hello is None:
            if content_type == _ALERT:
                raise TlsFormatError("the server answered with an alert")
            if content_type != _HANDSHAKE or version[0] != 3 or not payload or payload[0] != _SERVER_HELLO:
                raise TlsFormatError("the server's first record is not a ServerHello")
            self._hello = payload
        elif content_type == _CCS and not self._records:
            self._ccs = True
        elif content_type == faketls.APPLICATION_DATA[0]:
            self._records.append(len(payload))
        elif content_type == _ALERT:
            raise TlsFormatError("the server sent an alert during its flight")
        else:
            raise TlsFormatError(f"a record of type {content_type} in a TLS 1.3 server flight")

    @property
    def encrypted(self) -> int:
        """Application-data records so far."""
        return len(self._records)

    @property
    def cipher(self) -> int | None:
        """The ServerHello's cipher suite once it is here."""
        if self._hello is None:
            return None
        return _parse_server_hello(self._hello, self._ccs, ()).cipher

    def flight(self) -> SiteFlight:
        if self._hello is None:
            raise TlsFormatError("no ServerHello")
        return _parse_server_hello(self._hello, self._ccs, tuple(self._records))


def _parse_server_hello(message: bytes, ccs: bool, records: tuple[int, ...]) -> SiteFlight:
    end = 4 + int.from_bytes(message[1:4], "big")
    if end > len(message) or end < 4 + 2 + 32 + 1:
        raise TlsFormatError("truncated ServerHello")
    if message[6:38] == _RETRY_RANDOM:
        raise TlsFormatError("the server asked for another key share (HelloRetryRequest)")
    _session_id, pos = faketls.read_vector(message, 38, 1, end)
    if pos + 3 > end:
        raise TlsFormatError("truncated ServerHello")
    cipher = int.from_bytes(message[pos : pos + 2], "big")
    extensions_bytes, _ = faketls.read_vector(message, pos + 3, 2, end)
    extensions: list[int] = []
    group = share_size = 0
    version = b""
    at = 0
    while at < len(extensions_bytes):
        ext_type = int.from_bytes(extensions_bytes[at : at + 2], "big")
        body, at = faketls.read_vector(extensions_bytes, at + 2, 2, len(extensions_bytes))
        extensions.append(ext_type)
        if ext_type == faketls.EXT_KEY_SHARE and len(body) >= 4:
            group, share_size = int.from_bytes(body[:2], "big"), int.from_bytes(body[2:4], "big")
        elif ext_type == faketls.EXT_SUPPORTED_VERSIONS:
            version = body
    if version != _TLS13:
        raise TlsFormatError("the server does not speak TLS 1.3")
    return SiteFlight(cipher, tuple(extensions), group, share_size, ccs, records, len(message))
