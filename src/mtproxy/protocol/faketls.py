"""Fake TLS (ee secrets): ClientHello check, the server's three-record flight, and record framing.

The flight's ServerHello can take the mask site's shape (`HelloShape`, learned by `protocol.flight`): its
cipher suite, its extension order, its key share group. The MTProto clients read nothing of it but its
random (TDLib's TlsInit::wait_hello_response skips the ServerHello by its length, wants ChangeCipherSpec
and then exactly one application-data record, and checks the HMAC over those three), so any shape is
accepted; the record count of the encrypted part is what they fix."""

from __future__ import annotations

import functools
import hashlib
import hmac
import operator
import struct
from collections.abc import Callable
from typing import NamedTuple

from . import x25519
from .cipher import Aes, Keystream
from .errors import ProtocolError
from .errors import TlsFormatError as TlsFormatError  # its callers catch it here, beside the readers

RECORD_HEADER_SIZE = 5
HELLO_PREFIX = b"\x16\x03\x01"
RANDOM_OFFSET = 11
RANDOM_SIZE = 32
DIGEST_CHECKED = 28  # the last 4 bytes carry the client's clock, XORed in
MAX_RECORD_PAYLOAD = 16384  # TLS plaintext limit: plain (--tls-records plain) server records are at most this
MAX_CLIENT_RECORD = MAX_RECORD_PAYLOAD + 2048  # TLS 1.3 ciphertext allowance
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"
APPLICATION_DATA = b"\x17\x03\x03"
# the shortest application-data record a TLS 1.3 server with an AEAD cipher can send: the inner content-type
# byte and the 16-byte tag (RFC 8446 5.2), around no data at all; shaped records are never shorter
MIN_AEAD_RECORD = 17
# ... and its longest: 16,384 bytes of plaintext plus the same 17 (RFC 8446 5.2), a busy TLS 1.3 server's usual
# record. Every official client takes it (TDLib since its first release with fake TLS, v1.5.0, and Telegram
# Desktop: any 16-bit length; Android tgnet: up to 64 KiB; iOS MtProtoKit: up to 32,767): see
# docs/undetectability.md. Shaped records (--tls-records shaped) are at most this long.
SHAPED_RECORD_PAYLOAD = MAX_RECORD_PAYLOAD + MIN_AEAD_RECORD
SERVER_HELLO_PREFIX = b"\x16\x03\x03"
TLS13_SUITES = (0x1301, 0x1302, 0x1303)
_AES_BLOCK = 16
_EXT_SERVER_NAME = 0x0000
EXT_KEY_SHARE = 0x0033
EXT_SUPPORTED_VERSIONS = 0x002B
X25519 = 0x001D
X25519MLKEM768 = 0x11EC  # the hybrid group Chrome, Firefox and TDLib offer (draft-ietf-tls-ecdhe-mlkem)
# A server's share by group for the groups whose shares look like random bytes: x25519's u-coordinate; the
# hybrid's ML-KEM-768 ciphertext (1088 bytes of compressed coefficients, every value possible) then x25519's.
# The NIST curves' shares are points anyone can check are on the curve: random bytes would not be.
SERVER_SHARE_SIZES = {X25519: 32, X25519MLKEM768: 1120}


SESSION_ID_OFFSET = RANDOM_OFFSET + RANDOM_SIZE + 1  # after the random and the session id's length byte
KEY_SHARE_SIZE = 32  # the server's x25519 share
CERT_KEY_SIZE = 32  # the AES-256 key of the certificate stand-in (`cert_stand_in`)
FLIGHT_RANDOM = KEY_SHARE_SIZE + CERT_KEY_SIZE  # what a server flight draws (`accept_hello`)


def draw_flight_random(random_bytes: Callable[[int], bytes]) -> bytes:
    """FLIGHT_RANDOM random bytes for a flight: the x25519 share's number (`x25519.server_share` makes it a
    point of the curve's prime-order subgroup, as a real server's share is), then the certificate's key."""
    return random_bytes(FLIGHT_RANDOM)


class ClientHello(NamedTuple):
    """What the handshake needs of a ClientHello (a named tuple: built for every fake-TLS connection, where a
    frozen dataclass costs ~0.3 µs more)."""

    record: bytes  # the whole record, header included
    random: bytes
    session_id: bytes
    suite: int  # the first TLS 1.3 cipher suite offered, 0 when none is
    sni: str | None


