"""The optional native AES-256-CTR library (`native/`, Rust, no dependencies), called through ctypes.

Why: the upload takes two CTR passes over every byte, and a fake-TLS upload also gathers record payloads
first. The library does the gather and both passes in one walk over the bytes, with VAES (two AES blocks
per instruction, AVX2), and starts a stream in ~4 µs where a `cryptography` context with a fresh key takes
~15-25 µs. pip builds it where cargo is present; without it, or on a CPU without AES-NI/AVX2/VAES,
`open_library` gives None and the backend keeps OpenSSL (docs/engine.md). Nothing loads on import: the
engine calls `open_library` once at start-up."""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path
from typing import Final

from mtproxy.protocol.faketls import RECORD_HEADER_SIZE, Layout

BLOCK: Final = 16
STATE_SIZE: Final = 288  # what this module expects of native/src/lib.rs (checked when it loads)
MODULE_NAME: Final = "_native_aes"  # pyproject.toml builds it as mtproxy.crypto._native_aes


def open_library(directory: Path | None = None) -> ctypes.CDLL | None:
    """The built library in `directory` (this package's by default), or None: not built here, a stale
    build, or a CPU that lacks what it needs."""
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
        except (OSError, AttributeError):  # not loadable here, or a stale build without these functions
            continue
        if lib.mtp_available() == 1 and lib.mtp_state_size() == STATE_SIZE:
            return lib
    return None


def address(buf: bytearray | memoryview) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """The address of a writable buffer, and the ctypes view that pins it (keep it until the call is done)."""
    view = (ctypes.c_char * len(buf)).from_buffer(buf)
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

    def update(self, data: bytes | bytearray | memoryview, /) -> bytes:
        """The handshake's path (headers, the bytes that came with an init): one call, one copy out."""
        n = len(data)
        out = ctypes.create_string_buffer(n)
        # ctypes passes the address of a bytes object's own storage (read only here); other buffers are copied
        self._lib.mtp_ctr_xor(self._addr, data if type(data) is bytes else bytes(data), out, n)
        return out.raw

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
