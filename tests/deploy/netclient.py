"""Client side of the firewall scenarios, run inside the client network namespace (see scenarios.py).

`python3 -m tests.deploy.netclient connect|bad|echo HOST PORT SRC [N|SECRET]` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

from mtproxy.protocol.secret import parse_secret
from mtproxy.testkit.client import open_client


def attempt(host: str, port: int, src: str, payload: bytes | None, timeout: float = 2.0) -> str:
    """One new TCP connection from `src`: ok, refused or timeout (a DROP looks like a timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((src, 0))
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, OSError):
            return "timeout"
        if payload is not None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        return "ok"


async def echo(host: str, port: int, src: str, secret_text: str) -> str:
    """A real authenticated client session through the proxy to the fake DC, and back."""
    del src  # the client namespace's first address is the default source
    client = await open_client(host, port, parse_secret(secret_text), timeout=5)
    payload = os.urandom(4096)
    await client.send(payload)
    back = await client.recv_exactly(len(payload))
    await client.close()
    return "ok" if back == payload else "mismatch"


def main(argv: list[str]) -> None:
    action, host, port_text, src = argv[:4]
    port = int(port_text)
    if action == "echo":
        try:
            result: object = asyncio.run(echo(host, port, src, argv[4]))
        except Exception as exc:  # reported to the test, which asserts on it
            result = f"error: {type(exc).__name__}: {exc}"
    else:
        count = int(argv[4])
        payload = os.urandom(64) if action == "bad" else None
        result = [attempt(host, port, src, payload) for _ in range(count)]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
