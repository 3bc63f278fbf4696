"""MTProto transport framing inside the obfuscated stream: abridged, intermediate, padded intermediate.

Direct mode relays the stream without parsing frames; this serves tests, fake DCs and the load tool."""

from __future__ import annotations

from .errors import ProtocolError
from .obfs2 import TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED

MAX_FRAME = 16 * 1024 * 1024


def encode_frame(tag: bytes, payload: bytes, padding: bytes = b"") -> bytes:
    """One frame as an MTProto client or server writes it under `tag`."""
    if tag == TAG_ABRIDGED:
        if len(payload) % 4:
            raise ProtocolError("abridged frames carry a multiple of 4 bytes")
        words = len(payload) // 4
        header = bytes([words]) if words < 0x7F else b"\x7f" + words.to_bytes(3, "little")
        return header + payload
    if tag == TAG_INTERMEDIATE:
        return len(payload).to_bytes(4, "little") + payload
    if tag == TAG_PADDED:
        if len(padding) > 15:
            raise ProtocolError("padded intermediate adds at most 15 bytes")
        return (len(payload) + len(padding)).to_bytes(4, "little") + payload + padding
    raise ProtocolError("unknown framing tag")


class FrameDecoder:
    """Splits a decrypted stream into frames; the padded tag's padding is returned with the payload,
    since only the MTProto layer above knows the real length.

    `strict` applies the official proxy's checks on a client's stream (MTProxy net-tcp-rpc-ext-server.c
    `tcp_rpcs_compact_parse_execute`): an empty frame, a length not a multiple of 4 without padding, an
    abridged length in the 4-byte form below 0x7f words, or one over `max_frame` is a ProtocolError; the
    lenient default serves tests and fake DCs."""

    def __init__(self, tag: bytes, *, strict: bool = False, max_frame: int = MAX_FRAME) -> None:
        if tag not in (TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED):
            raise ProtocolError("unknown framing tag")
        self._tag = tag
        self._strict = strict
        self._max = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        return [payload for payload, _ in self.feed_packets(data)]

    def feed_packets(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The frames completed by `data`, each with whether the client asked for a quick ack of it (the
        high bit of the length: abridged's first byte, intermediate's 32-bit word)."""
        self._buffer += data
        frames: list[tuple[bytes, bool]] = []
        while True:
            parsed = self._next_frame()
            if parsed is None:
                return frames
            frames.append(parsed)

    def _next_frame(self) -> tuple[bytes, bool] | None:
        buf = self._buffer
        if self._tag == TAG_ABRIDGED:
            if not buf:
                return None
            quick_ack = bool(buf[0] & 0x80)
            if buf[0] & 0x7F < 0x7F:
                header, length = 1, (buf[0] & 0x7F) * 4
            elif len(buf) < 4:
                return None
            else:
                header, length = 4, int.from_bytes(buf[1:4], "little") * 4
                if self._strict and length < 0x7F * 4:
                    raise ProtocolError("abridged length in the long form below 0x7f words")
        else:
            if len(buf) < 4:
                return None
            word = int.from_bytes(buf[:4], "little")
            header, length, quick_ack = 4, word & 0x7FFFFFFF, bool(word & 0x80000000)
        if self._strict and (not length or (length % 4 and self._tag != TAG_PADDED)):
            raise ProtocolError(f"bad frame length {length}")
        if length > self._max:
            raise ProtocolError(f"frame of {length} bytes, over the {self._max}-byte limit")
        if len(buf) < header + length:
            return None
        frame = bytes(buf[header : header + length])
        del buf[: header + length]
        return frame, quick_ack
