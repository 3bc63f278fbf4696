"""AES-256-CTR streams on OpenSSL, moving to OpenSSL's AES-GCM code once a stream carries bulk where that is
faster, and the relay's upload step over any backend's streams.

Why the GCM keystream: the relay runs two CTR passes over every uploaded byte. OpenSSL encrypts CTR with AES-NI
(about 0.13 s/GB on this project's reference machine) but GCM with VAES where the CPU has it (about 0.07 s/GB,
GHASH included). GCM's keystream started at the right IV (`gcm.py`) is byte for byte the CTR keystream until
the low 32 bits of the counter wrap (where CTR carries into the upper 96 bits); there the stream starts a new
context. The tag is never asked for; GHASH is wasted work that VPCLMULQDQ makes cheap. Moving a stream to GCM
costs ~35 µs (the IV ~19 µs, a context with a fresh key ~15 µs), so a stream switches only once it has carried
`ACCELERATE_AFTER` bytes. Which streams may switch is the backend's choice (`backend.py`), made at start-up."""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mtproxy.protocol import faketls
from mtproxy.protocol.cipher import Keystream

from .gcm import LOW32, MakeIv
from .native import NativeCtr, gather_twice

BLOCK: Final = 16
ACCELERATE_AFTER: Final = 64 * 1024  # bytes a stream carries before it moves to the GCM keystream
# A GCM context may encrypt at most 2^36 - 32 bytes (NIST SP 800-38D); well inside that, a new context.
CONTEXT_BYTES: Final = 1 << 35
NEVER: Final = 1 << 62

_COUNTER_SPACE: Final = 1 << 128


class CtrStream:
    """AES-256-CTR from `iv` (a 128-bit big-endian counter, as OpenSSL counts), usable like a cipher
    context. Plain CTR until `accelerate_after` bytes, then the GCM keystream if `gcm_iv` is given (the
    backend gives it where GCM is faster), else plain CTR for good."""

    __slots__ = ("_budget", "_context", "_context_bytes", "_end", "_gcm_iv", "_iv", "_key", "on_gcm")

    def __init__(self, key: bytes, iv: bytes, *, gcm_iv: MakeIv | None = None,
                 accelerate_after: int = ACCELERATE_AFTER, context_bytes: int = CONTEXT_BYTES) -> None:
        if len(key) != 32 or len(iv) != BLOCK:
            raise ValueError("AES-256-CTR takes a 32-byte key and a 16-byte counter block")
        if accelerate_after < 0 or not 2 * BLOCK <= context_bytes <= CONTEXT_BYTES:
            raise ValueError(f"accelerate_after must be >= 0 and context_bytes within 32..{CONTEXT_BYTES}")
        self._key = key
        self._gcm_iv = gcm_iv
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
        if self._gcm_iv is not None:
            try:
                iv = self._gcm_iv(self._key, counter.to_bytes(BLOCK, "big"))
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
            to_wrap = ((1 << 32) - (counter & LOW32)) * BLOCK - skip  # bytes until the low 32 bits wrap
            self._budget = min(to_wrap, self._context_bytes - skip)
        self._end = position + self._budget


def transform_upload(from_client: Keystream, to_dc: Keystream, buf: bytearray, layout: faketls.Layout) -> int:
    """The relay's upload step: decrypt the client's payload, found in `buf` where `layout` says, and
    re-encrypt it for the DC. It ends at buf[:n]; returns n. Two native streams take the library's one walk."""
    if type(from_client) is NativeCtr and type(to_dc) is NativeCtr:
        return gather_twice(from_client, to_dc, buf, layout)
    payload = faketls.gather(memoryview(buf), layout)
    n = len(payload)
    from_client.update_into(payload, buf)
    to_dc.update_into(memoryview(buf)[:n], buf)
    return n
