"""One AES-256 block under a new key each time: the inner loop of the secret scan.

Finding which secret a client holds means trying every key on the init's last block. Building a cipher
context in `cryptography` costs ~11 µs; re-keying one OpenSSL EVP context costs ~3 µs, which makes a scan of
10,000 secrets about four times cheaper (what a prober can make the proxy spend). We call the same
libcrypto the Python runtime links (opened once at start-up, `open_libcrypto`); without it, `cryptography`."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY = 32


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
        if len(key) != KEY or len(block) != BLOCK:
            raise ValueError("AES-256 takes a 32-byte key and a 16-byte block")
        lib = self._lib
        with self._lock:
            if lib.EVP_EncryptInit_ex(self._ctx, None, None, key, None) != 1:
                raise OSError("libcrypto refused the key")
            if lib.EVP_EncryptUpdate(self._ctx, self._out, ctypes.byref(self._out_len), block, BLOCK) != 1:
                raise OSError("libcrypto failed to encrypt a block")
            return self._out.raw[:BLOCK]


BlockEncrypt = Callable[[bytes, bytes], bytes]  # (32-byte key, 16-byte block) -> AES-256 of the block


def cryptography_encrypt_block(key: bytes, block: bytes) -> bytes:
    """AES-256 of one block through `cryptography`: needs no library of its own, builds a context per key."""
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
