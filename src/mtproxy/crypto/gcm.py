"""GCM's keystream started at any CTR counter block: the GF(2^128) arithmetic behind the IV.

GCM encryption *is* CTR encryption, except that only the low 32 bits of the counter block count (inc32),
and its first counter block is inc32(J0), where for a 16-byte IV

    J0 = GHASH_H(IV, L) = IV·H² ⊕ L·H        (H = AES_K(0¹²⁸), L = the IV's length block)

in GF(2¹²⁸). So IV = (J0 ⊕ L·H) / H² starts a GCM keystream at any counter block we choose, and until
the low 32 bits wrap it is byte for byte the CTR keystream (docs/protocol.md). `ctr.CtrStream` uses it."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .aesblock import BlockEncrypt

BLOCK: Final = 16
LOW32: Final = 0xFFFFFFFF
Divide = Callable[[int, int], int]  # a / b in GF(2^128)
MakeIv = Callable[[bytes, bytes], bytes]  # (key, counter block) -> the GCM IV starting there


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


class Gf2mDivider:
    """a / b through libcrypto's BN_GF2m_mod_div (about 5 µs): the libcrypto the backend opened."""

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


def load_divider(libcrypto: ctypes.CDLL | None) -> Divide:
    """libcrypto's division where it has GF(2^m) and agrees with ours, else the pure-Python one."""
    if libcrypto is None:
        return gf_div_python
    try:
        divider = Gf2mDivider(libcrypto)
        a, b = block_to_poly(bytes(range(16))), block_to_poly(bytes(range(100, 116)))
        return divider if divider(a, b) == gf_div_python(a, b) else gf_div_python
    except (OSError, AttributeError):  # a libcrypto built without GF(2^m)
        return gf_div_python


@dataclass(frozen=True)
class GcmIv:
    """Makes the 16-byte GCM IV whose first keystream block is AES_K(counter_block), with the block cipher
    and the field division the backend loaded."""

    encrypt_block: BlockEncrypt
    divide: Divide = gf_div_python

    def __call__(self, key: bytes, counter_block: bytes) -> bytes:
        return gcm_iv_for(key, counter_block, self.encrypt_block, self.divide)


def gcm_iv_for(key: bytes, counter_block: bytes, encrypt_block: BlockEncrypt, divide: Divide) -> bytes:
    """The 16-byte GCM IV whose first keystream block is AES_K(counter_block)."""
    h = block_to_poly(encrypt_block(key, bytes(BLOCK)))
    counter = int.from_bytes(counter_block, "big")
    j0 = (counter & ~LOW32) | ((counter - 1) & LOW32)  # inc32(J0) = counter
    target = block_to_poly(j0.to_bytes(BLOCK, "big")) ^ _reduce(h << _LENGTH_DEGREE)  # J0 ⊕ L·H
    return poly_to_block(divide(target, gf_square(h)))
