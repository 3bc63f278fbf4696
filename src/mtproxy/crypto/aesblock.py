"""AES-256 of whole blocks (ECB) under a new key each time: the inner loop of the secret scan, and the fake
certificate's keystream where the native library is not there.

Finding which secret a client holds means trying every key on the init's last block. Building a cipher
context in `cryptography` costs ~11 µs; re-keying one OpenSSL EVP context costs ~3 µs, which makes a scan of
10,000 secrets about four times cheaper (what a prober can make the proxy spend). The fake-TLS flight's
certificate stand-in, 2.5 KB of CTR keystream under a fresh key, is the same re-keying over its counter
blocks: ~1.7 µs, where a `cryptography` context takes ~8 and drawing the bytes from the kernel ~4.5. We call
the same libcrypto the Python runtime links (opened once at start-up, `open_libcrypto`); without it,
`cryptography`."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY = 32
MAX_BLOCKS = 1 << 20  # bytes of blocks in one call: far above a certificate's 16 KB, far below C int's range


class EvpBlock:
    """A reusable EVP AES-256-ECB context without padding (ECB of one block is the raw cipher)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_new.argtypes = []
        lib.EVP_aes_256_ecb.restype = ctypes.c_void_p
        lib.EVP_aes_256_ecb.argtypes = []
        lib.EVP_EncryptInit_ex.restype = ctypes.c_int
        lib.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_EncryptUpdate.restype = ctypes.c_int
        lib.EVP_EncryptUpdate.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_int
        ]
        lib.EVP_CIPHER_CTX_set_padding.restype = ctypes.c_int
        lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
        ctx = lib.EVP_CIPHER_CTX_new()
        cipher = lib.EVP_aes_256_ecb()
        if not ctx or not cipher or lib.EVP_EncryptInit_ex(ctx, cipher, None, None, None) != 1:
            raise OSError("libcrypto refused an AES-256-ECB context")
        lib.EVP_CIPHER_CTX_set_padding(ctx, 0)
        self._lib = lib
        self._ctx = ctx
        self._out = ctypes.create_string_buffer(2 * BLOCK)
        self._out_len = ctypes.c_int()
        # ctypes lets go of the GIL inside libcrypto: one thread at a time on the shared context
        self._lock = threading.Lock()

    def encrypt(self, key: bytes, block: bytes) -> bytes:
        """AES-256 of each 16-byte block of `block` (one, in the secret scan) under `key`."""
        size = len(block)
        if len(key) != KEY or not size or size % BLOCK or size > MAX_BLOCKS:
            raise ValueError(f"AES-256 takes a 32-byte key and 1 to {MAX_BLOCKS // BLOCK} whole 16-byte blocks")
        lib = self._lib
        with self._lock:
            out = self._out if size == BLOCK else ctypes.create_string_buffer(size)
            if lib.EVP_EncryptInit_ex(self._ctx, None, None, key, None) != 1:
                raise OSError("libcrypto refused the key")
            if lib.EVP_EncryptUpdate(self._ctx, out, ctypes.byref(self._out_len), block, size) != 1:
                raise OSError("libcrypto failed to encrypt a block")
            return out.raw[:size]


BlockEncrypt = Callable[[bytes, bytes], bytes]  # (32-byte key, whole 16-byte blocks) -> AES-256 of each (ECB)


def cryptography_encrypt_block(key: bytes, block: bytes) -> bytes:
    """AES-256 of whole blocks through `cryptography`: needs no library of its own, builds a context per key."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)


def open_libcrypto() -> ctypes.CDLL | None:
    """The libcrypto the Python runtime links, or None. Start-up only: finding it runs ldconfig."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def block_encryptor(libcrypto: ctypes.CDLL | None) -> BlockEncrypt:
    """A re-keyed EVP context of `libcrypto` where it loads and agrees with `cryptography`, else
    `cryptography_encrypt_block`."""
    if libcrypto is None:
        return cryptography_encrypt_block
    try:
        evp = EvpBlock(libcrypto)
        probe_key, probe_block = bytes(range(KEY)), bytes(range(BLOCK))
        if evp.encrypt(probe_key, probe_block) == cryptography_encrypt_block(probe_key, probe_block):
            return evp.encrypt
    except (OSError, AttributeError):
        pass
    return cryptography_encrypt_block