class _Reader:
    """Bounds-checked cursor: every read past the end is a TlsFormatError, never an IndexError."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise TlsFormatError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")


def hello_record_length(header: bytes) -> int:
    """Length of the record whose first 5 bytes are given; raises unless it opens a TLS handshake."""
    if len(header) < RECORD_HEADER_SIZE or header[:3] != HELLO_PREFIX:
        raise TlsFormatError("not a TLS handshake record")
    length = int.from_bytes(header[3:5], "big")
    if not 64 <= length <= MAX_RECORD_PAYLOAD:
        raise TlsFormatError("ClientHello record length out of range")
    return RECORD_HEADER_SIZE + length


def parse_client_hello(record: bytes) -> ClientHello:
    """Parse the fields we need from one whole ClientHello record. Plain index arithmetic rather than a
    cursor object: this runs for every fake-TLS connection (and every probe), ~20 extensions each."""
    total = hello_record_length(record)
    if len(record) != total:
        raise TlsFormatError("ClientHello record is incomplete or has trailing bytes")
    pos = RECORD_HEADER_SIZE
    if record[pos] != 0x01:
        raise TlsFormatError("handshake message is not a ClientHello")
    body_end = pos + 4 + int.from_bytes(record[pos + 1 : pos + 4], "big")
    if body_end > total:
        raise TlsFormatError("ClientHello longer than its record")
    pos += 4 + 2  # the handshake header, the legacy version
    if pos + RANDOM_SIZE > body_end:
        raise TlsFormatError("truncated ClientHello")
    random = record[pos : pos + RANDOM_SIZE]
    session_id, pos = read_vector(record, pos + RANDOM_SIZE, 1, body_end)
    suites_bytes, pos = read_vector(record, pos, 2, body_end)
    if len(suites_bytes) % 2:
        raise TlsFormatError("odd cipher suite list")
    suite = next((s for s in struct.unpack(f">{len(suites_bytes) // 2}H", suites_bytes) if s in TLS13_SUITES), 0)
    _compression, pos = read_vector(record, pos, 1, body_end)
    sni = None
    if pos < body_end:
        if pos + 2 > body_end:
            raise TlsFormatError("truncated ClientHello")
        extensions_end = pos + 2 + (record[pos] << 8 | record[pos + 1])
        if extensions_end > body_end:
            raise TlsFormatError("extensions longer than the ClientHello")
        pos += 2
        while pos < extensions_end:
            if pos + 4 > extensions_end:
                raise TlsFormatError("truncated ClientHello")
            ext_type = record[pos] << 8 | record[pos + 1]
            ext_end = pos + 4 + (record[pos + 2] << 8 | record[pos + 3])
            if ext_end > extensions_end:
                raise TlsFormatError("truncated ClientHello")
            if ext_type == _EXT_SERVER_NAME:
                sni = _parse_sni(record[pos + 4 : ext_end])
            pos = ext_end
    return ClientHello(record, random, session_id, suite, sni)


def read_vector(data: bytes, pos: int, width: int, end: int) -> tuple[bytes, int]:
    """A TLS vector with a `width`-byte length prefix at `pos`, ending by `end`: its bytes and the position
    after it; TlsFormatError past `end`."""
    start = pos + width
    if start > end:
        raise TlsFormatError("truncated ClientHello")
    stop = start + int.from_bytes(data[pos:start], "big")
    if stop > end:
        raise TlsFormatError("truncated ClientHello")
    return data[start:stop], stop


def _parse_sni(data: bytes) -> str | None:
    reader = _Reader(data, 0, len(data))
    reader.end = min(reader.end, 2 + reader.u16())
    while reader.pos < reader.end:
        name_type = reader.u8()
        name = reader.take(reader.u16())
        if name_type == 0:
            try:
                return name.decode("ascii").lower()
            except UnicodeDecodeError:
                raise TlsFormatError("SNI is not ASCII") from None
    return None


def zero_random(record: bytes) -> bytes:
    return record[:RANDOM_OFFSET] + bytes(RANDOM_SIZE) + record[RANDOM_OFFSET + RANDOM_SIZE :]


def client_timestamp(keyed: hmac.HMAC, hello: ClientHello) -> int | None:
    """The client's unix time if the hello's digest verifies under this secret's keyed HMAC, else None.
    `keyed` is an HMAC-SHA256 already keyed with the secret; it is copied, not consumed."""
    mac = keyed.copy()
    mac.update(zero_random(hello.record))
    expected = mac.digest()
    if not hmac.compare_digest(expected[:DIGEST_CHECKED], hello.random[:DIGEST_CHECKED]):
        return None
    masked = bytes(a ^ b for a, b in zip(expected[DIGEST_CHECKED:], hello.random[DIGEST_CHECKED:], strict=True))
    return int.from_bytes(masked, "little")


def keyed_hmac(secret_key: bytes) -> hmac.HMAC:
    return hmac.new(secret_key, digestmod=hashlib.sha256)


# A suite's hash length, which is its Finished message's size: the one part of a site's encrypted flight
# whose size follows the cipher it chose
FINISHED_SIZES = {0x1301: 32, 0x1302: 48, 0x1303: 32}


class HelloShape(NamedTuple):
    """What the ServerHello copies of the mask site's: the cipher suite it chose (0: the client's first TLS 1.3
    suite), its extensions in its order (key_share, supported_versions: the only two a TLS 1.3 ServerHello
    without a resumed session has), its key share group (one of SERVER_SHARE_SIZES), and the suite of the
    flight the certificate size was measured on (0: none), so a client answered another suite gets the size
    that suite's Finished gives. A shape is taken only as far as each client offers it (`fit_shape`)."""

    cipher: int = 0
    extensions: tuple[int, ...] = (EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS)
    group: int = X25519
    measured_suite: int = 0


