"""QR codes for links: PNG exactly 300x300 px, SVG, and text for the terminal, all encoded by segno."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import segno

PNG_SIZE = 300
QUIET_ZONE = 4  # modules; the QR standard's minimum
TERMINAL_BORDER = 2  # modules


def _encode(text: str) -> segno.QRCode:
    # Error level M is what phone cameras read well; boost_error raises it for free when space allows.
    return segno.make_qr(text, error="m", boost_error=True)


def png_bytes(text: str, size: int = PNG_SIZE) -> bytes:
    """An 8-bit greyscale PNG of `size`x`size` px with whole-pixel modules, centred in the quiet zone.

    segno only scales by whole factors, so the largest factor that fits is used and the rest of the
    `size` is given to the (then wider) quiet zone; the modules stay crisp for any camera or decoder.
    """
    matrix = [list(row) for row in _encode(text).matrix]
    modules = len(matrix)
    scale = max(1, size // (modules + 2 * QUIET_ZONE))
    offset = (size - modules * scale) // 2
    rows = []
    white = b"\xff" * size
    for y in range(size):
        my = (y - offset) // scale if y >= offset else -1
        if not 0 <= my < modules:
            rows.append(b"\x00" + white)
            continue
        line = bytearray(white)
        for mx, dark in enumerate(matrix[my]):
            if dark:
                start = offset + mx * scale
                line[start : start + scale] = b"\x00" * scale
        rows.append(b"\x00" + bytes(line))  # filter type 0 per row
    return _png(size, size, b"".join(rows))


def _png(width: int, height: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(
        b"IEND", b""
    )


def svg_bytes(text: str) -> bytes:
    out = io.BytesIO()
    _encode(text).save(out, kind="svg", scale=8, border=QUIET_ZONE, xmldecl=True)
    return out.getvalue()


def terminal_text(text: str) -> str:
    """The code drawn by segno's compact terminal writer: half-block characters, two modules per cell.

    segno prints the light modules as blocks, so the code scans on the light-on-dark terminals servers
    usually have. A two-module border (half the standard quiet zone) keeps it small on screen; the
    terminal's dark background around it completes the quiet zone.
    """
    out = io.StringIO()
    _encode(text).terminal(out, border=TERMINAL_BORDER, compact=True)
    return out.getvalue()


def write_qr_files(text: str, png_path: Path, svg_path: Path | None = None) -> None:
    """Write the PNG (and SVG) atomically with mode 0600: the code carries the secret."""
    from .store import write_atomic

    write_atomic(png_path, png_bytes(text))
    if svg_path is not None:
        write_atomic(svg_path, svg_bytes(text))
