"""The optional native AES-256-CTR library (`native/`, Rust, no dependencies), called through ctypes.

Why: the upload takes two CTR passes over every byte, and a fake-TLS upload also gathers record payloads
first. The library does the gather and both passes in one walk over the bytes, with VAES (two AES blocks
per instruction, AVX2) or, on CPUs without it, AES-NI, and starts a stream in ~1 µs where a `cryptography`
context with a fresh key takes ~15-25 µs: a handshake starts four. pip builds it where cargo is present;
without it, or on a CPU without AES-NI, `open_library` gives None and the backend keeps OpenSSL
(docs/engine.md). Nothing loads on import: the engine calls `open_library` once at start-up.

The same library runs the secret scan (`NativeSecretScan`): a client without a per-address hint is tried
against every secret, one SHA-256 and one AES block a secret for classic and dd, one HMAC-SHA256 of its
ClientHello for fake-TLS; there it runs on the CPU's SHA extensions (a portable SHA-256 without them)."""

from __future__ import annotations

import array
import ctypes
import importlib.machinery
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

from mtproxy.protocol.cipher import Keystream
from mtproxy.protocol.faketls import (
    DEFAULT_SHAPE,
    EXT_SUPPORTED_VERSIONS,
    FLIGHT_RANDOM,
    KEY_SHARE_SIZE,
    MAX_RECORD_PAYLOAD,
    RANDOM_OFFSET,
    RANDOM_SIZE,
    RECORD_HEADER_SIZE,
    SERVER_SHARE_SIZES,
    SESSION_ID_OFFSET,
    ClientHello,
    HelloShape,
    Layout,
    TlsFormatError,
    zero_random,
)
from mtproxy.protocol.obfs2 import INIT_SIZE
from mtproxy.protocol.secret import KEY_SIZE, Secret

BLOCK: Final = 16
STATE_SIZE: Final = 288  # what this module expects of native/src/lib.rs (checked when it loads)
STATE_COUNTER: Final = 240  # where a state keeps its next counter block (u128, little-endian)
STATE_USED: Final = 272  # and how many bytes of its last block's keystream are used (u64; 16: none left)
WALK_AESNI: Final = 1  # mtp_walk: the keystream walks run AES-NI, eight blocks in flight
WALK_VAES: Final = 2  # mtp_walk: two blocks per instruction
FLIGHT_VERSION: Final = 2  # the flights it builds (mtp_flight_version): shaped, the x25519 share a curve point
MODULE_NAME: Final = "_native_aes"  # pyproject.toml builds it as mtproxy.crypto._native_aes
MIDSTATES_SIZE: Final = 64  # one key's HMAC-SHA256 inner and outer states (mtp_hmac_prepare)
INIT_REVERSE_SIZE: Final = 48  # the reverse direction's key and counter block (mtp_obfs2_start)
MAX_INIT_SECRET: Final = 32  # the longest secret key mtp_obfs2_start hashes
HELLO_MALFORMED: Final = -1  # what mtp_tls_hello returns for a record parse_client_hello refuses
NO_NAME: Final = 0xFFFF  # mtp_tls_hello's host name offset when the hello names no host
_CLOCK: Final = 8  # mtp_tls_hello's answer under a key starts with the clock, an i64
_MAX_SESSION_ID: Final = 255
_InitOut = ctypes.c_char * (INIT_SIZE + INIT_REVERSE_SIZE)  # mtp_obfs2_start's answer
REPLAY_KEY_SIZE: Final = 16  # mtp_replay_check's digest (protocol.replay.DIGEST_SIZE)
_UNACCEPTABLE_INIT: Final = -4  # mtp_obfs2_link: the random bytes make an init that reads as another protocol
_LINK_OUT_SIZE: Final = INIT_SIZE + 4096  # mtp_obfs2_link's answer for a client's usual first bytes
_LinkOut = ctypes.c_char * _LINK_OUT_SIZE
# the flight's bytes besides the session id and the certificate: ServerHello (record and handshake headers,
# version, random, session id length, suite, compression, extensions with an x25519 share), ChangeCipherSpec,
# a record header; a larger share adds to it
_FLIGHT_FIXED: Final = 5 + 4 + 2 + RANDOM_SIZE + 1 + 2 + 1 + 2 + 46 + 6 + 5
_MAX_SHARE_EXTRA: Final = max(SERVER_SHARE_SIZES.values()) - KEY_SHARE_SIZE
# Output arrays of one type each, whatever a call's size: ctypes keeps an array type only while something
# references it, and a type is freed only by the cyclic GC, so a type per call size (the certificate's varies
# by the jitter) cost a new type object (~10 µs) and GC work on most fake-TLS handshakes.
_FLIGHT_MAX: Final = _FLIGHT_FIXED + _MAX_SHARE_EXTRA + _MAX_SESSION_ID + MAX_RECORD_PAYLOAD
_FlightOut = ctypes.c_char * _FLIGHT_MAX  # mtp_tls_accept's answer
_HelloOut = ctypes.c_char * (_CLOCK + _FLIGHT_MAX)  # mtp_tls_hello's


