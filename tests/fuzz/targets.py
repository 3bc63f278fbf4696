"""Fuzz targets over the protocol core's parsers: each takes arbitrary bytes and checks the only allowed outcomes.

House rule 2: nothing derived from network bytes may raise an unexpected exception. A target raises
(and so makes the fuzzer report a crash) when the code under test does anything else.
The targets run under atheris (tests/fuzz/run.py) and, without atheris, over the seed inputs in pytest.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import random
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mtproxy.crypto import aesblock, native
from mtproxy.crypto.backend import Backend, native_library, openssl_cbc, openssl_ctr
from mtproxy.protocol import faketls, middleproxy, middleproxy_messages, obfs2, proxyconfig, transport
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.handshake import (
    Authenticated,
    Handshake,
    HandshakeSettings,
    NeedMore,
    Rejected,
    SecretTable,
)
from mtproxy.protocol.replay import ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind

HELLOS = Path(__file__).resolve().parents[1] / "data" / "tdlib_hellos"
_INDEX = json.loads((HELLOS / "index.json").read_text())
KEY = bytes.fromhex(_INDEX["key"])
DOMAIN: str = _INDEX["domain"]
# A complete TDLib fake-TLS client flight (hello, then ChangeCipherSpec and the TLS-wrapped init) and the
# time TDLib put in it: fuzzing "now" around it lets the captured hellos authenticate.
_FULL = next(c for c in _INDEX["captures"] if c["name"] == "ee_full")
CAPTURE_TIME: int = _FULL["timestamp"]
_FULL_BYTES = (HELLOS / _FULL["file"]).read_bytes()
FIRST_HELLO = _FULL_BYTES[: 5 + _FULL["record_length"]]
AFTER_HELLO = _FULL_BYTES[len(FIRST_HELLO) :]

_AES = openssl_ctr(why="the fuzz targets: OpenSSL's CTR, no library of their own to load")
_TABLE_ENTRIES = [
    ("classic", Secret(bytes(range(16)), SecretKind.CLASSIC)),
    ("dd", Secret(bytes(range(16, 32)), SecretKind.PADDED)),
    ("tdlib", Secret(KEY, SecretKind.FAKE_TLS, DOMAIN)),
]
_SETTINGS = (
    HandshakeSettings(),
    HandshakeSettings(allow_obfuscated=False, tls_domains=frozenset({DOMAIN})),
    HandshakeSettings(allow_faketls=False),
)


@functools.cache
def _native_pair() -> tuple[Backend, Backend] | None:
    """The native backend, and the same with the fake-TLS work left to Python; None where the library is not
    built. Opened on first use: importing the targets loads nothing."""
    lib = native.open_library()
    if lib is None:
        return None
    built = native_library(lib, aesblock.block_encryptor(aesblock.open_libcrypto()))
    return built, replace(built, tls_hello=None, tls_accept=None)


@functools.cache
def _table(aes: Backend) -> SecretTable:
    return SecretTable(_TABLE_ENTRIES, aes)


def _new_handshake(settings: HandshakeSettings, aes: Backend = _AES,
                   random_bytes: Callable[[int], bytes] = os.urandom) -> Handshake:
    # A fresh, small replay filter each run: runs must not depend on one another.
    return Handshake(_table(aes), settings, ReplayFilter.in_process(64), random_bytes, aes=aes)


def _drive(handshake: Handshake, data: bytes, chunk: int, now: float, first: int = 0) -> list[object]:
    """Feed `data` (its first `first` bytes at once, then chunks of `chunk` bytes) until the handshake
    decides; check every step. Returns what each step said, for comparing two backends."""
    pos = 0
    said: list[object] = []
    if first:
        step = handshake.feed(data[:first], now)
        pos = first
        if not isinstance(step, NeedMore):
            raise AssertionError(f"the captured hello did not authenticate: {step!r}")
        said.append(step)
    while True:
        piece = data[pos : pos + chunk]
        pos += len(piece)
        step = handshake.feed(piece, now)
        if isinstance(step, NeedMore):
            if not isinstance(step.send, bytes):
                raise AssertionError("NeedMore.send is not bytes")
            said.append(step)
            if pos >= len(data):
                return said
            continue
        if isinstance(step, Rejected):
            # The mask must get exactly the bytes the client sent, or the prober sees a difference.
            if step.received != data[:pos]:
                raise AssertionError("Rejected.received is not exactly what was fed")
            return [*said, step]
        if isinstance(step, Authenticated):
            auth = step.auth
            return [*said, (step.send, auth.secret_index, auth.tag, auth.dc_id, auth.fake_tls, auth.pending)]
        raise AssertionError(f"unexpected step {step!r}")


def _split_header(data: bytes) -> tuple[HandshakeSettings, int, float, bytes]:
    """First 3 bytes choose the settings, the chunk size and the clock; the rest is the stream."""
    if len(data) < 3:
        return _SETTINGS[0], 1, float(CAPTURE_TIME), data
    settings = _SETTINGS[data[0] % len(_SETTINGS)]
    chunk = data[1] % 97 + 1
    now = float(CAPTURE_TIME + (data[2] - 128) * 8)  # about ±17 minutes: inside and outside the window
    return settings, chunk, now, data[3:]


def handshake(data: bytes) -> None:
    """Arbitrary bytes as a client's first flight, split at a fuzzed chunk size."""
    settings, chunk, now, stream = _split_header(data)
    _drive(_new_handshake(settings), stream, chunk, now)


