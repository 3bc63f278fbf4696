"""AES-256-CTR streams: the native library where it runs, else OpenSSL's CTR, switching to OpenSSL's AES-GCM
code once a stream carries bulk where that is faster.

`new_stream` gives the chosen kind; `transform_upload` is the relay's upload step. The native library
(`native.py`) is preferred wherever it is built and passes its self-test: it gathers fake-TLS payloads
and runs both upload passes in one walk, and starts a stream for ~1 µs. The rest of this module is the
OpenSSL path.

Why the GCM keystream: the relay runs two CTR passes over every uploaded byte. OpenSSL encrypts CTR with AES-NI (about
0.13 s/GB on this project's reference machine) but GCM with VAES where the CPU has it (about 0.07 s/GB,
GHASH included). GCM encryption *is* CTR encryption, except that only the low 32 bits of the counter
block count (inc32), and its first counter block is inc32(J0), where for a 16-byte IV

    J0 = GHASH_H(IV, L) = IV·H² ⊕ L·H        (H = AES_K(0¹²⁸), L = the IV's length block)

in GF(2¹²⁸). So IV = (J0 ⊕ L·H) / H² starts a GCM keystream at any counter block we choose, and until
the low 32 bits wrap it is byte for byte the CTR keystream. At the wrap (where CTR carries into the upper
96 bits) the stream starts a new context. The tag is never asked for; GHASH is wasted work that
VPCLMULQDQ makes cheap. Once per process the arithmetic is checked against the running OpenSSL and both
modes are timed, so a CPU without VAES (or an OpenSSL that differs) keeps plain CTR (docs/protocol.md).
Moving a stream to GCM costs ~35 µs (the IV ~19 µs, a context with a fresh key ~15 µs), so a stream
switches only once it has carried `ACCELERATE_AFTER` bytes."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import aesblock, faketls
from .native import LIBRARY as NATIVE_LIBRARY
from .native import NativeCtr, gather_twice

BLOCK: Final = 16
ACCELERATE_AFTER: Final = 64 * 1024  # bytes a stream carries before it moves to the GCM keystream
# A GCM context may encrypt at most 2^36 - 32 bytes (NIST SP 800-38D); well inside that, a new context.
CONTEXT_BYTES: Final = 1 << 35
NEVER: Final = 1 << 62

_LOW32: Final = 0xFFFFFFFF
_COUNTER_SPACE: Final = 1 << 128
KEYSTREAMS: Final = {  # the names `keystream_choice` gives, and what each is, for the start-up log line
    "native": "the native library (VAES)",
    "gcm": "OpenSSL's AES-GCM keystream",
    "ctr": "OpenSSL's AES-CTR",
}
# names one of KEYSTREAMS instead of choosing; its self-test still runs, and plain CTR takes over on a failure
_ENV = "MTPROXY_KEYSTREAM"


# ---------------------------------------------------------------------------------------------- GF(2^128)

# GCM's field, in the ordinary polynomial basis (bit i of an int = coefficient of x^i); a GCM block maps to
# it by reversing its 128 bits (GCM puts x^0 in the most significant bit of the first byte).
_POLY: Final = (1 << 128) | 0x87  # x^128 + x^7 + x^2 + x + 1
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
# GHASH's last block for a 16-byte IV, 0^64 || [128]_64, is the monomial x^120 in this basis
_LENGTH_DEGREE: Final = 120


def block_to_poly(block: bytes) -> int:
    return int.from_bytes(block.translate(_BIT_REVERSED), "little")


def poly_to_block(value: int) -> bytes:
    return value.to_bytes(BLOCK, "little").translate(_BIT_REVERSED)


def _reduce(value: int) -> int:
    """value mod the field polynomial, folding 128 high bits at a time (x^128 = x^7 + x^2 + x + 1)."""
    while high := value >> 128:
        value = (value & _MASK128) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return value


_MASK128: Final = (1 << 128) - 1
_SPREAD = [int("".join(f"0{bit}" for bit in f"{i:08b}"), 2).to_bytes(2, "little") for i in range(256)]


def gf_square(a: int) -> int:
    """a² in GF(2^128): squaring a binary polynomial spreads its bits apart (x^i -> x^2i)."""
    return _reduce(int.from_bytes(b"".join(map(_SPREAD.__getitem__, a.to_bytes(BLOCK, "little"))), "little"))


def gf_div_python(a: int, b: int) -> int:
    """a / b in GF(2^128), b ≠ 0: binary extended Euclid carrying `a` instead of 1 (about 20 µs)."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^128)")
    u, v, g1, g2 = _reduce(b), _POLY, a, 0
    u_size, v_size = u.bit_length(), v.bit_length()
    while u != 1:
        shift = u_size - v_size
        if shift < 0:
            u, v, g1, g2, u_size, v_size = v, u, g2, g1, v_size, u_size
            shift = -shift
        u ^= v << shift
        g1 ^= g2 << shift
        u_size = u.bit_length()
    return _reduce(g1)


