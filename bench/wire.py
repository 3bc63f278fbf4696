"""Bench wire format: the in-band command a bench client sends to the fake DC, and client-side sessions
(raw obfuscated2 for the baselines, classic/dd/ee through a proxy) built on the sans-IO protocol core."""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from mtproxy.crypto.backend import Backend, openssl_ctr
from mtproxy.protocol import client, faketls, obfs2
from mtproxy.protocol.cipher import Keystream
from mtproxy.protocol.secret import Secret, SecretKind

# The command follows the 64-byte init inside the client→DC stream, so the fake DC can only read it when
# the proxy re-encrypted the stream correctly: a wrong key anywhere shows up as a bad command.
MAGIC = b"BNCH"
COMMAND = struct.Struct("<4sB3xQ")
COMMAND_SIZE = COMMAND.size  # 16
MODE_SINK, MODE_SOURCE, MODE_ECHO = 1, 2, 3
MODES = {"sink": MODE_SINK, "source": MODE_SOURCE, "echo": MODE_ECHO}
READY = b"BNCHRDY!"  # first 8 bytes of the DC's reply stream: the whole path is up
DONE = b"BNCHDONE"  # sink mode: all `count` bytes arrived
GO = b"G"  # source mode: start sending
DC_ID = 2
# Real clients send application-data records of at most this many payload bytes (protocol.md).
CLIENT_RECORD_PAYLOAD = 2878


def command(mode: int, count: int = 0) -> bytes:
    return COMMAND.pack(MAGIC, mode, count)


def parse_command(plain: bytes) -> tuple[int, int] | None:
    magic, mode, count = COMMAND.unpack(plain)
    if magic != MAGIC or mode not in (MODE_SINK, MODE_SOURCE, MODE_ECHO):
        return None
    return mode, count


@dataclass
class ClientSession:
    """One client's view of a connection: what to send first, whether a server flight must be read
    before the init, and the two ciphers. `framed` means payload travels in fake-TLS records."""

    first: bytes  # sent on connect: the init (raw/classic/dd) or the ClientHello (ee)
    after_flight: bytes  # ee: sent once the server flight arrived (CCS + the record carrying the init)
    flight_expected: bool
    encrypt: Keystream  # client→DC, positioned after the init
    decrypt: Keystream  # DC→client, at position 0
    framed: bool
    hello_random: bytes = b""


# The load side's AES, whatever the engine under test runs: OpenSSL's CTR through `cryptography` (it opens no
# library), so that comparing two engines measures the engines alone.
LOAD_SIDE_AES = openssl_ctr(why="the load side stays on OpenSSL's AES-CTR: comparing engines measures the engines")


def client_session(kind: str, secret: Secret | None, first_payload: bytes,
                   aes: Backend = LOAD_SIDE_AES) -> ClientSession:
    """Build the opening bytes for `kind` ("raw" = a DC client without secret, used for the direct path
    and the plain relay; "classic", "dd", "ee" = through an MTProxy). `first_payload` (plain) is sent
    encrypted right after the init, in the same segment, as real clients do."""
    if kind == "raw":
        built = obfs2.build_init(os.urandom, obfs2.TAG_INTERMEDIATE, DC_ID, None, aes)
        wire = built.wire + built.to_acceptor.update(first_payload)
        return ClientSession(wire, b"", False, built.to_acceptor, built.from_acceptor.new_cipher(), False)
    if secret is None:
        raise ValueError(f"mode {kind} needs a secret")
    tag = obfs2.TAG_ABRIDGED if kind == "classic" else obfs2.TAG_PADDED
    built = obfs2.build_init(os.urandom, tag, DC_ID, secret.key, aes)
    opening = built.wire + built.to_acceptor.update(first_payload)
    if kind in ("classic", "dd"):
        return ClientSession(opening, b"", False, built.to_acceptor, built.from_acceptor.new_cipher(), False)
    assert secret.domain is not None
    hello = client.build_client_hello(secret.key, secret.domain, os.urandom, time.time())
    hello_random = hello[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + 32]
    after = faketls.CHANGE_CIPHER_SPEC + faketls.wrap_records(opening, CLIENT_RECORD_PAYLOAD)
    return ClientSession(hello, after, True, built.to_acceptor, built.from_acceptor.new_cipher(), True, hello_random)


def secret_for(kind: str, key: bytes, domain: str) -> Secret | None:
    if kind == "raw":
        return None
    sk = {"classic": SecretKind.CLASSIC, "dd": SecretKind.PADDED, "ee": SecretKind.FAKE_TLS}[kind]
    return Secret(key, sk, domain if sk is SecretKind.FAKE_TLS else None)