def open_library(directory: Path | None = None) -> ctypes.CDLL | None:
    """The built library in `directory` (this package's by default), or None: not built here, a stale
    build, or a CPU without AES-NI. Its keystream walks run VAES where the CPU has it, else AES-NI
    (`WALK_VAES`, `WALK_AESNI`: what `mtp_walk` says; `mtp_force_aesni` chooses AES-NI for the process)."""
    here = Path(__file__).parent if directory is None else directory
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{MODULE_NAME}{suffix}"
        if not path.exists():
            continue
        try:
            lib = ctypes.CDLL(str(path))
            size, vp = ctypes.c_size_t, ctypes.c_void_p
            lib.mtp_available.restype = ctypes.c_int
            lib.mtp_available.argtypes = []
            lib.mtp_state_size.restype = size
            lib.mtp_state_size.argtypes = []
            lib.mtp_ctr_init.restype = ctypes.c_int
            lib.mtp_ctr_init.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
            lib.mtp_ctr_xor.restype = ctypes.c_int
            lib.mtp_ctr_xor.argtypes = [vp, vp, vp, size]
            lib.mtp_gather_xor2.restype = ctypes.c_int
            lib.mtp_gather_xor2.argtypes = [vp, vp, vp] + [size] * 8
            lib.mtp_sha_extensions.restype = ctypes.c_int
            lib.mtp_sha_extensions.argtypes = []
            lib.mtp_sha_force_portable.restype = ctypes.c_int
            lib.mtp_sha_force_portable.argtypes = [ctypes.c_int]
            lib.mtp_sha256.restype = ctypes.c_int
            lib.mtp_sha256.argtypes = [vp, size, vp]
            lib.mtp_hmac_prepare.restype = ctypes.c_int
            lib.mtp_hmac_prepare.argtypes = [vp, size, size, vp]
            i32 = ctypes.c_int32
            lib.mtp_obfs2_scan.restype = i32
            lib.mtp_obfs2_scan.argtypes = [vp, vp, size, vp, size, i32]
            lib.mtp_obfs2_start.restype = ctypes.c_int
            lib.mtp_obfs2_start.argtypes = [vp, vp, size, vp, vp]
            lib.mtp_replay_check.restype = ctypes.c_int
            lib.mtp_replay_check.argtypes = [vp, size, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]
            lib.mtp_obfs2_link.restype = ctypes.c_int
            lib.mtp_obfs2_link.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, vp,
                                           ctypes.c_char_p, size, vp, vp]
            lib.mtp_tls_scan.restype = i32
            lib.mtp_tls_scan.argtypes = [vp, size, vp, vp, size, vp, vp, size, i32, i32,
                                         ctypes.POINTER(ctypes.c_uint32)]
            lib.mtp_tls_hello.restype = ctypes.c_int64
            lib.mtp_tls_hello.argtypes = [vp, size, vp, size, vp, size, vp, size, ctypes.c_uint64]
            lib.mtp_tls_accept.restype = ctypes.c_int64
            lib.mtp_tls_accept.argtypes = [vp, size, size, ctypes.c_uint32, vp, size, vp, size, vp, size,
                                           ctypes.c_uint64]
            lib.mtp_flight_version.restype = ctypes.c_int
            lib.mtp_flight_version.argtypes = []
            lib.mtp_walk.restype = ctypes.c_int
            lib.mtp_walk.argtypes = []
            lib.mtp_force_aesni.restype = ctypes.c_int
            lib.mtp_force_aesni.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):  # not loadable here, or a stale build without these functions
            continue
        if (lib.mtp_available() == 1 and lib.mtp_state_size() == STATE_SIZE
                and lib.mtp_flight_version() == FLIGHT_VERSION):
            return lib
    return None


