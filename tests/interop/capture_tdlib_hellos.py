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
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .wire_ref import (
    accept_init,
    tls_client_payload,
    tls_hello_timestamp,
    tls_server_flight,
    tls_sni,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tdlib_hellos"
DRIVER = Path(__file__).resolve().with_name("tdlib_driver.py")

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
OTHER_KEY = bytes.fromhex("5e5e5e5e00112233445566778899aabb")
DOMAIN = "www.example.com"

_DOMAIN_HEX = DOMAIN.encode("ascii").hex()
PLAN = {  # kind → (secret as given to TDLib, the key it holds)
    "ee": ("ee" + KEY.hex() + _DOMAIN_HEX, KEY),
    "ee_other_key": ("ee" + OTHER_KEY.hex() + _DOMAIN_HEX, OTHER_KEY),
    "classic": (KEY.hex(), KEY),
    "dd": ("dd" + KEY.hex(), KEY),
    "ee_full": ("ee" + KEY.hex() + _DOMAIN_HEX, KEY),
}

IDLE_SECONDS = 1.0  # a client that sent its first flight and waits for an answer goes quiet
MAX_CONNECTION_SECONDS = 4.0
MAX_BYTES = 65536
CERT_SIZE = 2500  # size of the stand-in certificate record in the ee_full server flights


@dataclass
class Capture:
    """Bytes one connection sent, with the wall-clock times of accept and of the last byte."""

    data: bytearray = field(default_factory=bytearray)
    answer: bytes = b""  # what the recorder sent back, if anything
    accepted_at: float = 0.0
    last_byte_at: float = 0.0


class Recorder:
    """A listener that records each connection's bytes. Without `respond` it never answers; with it,
    `respond(first TLS record)` is sent back once that record is complete (the ee_full captures)."""

    def __init__(self, respond: Callable[[bytes], bytes] | None = None) -> None:
        self.respond = respond
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
                record_end = 5 + int.from_bytes(capture.data[3:5], "big")
                if self.respond is not None and not capture.answer and len(capture.data) >= record_end:
                    capture.answer = self.respond(bytes(capture.data[:record_end]))
                    conn.sendall(capture.answer)
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


def respond_as_proxy(key: bytes) -> Callable[[bytes], bytes]:
    """A server flight made by the independent reference, so TDLib goes on to send its init."""
    return lambda hello: tls_server_flight(key, hello, CERT_SIZE, os.urandom(32 + CERT_SIZE))


def capture_kind(name: str, secret: str, key: bytes, want: int, seconds: float) -> list[dict[str, Any]]:
    """Collect up to `want` connections of one secret kind; returns index entries (files written later)."""
    respond = respond_as_proxy(key) if name == "ee_full" else None
    with Recorder(respond) as recorder:
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
        if not secret.startswith("ee"):
            entry.update(describe_obfs2(data, key))
        else:
            entry.update(describe_tls(data, key))
        if capture.answer:
            entry["server_flight_file"] = f"{name}_{n}.server.bin"
            entry["_answer"] = capture.answer
            payload = tls_client_payload(data[5 + entry["record_length"] :])
            entry["after_flight"] = describe_obfs2(payload, key) if payload and len(payload) >= 64 else None
        entries.append(entry)
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description="capture TDLib's first flights as test vectors")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--count", type=int, default=3, help="connections to keep per kind")
    parser.add_argument("--seconds", type=float, default=8.0, help="TDLib run time per kind")
    parser.add_argument(
        "--kinds", default=",".join(PLAN), help=f"comma-separated subset of {','.join(PLAN)}; others are kept"
    )
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in PLAN]
    if unknown:
        parser.error(f"unknown kinds: {unknown}")

    window_start = time.time()
    entries: list[dict[str, Any]] = []
    for name in kinds:
        secret, key = PLAN[name]
        entries.extend(capture_kind(name, secret, key, args.count, args.seconds))
    window_end = time.time()

    args.out.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        (args.out / entry["file"]).write_bytes(entry.pop("_data"))
        if "_answer" in entry:
            (args.out / entry["server_flight_file"]).write_bytes(entry.pop("_answer"))
    import tdjson

    index_path = args.out / "index.json"
    # Keep the captures of kinds not re-captured this time, so other tests' vectors stay put.
    old = json.loads(index_path.read_text()) if index_path.exists() else {}
    kept = [c for c in old.get("captures", []) if c["name"] not in kinds]
    window = old.get("window", {"start": int(window_start), "end": int(window_end) + 1})
    index = {
        "description": "First bytes real TDLib clients sent to an MTProxy (captured by "
        "tests/interop/capture_tdlib_hellos.py; see docs/testing.md). Every connection was recorded until the "
        "client went quiet. The listener never answered, except for ee_full: there it answered the hello with a "
        "valid server flight (the .server.bin file), so the file also holds TDLib's ChangeCipherSpec and its "
        "first application-data records (the obfuscated2 init, tag dd, and req_pq_multi).",
        "tdlib_version": tdjson.__version__,
        "key": KEY.hex(),
        "other_key": OTHER_KEY.hex(),
        "domain": DOMAIN,
        "window": {
            "start": min(window["start"], int(window_start)),
            "end": max(window["end"], int(window_end) + 1),
        },
        "captures": kept + entries,
    }
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {len(entries)} captures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