DEFAULT_SHAPE = HelloShape()  # today's flight: key_share first, x25519, the client's first suite


class Offers(NamedTuple):
    """What a ClientHello offers that a shaped ServerHello answers: its TLS 1.3 cipher suites, and the groups
    it sent a key share for."""

    suites: frozenset[int]
    groups: frozenset[int]


def client_offers(record: bytes) -> Offers:
    """The suites and key share groups of a ClientHello record `parse_client_hello` accepted."""
    body_end = RECORD_HEADER_SIZE + 4 + int.from_bytes(record[RECORD_HEADER_SIZE + 1 : RECORD_HEADER_SIZE + 4], "big")
    _session_id, pos = read_vector(record, SESSION_ID_OFFSET - 1, 1, body_end)
    suites_bytes, pos = read_vector(record, pos, 2, body_end)
    suites = frozenset(s for s in struct.unpack(f">{len(suites_bytes) // 2}H", suites_bytes) if s in TLS13_SUITES)
    _compression, pos = read_vector(record, pos, 1, body_end)
    groups: set[int] = set()
    if pos + 2 <= body_end:
        extensions, _ = read_vector(record, pos, 2, body_end)
        at = 0
        while at + 4 <= len(extensions):
            ext_type = extensions[at] << 8 | extensions[at + 1]
            ext_end = at + 4 + (extensions[at + 2] << 8 | extensions[at + 3])
            if ext_type == EXT_KEY_SHARE and at + 6 <= ext_end <= len(extensions):
                shares_end = min(ext_end, at + 6 + (extensions[at + 4] << 8 | extensions[at + 5]))
                share = at + 6
                while share + 4 <= shares_end:
                    groups.add(extensions[share] << 8 | extensions[share + 1])
                    share += 4 + (extensions[share + 2] << 8 | extensions[share + 3])
            at = ext_end
    return Offers(suites, frozenset(groups))


def fit_shape(shape: HelloShape, hello: ClientHello) -> HelloShape:
    """`shape` as this client can be answered: the site's cipher and group where the client offers them, else
    the client's first TLS 1.3 suite and x25519 (which every MTProto client offers). A suite the client did
    not offer, or a share for a group it sent none for, is what a real server never sends."""
    if shape.cipher in (0, hello.suite) and shape.group == X25519:  # nothing to look up: the commonest case
        return shape._replace(cipher=hello.suite) if shape.cipher else shape
    offers = client_offers(hello.record)
    cipher = shape.cipher if shape.cipher in offers.suites else hello.suite
    group = shape.group if shape.group in offers.groups and shape.group in SERVER_SHARE_SIZES else X25519
    return HelloShape(cipher, shape.extensions, group, shape.measured_suite)


