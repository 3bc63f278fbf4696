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
    since only the MTProto layer above knows the real length."""

    def __init__(self, tag: bytes) -> None:
        if tag not in (TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED):
            raise ProtocolError("unknown framing tag")
        self._tag = tag
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            parsed = self._next_frame()
            if parsed is None:
                return frames
            frames.append(parsed)

    def _next_frame(self) -> bytes | None:
        buf = self._buffer
        if self._tag == TAG_ABRIDGED:
            if not buf:
                return None
            if buf[0] & 0x7F < 0x7F:
                header, length = 1, (buf[0] & 0x7F) * 4  # high bit asks for a quick ack
            elif len(buf) < 4:
                return None
            else:
                header, length = 4, int.from_bytes(buf[1:4], "little") * 4
        else:
            if len(buf) < 4:
                return None
            header, length = 4, int.from_bytes(buf[:4], "little") & 0x7FFFFFFF
        if length > MAX_FRAME:
            raise ProtocolError("frame larger than 16 MiB")
        if len(buf) < header + length:
            return None
        frame = bytes(buf[header : header + length])
        del buf[: header + length]
        return frame
