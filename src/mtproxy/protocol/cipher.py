"""What the protocol core needs of AES, as types: a CTR keystream and one raw block. The caller passes an
implementation in (`mtproxy.crypto.backend` builds one at start-up); the core never picks one itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Bytes = bytes | bytearray | memoryview


class Keystream(Protocol):
    """AES-256-CTR positioned somewhere in its stream; the same object encrypts and decrypts."""

    def update(self, data: Bytes, /) -> bytes: ...

    def update_into(self, data: Bytes, buf: bytearray | memoryview, /) -> int: ...


class Aes(Protocol):
    """The AES the core runs on: `new_stream(key, iv)` starts a CTR stream at counter block `iv`;
    `encrypt_block(key, block)` is AES-256 of one block (the secret scan's inner loop)."""

    @property
    def new_stream(self) -> Callable[[bytes, bytes], Keystream]: ...

    @property
    def encrypt_block(self) -> Callable[[bytes, bytes], bytes]: ...
