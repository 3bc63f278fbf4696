"""Obfuscated2: the 64-byte init, key derivation, and the proxy's own header towards a DC (fast mode)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .cipher import Aes, Keystream
from .errors import ProtocolError

INIT_SIZE = 64
KEY_SIZE = 32
IV_SIZE = 16
TAG_ABRIDGED = b"\xef\xef\xef\xef"
TAG_INTERMEDIATE = b"\xee\xee\xee\xee"
TAG_PADDED = b"\xdd\xdd\xdd\xdd"
KNOWN_TAGS = frozenset({TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED})

_MATERIAL = slice(8, 56)  # key (32) + IV (16) as the initiator lays them out
_TAG = slice(56, 60)
_DC = slice(60, 62)

# First words a client (or the proxy towards a DC) must never send: they would read as another protocol.
_FORBIDDEN_STARTS = frozenset(
    {b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", TAG_PADDED, TAG_INTERMEDIATE}
)
_MAX_INIT_ATTEMPTS = 1000

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class StreamKeys:
    """AES-256-CTR key and initial counter of one direction; a new context starts at stream position 0."""

    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    aes: Aes = field(repr=False, compare=False)  # the AES the streams run on; `dc_link` uses it for the DC leg

    def __repr__(self) -> str:
        return "StreamKeys(<hidden>)"

    def new_cipher(self) -> Keystream:
        # CTR is symmetric: the same stream encrypts and decrypts.
        return self.aes.new_stream(self.key, self.iv)


def derive_keys(init: bytes, secret_key: bytes | None, aes: Aes) -> tuple[StreamKeys, StreamKeys]:
    """Keys of (initiator→acceptor, acceptor→initiator), for streams on `aes`. With a secret the keys are
    hashed with it; without one (the proxy→DC leg) the raw 32 bytes are the keys."""
    if len(init) < INIT_SIZE:
        raise ProtocolError("an obfuscated2 init is 64 bytes")
    material = bytes(init[_MATERIAL])
    reverse = material[::-1]
    forward_key, forward_iv = material[:KEY_SIZE], material[KEY_SIZE:]
    backward_key, backward_iv = reverse[:KEY_SIZE], reverse[KEY_SIZE:]
    if secret_key is not None:
        forward_key = hashlib.sha256(forward_key + secret_key).digest()
        backward_key = hashlib.sha256(backward_key + secret_key).digest()
    return StreamKeys(forward_key, forward_iv, aes), StreamKeys(backward_key, backward_iv, aes)


def start_streams(init: bytes, secret_key: bytes | None, aes: Aes) -> tuple[bytes, Keystream, StreamKeys]:
    """The 64 init bytes through the forward stream (decrypted for an acceptor, encrypted for an initiator:
    CTR runs the same both ways), that stream positioned after them, and the reverse direction's keys. One
    call into `aes.start_init` where the backend has it; `derive_keys` and a stream otherwise, same result."""
    start = aes.start_init
    if start is not None:
        out, stream, reverse = start(init, secret_key)
        return out, stream, StreamKeys(reverse[:KEY_SIZE], reverse[KEY_SIZE:], aes)
    forward, backward = derive_keys(init, secret_key, aes)
    stream = forward.new_cipher()
    return stream.update(init), stream, backward


def is_acceptable_init(init: bytes | bytearray) -> bool:
    """The rule every initiator applies before sending: nothing that looks like another protocol."""
    return init[0] != 0xEF and bytes(init[:4]) not in _FORBIDDEN_STARTS and any(init[4:8])


def is_forbidden_start(head: bytes) -> bool:
    """True when the first bytes received already rule out an obfuscated2 init (needs 1 to 4 bytes)."""
    return (len(head) >= 1 and head[0] == 0xEF) or (len(head) >= 4 and head[:4] in _FORBIDDEN_STARTS)


_TAG_BLOCK = 3  # stream bytes 48..64: the tag and DC id sit in this CTR block
_KNOWN_TAG_INTS = frozenset(int.from_bytes(tag, "little") for tag in KNOWN_TAGS)


class InitTrial:
    """Tries keys on one received init by decrypting only the block that holds the tag: the secret scan's
    inner loop, one SHA-256 and one AES block per key (`decode_init` then builds the full stream)."""

    def __init__(self, init: bytes, aes: Aes) -> None:
        if len(init) < INIT_SIZE:
            raise ProtocolError("an obfuscated2 init is 64 bytes")
        self._key_material = bytes(init[8:40])
        counter = (int.from_bytes(init[40:56], "big") + _TAG_BLOCK) % (1 << 128)
        self._counter_block = counter.to_bytes(IV_SIZE, "big")
        self._tag_cipher = int.from_bytes(init[56:60], "little")
        self._encrypt_block = aes.encrypt_block  # bound once: the scan calls it once per secret

    def matches(self, secret_key: bytes) -> bool:
        key = hashlib.sha256(self._key_material + secret_key).digest()
        keystream = self._encrypt_block(key, self._counter_block)
        return (self._tag_cipher ^ int.from_bytes(keystream[8:12], "little")) in _KNOWN_TAG_INTS


@dataclass
class DecodedInit:
    """An init that decrypted to a known framing tag under some key."""

    tag: bytes
    dc_id: int
    from_initiator: Keystream  # positioned after the 64 init bytes
    to_initiator: StreamKeys


def decode_init(init: bytes, secret_key: bytes | None, aes: Aes) -> DecodedInit | None:
    """Try one key on a received init; None when the decrypted tag is not one we know."""
    if len(init) < INIT_SIZE:
        raise ProtocolError("an obfuscated2 init is 64 bytes")
    plain, cipher, backward = start_streams(bytes(init[:INIT_SIZE]), secret_key, aes)
    tag = plain[_TAG]
    if tag not in KNOWN_TAGS:
        return None
    dc_id = int.from_bytes(plain[_DC], "little", signed=True)
    return DecodedInit(tag, dc_id, cipher, backward)


@dataclass
class BuiltInit:
    """An init as an initiator sends it, with both stream keys."""

    wire: bytes
    to_acceptor: Keystream  # positioned after the 64 init bytes
    from_acceptor: StreamKeys


def build_init(
    random_bytes: RandomBytes,
    tag: bytes,
    dc_id: int,
    secret_key: bytes | None,
    aes: Aes,
    material: bytes | None = None,
) -> BuiltInit:
    """Make an init as a client (with a secret) or the proxy towards a DC (without), its streams on `aes`.
    `material` fixes bytes 8..56, which fast mode uses to choose the DC's reply keys."""
    if tag not in KNOWN_TAGS:
        raise ProtocolError("unknown framing tag")
    if material is not None and len(material) != KEY_SIZE + IV_SIZE:
        raise ProtocolError("init key material is 48 bytes")
    for _ in range(_MAX_INIT_ATTEMPTS):
        init = bytearray(random_bytes(INIT_SIZE))
        if material is not None:
            init[_MATERIAL] = material
        init[_TAG] = tag
        init[_DC] = dc_id.to_bytes(2, "little", signed=True)
        if is_acceptable_init(init):
            break
    else:
        raise ProtocolError("the random source gave no acceptable init")
    encrypted, cipher, backward = start_streams(bytes(init), secret_key, aes)
    return BuiltInit(bytes(init[:56]) + encrypted[56:], cipher, backward)


