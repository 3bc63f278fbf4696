"""The stats HTTP endpoint (`/stats`, `/metrics`) on a thread; loopback peers only unless allowed."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .render import render_metrics, render_stats

log = logging.getLogger("mtproxy.stats")

SnapshotProvider = Callable[[], dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_remote = False
    provider: SnapshotProvider
    request_queue_size = 64


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # a silent peer cannot hold a handler thread for long

    def do_GET(self) -> None:
        if not self.server.allow_remote and not _is_loopback(self.client_address[0]):
            self.send_error(403, "stats are served to loopback peers only")
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/stats", "/metrics", "/"):
            self.send_error(404)
            return
        snap = self.server.provider()
        now = time.time()
        if path == "/metrics":
            body = render_metrics(snap, now)
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


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class StatsServer:
    """Owns the listening socket and the serving thread."""

    def __init__(self, host: str, port: int, provider: SnapshotProvider, allow_remote: bool) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _Server.address_family = family
        self._server = _Server((host, port), _Handler)
        self._server.allow_remote = allow_remote
        self._server.provider = provider
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
