"""AES-256-CTR streams on OpenSSL, moving to OpenSSL's AES-GCM code once a stream carries bulk where that is
faster, and the relay's upload step over any backend's streams.

Why the GCM keystream: the relay runs two CTR passes over every uploaded byte. OpenSSL encrypts CTR with AES-NI
(about 0.13 s/GB on this project's reference machine) but GCM with VAES where the CPU has it (about 0.07 s/GB,
GHASH included). GCM's keystream started at the right IV (`gcm.py`) is byte for byte the CTR keystream until
the low 32 bits of the counter wrap (where CTR carries into the upper 96 bits); there the stream starts a new
context. The tag is never asked for; GHASH is wasted work that VPCLMULQDQ makes cheap. Moving a stream to GCM
costs ~35 µs (the IV ~19 µs, a context with a fresh key ~15 µs), so a stream switches only once it has carried
`ACCELERATE_AFTER` bytes. Which streams may switch is the backend's choice (`backend.py`), made at start-up.

On a CPU without VAES the native library's streams move the other way for the same reason (`HandoffCtr`):
they start in the library, which is cheap, and move to OpenSSL's CTR once they carry bulk."""

from __future__ import annotations

import ctypes
from typing import ClassVar, Final, cast

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from mtproxy.protocol import faketls
from mtproxy.protocol.cipher import Keystream

from .gcm import LOW32, MakeIv
from .native import STATE_COUNTER, STATE_USED, NativeCtr, gather_twice

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


class HandoffCtr(NativeCtr):
    """A stream begun in the native library that moves to OpenSSL's CTR once it has carried `move_after`
    bytes: what a CPU without VAES runs. There the library starts a stream in ~1 µs where an OpenSSL context
    with a fresh key takes 15-25 µs (a handshake starts four), but OpenSSL's AES-NI CTR moves bulk faster
    than the library's AES-NI walk (BENCHMARKS.md). The library's state holds what the move needs: AES-256's
    first two round keys are the key itself, then the next counter block and how much of the last block's
    keystream is used. A moved stream is no longer native: the upload's one-walk gather does not take it
    (`transform_upload` checks the exact type), and a DC link deciphers behind it in Python."""

    __slots__ = ("_budget", "_openssl")
    move_after: ClassVar[int] = ACCELERATE_AFTER

    def __init__(self, lib: ctypes.CDLL, key: bytes, iv: bytes) -> None:
        super().__init__(lib, key, iv)
        self._budget = self.move_after
        self._openssl: CipherContext | None = None

    @classmethod
    def _unstarted(cls, lib: ctypes.CDLL) -> NativeCtr:
        stream = cast(HandoffCtr, super()._unstarted(lib))
        stream._budget = cls.move_after
        stream._openssl = None
        return stream

    @property
    def moved(self) -> bool:
        return self._openssl is not None

    def update(self, data: bytes | bytearray | memoryview, /) -> bytes:
        openssl = self._openssl_for(len(data))
        return super().update(data) if openssl is None else openssl.update(data)

    def update_into(self, data: bytes | bytearray | memoryview, buf: bytearray | memoryview, /) -> int:
        openssl = self._openssl_for(len(data))
        return super().update_into(data, buf) if openssl is None else openssl.update_into(data, buf)

    def _openssl_for(self, n: int) -> CipherContext | None:
        """None when the next `n` bytes stay in the library (counted), else the OpenSSL context, started now
        if this call is the first past `move_after`."""
        openssl = self._openssl
        if openssl is None:
            if n <= self._budget:
                self._budget -= n
                return None
            openssl = self._move()
        return openssl

    def _move(self) -> CipherContext:
        """An OpenSSL context at exactly this stream's position (before this call's bytes)."""
        state = self._state
        counter = int.from_bytes(state[STATE_COUNTER : STATE_COUNTER + BLOCK], "little")
        used = int.from_bytes(state[STATE_USED : STATE_USED + 8], "little")
        skip = 0
        if used < BLOCK:  # mid-block: from the block the unused keystream came from
            counter = (counter - 1) % _COUNTER_SPACE
            skip = used
        context = Cipher(algorithms.AES(bytes(state[:32])), modes.CTR(counter.to_bytes(BLOCK, "big"))).encryptor()
        if skip:
            context.update(bytes(skip))
        self._openssl = context
        return context

    @classmethod
    def link(cls, lib: ctypes.CDLL, reverse: bytes, tag: bytes, dc_id: int, drawn: bytes, from_client: Keystream,
             pending: bytes) -> tuple[bytes, NativeCtr] | None:
        if not (pending and isinstance(from_client, HandoffCtr) and from_client.moved):
            return super().link(lib, reverse, tag, dc_id, drawn, from_client, pending)
        linked = super().link(lib, reverse, tag, dc_id, drawn, from_client, b"")  # its state is stale
        if linked is None:
            return None
        first, stream = linked
        return first + stream.update(from_client.update(pending)), stream


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