def handshake_after_hello(data: bytes) -> None:
    """A real TDLib hello that authenticates, then arbitrary bytes where the TLS-wrapped init belongs."""
    _, chunk, _, stream = _split_header(data)
    # The hello goes in whole (its splits are unit-tested); only the fuzzed part is split.
    _drive(_new_handshake(_SETTINGS[1]), FIRST_HELLO + stream, chunk, float(CAPTURE_TIME), len(FIRST_HELLO))


def handshake_both_backends(data: bytes) -> None:
    """The `handshake` and `handshake_after_hello` inputs through the native library's fake-TLS handshake
    and through Python's, with the same random bytes: every step must be the same, flights byte for byte."""
    pair = _native_pair()
    if pair is None:
        return
    settings, chunk, now, stream = _split_header(data)
    for first, flight in ((0, stream), (len(FIRST_HELLO), FIRST_HELLO + stream)):
        if first:
            settings, now = _SETTINGS[1], float(CAPTURE_TIME)
        said = [_drive(_new_handshake(settings, aes, random.Random(7).randbytes), flight, chunk, now, first)
                for aes in pair]
        if said[0] != said[1]:
            raise AssertionError(f"the native and the Python fake-TLS handshakes differ: {said[0]!r} {said[1]!r}")


def tls_hello(data: bytes) -> None:
    """The ClientHello parser on a record built around arbitrary bytes: a hello or TlsFormatError only, and
    the native library's parse and digest check (where it is built) give the same answers."""
    body = data[:16384]
    record = faketls.HELLO_PREFIX + len(body).to_bytes(2, "big") + body
    pair = _native_pair()
    try:
        hello = faketls.parse_client_hello(record)
    except faketls.TlsFormatError:
        hello = None
    if pair is not None:
        try:
            native_hello = faketls.check_hello(pair[0], record)[0]
        except faketls.TlsFormatError:
            native_hello = None
        if native_hello != hello:
            raise AssertionError(f"the native ClientHello parse differs: {native_hello!r} {hello!r}")
    if hello is None:
        return
    if len(hello.random) != faketls.RANDOM_SIZE:
        raise AssertionError("parsed random is not 32 bytes")
    timestamp = faketls.client_timestamp(faketls.keyed_hmac(KEY), hello)
    if pair is None or not hello.suite:
        return
    drawn = hashlib.sha512(data).digest()  # the share's number (x25519.server_share) varies with the input
    for shape in _SHAPES:  # the library fits a site's shape to the hello's offers as faketls.fit_shape does
        accepted = [_table(aes).accept_hello(hello, 2, drawn, 1000, shape) for aes in pair]
        if accepted[0] != accepted[1] or (accepted[0] is not None) != (timestamp is not None):
            raise AssertionError(f"the native ClientHello accept differs in shape {shape}")


_SHAPES = (faketls.DEFAULT_SHAPE,
           faketls.HelloShape(0x1302, (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE), faketls.X25519MLKEM768))


def tls_records(data: bytes) -> None:
    """The post-handshake record reader, fed in two pieces: payload bytes or TlsFormatError only."""
    reader = faketls.TlsRecordReader()
    cut = data[0] if data else 0
    try:
        out = reader.unwrap(data[1 : 1 + cut]) + reader.unwrap(data[1 + cut :])
    except faketls.TlsFormatError:
        return
    if len(out) > len(data):
        raise AssertionError("reader produced more bytes than it was given")


def obfs2_init(data: bytes) -> None:
    """Any 64 bytes as an init under a fixed key: a decoded init or None, never an exception."""
    init = (data + bytes(64))[:64]
    decoded = obfs2.decode_init(init, KEY, _AES)
    if decoded is not None and decoded.tag not in obfs2.KNOWN_TAGS:
        raise AssertionError("decode_init accepted an unknown tag")


def frames(data: bytes) -> None:
    """The frame decoder for each tag: frames or ProtocolError only."""
    for tag in (obfs2.TAG_ABRIDGED, obfs2.TAG_INTERMEDIATE, obfs2.TAG_PADDED):
        decoder = transport.FrameDecoder(tag)
        try:
            for frame in decoder.feed(data):
                if len(frame) > transport.MAX_FRAME:
                    raise AssertionError("frame over the limit")
        except ProtocolError:
            continue


def proxy_config(data: bytes) -> None:
    """proxy-multi.conf parsing: a config with relays or ProxyConfigError only."""
    try:
        config = proxyconfig.parse_proxy_config(data)
    except proxyconfig.ProxyConfigError:
        return
    if not config.relays or not all(config.relays.values()):
        raise AssertionError("a parsed config without relays")


