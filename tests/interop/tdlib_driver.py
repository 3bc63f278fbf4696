"""Drive one TDLib client (tdjson) at an MTProxy and report what it saw as JSON lines on stdout.

Run as a separate process (`python3 tests/interop/tdlib_driver.py ...`) so that every TDLib instance,
with its own threads and database, lives and dies with one process the test can time out and kill.
It must only ever run inside a network namespace: TDLib tries to reach Telegram on its own.

Events written to stdout, one JSON object per line:
  {"event": "proxy_added", "id": N}
  {"event": "ping", "seconds": S}            pingProxy succeeded (the proxy path answered req_pq_multi)
  {"event": "ping_error", "message": "..."}
  {"event": "done"}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

# Public test credentials of the TDLib examples; nothing leaves the network namespace.
TEST_API_ID = 94575
TEST_API_HASH = "a7ccab0a2dfeba2c30e3c7b42ac6f4eb"


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(
    server: str, port: int, secret: str, seconds: float, pings: int, enable: bool, verbosity: int, db: str | None
) -> int:
    """Add the proxy, optionally enable it for the main session, ping it `pings` times; stop at the deadline."""
    import tdjson  # imported here so `--help` works without the binary

    tdjson.td_execute(json.dumps({"@type": "setLogVerbosityLevel", "new_verbosity_level": verbosity}).encode())
    client_id = tdjson.td_create_client_id()

    def send(request: dict[str, Any]) -> None:
        tdjson.td_send(client_id, json.dumps(request).encode())

    proxy = {
        "@type": "proxy",
        "server": server,
        "port": port,
        "type": {"@type": "proxyTypeMtproto", "secret": secret},
    }
    deadline = time.monotonic() + seconds
    pings_left = pings
    closing = False
    with tempfile.TemporaryDirectory(prefix="tdlib-", dir=db) as db_dir:
        send(
            {
                "@type": "setTdlibParameters",
                # Production mode: the key TDLib then expects is the main one (0xd09d1d85de64fd85).
                "use_test_dc": False,
                "database_directory": db_dir,
                "files_directory": db_dir,
                "use_file_database": False,
                "use_chat_info_database": False,
                "use_message_database": False,
                "use_secret_chats": False,
                "api_id": TEST_API_ID,
                "api_hash": TEST_API_HASH,
                "system_language_code": "en",
                "device_model": "mtproxy-interop",
                "system_version": "1",
                "application_version": "1",
                "@extra": "params",
            }
        )
        send({"@type": "addProxy", "proxy": proxy, "enable": enable, "@extra": "add"})
        if pings_left > 0:
            send({"@type": "pingProxy", "proxy": proxy, "@extra": "ping"})
            pings_left -= 1
        while True:
            now = time.monotonic()
            if now >= deadline and not closing:
                closing = True
                send({"@type": "close"})
                # TDLib closes within a second or two; bound it anyway.
                deadline = now + 5.0
            elif now >= deadline and closing:
                break
            raw = tdjson.td_receive(0.2)
            if raw is None:
                continue
            answer = json.loads(raw)
            if answer.get("@client_id") != client_id:
                continue
            extra = answer.get("@extra")
            kind = answer.get("@type")
            if extra == "add":
                if kind == "addedProxy":
                    _emit({"event": "proxy_added", "id": answer["id"]})
                else:
                    _emit({"event": "add_error", "message": answer.get("message", "")})
            elif extra == "ping":
                if kind == "seconds":
                    _emit({"event": "ping", "seconds": answer["seconds"]})
                else:
                    _emit({"event": "ping_error", "message": answer.get("message", "")})
                if pings_left > 0 and not closing:
                    send({"@type": "pingProxy", "proxy": proxy, "@extra": "ping"})
                    pings_left -= 1
            elif kind == "updateAuthorizationState":
                if answer["authorization_state"]["@type"] == "authorizationStateClosed":
                    break
    _emit({"event": "done"})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--server", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="proxy secret as a client gets it (hex)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run before closing")
    parser.add_argument("--pings", type=int, default=1, help="how many pingProxy calls, one after another")
    parser.add_argument("--enable", action="store_true", help="enable the proxy for the main session too")
    parser.add_argument("--verbosity", type=int, default=0, help="TDLib log verbosity (stderr)")
    parser.add_argument("--db", help="parent directory for TDLib's temporary database (default: system temp)")
    args = parser.parse_args()
    return run(args.server, args.port, args.secret, args.seconds, args.pings, args.enable, args.verbosity, args.db)


if __name__ == "__main__":
    raise SystemExit(main())