def address(buf: bytearray | memoryview) -> tuple[int, ctypes.c_char | ctypes.Array[ctypes.c_char]]:
    """The address of a writable buffer, and the ctypes view that pins it (keep it until the call is done).
    A one-byte view pins the buffer as an array over all of it would, at half the cost (no array type)."""
    view = ctypes.c_char.from_buffer(buf) if len(buf) else (ctypes.c_char * 0).from_buffer(buf)
    return ctypes.addressof(view), view


class NativeCtr:
    """One AES-256-CTR stream in the native library: the same counting as OpenSSL's CTR mode. Like an
    OpenSSL context, one thread at a time (ctypes lets go of the GIL during a call)."""

    __slots__ = ("_addr", "_lib", "_state")

    def __init__(self, lib: ctypes.CDLL, key: bytes, iv: bytes) -> None:
        if len(key) != 32 or len(iv) != BLOCK:
            raise ValueError("AES-256-CTR takes a 32-byte key and a 16-byte counter block")
        self._lib = lib  # bound once per stream: the hot path looks up nothing else
        # a bytearray is ~150 bytes smaller than a ctypes array; it is never resized, so its address holds
        self._state = bytearray(STATE_SIZE)
        self._addr, pin = address(self._state)
        del pin
        if lib.mtp_ctr_init(self._addr, key, iv) != 0:
            raise OSError("the native AES library refused to start a stream")

    @classmethod
    def start_init(cls, lib: ctypes.CDLL, init: bytes, secret_key: bytes | None) -> tuple[bytes, NativeCtr, bytes]:
        """`protocol.cipher.InitStart` in one library call: both keys' SHA-256, the stream's key expansion
        and the 64 bytes (`mtp_obfs2_start`)."""
        if len(init) != INIT_SIZE:
            raise ValueError(f"an obfuscated2 init is {INIT_SIZE} bytes")
        if secret_key is not None and not 0 < len(secret_key) <= MAX_INIT_SECRET:
            raise ValueError(f"the native init start takes a secret key of 1 to {MAX_INIT_SECRET} bytes")
        stream = cls._unstarted(lib)
        out = _InitOut()
        key = b"" if secret_key is None else secret_key
        if lib.mtp_obfs2_start(init, key, len(key), stream._addr, out) != 0:
            raise OSError("the native AES library refused to start an init's streams")
        raw = out.raw  # one copy out, then two slices: cheaper than two slices of the array
        return raw[:INIT_SIZE], stream, raw[INIT_SIZE:]

    @classmethod
    def _unstarted(cls, lib: ctypes.CDLL) -> NativeCtr:
        """A stream whose state the library starts in the same call that uses it."""
        stream = cls.__new__(cls)
        stream._lib = lib
        stream._state = state = bytearray(STATE_SIZE)
        stream._addr = ctypes.addressof(ctypes.c_char.from_buffer(state))  # the pin goes at once (see address)
        return stream

    @classmethod
    def link(cls, lib: ctypes.CDLL, reverse: bytes, tag: bytes, dc_id: int, drawn: bytes, from_client: Keystream,
             pending: bytes) -> tuple[bytes, NativeCtr] | None:
        """`protocol.cipher.LinkStart` in one library call (`mtp_obfs2_link`): the DC header in fast mode, with
        `pending` deciphered by `from_client` and enciphered for the DC behind it, and the DC stream; None
        when `drawn` makes an init that reads as another protocol (draw again)."""
        if len(reverse) != INIT_REVERSE_SIZE or len(tag) != 4 or len(drawn) != INIT_SIZE:
            raise ValueError("a DC link takes 48 bytes of reverse keys, a 4-byte tag and 64 random bytes")
        if pending and not isinstance(from_client, NativeCtr):
            raise TypeError("the native DC link deciphers with a native stream")
        stream = cls._unstarted(lib)
        n = INIT_SIZE + len(pending)
        source = from_client._addr if pending else None  # type: ignore[attr-defined]
        if n <= _LINK_OUT_SIZE:  # the usual case: an array of one fixed type (see _FlightOut), one copy out
            out = _LinkOut()
            result = lib.mtp_obfs2_link(reverse, tag, dc_id, drawn, source, pending, len(pending), stream._addr, out)
            first = _sliced(out, 0, n)
        else:
            wide = bytearray(n)
            address_of, pin = address(wide)
            result = lib.mtp_obfs2_link(reverse, tag, dc_id, drawn, source, pending, len(pending), stream._addr,
                                        address_of)
            del pin
            first = bytes(wide)
        if result == _UNACCEPTABLE_INIT:
            return None
        if result != 0:
            raise OSError(f"the native AES library refused a DC link ({result})")
        return first, stream

    def update(self, data: bytes | bytearray | memoryview, /) -> bytes:
        """The handshake's path (headers, the bytes that came with an init): one call, one copy out."""
        n = len(data)
        if not n:
            return b""
        # a bytearray, not create_string_buffer: that makes an array type per size (see _FlightOut)
        out = bytearray(n)
        dst, pin = address(out)
        # ctypes passes the address of a bytes object's own storage (read only here); other buffers are copied
        self._lib.mtp_ctr_xor(self._addr, data if type(data) is bytes else bytes(data), dst, n)
        del pin
        return bytes(out)

    def update_into(self, data: bytes | bytearray | memoryview, buf: bytearray | memoryview, /) -> int:
        """buf[:n] = data ⊕ the next n keystream bytes (n = len(data)); `data` may be `buf` itself, or a
        buffer that does not overlap it."""
        n = len(data)
        if len(buf) < n:
            raise ValueError("the output buffer is smaller than the input")
        dst, dst_pin = address(buf)
        try:
            src, src_pin = address(data)  # type: ignore[arg-type]
        except TypeError:  # read-only input: copy it in, then work in place
            memoryview(buf)[:n] = data
            src, src_pin = dst, dst_pin
        self._lib.mtp_ctr_xor(self._addr, src, dst, n)
        del src_pin, dst_pin
        return n