_RELAY_SECRET = proxyconfig.ProxySecret(bytes(range(32)))
_RELAY_ENDPOINTS = middleproxy.RelayEndpoints(ipaddress.IPv4Address("192.0.2.1"), 40000,
                                              ipaddress.IPv4Address("192.0.2.2"), 8888)
_RELAY_TIME = 1_700_000_000


def _ready_relay_connection() -> tuple[middleproxy.RelayConnection, middleproxy.CbcStream]:
    """A connection past its handshake, and the relay's encrypting direction to speak to it with."""
    our_nonce, relay_nonce = bytes(16), bytes(range(16))
    connection = middleproxy.RelayConnection(_RELAY_SECRET, _RELAY_ENDPOINTS, openssl_cbc, now=_RELAY_TIME,
                                             nonce=our_nonce, pid=1, start_time=_RELAY_TIME)
    connection.start()
    keys = middleproxy.derive_keys(_RELAY_SECRET, relay_nonce, our_nonce, _RELAY_TIME, _RELAY_ENDPOINTS)
    relay_out = openssl_cbc(keys.read_key, keys.read_iv, True)
    nonce = middleproxy.encode_frame(-2, middleproxy.nonce_packet(_RELAY_SECRET, _RELAY_TIME, relay_nonce))
    ours = connection.receive(nonce).send
    our_pid = openssl_cbc(keys.write_key, keys.write_iv, False).update(ours)[16:28]
    handshake = middleproxy.encode_frame(-1, struct.pack("<Ii", middleproxy.RPC_HANDSHAKE, 0) + bytes(12) + our_pid)
    step = connection.receive(relay_out.update(handshake + middleproxy.PADDING_WORD * (-len(handshake) % 16 // 4)))
    if not connection.ready or not isinstance(step.events[0], middleproxy.Ready):
        raise AssertionError("the fuzz target's own handshake failed")
    return connection, relay_out


def relay_frames(data: bytes) -> None:
    """Arbitrary bytes as what a ready relay connection decrypts, in two pieces: events or
    MiddleProxyError only; the ignored count is the Ignored events'."""
    connection, relay_out = _ready_relay_connection()
    stream = relay_out.update(data + bytes(-len(data) % 16))
    cut = data[0] if data else 0
    events: list[middleproxy.Event] = []
    try:
        events += connection.receive(stream[:cut]).events
        events += connection.receive(stream[cut:]).events
    except middleproxy.MiddleProxyError:
        return
    ignored = sum(isinstance(event, middleproxy_messages.Ignored) for event in events)
    if ignored != connection.ignored:
        raise AssertionError("Ignored events and the ignored count disagree")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "handshake": handshake,
    "handshake_after_hello": handshake_after_hello,
    "handshake_both_backends": handshake_both_backends,
    "tls_hello": tls_hello,
    "tls_records": tls_records,
    "obfs2_init": obfs2_init,
    "frames": frames,
    "proxy_config": proxy_config,
    "relay_frames": relay_frames,
}


def seeds(target: str) -> list[bytes]:
    """Starting inputs: the captured TDLib flights (with a settings/chunk/clock header where the
    target takes one), so the fuzzer starts from real client bytes."""
    captures = sorted(HELLOS.glob("*.bin"))
    raw = [path.read_bytes() for path in captures]
    if target == "handshake":
        return [bytes([n % 3, 7 + n, 128]) + blob for n, blob in enumerate(raw)] + [b"\x00\x00\x80"]
    if target == "handshake_both_backends":
        return seeds("handshake") + seeds("handshake_after_hello")
    if target == "handshake_after_hello":
        return [bytes([0, chunk, 128]) + AFTER_HELLO for chunk in (0, 5, 96)] + [b"\x00\x00\x80"]
    if target == "tls_hello":
        return [blob[5:] for blob in raw if blob.startswith(faketls.HELLO_PREFIX)]
    if target == "proxy_config":
        return [b"# comment\ndefault 2;\nproxy_for 1 192.0.2.1:8888;\nproxy_for -1 [2001:db8::1]:8888;\n",
                b"timeout 500; min_connections 2; max_connections 9; proxy 192.0.2.3:443;"]
    if target == "relay_frames":
        answer = struct.pack("<IIQ", middleproxy_messages.RPC_PROXY_ANS, 8, 1) + bytes(32)
        close_ext = struct.pack("<IQ", middleproxy_messages.RPC_CLOSE_EXT, 1)
        return [middleproxy.encode_frame(0, answer) + middleproxy.encode_frame(1, middleproxy_messages.encode_ping(7)),
                middleproxy.PADDING_WORD * 3 + middleproxy.encode_frame(0, close_ext)]
    if target == "tls_records":
        return [b"\x06" + faketls.CHANGE_CIPHER_SPEC + faketls.wrap_records(blob[:300]) for blob in raw[:2]]
    return raw
