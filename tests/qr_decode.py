"""Read a terminal QR drawing back the way a camera would: render it to an image and let zbarimg decode it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def decode_terminal_qr(drawing: str, scratch: Path) -> str:
    """Turn the half-block drawing back into an image (printed blocks are light) and let zbarimg read it."""
    rows: list[list[bool]] = []
    for line in drawing.splitlines():
        rows.append([c in "█▀" for c in line])
        rows.append([c in "█▄" for c in line])
    scale = 6
    pixels = [[not light for light in row for _ in range(scale)] for row in rows for _ in range(scale)]
    image = scratch / "terminal-qr.pbm"
    body = "\n".join(" ".join("1" if dark else "0" for dark in row) for row in pixels)
    image.write_text(f"P1\n{len(pixels[0])} {len(pixels)}\n{body}\n")
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(image)],
                             capture_output=True, text=True, timeout=30, check=True)
    return decoded.stdout.rstrip("\n")