class NativeReplay:
    """`protocol.replay.ReplayCheck` in one library call (`mtp_replay_check`) on the replay filter's memory,
    which it pins: that memory is never resized, nor closed while the engine runs."""

    __slots__ = ("_address", "_call", "_pin", "_size")

    def __init__(self, lib: ctypes.CDLL, memory: memoryview) -> None:
        self._pin = (ctypes.c_char * len(memory)).from_buffer(memory)
        self._address = ctypes.addressof(self._pin)
        self._size = len(memory)
        self._call = lib.mtp_replay_check

    def __call__(self, key: bytes, now: int, ttl: int) -> bool:
        if len(key) != REPLAY_KEY_SIZE:
            raise ValueError(f"a replay check takes a {REPLAY_KEY_SIZE}-byte digest")
        result: int = self._call(self._address, self._size, key, now, ttl)
        if result < 0:
            raise ValueError(f"the native library refused a replay check ({result})")
        return result == 1


def gather_twice(first: NativeCtr, second: NativeCtr, buf: bytearray, layout: Layout) -> int:
    """The upload's two passes in one walk: gather the payload `layout` finds in `buf` (a fake-TLS read,
    `faketls.TlsRecordReader.layout`, or `faketls.plain_layout`) to the front of `buf`, applying first's
    keystream and second's on the way; returns the payload's length."""
    if first is second:  # the same keystream twice would cancel out and send the bytes in the clear
        raise ValueError("the two passes need two streams")
    head, first_record, stride, length, count, tail_start, tail_len = layout
    if (min(layout) < 0 or head > first_record or (count and stride < length + RECORD_HEADER_SIZE)
            or first_record + count * stride > tail_start or tail_start + tail_len > len(buf)):
        raise ValueError(f"record layout {layout} does not fit a {len(buf)}-byte buffer")
    addr, pin = address(buf)
    result = first._lib.mtp_gather_xor2(first._addr, second._addr, addr, len(buf), *layout)
    del pin
    if result != 0:
        raise ValueError(f"the native library refused record layout {layout}")
    return head + count * length + tail_len


def sha256(lib: ctypes.CDLL, data: bytes) -> bytes:
    """SHA-256 in the library (the scan's, on whichever path this CPU takes): for the self-test and tests."""
    out = ctypes.create_string_buffer(32)
    if lib.mtp_sha256(data, len(data), out) != 0:
        raise OSError("the native library refused to hash")
    return out.raw


def hmac_midstates(lib: ctypes.CDLL, keys: Sequence[bytes]) -> bytes:
    """HMAC-SHA256's inner and outer states after each key's block (keys of one length), packed: what the
    fake-TLS scan starts from."""
    size = len(keys[0]) if keys else 0
    if any(len(key) != size for key in keys):
        raise ValueError("the keys differ in length")
    out = ctypes.create_string_buffer(MIDSTATES_SIZE * len(keys))
    if lib.mtp_hmac_prepare(b"".join(keys), size, len(keys), out) != 0:
        raise OSError("the native library refused an HMAC key")
    return out.raw