class RecordStripper:
    """Counts and extracts fake-TLS payload from the server's record stream without copying bulk data
    (the load client only needs to count downloaded payload bytes and decrypt small replies)."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0

    def feed(self, view: memoryview, sink: bytearray | None) -> int:
        """Return the payload byte count in `view`; append the payload to `sink` when given."""
        pos, end, payload = 0, len(view), 0
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if sink is not None:
                    sink += view[pos : pos + take]
                payload += take
                pos += take
                self._remaining -= take
                continue
            if not self._header and end - pos >= faketls.RECORD_HEADER_SIZE:  # a whole header: no copies
                if view[pos] != 0x17 or view[pos + 1] != 3 or view[pos + 2] != 3:
                    raise ValueError("server sent a non-application-data record after the flight")
                self._remaining = view[pos + 3] << 8 | view[pos + 4]
                pos += faketls.RECORD_HEADER_SIZE
                continue
            need = faketls.RECORD_HEADER_SIZE - len(self._header)
            self._header += view[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._header) == faketls.RECORD_HEADER_SIZE:
                if self._header[:3] != faketls.APPLICATION_DATA:
                    raise ValueError("server sent a non-application-data record after the flight")
                self._remaining = int.from_bytes(self._header[3:5], "big")
                self._header.clear()
        return payload


# ---- the relay path (middle proxy): MTProto transport packets instead of a byte stream ------------------------
# Through a middle proxy the engine forwards whole packets of the client's transport (docs/engine.md "Middle
# proxy and ad tag"), so a client there speaks framed packets: encrypted-looking (first 8 bytes, the auth key
# id, non-zero), a multiple of 4 bytes, 28 bytes at least, 1,044,480 at most. The first packet carries the
# command, then the size of the packets the DC is to send (source mode), then filler or the handshake's ping.
# The relay forwards each packet to the fake DC as one intermediate frame, so the DC sees `len + packet`.
MIN_PACKET = 28
MAX_PACKET = 1_044_480
PACKET_SIZE_FIELD = struct.Struct("<I")
COMMAND_PACKET_FILL = bytes(8)  # after command and size when nothing else rides along: 28 bytes in all
DONE_PACKET = DONE + bytes(MIN_PACKET - len(DONE))
GO_PACKET = GO * 8 + bytes(MIN_PACKET - 8)
_PACKET_BODY = b"\x01" * 8 + os.urandom(MAX_PACKET - 8)


def transport_tag(kind: str) -> bytes:
    """The MTProto transport a client of `kind` speaks (as client_session's init announces it)."""
    return obfs2.TAG_ABRIDGED if kind == "classic" else obfs2.TAG_PADDED if kind in ("dd", "ee") else (
        obfs2.TAG_INTERMEDIATE)


def frame_header(tag: bytes, length: int) -> bytes:
    """The transport's length prefix of one packet (no quick-ack bit, no padding)."""
    if tag == obfs2.TAG_ABRIDGED:
        words = length // 4
        return bytes([words]) if words < 0x7F else b"\x7f" + words.to_bytes(3, "little")
    return length.to_bytes(4, "little")


def command_packet(mode: int, count: int, packet_size: int, extra: bytes = COMMAND_PACKET_FILL) -> bytes:
    """The first packet on the relay path. `count`: sink mode, the bytes the DC will see after this packet
    (`relay_wire_bytes`); source mode, the payload bytes to send in packets of `packet_size`."""
    if len(extra) % 4 or len(extra) < len(COMMAND_PACKET_FILL):
        raise ValueError("extra bytes of a command packet: a multiple of 4, 8 at least")
    return command(mode, count) + PACKET_SIZE_FIELD.pack(packet_size) + extra


def ready_answer(packet: bytes) -> bytes:
    """The fake DC's answer to a command packet: READY, then the packet after the command's magic and mode
    (its count, packet size and extra bytes: a handshake's ping comes back with it), so as long as the packet."""
    return READY + packet[8:]


def packet_sizes(total: int, size: int) -> list[int]:
    """`total` payload bytes as packets of `size`; the last one rounded up to a valid packet."""
    if not MIN_PACKET <= size <= MAX_PACKET or size % 4:
        raise ValueError(f"packet size {size}: a multiple of 4 in {MIN_PACKET}..{MAX_PACKET}")
    full, rest = divmod(total, size)
    return [size] * full + ([max(MIN_PACKET, -(-rest // 4) * 4)] if rest else [])


def relay_wire_bytes(sizes: list[int]) -> int:
    """What the DC receives for these packets from the relay: each in an intermediate frame."""
    return sum(4 + s for s in sizes)


def packet_body(size: int) -> memoryview:
    """Bulk packet content: a non-zero auth key id, then random bytes (shared, never checked)."""
    return memoryview(_PACKET_BODY)[:size]


class PacketReader:
    """Splits the decrypted stream a client receives into its transport's packets. Bulk packets are only
    counted (`keep=False`), never copied; a padded transport's answer may carry padding (kept with it)."""

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._head = bytearray()
        self._body: bytearray | None = None
        self._remaining = 0

    def _head_size(self) -> int:
        if self._tag != obfs2.TAG_ABRIDGED:
            return 4
        return 1 if not self._head or self._head[0] & 0x7F != 0x7F else 4

    def feed(self, data: bytes | memoryview, keep: bool) -> tuple[list[bytes], int]:
        """The packets completed by `data` (when `keep`) and how many were completed."""
        view = memoryview(data)
        packets: list[bytes] = []
        done, pos, end = 0, 0, len(view)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if self._body is not None:
                    self._body += view[pos : pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    done += 1
                    if self._body is not None:
                        packets.append(bytes(self._body))
                    self._body = None
                continue
            need = self._head_size() - len(self._head)
            self._head += view[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._head) < self._head_size():
                continue
            if self._tag == obfs2.TAG_ABRIDGED:
                words = self._head[0] & 0x7F if len(self._head) == 1 else int.from_bytes(self._head[1:4], "little")
                length = words * 4
            else:
                length = int.from_bytes(self._head, "little") & 0x7FFFFFFF
            self._head.clear()
            if not MIN_PACKET <= length <= MAX_PACKET + 16:
                raise ValueError(f"server sent a packet of {length} bytes")
            self._remaining = length
            self._body = bytearray() if keep else None
        return packets, done