class DcLink:
    """The proxy's header towards a DC, the client's first bytes behind it, and the ciphers of that leg."""

    __slots__ = ("first", "from_dc", "to_client", "to_dc")

    def __init__(self, first: bytes, to_dc: Keystream, from_dc: Keystream | None, to_client: Keystream | None) -> None:
        self.first = first  # the header, then the bytes that came behind the client's init, enciphered for the DC
        self.to_dc = to_dc  # positioned after `first`
        self.from_dc = from_dc  # None in fast mode: the DC already encrypts for the client
        self.to_client = to_client  # None in fast mode

    @property
    def header(self) -> bytes:
        return self.first[:INIT_SIZE]


def dc_link(
    to_client_keys: StreamKeys, tag: bytes, dc_id: int, random_bytes: RandomBytes, *, fast: bool,
    from_client: Keystream | None = None, pending: bytes = b"",
) -> DcLink:
    """Build the DC header, with `pending` (what came behind the client's init, still enciphered: deciphered
    with `from_client`) re-enciphered for the DC behind it: one send. In fast mode the DC's reply stream is
    exactly the stream the client expects: the DC takes its reply keys from the reversed bytes 8..56, so we
    place the client's reply key and IV there reversed, and the proxy forwards DC bytes untouched (one call
    into `aes.dc_link` where the backend has it). The DC leg runs on the same AES as the client's keys."""
    if tag not in KNOWN_TAGS:
        raise ProtocolError("unknown framing tag")
    if pending and from_client is None:
        raise ValueError("the bytes behind an init need the client's stream")
    aes = to_client_keys.aes
    reverse = to_client_keys.key + to_client_keys.iv
    link = aes.dc_link if fast else None
    if link is not None:
        for _ in range(_MAX_INIT_ATTEMPTS):
            made = link(reverse, tag, dc_id, random_bytes(INIT_SIZE), from_client, pending)  # type: ignore[arg-type]
            if made is not None:
                return DcLink(made[0], made[1], None, None)
        raise ProtocolError("the random source gave no acceptable init")
    built = build_init(random_bytes, tag, dc_id, None, aes, reverse[::-1] if fast else None)
    first = built.wire
    if pending:
        assert from_client is not None
        first += built.to_acceptor.update(from_client.update(pending))
    if fast:
        return DcLink(first, built.to_acceptor, None, None)
    return DcLink(first, built.to_acceptor, built.from_acceptor.new_cipher(), to_client_keys.new_cipher())