def _indexes(values: Sequence[int]) -> ctypes.Array[ctypes.c_int32]:
    packed = array.array("i", values)  # C int: 32 bits wherever this library builds
    return (ctypes.c_int32 * len(values)).from_buffer_copy(packed) if values else (ctypes.c_int32 * 0)()


class NativeSecretScan:
    """A secret table's whole scan in the native library (`protocol.cipher.SecretScan`), built once per
    secret set: the keys packed, their HMAC midstates, every index and each SNI domain's indexes as int32
    arrays. The order is `SecretTable.candidates`': a domain's secrets first, then the rest by index."""

    __slots__ = ("_all", "_by_domain", "_count", "_domain_of", "_keys", "_lib", "_midstates")

    def __init__(self, lib: ctypes.CDLL, secrets: Sequence[Secret]) -> None:
        if any(len(secret.key) != KEY_SIZE for secret in secrets):
            raise ValueError(f"the scan takes {KEY_SIZE}-byte keys")
        self._lib = lib
        self._count = len(secrets)
        self._keys = b"".join(secret.key for secret in secrets)
        self._midstates = hmac_midstates(lib, [secret.key for secret in secrets])
        self._all = _indexes(range(len(secrets)))
        domain_ids: dict[str, int] = {}
        members: dict[str, list[int]] = {}
        for i, secret in enumerate(secrets):
            if secret.domain is not None:
                domain_ids.setdefault(secret.domain, len(domain_ids))
                members.setdefault(secret.domain, []).append(i)
        self._domain_of = _indexes([domain_ids[s.domain] if s.domain is not None else -1 for s in secrets])
        self._by_domain = {domain: (domain_ids[domain], _indexes(found)) for domain, found in members.items()}

    def find_obfs2(self, init: bytes, exclude: int) -> int:
        if len(init) != INIT_SIZE:
            raise ValueError(f"an obfuscated2 init is {INIT_SIZE} bytes")
        found: int = self._lib.mtp_obfs2_scan(init, self._keys, self._count, self._all, self._count, exclude)
        if found < -1:
            raise OSError(f"the native secret scan failed ({found})")
        return found

    def find_tls(self, hello: ClientHello, domain: str | None, exclude: int) -> tuple[int, int] | None:
        if len(hello.random) != RANDOM_SIZE:
            raise ValueError(f"a ClientHello's random is {RANDOM_SIZE} bytes")
        record = zero_random(hello.record)
        timestamp = ctypes.c_uint32()
        group = self._by_domain.get(domain) if domain is not None else None
        passes = [(group[1], -1), (self._all, group[0])] if group is not None else [(self._all, -1)]
        for indexes, skip_domain in passes:
            found: int = self._lib.mtp_tls_scan(record, len(record), hello.random, self._midstates, self._count,
                                                self._domain_of, indexes, len(indexes), exclude, skip_domain,
                                                ctypes.byref(timestamp))
            if found >= 0:
                return found, timestamp.value
            if found < -1:
                raise OSError(f"the native secret scan failed ({found})")
        return None


def pack_shape(shape: HelloShape) -> int:
    """A ServerHello shape as the library takes it (native/src/lib.rs `Fitted`): the cipher, the group,
    whether supported_versions comes first, the measured suite."""
    if (sorted(shape.extensions) != sorted(DEFAULT_SHAPE.extensions) or not 0 <= shape.cipher <= 0xFFFF
            or not 0 <= shape.measured_suite <= 0xFFFF):
        raise ValueError(f"not a ServerHello shape: {shape}")
    versions_first = shape.extensions[0] == EXT_SUPPORTED_VERSIONS
    return shape.cipher | (shape.group & 0xFFFF) << 16 | versions_first << 32 | shape.measured_suite << 40


_DEFAULT_PACKED: Final = pack_shape(DEFAULT_SHAPE)


