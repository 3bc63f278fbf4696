"""Mutated real client flights and random bytes at the live engine: each must end at the mask, byte for byte.

The parser-level targets prove the protocol core never raises; this drives the whole runtime path
(listener, connection, handshake, mask relay) with the same kind of input, split into TCP segments at
random points, and checks what a prober would see: the mask site receives exactly what was sent, the
engine logs one rejection per connection and never a traceback, and a real client still gets through
afterwards.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.testkit.process import ProxyProcess, free_port

HELLOS = Path(__file__).resolve().parents[1] / "data" / "tdlib_hellos"
INDEX = json.loads((HELLOS / "index.json").read_text())
CASES = 120
SEED = int(os.environ.get("MTPROXY_FUZZ_SEED", "0")) or random.randrange(1 << 30)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        [name for _, name in socket.if_nameindex()] != ["lo"], reason="runs only in a private network namespace"
    ),
]


class MaskSink:
    """A mask site that only listens: it records each connection's bytes until the peer closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytearray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self.received.append(buffer)
            thread = threading.Thread(target=self._read, args=(conn, buffer), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        conn.settimeout(0.2)
        deadline = time.monotonic() + 20
        with conn:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    buffer += chunk

    def total(self) -> bytes:
        with self._lock:
            return b"".join(bytes(b) for b in self.received)

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(2)
        for thread in self._threads:
            thread.join(2)
        self.sock.close()


def garbage(rng: random.Random) -> Iterator[bytes]:
    """Inputs a prober or a broken client could send, each complete enough for the proxy to judge it
    without waiting for more bytes."""
    flights = [(HELLOS / c["file"]).read_bytes() for c in INDEX["captures"]]
    for n in range(CASES):
        base = flights[n % len(flights)]
        tls = base.startswith(b"\x16\x03\x01")
        kind = n % 4
        if kind == 0 or (kind == 1 and not tls):  # a real flight with a few bytes flipped
            data = bytearray(base)
            # A classic/dd init made with the served key would authenticate unless its key material
            # (bytes 8..56) is hit; a fake-TLS flight fails on its old timestamp or HMAC wherever it is hit.
            # The record length (bytes 3..5) stays: a longer one would leave the proxy rightly waiting.
            span = (0, len(data)) if tls else (8, 56)
            flips = rng.randint(1, 8)
            while flips > 0 or data == base:  # two flips of one bit cancel out: insist on a change
                pos = rng.randrange(*span)
                if not 3 <= pos < 5 or not tls:
                    data[pos] ^= 1 << rng.randrange(8)
                    flips -= 1
            yield bytes(data)
        elif kind == 1:  # a real hello as captured: too old now (tls-skew) or made with another key
            yield base
        elif kind == 2:  # random bytes, at least an init's worth
            yield rng.randbytes(rng.randint(64, 3000))
        else:  # a TLS or HTTP-looking prefix on random bytes (a TLS record complete: 512 bytes or more)
            prefix = rng.choice([b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xef", b"\xee" * 4])
            yield prefix + rng.randbytes(rng.randint(512, 2000))


def send_split(port: int, data: bytes, rng: random.Random, sink: MaskSink, before: int) -> bool:
    """Send `data` in random segments, then wait until the mask has it all; True when it did."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 700)
            conn.sendall(data[pos : pos + step])
            pos += step
            if rng.random() < 0.2:
                time.sleep(0.002)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if len(sink.total()) >= before + len(data):
                return True
            time.sleep(0.005)
    return False


def test_engine_masks_garbage_byte_for_byte(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sink = MaskSink()
    port = free_port()
    # The capture key with its domain, so mutated TDLib hellos get as far as the HMAC and time checks.
    ee = "ee" + INDEX["key"] + INDEX["domain"].encode("ascii").hex()
    args = [
        "--listen", f"127.0.0.1:{port}",
        "--dc-override", "*=127.0.0.1:9",  # never reached: nothing here authenticates
        "--mask", f"127.0.0.1:{sink.port}",
        "--cert-size", "2000",
        "--max-connections-per-ip", "1000",
        "-p", "0",
        "--state-file", str(tmp_path / "state.json"),
        "-S", ee, "-S", os.urandom(16).hex(),
    ]  # fmt: skip
    proxy = ProxyProcess(args, tmp_path / "proxy.log")
    try:
        proxy.wait_ready(timeout=20)
        sent: list[bytes] = []
        for data in garbage(rng):
            before = len(sink.total())
            assert send_split(port, data, rng, sink, before), (
                f"seed {SEED}: input {len(sent)} ({len(data)} bytes) did not reach the mask\n{proxy.log[-2000:]}"
            )
            sent.append(data)
        # Every connection's bytes arrived at the mask exactly, in order, nothing added or lost.
        deadline = time.monotonic() + 5
        while len(sink.received) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [bytes(b) for b in sink.received] == sent, f"seed {SEED}"
        assert proxy.proc.poll() is None, proxy.log[-2000:]
        log = proxy.log
        assert "Traceback" not in log, log[-4000:]
        assert log.count("rejected handshake from 127.0.0.1 port ") == len(sent), log[-4000:]
    finally:
        proxy.stop()
        sink.stop()