def answered_cert_size(cert_size: int, fitted: HelloShape, hello: ClientHello) -> int:
    """The certificate record's size for a client answered in `fitted`: `cert_size` as measured, moved by the
    difference between its suite's Finished and the measured suite's, within one record."""
    measured = FINISHED_SIZES.get(fitted.measured_suite)
    if measured is None:
        return cert_size
    answered = FINISHED_SIZES.get(fitted.cipher or hello.suite, measured)
    return min(max(cert_size + answered - measured, 1), MAX_RECORD_PAYLOAD)


def choose_cipher_suite(hello: ClientHello) -> int:
    if not hello.suite:
        raise TlsFormatError("the client offers no TLS 1.3 cipher suite")
    return hello.suite


def check_hello(aes: Aes, record: bytes, secret_key: bytes | None = None, drawn: bytes = b"", cert_size: int = 0,
                keyed: hmac.HMAC | None = None,
                shape: HelloShape = DEFAULT_SHAPE) -> tuple[ClientHello, tuple[int, bytes] | None]:
    """One whole ClientHello record parsed (TlsFormatError when malformed) and, given a secret key, accepted
    under it as `accept_hello` does (None as well when the hello offers no TLS 1.3 suite): in one call into
    `aes.tls_hello` where the backend has it, else `parse_client_hello` and `accept_hello`, same answers."""
    if secret_key is not None:
        _check_flight_arguments(drawn, cert_size)
    check = aes.tls_hello
    if check is not None:
        return check(record, secret_key, drawn, cert_size, shape)
    hello = parse_client_hello(record)
    if secret_key is None or not hello.suite:
        return hello, None
    return hello, accept_hello(aes, hello, secret_key, drawn, cert_size, keyed, shape)


def _check_flight_arguments(drawn: bytes, cert_size: int) -> None:
    if not 1 <= cert_size <= MAX_RECORD_PAYLOAD:
        raise ProtocolError("fake certificate size must be 1..16384")
    if len(drawn) != FLIGHT_RANDOM:
        raise ProtocolError(f"a server flight takes {FLIGHT_RANDOM} random bytes")


def accept_hello(aes: Aes, hello: ClientHello, secret_key: bytes, drawn: bytes, cert_size: int,
                 keyed: hmac.HMAC | None = None, shape: HelloShape = DEFAULT_SHAPE) -> tuple[int, bytes] | None:
    """The client's clock and the server's flight when the hello's digest verifies under `secret_key`, else
    None. `drawn` is FLIGHT_RANDOM random bytes: the x25519 share's (`x25519.server_share`), then the
    certificate stand-in's key. In one call into `aes.tls_accept` where the backend has it, else
    `client_timestamp` (`keyed`, the key's HMAC, saves keying it again) and `build_server_flight`: same
    answers, same bytes.
    A larger share (the hybrid group's) takes its first bytes from the stand-in's keystream, after the
    certificate's."""
    _check_flight_arguments(drawn, cert_size)
    choose_cipher_suite(hello)
    accept = aes.tls_accept
    if accept is not None:
        return accept(hello, secret_key, drawn, cert_size, shape)
    clock = client_timestamp(keyed if keyed is not None else keyed_hmac(secret_key), hello)
    if clock is None:
        return None
    shape = fit_shape(shape, hello)
    cert_size = answered_cert_size(cert_size, shape, hello)
    extra = SERVER_SHARE_SIZES[shape.group] - KEY_SHARE_SIZE
    stream = _keystream(aes.encrypt_block, drawn[KEY_SHARE_SIZE:], cert_size + extra)
    key_share = stream[cert_size:] + x25519.server_share(drawn[:KEY_SHARE_SIZE])
    return clock, build_server_flight(secret_key, hello, key_share, stream[:cert_size], shape)


def cert_stand_in(encrypt_block: Callable[[bytes, bytes], bytes], cert_key: bytes, cert_size: int) -> bytes:
    """The certificate record's body: AES-256-CTR keystream under a fresh random key from a zero counter
    block, as AES-256 of the counter blocks 0, 1, 2... (`encrypt_block` takes a run of blocks). As
    unpredictable as random bytes to whoever lacks the key, and cheaper than drawing them: getrandom takes
    ~4.5 µs for 2.5 KB, a re-keyed OpenSSL context ~1.7, the native library a fraction of one."""
    if not 1 <= cert_size <= MAX_RECORD_PAYLOAD:
        raise ProtocolError("fake certificate size must be 1..16384")
    return _keystream(encrypt_block, cert_key, cert_size)