class _Gf2mDivider:
    """a / b through libcrypto's BN_GF2m_mod_div (about 5 µs): the same libcrypto as `aesblock`."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp = ctypes.c_void_p
        lib.BN_new.restype = vp
        lib.BN_new.argtypes = []
        lib.BN_CTX_new.restype = vp
        lib.BN_CTX_new.argtypes = []
        lib.BN_bin2bn.restype = vp
        lib.BN_bin2bn.argtypes = [ctypes.c_char_p, ctypes.c_int, vp]
        lib.BN_bn2binpad.restype = ctypes.c_int
        lib.BN_bn2binpad.argtypes = [vp, ctypes.c_char_p, ctypes.c_int]
        lib.BN_GF2m_mod_div.restype = ctypes.c_int
        lib.BN_GF2m_mod_div.argtypes = [vp, vp, vp, vp, vp]
        self._lib = lib
        self._ctx = lib.BN_CTX_new()
        self._numbers = [lib.BN_new() for _ in range(4)]
        if not self._ctx or not all(self._numbers):
            raise OSError("libcrypto could not allocate big numbers")
        self._out = ctypes.create_string_buffer(BLOCK)
        self._lock = threading.Lock()  # one set of scratch numbers
        if not lib.BN_bin2bn(_POLY.to_bytes(17, "big"), 17, self._numbers[0]):
            raise OSError("libcrypto refused the field polynomial")

    def __call__(self, a: int, b: int) -> int:
        if b == 0:
            raise ZeroDivisionError("division by zero in GF(2^128)")
        lib = self._lib
        poly, dividend, divisor, quotient = self._numbers
        with self._lock:
            lib.BN_bin2bn(a.to_bytes(BLOCK, "big"), BLOCK, dividend)
            lib.BN_bin2bn(b.to_bytes(BLOCK, "big"), BLOCK, divisor)
            if lib.BN_GF2m_mod_div(quotient, dividend, divisor, poly, self._ctx) != 1:
                raise OSError("libcrypto failed to divide in GF(2^128)")
            lib.BN_bn2binpad(quotient, self._out, BLOCK)
            return int.from_bytes(self._out.raw, "big")


def _load_divider() -> _Gf2mDivider | None:
    if aesblock.libcrypto is None:
        return None
    try:
        divider = _Gf2mDivider(aesblock.libcrypto)
        a, b = block_to_poly(bytes(range(16))), block_to_poly(bytes(range(100, 116)))
        return divider if divider(a, b) == gf_div_python(a, b) else None
    except (OSError, AttributeError):  # no libcrypto, or one built without GF(2^m)
        return None


_divider = _load_divider()
gf_div = _divider if _divider is not None else gf_div_python


def gcm_iv_for(key: bytes, counter_block: bytes) -> bytes:
    """The 16-byte GCM IV whose first keystream block is AES_K(counter_block)."""
    h = block_to_poly(aesblock.encrypt_block(key, bytes(BLOCK)))
    counter = int.from_bytes(counter_block, "big")
    j0 = (counter & ~_LOW32) | ((counter - 1) & _LOW32)  # inc32(J0) = counter
    target = block_to_poly(j0.to_bytes(BLOCK, "big")) ^ _reduce(h << _LENGTH_DEGREE)  # J0 ⊕ L·H
    return poly_to_block(gf_div(target, gf_square(h)))


# ----------------------------------------------------------------------------------- which one is faster

_GCM_WINS_BELOW: Final = 0.8  # GCM's time over CTR's on the same bytes; it must clearly win
_choice: tuple[str, str] | None = None


def keystream_choice() -> tuple[str, str]:
    """(one of KEYSTREAMS, why), decided once per process (a forked worker inherits it): the native library
    if it is here and passes its self-test, else the GCM keystream if it passes its own and is clearly
    faster than CTR on this machine, else plain CTR. `MTPROXY_KEYSTREAM` names one instead; a name that
    fails its self-test still gets plain CTR."""
    global _choice
    if _choice is None:
        forced = os.environ.get(_ENV, "")
        if forced and forced not in KEYSTREAMS:
            raise ValueError(f"{_ENV} must be one of {', '.join(KEYSTREAMS)}, not {forced!r}")
        _choice = _choose(forced)
    return _choice


def _choose(forced: str) -> tuple[str, str]:
    if forced == "ctr":
        return "ctr", f"{_ENV}=ctr"
    failures: list[str] = []
    for name in [forced] if forced else ["native", "gcm"]:
        try:
            (_native_self_test if name == "native" else _self_test)()
        except Exception as exc:  # whatever the library, OpenSSL or cryptography refuses, plain CTR works
            failures.append(f"{name}: {exc}")
            continue
        if forced:
            return name, f"{_ENV}={name}"
        if name == "gcm":
            ratio = _gcm_time_over_ctr()
            if ratio >= _GCM_WINS_BELOW:
                failures.append(f"gcm: measured, it takes {ratio:.2f}x the time of CTR")
                continue
            return name, f"measured: GCM takes {ratio:.2f}x the time of CTR"
        return name, "the native library passed its self-test"
    return "ctr", "; ".join(failures)


def decide(name: str, why: str) -> None:
    """Fix the choice instead of making it (the load tool keeps its own side on plain CTR, so that
    comparing two engines measures the engines alone)."""
    global _choice
    if name not in KEYSTREAMS:
        raise ValueError(f"unknown keystream {name!r}")
    _choice = (name, why)


def _native_self_test() -> None:
    """The native library against OpenSSL's CTR: a stream crossing the 64-bit and the 128-bit counter
    carries in uneven pieces, both passes at once, and a gathered run of records."""
    if NATIVE_LIBRARY is None:
        raise RuntimeError("not built here, or this CPU lacks AES-NI, AVX2 or VAES")
    key, other = bytes(range(32)), bytes(range(32, 64))
    for top in (b"\x01" * 8, b"\xff" * 8):
        iv = top + b"\xff" * 7 + b"\xf0"  # 16 blocks before the low 64 bits carry (or all 128 do)
        data = bytes(range(256)) * 4 + b"tail"
        expected = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)
        stream, got = NativeCtr(key, iv), bytearray()
        for piece in (data[:7], data[7:300], data[300:301], data[301:]):
            got += stream.update(piece)
        if got != expected:
            raise ValueError("its keystream is not AES-CTR's")
        twice = Cipher(algorithms.AES(other), modes.CTR(iv)).encryptor().update(expected)
        buf = bytearray(data)
        transform_upload(NativeCtr(key, iv), NativeCtr(other, iv), buf, faketls.plain_layout(len(buf)))
        if buf != twice:
            raise ValueError("its two-pass walk is not two AES-CTR passes")
        buf = bytearray(faketls.wrap_records(data, 100))
        layout = faketls.TlsRecordReader().layout(memoryview(buf))
        n = transform_upload(NativeCtr(key, iv), NativeCtr(other, iv), buf, layout)
        if not layout[4] or buf[:n] != twice:
            raise ValueError("its record gather is not two AES-CTR passes over the payload")


def _self_test() -> None:
    """The IV arithmetic against the running OpenSSL: GCM started at a counter block just before the
    32-bit wrap must give AES_K of that block and the next."""
    key = bytes(range(32))
    counter = bytes(range(100, 112)) + b"\xff\xff\xff\xff"
    gcm = Cipher(algorithms.AES(key), modes.GCM(gcm_iv_for(key, counter))).encryptor()
    following = counter[:12] + bytes(4)  # inc32: the low word wraps, the rest stays
    if gcm.update(bytes(2 * BLOCK)) != aesblock.encrypt_block(key, counter) + aesblock.encrypt_block(key, following):
        raise ValueError("GCM's keystream is not AES-CTR's")


def _gcm_time_over_ctr() -> float:
    """GCM's best time over CTR's on the same 1 MiB, in alternating rounds (a CPU still raising its clock
    must not favour whichever runs second)."""
    key, data = bytes(32), bytearray(1 << 20)
    out = bytearray(len(data) + BLOCK)
    contexts = [Cipher(algorithms.AES(key), mode).encryptor() for mode in (modes.CTR(bytes(BLOCK)),
                                                                            modes.GCM(bytes(BLOCK)))]
    best = [float("inf"), float("inf")]
    for _ in range(4):
        for i, context in enumerate(contexts):
            start = time.perf_counter()
            context.update_into(data, out)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[1] / best[0]


# ------------------------------------------------------------------------------------------------ stream


class CtrStream:
    """AES-256-CTR from `iv` (a 128-bit big-endian counter, as OpenSSL counts), usable like a cipher
    context. Plain CTR until `accelerate_after` bytes, then the GCM keystream where that is faster."""

    __slots__ = ("_budget", "_context", "_context_bytes", "_end", "_iv", "_key", "on_gcm")

    def __init__(self, key: bytes, iv: bytes, *, accelerate_after: int = ACCELERATE_AFTER,
                 context_bytes: int = CONTEXT_BYTES) -> None:
        if len(key) != 32 or len(iv) != BLOCK:
            raise ValueError("AES-256-CTR takes a 32-byte key and a 16-byte counter block")
        if accelerate_after < 0 or not 2 * BLOCK <= context_bytes <= CONTEXT_BYTES:
            raise ValueError(f"accelerate_after must be >= 0 and context_bytes within 32..{CONTEXT_BYTES}")
        self._key = key
        self._iv = int.from_bytes(iv, "big")
        self._context_bytes = context_bytes
        self._context = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        self._end = accelerate_after  # stream position where the current context must stop
        self._budget = accelerate_after  # bytes left before `_end` (the hot path's one check)
        self.on_gcm = False

    def update(self, data: bytes | bytearray | memoryview, /) -> bytes:
        n = len(data)
        if n <= self._budget:
            self._budget -= n
            return self._context.update(data)
        out = bytearray(n + BLOCK)
        return bytes(out[: self.update_into(data, out)])

    def update_into(self, data: bytes | bytearray | memoryview, buf: bytearray | memoryview, /) -> int:
        n = len(data)
        if n <= self._budget:
            self._budget -= n
            return self._context.update_into(data, buf)
        return self._boundary(memoryview(data), memoryview(buf))

    @property
    def position(self) -> int:
        """Bytes of keystream used so far."""
        return self._end - self._budget

    def _boundary(self, data: memoryview, buf: memoryview) -> int:
        """This call crosses the end of the current context: finish it, start the next, go on."""
        done = 0
        n = len(data)
        while done < n:
            take = min(self._budget, n - done)
            if take:
                self._context.update_into(data[done : done + take], buf[done:])
                self._budget -= take
                done += take
            if done < n:
                self._next_context()
        return n

    def _next_context(self) -> None:
        position = self.position
        blocks, skip = divmod(position, BLOCK)
        counter = (self._iv + blocks) % _COUNTER_SPACE
        iv = None
        if self.on_gcm or keystream_choice()[0] == "gcm":  # a stream on GCM stays there: its CTR context is gone
            try:
                iv = gcm_iv_for(self._key, counter.to_bytes(BLOCK, "big"))
            except ZeroDivisionError:  # H = AES_K(0) is 0 (odds 2^-128, never after a first GCM context)
                pass
        if iv is None:  # plain CTR carries on, for good
            self._budget = NEVER
        else:
            context = Cipher(algorithms.AES(self._key), modes.GCM(iv)).encryptor()
            if skip:
                context.update(bytes(skip))
            self._context = context
            self.on_gcm = True
            to_wrap = ((1 << 32) - (counter & _LOW32)) * BLOCK - skip  # bytes until the low 32 bits wrap
            self._budget = min(to_wrap, self._context_bytes - skip)
        self._end = position + self._budget


Keystream = CtrStream | NativeCtr


def new_stream(key: bytes, iv: bytes) -> Keystream:
    """An AES-256-CTR stream of the kind `keystream_choice` picked."""
    if keystream_choice()[0] == "native":
        return NativeCtr(key, iv)
    return CtrStream(key, iv)


def transform_upload(from_client: Keystream, to_dc: Keystream, buf: bytearray, layout: faketls.Layout) -> int:
    """The relay's upload step: decrypt the client's payload, found in `buf` where `layout` says, and
    re-encrypt it for the DC. It ends at buf[:n]; returns n."""
    if isinstance(from_client, NativeCtr) and isinstance(to_dc, NativeCtr):
        return gather_twice(from_client, to_dc, buf, layout)
    payload = faketls.gather(memoryview(buf), layout)
    n = len(payload)
    from_client.update_into(payload, buf)
    to_dc.update_into(memoryview(buf)[:n], buf)
    return n