def _flight_length(out: ctypes.Array[ctypes.c_char], start: int, session_id_len: int, cert_size: int,
                   shape: HelloShape) -> int:
    """The length of the flight the library wrote at out[start:]: known for the default shape, else read from
    its ServerHello's and its certificate record's headers (the share's size and the certificate's follow
    from what the library fitted)."""
    if shape is DEFAULT_SHAPE:
        return _FLIGHT_FIXED + session_id_len + cert_size
    cert_at = start + RECORD_HEADER_SIZE + int.from_bytes(_sliced(out, start + 3, start + 5), "big") + 6
    return cert_at - start + RECORD_HEADER_SIZE + int.from_bytes(_sliced(out, cert_at + 3, cert_at + 5), "big")


def check_hello(lib: ctypes.CDLL, record: bytes, secret_key: bytes | None = None, drawn: bytes = b"",
                cert_size: int = 0, shape: HelloShape = DEFAULT_SHAPE) -> tuple[ClientHello, tuple[int, bytes] | None]:
    """`protocol.cipher.HelloCheck` in one library call (`mtp_tls_hello`): TlsFormatError exactly where
    `faketls.parse_client_hello` raises one; with a key, `accept_hello`'s answer too."""
    record = bytes(record)
    out = None
    if secret_key is None:
        packed: int = lib.mtp_tls_hello(record, len(record), None, 0, None, 0, None, 0, _DEFAULT_PACKED)
    else:
        if len(drawn) != FLIGHT_RANDOM or not secret_key or not 1 <= cert_size <= MAX_RECORD_PAYLOAD:
            raise ValueError("a check under a key takes 64 random bytes and a size of 1..16384")
        out = _HelloOut()  # a slice of it is bytes: one copy out, where .raw and a slice take two
        packed = lib.mtp_tls_hello(record, len(record), secret_key, len(secret_key), drawn, cert_size, out,
                                   len(out), _DEFAULT_PACKED if shape is DEFAULT_SHAPE else pack_shape(shape))
    if packed < 0:
        if packed == HELLO_MALFORMED:
            raise TlsFormatError("malformed ClientHello")
        raise OSError(f"the native library refused a ClientHello ({packed})")
    name_at = packed >> 8 & 0xFFFF
    sni = None
    if name_at != NO_NAME:
        sni = record[name_at : name_at + (packed >> 24 & 0xFFFF)].decode("ascii").lower()
    session_id_len = packed & 0xFF
    hello = ClientHello(record, record[RANDOM_OFFSET:SESSION_ID_OFFSET - 1],
                        record[SESSION_ID_OFFSET : SESSION_ID_OFFSET + session_id_len], packed >> 40, sni)
    if out is None:
        return hello, None
    clock = int.from_bytes(_sliced(out, 0, _CLOCK), "little", signed=True)
    if clock < 0:
        return hello, None
    return hello, (clock, _sliced(out, _CLOCK, _CLOCK + _flight_length(out, _CLOCK, session_id_len, cert_size, shape)))


def accept_hello(lib: ctypes.CDLL, hello: ClientHello, secret_key: bytes, drawn: bytes,
                 cert_size: int, shape: HelloShape = DEFAULT_SHAPE) -> tuple[int, bytes] | None:
    """`protocol.cipher.HelloAccept` in one library call (`mtp_tls_accept`): the digest under `secret_key`,
    then the flight when it verifies."""
    session_id = hello.session_id
    record = hello.record
    if (len(drawn) != FLIGHT_RANDOM or not hello.suite or not 1 <= cert_size <= MAX_RECORD_PAYLOAD
            or len(session_id) > _MAX_SESSION_ID
            or record[SESSION_ID_OFFSET : SESSION_ID_OFFSET + len(session_id)] != session_id
            or record[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_SIZE] != hello.random):
        raise ValueError("not a parsed hello with a TLS 1.3 suite, 64 random bytes and a size of 1..16384")
    out = _FlightOut()
    clock: int = lib.mtp_tls_accept(record, len(record), len(session_id), hello.suite, secret_key, len(secret_key),
                                    drawn, cert_size, out, len(out),
                                    _DEFAULT_PACKED if shape is DEFAULT_SHAPE else pack_shape(shape))
    if clock < 0:
        if clock == -1:
            return None
        raise ValueError(f"the native library refused a ClientHello ({clock})")
    return clock, _sliced(out, 0, _flight_length(out, 0, len(session_id), cert_size, shape))


def _sliced(buffer: ctypes.Array[ctypes.c_char], start: int, stop: int) -> bytes:
    """buffer[start:stop], which ctypes gives as bytes (typeshed says a list)."""
    return cast(bytes, buffer[start:stop])
