"""The stats HTTP endpoint (`/stats`, `/metrics`, `/stats.json`) on a thread; loopback peers only unless allowed.

`/stats.json` is for the CLI (`status`, the reload confirmation of `add-secret`): the same figures plus what
the engine loaded (count and digest of its secret set, per worker), why its last reload failed, and which
store it reads, so the CLI compares the engine with the store instead of parsing the human `/stats` text.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mtproxy.addresses import is_loopback
from mtproxy.defaults import DEFAULT_METRICS_MAX_SECRETS

from .counters import worker_sets
from .render import render_metrics, render_stats

log = logging.getLogger("mtproxy.stats")

SnapshotProvider = Callable[[], dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_remote = False
    provider: SnapshotProvider
    store: str | None = None
    max_secrets = DEFAULT_METRICS_MAX_SECRETS
    request_queue_size = 64


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # a silent peer cannot hold a handler thread for long

    def do_GET(self) -> None:
        if not self.server.allow_remote and not is_loopback(self.client_address[0]):
            self.send_error(403, "stats are served to loopback peers only")
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/stats", "/metrics", "/stats.json", "/"):
            self.send_error(404)
            return
        snap = self.server.provider()
        now = time.time()
        if path == "/stats.json":
            body = json.dumps(render_json(snap, now, self.server.store)).encode()
            ctype = "application/json"
        elif path == "/metrics":
            body = render_metrics(snap, now, self.server.max_secrets)
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        else:
            body = render_stats(snap, now).encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log


JSON_VERSION = 1


def render_json(snap: dict[str, Any], now: float, store: str | None) -> dict[str, Any]:
    """The snapshot as versioned JSON; a single process's own snapshot is its only worker set."""
    sets = snap["secret_sets"] if "secret_sets" in snap else worker_sets([snap])
    # uid: whom the store must be readable by (read here, after the engine dropped its privileges)
    return {"kind": "mtproxy-stats", "version": JSON_VERSION, "uptime": int(now - snap["started_at"]),
            "store": store, "uid": os.geteuid(), **{k: v for k, v in snap.items() if k != "secret_sets"},
            "secret_sets": sets}


class StatsServer:
    """Owns the listening socket and the serving thread."""

    def __init__(self, host: str, port: int, provider: SnapshotProvider, allow_remote: bool,
                 store: str | None = None, max_secrets: int = DEFAULT_METRICS_MAX_SECRETS) -> None:
        """`store`: the secrets file the engine reads (absolute), served so the CLI can tell whose it is.
        `max_secrets`: secrets `/metrics` names one by one (the busiest); the rest are summed as `_other`."""
        if max_secrets < 0:
            raise ValueError("max_secrets must be 0 or more")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _Server.address_family = family
        self._server = _Server((host, port), _Handler)
        self._server.allow_remote = allow_remote
        self._server.provider = provider
        self._server.store = store
        self._server.max_secrets = max_secrets
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mtproxy-stats", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close_socket_only(self) -> None:
        """In a forked worker: drop the inherited listening socket; the serving thread lives in the parent."""
        self._server.socket.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
