"""Capture what a real TDLib client sends to an MTProxy (obfuscated2 inits, fake-TLS ClientHellos) as test data.

Run from the repository root, inside a network namespace (TDLib tries to reach Telegram by itself):

    unshare -n -- bash -c 'ip link set lo up && python3 -m tests.interop.capture_tdlib_hellos'

A plain TCP listener on 127.0.0.1 records every byte each connection sends until the client goes quiet,
then closes it; a TDLib process (tdlib_driver.py) is pointed at it with a known secret. The result is
written to tests/data/tdlib_hellos/: one .bin file per connection and index.json describing each.
Every capture is checked against the independent reference in wire_ref.py before it is written.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .wire_ref import accept_init, tls_hello_timestamp, tls_sni

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tdlib_hellos"
DRIVER = Path(__file__).resolve().with_name("tdlib_driver.py")

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
OTHER_KEY = bytes.fromhex("5e5e5e5e00112233445566778899aabb")
DOMAIN = "www.example.com"

IDLE_SECONDS = 1.0  # a client that sent its first flight and waits for an answer goes quiet
MAX_CONNECTION_SECONDS = 4.0
MAX_BYTES = 65536


@dataclass
class Capture:
    """Bytes one connection sent, with the wall-clock times of accept and of the last byte."""

    data: bytearray = field(default_factory=bytearray)
    accepted_at: float = 0.0
    last_byte_at: float = 0.0


class Recorder:
    """A listener that records each connection's bytes and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.captures: list[Capture] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> Recorder:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(timeout=2)
        for thread in self._threads:
            thread.join(timeout=MAX_CONNECTION_SECONDS + 1)
        self.sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._record, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _record(self, conn: socket.socket) -> None:
        capture = Capture(accepted_at=time.time())
        started = time.monotonic()
        conn.settimeout(IDLE_SECONDS)
        with conn:
            while time.monotonic() - started < MAX_CONNECTION_SECONDS and len(capture.data) < MAX_BYTES:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                capture.data += chunk
                capture.last_byte_at = time.time()
        if capture.data:
            with self._lock:
                self.captures.append(capture)


def run_tdlib(port: int, secret: str, seconds: float, pings: int) -> list[dict[str, Any]]:
    """One TDLib process against the recorder; returns its events."""
    proc = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            "--port",
            str(port),
            "--secret",
            secret,
            "--seconds",
            str(seconds),
            "--pings",
            str(pings),
            "--enable",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 20,
        check=False,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def describe_obfs2(data: bytes, key: bytes) -> dict[str, Any]:
    """Check a classic/dd capture with the reference derivation and say what it holds."""
    accepted = accept_init(data[:64], key)
    info: dict[str, Any] = {"tag": accepted.tag.hex(), "transport": accepted.transport, "dc_id": accepted.dc_id}
    plain = accepted.decrypt.update(data[64:])
    if accepted.transport == "abridged":
        header = 4 if plain[:1] == b"\x7f" else 1
    else:
        header = 4
    message = plain[header:]
    # An unencrypted MTProto message: auth_key_id 0 (8), msg_id (8), length (4), body.
    if len(message) >= 24 and message[:8] == bytes(8):
        info["first_constructor"] = hex(int.from_bytes(message[20:24], "little"))
    return info


def describe_tls(data: bytes, key: bytes) -> dict[str, Any]:
    """Check a fake-TLS capture: record shape, HMAC under `key`, embedded time and SNI."""
    record_len = int.from_bytes(data[3:5], "big")
    record = data[: 5 + record_len]
    return {
        "record_length": record_len,
        "hello_complete": len(record) == 5 + record_len,
        "timestamp": tls_hello_timestamp(record, key),
        "sni": tls_sni(record),
    }


def capture_kind(name: str, secret: str, key: bytes, want: int, seconds: float) -> list[dict[str, Any]]:
    """Collect up to `want` connections of one secret kind; returns index entries (files written later)."""
    with Recorder() as recorder:
        events = run_tdlib(recorder.port, secret, seconds, pings=want)
        time.sleep(IDLE_SECONDS + 0.5)
    print(f"{name}: {len(recorder.captures)} connections, tdlib events: {[e['event'] for e in events]}")
    entries = []
    for n, capture in enumerate(sorted(recorder.captures, key=lambda c: c.accepted_at)[:want]):
        data = bytes(capture.data)
        entry: dict[str, Any] = {
            "file": f"{name}_{n}.bin",
            "name": name,
            "secret": secret,
            "key": key.hex(),
            "kind": secret[:2] if secret[:2] in ("dd", "ee") else "classic",
            "domain": DOMAIN if secret.startswith("ee") else None,
            "length": len(data),
            "accepted_at": round(capture.accepted_at, 3),
            "last_byte_at": round(capture.last_byte_at, 3),
            "_data": data,
        }
        entry.update(describe_tls(data, key) if secret.startswith("ee") else describe_obfs2(data, key))
        entries.append(entry)
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description="capture TDLib's first flights as test vectors")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--count", type=int, default=3, help="connections to keep per kind")
    parser.add_argument("--seconds", type=float, default=8.0, help="TDLib run time per kind")
    args = parser.parse_args()

    domain_hex = DOMAIN.encode("ascii").hex()
    plan = [
        ("ee", "ee" + KEY.hex() + domain_hex, KEY),
        ("ee_other_key", "ee" + OTHER_KEY.hex() + domain_hex, OTHER_KEY),
        ("classic", KEY.hex(), KEY),
        ("dd", "dd" + KEY.hex(), KEY),
    ]
    window_start = time.time()
    entries: list[dict[str, Any]] = []
    for name, secret, key in plan:
        entries.extend(capture_kind(name, secret, key, args.count, args.seconds))
    window_end = time.time()

    args.out.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        (args.out / entry["file"]).write_bytes(entry.pop("_data"))
    import tdjson

    index = {
        "description": "First bytes real TDLib clients sent to an MTProxy (captured by "
        "tests/interop/capture_tdlib_hellos.py; see docs/testing.md). Every connection recorded until the "
        "client went quiet; the listener never answered.",
        "tdlib_version": tdjson.__version__,
        "key": KEY.hex(),
        "other_key": OTHER_KEY.hex(),
        "domain": DOMAIN,
        "window": {"start": int(window_start), "end": int(window_end) + 1},
        "captures": entries,
    }
    (args.out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {len(entries)} captures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