_MAX_KEYSTREAM = MAX_RECORD_PAYLOAD + max(SERVER_SHARE_SIZES.values())  # a certificate, then a share's extra


def _keystream(encrypt_block: Callable[[bytes, bytes], bytes], key: bytes, size: int) -> bytes:
    counters = _counter_blocks()[: -(-size // _AES_BLOCK) * _AES_BLOCK]
    return encrypt_block(key, counters)[:size]


@functools.cache
def _counter_blocks() -> bytes:
    """CTR's counter blocks 0, 1, 2... (128-bit big-endian) for the longest keystream, built on first use."""
    return b"".join(i.to_bytes(_AES_BLOCK, "big") for i in range(-(-_MAX_KEYSTREAM // _AES_BLOCK)))


def build_server_flight(secret_key: bytes, hello: ClientHello, key_share: bytes, cert: bytes,
                        shape: HelloShape = DEFAULT_SHAPE) -> bytes:
    """ServerHello + ChangeCipherSpec + one application-data record (`cert`) standing in for the encrypted
    certificate flight. Its random is the HMAC the client checks (protocol.md). `shape` is fitted to the
    client already (`fit_shape`): its cipher (0: the client's first) and the group `key_share` is for."""
    if not 1 <= len(cert) <= MAX_RECORD_PAYLOAD:
        raise ProtocolError("fake certificate size must be 1..16384")
    if len(key_share) != SERVER_SHARE_SIZES.get(shape.group, 0):
        raise ProtocolError(f"group {shape.group:#06x} takes no key share of {len(key_share)} bytes")
    if sorted(shape.extensions) != [EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE]:
        raise ProtocolError("a ServerHello has key_share and supported_versions, once each")
    key_share = shape.group.to_bytes(2, "big") + len(key_share).to_bytes(2, "big") + key_share
    bodies = {EXT_KEY_SHARE: key_share, EXT_SUPPORTED_VERSIONS: b"\x03\x04"}
    extensions = b"".join(
        ext.to_bytes(2, "big") + len(bodies[ext]).to_bytes(2, "big") + bodies[ext] for ext in shape.extensions)
    body = (
        b"\x03\x03"
        + bytes(RANDOM_SIZE)
        + bytes([len(hello.session_id)])
        + hello.session_id
        + (shape.cipher or choose_cipher_suite(hello)).to_bytes(2, "big")
        + b"\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    flight = bytearray(
        SERVER_HELLO_PREFIX
        + len(handshake).to_bytes(2, "big")
        + handshake
        + CHANGE_CIPHER_SPEC
        + record_header(len(cert))
        + cert
    )
    digest = hmac.new(secret_key, hello.random + bytes(flight), hashlib.sha256).digest()
    flight[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_SIZE] = digest
    return bytes(flight)


def record_header(length: int) -> bytes:
    return APPLICATION_DATA + length.to_bytes(2, "big")


def record_cuts(n: int, max_payload: int = MAX_RECORD_PAYLOAD, shaped: bool = False) -> tuple[int, int, int]:
    """How n payload bytes split into records: (full, last_full, tail): `full` records of `max_payload`, the
    last of them `last_full` long, then a `tail` record (0: none). Shaped, a tail shorter than MIN_AEAD_RECORD
    takes what it lacks from the record before it, as a TLS 1.3 server's records are never that short (a
    whole payload under it cannot be helped here: the caller holds it back)."""
    full, tail = divmod(n, max_payload)
    last_full = max_payload
    if shaped and full and 0 < tail < MIN_AEAD_RECORD:
        last_full -= MIN_AEAD_RECORD - tail
        tail = MIN_AEAD_RECORD
    return full, last_full, tail


def wrap_records(payload: bytes | memoryview, max_payload: int = MAX_RECORD_PAYLOAD, shaped: bool = False) -> bytes:
    """Payload as application-data records of at most `max_payload` bytes each (`shaped`: see record_cuts)."""
    view = memoryview(payload)
    full, last_full, tail = record_cuts(len(view), max_payload, shaped)
    parts: list[bytes | memoryview] = []
    start = 0
    for i in range(full):
        size = last_full if i == full - 1 else max_payload
        parts.append(record_header(size))
        parts.append(view[start : start + size])
        start += size
    if tail:
        parts.append(record_header(tail))
        parts.append(view[start:])
    return b"".join(parts)


def frame_records(data: memoryview, out: memoryview, cipher: Keystream | None = None, shaped: bool = False) -> int:
    """Write `data` into `out` as application-data records of at most MAX_RECORD_PAYLOAD bytes each (the
    DC->client direction of fake-TLS; `shaped`: of SHAPED_RECORD_PAYLOAD, see record_cuts), each payload
    passed through `cipher` when one is given; returns the length written. `out` (a memoryview: a bytearray's
    slices would be copies) must have room for the payload, a header per record and the cipher's slack."""
    record = SHAPED_RECORD_PAYLOAD if shaped else MAX_RECORD_PAYLOAD
    full, last_full, tail = record_cuts(len(data), record, shaped)
    pos = start = 0
    for i in range(full + (1 if tail else 0)):
        size = tail if i == full else last_full if i == full - 1 else record
        chunk = data[start : start + size]
        start += size
        out[pos : pos + 3] = APPLICATION_DATA
        out[pos + 3 : pos + 5] = size.to_bytes(2, "big")
        pos += RECORD_HEADER_SIZE
        if cipher is not None:
            cipher.update_into(chunk, out[pos:])
        else:
            out[pos : pos + size] = chunk
        pos += size
    return pos


_GATHER_FROM = 8  # records in a run before the strided check and join beat compacting one by one (measured)
_LENGTHS_KEPT = 64  # record lengths whose gatherers are cached (clients use one or two)

_Gatherer = Callable[[memoryview], tuple[memoryview, ...]]
_gatherers: dict[int, list[_Gatherer]] = {}

# Where a read's payload lies in its buffer: (head, first_record, stride, length, count, tail_start,
# tail_len), see `TlsRecordReader.layout`.
Layout = tuple[int, int, int, int, int, int, int]


def plain_layout(n: int) -> Layout:
    """`n` payload bytes at the front of the buffer, no records (classic and dd, or compacted fake-TLS)."""
    return (n, n, 0, 0, 0, n, 0)


def gather(view: memoryview, layout: Layout) -> bytes | memoryview:
    """The payload `TlsRecordReader.layout` found in `view`, contiguous: a prefix of `view` when nothing
    needs gathering, else a new bytes object."""
    head, first_record, stride, length, count, tail_start, tail_len = layout
    if not count:
        return view[:head]
    payloads = _gather(view[first_record : first_record + count * stride], length, count)
    if tail_len:
        payloads.append(view[tail_start : tail_start + tail_len])
    if head:
        payloads.insert(0, view[:head])
    return b"".join(payloads)


def _gather(run: memoryview, length: int, count: int) -> list[memoryview]:
    """The payloads of `count` back-to-back records of `length` in `run`. Slicing record by record costs a
    Python step each; an itemgetter of precomputed slices takes a whole block in one C call. Blocks are
    powers of two, so a few cached gatherers per length cover any count."""
    gatherers = _gatherers.get(length)
    if gatherers is None:
        if len(_gatherers) >= _LENGTHS_KEPT:
            _gatherers.clear()
        gatherers = _gatherers[length] = []
    stride = RECORD_HEADER_SIZE + length
    payloads: list[memoryview] = []
    at = 0
    for power in range(count.bit_length() - 1, -1, -1):
        block = 1 << power
        if not count & block:
            continue
        if block == 1:
            payloads.append(run[at + RECORD_HEADER_SIZE : at + stride])
        else:
            while len(gatherers) < power:
                size = 2 << len(gatherers)  # gatherers[k] takes 2^(k+1) records
                gatherers.append(operator.itemgetter(
                    *[slice(start, start + length) for start in range(RECORD_HEADER_SIZE, size * stride, stride)]))
            payloads += gatherers[power - 1](run[at : at + block * stride])
        at += block * stride
    return payloads


class TlsRecordReader:
    """Unwraps the client's records after the handshake: at most one ChangeCipherSpec first, then only
    application data. Keeps partial records between calls; memory is bounded by one record."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0  # payload bytes still due in the current record
        self._ccs_allowed = True
        self._ccs_body_due = False

    def unwrap(self, data: bytes | memoryview) -> bytes:
        """Payload bytes carried by `data`; raises TlsFormatError on anything but the allowed records."""
        if self._ccs_allowed and not self._remaining and not self._header and data[:6] == CHANGE_CIPHER_SPEC:
            # a client's first bytes after the server's flight: its ChangeCipherSpec whole, then (usually) the
            # record with its init; taken here in one compare, not through the header-by-header path
            self._ccs_allowed = False
            data = data[len(CHANGE_CIPHER_SPEC) :]
            if (len(data) > RECORD_HEADER_SIZE and data[:3] == APPLICATION_DATA
                    and (data[3] << 8 | data[4]) == len(data) - RECORD_HEADER_SIZE <= MAX_CLIENT_RECORD):
                return bytes(data[RECORD_HEADER_SIZE:])  # and exactly one whole record: the init's, as a rule
        return bytes(self.payload(memoryview(bytearray(data))))

    def payload(self, view: memoryview) -> bytes | memoryview:
        """The payload carried by the raw bytes in `view` (which it may overwrite). Raises TlsFormatError
        like `unwrap`."""
        return gather(view, self.layout(view))

    def layout(self, view: memoryview) -> Layout:
        """Where the payload carried by the raw bytes in `view` lies, as (head, first_record, stride,
        length, count, tail_start, tail_len): view[:head], then `count` records of `length` payload bytes
        whose headers start at `first_record`, `stride` apart, then view[tail_start:tail_start+tail_len]
        (see `gather`). Clients cut a bulk write into records of one size, so a run of equal records is
        checked with five strided compares (every header at once) and left where it is; anything else is
        compacted in place (head only). `view` may be overwritten. Raises TlsFormatError like `unwrap`."""
        n = len(view)
        head = self._remaining
        if self._header or self._ccs_body_due or n - head < 2 * (RECORD_HEADER_SIZE + 1):
            return plain_layout(self._compact(view))
        length = view[head + 3] << 8 | view[head + 4]
        stride = RECORD_HEADER_SIZE + length
        count = (n - head) // stride
        if count < _GATHER_FROM or not 0 < length <= MAX_CLIENT_RECORD:  # few records: compacting is cheaper
            return plain_layout(self._compact(view))
        end = head + count * stride
        header = APPLICATION_DATA + bytes(view[head + 3 : head + 5])
        run = view[head:end]
        if any(run[i::stride] != header[i : i + 1] * count for i in range(RECORD_HEADER_SIZE)):
            return plain_layout(self._compact(view))
        self._remaining = 0
        self._ccs_allowed = False
        tail = self._compact(view[end:]) if end < n else 0
        return (head, head, stride, length, count, end, tail)

    def _compact(self, view: memoryview) -> int:
        """Move the payload carried by the raw bytes in `view` to its start and return its length."""
        out = 0
        pos, end = 0, len(view)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if out != pos:
                    view[out : out + take] = view[pos : pos + take]
                out += take
                pos += take
                self._remaining -= take
                continue
            if self._ccs_body_due:
                if view[pos] != 0x01:
                    raise TlsFormatError("bad ChangeCipherSpec")
                pos += 1
                self._ccs_body_due = False
                continue
            if not self._header and end - pos >= RECORD_HEADER_SIZE and view[pos] == 0x17:
                # The common case, kept cheap: run over whole application-data records in one tight loop.
                self._ccs_allowed = False
                while True:
                    length = view[pos + 3] << 8 | view[pos + 4]
                    if view[pos + 1] != 3 or view[pos + 2] != 3 or not 0 < length <= MAX_CLIENT_RECORD:
                        raise TlsFormatError("unexpected TLS record from the client")
                    pos += RECORD_HEADER_SIZE
                    take = length if length <= end - pos else end - pos
                    view[out : out + take] = view[pos : pos + take]
                    out += take
                    pos += take
                    if take < length:
                        self._remaining = length - take
                        break
                    if end - pos < RECORD_HEADER_SIZE or view[pos] != 0x17:
                        break
                continue
            need = RECORD_HEADER_SIZE - len(self._header)
            self._header += view[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._header) < RECORD_HEADER_SIZE:
                break
            header = bytes(self._header)
            self._header.clear()
            length = int.from_bytes(header[3:5], "big")
            if header[:3] == APPLICATION_DATA and 0 < length <= MAX_CLIENT_RECORD:
                self._remaining = length
                self._ccs_allowed = False
            elif self._ccs_allowed and header == CHANGE_CIPHER_SPEC[:RECORD_HEADER_SIZE]:
                self._ccs_allowed = False
                self._ccs_body_due = True
            else:
                raise TlsFormatError("unexpected TLS record from the client")
        return out
