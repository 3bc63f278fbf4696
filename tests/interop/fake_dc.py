"""A fake Telegram DC for interop tests: obfuscated2 (DC side), MTProto framing, req_pq_multi → resPQ.

It answers the first step of MTProto key exchange the way a real DC does and records when the client
moves on to req_DH_params. A client that sends req_DH_params has accepted our resPQ (nonce echo, pq it
could factor, an RSA key it knows), so the bytes went through the proxy intact in both directions.

DC side of obfuscated2 (shared/protocol.md): the peer (the proxy, or a client talking to a DC directly)
sends a 64-byte init; the keys are the raw init bytes, not hashed with any secret.
Runs in its own threads with blocking sockets, so it works beside asyncio (Telethon) or subprocesses.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .wire_ref import accept_init

REQ_PQ = 0x60469778
REQ_PQ_MULTI = 0xBE7E8EF1
RES_PQ = 0x05162463
REQ_DH_PARAMS = 0xD712E4BE
VECTOR = 0x1CB5C415

PQ = 0x17ED48941A08F981  # = 1229739323 * 1402015859, the example of core.telegram.org/mtproto/auth_key
# Fingerprints of the RSA keys the clients ship with (computed from TDLib's PublicRsaKeySharedMain.cpp
# and from telethon.crypto.rsa): a client picks the first one it knows.
TDLIB_FINGERPRINTS = (0xD09D1D85DE64FD85, 0xB25898DF208D2603)  # production key, test-DC key
TELETHON_FINGERPRINTS = (0x0BC35F3509F7B7A5, 0x15AE5FA8B5529542, 0xAEAE98E13CD7F94F, 0x5A181B2235057D98)
FINGERPRINTS = TDLIB_FINGERPRINTS + TELETHON_FINGERPRINTS

IDLE_SECONDS = 15.0
MAX_CONNECTION_SECONDS = 30.0
MAX_FRAME = 1 << 20


@dataclass
class DcEvent:
    """Something the fake DC saw; `kind` is accepted, init, req_pq_multi, req_DH_params, bad-init, unknown,
    closed."""

    kind: str
    connection: int
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class FakeDC:
    """Listens on 127.0.0.1 (port 0 by default) and serves each connection in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.events: list[DcEvent] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_id = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-dc", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FakeDC:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=2)
        for thread in self._threads:
            thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> FakeDC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kinds(self) -> list[str]:
        with self._cond:
            return [event.kind for event in self.events]

    def wait_for(self, kind: str, timeout: float) -> DcEvent | None:
        """The first event of `kind`, waiting at most `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.kind == kind:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _record(self, kind: str, connection: int, **detail: Any) -> None:
        with self._cond:
            self.events.append(DcEvent(kind, connection, detail))
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._next_id += 1
            self._record("accepted", self._next_id, address=peer[0])  # who dialled: the proxy, or its upstream
            thread = threading.Thread(target=self._serve, args=(conn, self._next_id), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            conn.settimeout(0.2)
            try:
                _Connection(self, conn, number).run()
            except (OSError, ValueError, IndexError) as exc:
                self._record("error", number, error=repr(exc))
        self._record("closed", number)


class _Connection:
    """One peer: read the init, then frames; answer req_pq(_multi), note req_DH_params."""

    def __init__(self, dc: FakeDC, conn: socket.socket, number: int) -> None:
        self._dc = dc
        self._conn = conn
        self._number = number
        self._buffer = bytearray()
        self._started = time.monotonic()
        self._last_data = self._started

    def _fill(self, size: int) -> bool:
        """Read until the buffer holds `size` bytes; False on EOF, stop, idle or age limits."""
        while len(self._buffer) < size:
            now = time.monotonic()
            if (
                self._dc._stop.is_set()
                or now - self._last_data > IDLE_SECONDS
                or now - self._started > MAX_CONNECTION_SECONDS
            ):
                return False
            try:
                chunk = self._conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return False
            self._last_data = now
            self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def run(self) -> None:
        if not self._fill(64):
            return
        accepted = accept_init(self._take(64), None)
        if accepted.transport is None:
            self._dc._record("bad-init", self._number)
            return
        self._dc._record("init", self._number, transport=accepted.transport, dc_id=accepted.dc_id)
        self._decrypt = accepted.decrypt
        self._encrypt = accepted.encrypt
        self._transport = accepted.transport
        # Bytes after the init are already buffered encrypted; decrypt as we go, in stream order.
        self._plain = bytearray(self._decrypt.update(bytes(self._buffer)))
        self._buffer.clear()
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            self._handle(frame)

    def _need_plain(self, size: int) -> bool:
        while len(self._plain) < size:
            if not self._fill(1):
                return False
            self._plain += self._decrypt.update(self._take(len(self._buffer)))
        return True

    def _next_frame(self) -> bytes | None:
        if self._transport == "abridged":
            if not self._need_plain(1):
                return None
            words = self._plain[0] & 0x7F  # the high bit asks for a quick ack
            header = 1
            if words == 0x7F:
                if not self._need_plain(4):
                    return None
                words = int.from_bytes(self._plain[1:4], "little")
                header = 4
            length = words * 4
        else:
            if not self._need_plain(4):
                return None
            length = int.from_bytes(self._plain[:4], "little") & 0x7FFFFFFF
            header = 4
        if length > MAX_FRAME:
            raise ValueError("frame too large")
        if not self._need_plain(header + length):
            return None
        frame = bytes(self._plain[header : header + length])
        del self._plain[: header + length]
        return frame

    def _handle(self, frame: bytes) -> None:
        # Unencrypted MTProto message: auth_key_id = 0 (8), msg_id (8), length (4), body.
        if len(frame) < 24 or frame[:8] != bytes(8):
            self._dc._record("unknown", self._number, length=len(frame))
            return
        body_len = int.from_bytes(frame[16:20], "little")
        body = frame[20 : 20 + body_len]
        constructor = int.from_bytes(body[:4], "little")
        if constructor in (REQ_PQ_MULTI, REQ_PQ) and len(body) >= 20:
            nonce = body[4:20]
            self._dc._record("req_pq_multi", self._number)
            self._send(_res_pq(nonce, os.urandom(16)))
        elif constructor == REQ_DH_PARAMS and len(body) >= 4 + 32 + 8 + 8 + 8:
            # nonce, server_nonce, p (bytes), q (bytes), public_key_fingerprint (long), encrypted_data
            p, offset = _tl_bytes(body, 36)
            q, offset = _tl_bytes(body, offset)
            if len(body) < offset + 8:
                self._dc._record("unknown", self._number, constructor=hex(constructor))
                return
            fingerprint = struct.unpack_from("<Q", body, offset)[0]
            self._dc._record(
                "req_DH_params",
                self._number,
                p=int.from_bytes(p, "big"),
                q=int.from_bytes(q, "big"),
                fingerprint=fingerprint,
            )
        else:
            self._dc._record("unknown", self._number, constructor=hex(constructor))

    def _send(self, message: bytes) -> None:
        if self._transport == "abridged":
            words = len(message) // 4
            header = bytes([words]) if words < 0x7F else b"\x7f" + words.to_bytes(3, "little")
            frame = header + message
        elif self._transport == "intermediate":
            frame = len(message).to_bytes(4, "little") + message
        else:
            padding = os.urandom(int.from_bytes(os.urandom(1), "big") % 16)
            frame = (len(message) + len(padding)).to_bytes(4, "little") + message + padding
        self._conn.sendall(self._encrypt.update(frame))


def _tl_bytes(body: bytes, offset: int) -> tuple[bytes, int]:
    """A short TL `bytes` value (length byte < 254) at `offset`, and the offset after its padding."""
    length = body[offset]
    end = offset + 1 + length
    return body[offset + 1 : end], end + (-end % 4)


def _server_msg_id() -> int:
    # A server's msg_id is about unix time * 2^32 and ≡ 1 (mod 4) for a response.
    return (int(time.time() * (1 << 32)) & ~3) | 1


def _res_pq(nonce: bytes, server_nonce: bytes) -> bytes:
    """resPQ nonce:int128 server_nonce:int128 pq:bytes server_public_key_fingerprints:Vector<long>,
    wrapped as an unencrypted message."""
    pq = PQ.to_bytes(8, "big")
    pq_tl = bytes([len(pq)]) + pq + bytes(3)  # 1 + 8 bytes padded to a multiple of 4
    fingerprints = struct.pack("<II", VECTOR, len(FINGERPRINTS)) + b"".join(
        struct.pack("<Q", fp) for fp in FINGERPRINTS
    )
    body = struct.pack("<I", RES_PQ) + nonce + server_nonce + pq_tl + fingerprints
    return bytes(8) + struct.pack("<QI", _server_msg_id(), len(body)) + body
