"""`mtproxy healthcheck`: exit 0 only when the running proxy answers (for images without a shell)."""

from __future__ import annotations

import http.client
import socket
import sys

from mtproxy import __version__
from mtproxy.cli.edge import run_at_edge
from mtproxy.cli.errors import CliError, ExitStatus
from mtproxy.defaults import DEFAULT_STATS_PORT
from mtproxy.usage import OneLineParser


def healthcheck_command(argv: list[str]) -> int:
    """Through the CLI's one error edge: unhealthy is one line on stderr (none with -q) and ExitStatus.FAILURE
    (1, what container health checks expect)."""
    return run_at_edge(lambda: _check(argv), prog="mtproxy healthcheck", typed=argv)


def _check(argv: list[str]) -> ExitStatus:
    p = OneLineParser(prog="mtproxy healthcheck", description=__doc__)
    p.add_argument("-p", "--stats-port", type=int, default=DEFAULT_STATS_PORT,
                   help="stats port of the proxy (0: check the proxy port instead)")
    p.add_argument("--host", default="127.0.0.1", help="address of the proxy (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="proxy port: also check that it accepts connections")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--version", action="version", version=f"mtproxy healthcheck {__version__}")
    ns = p.parse_args(argv)
    problems: list[str] = []
    if ns.stats_port:
        try:
            conn = http.client.HTTPConnection(ns.host, ns.stats_port, timeout=ns.timeout)
            conn.request("GET", "/stats")
            resp = conn.getresponse()
            body = resp.read(65536)
            conn.close()
            if resp.status != 200 or not body.startswith(b"uptime\t"):
                problems.append(f"stats endpoint answered {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"stats endpoint {ns.host}:{ns.stats_port} does not answer: {exc}")
    if ns.port or not ns.stats_port:
        port = ns.port or 443
        try:
            socket.create_connection((ns.host, port), timeout=ns.timeout).close()
        except OSError as exc:
            problems.append(f"proxy port {ns.host}:{port} does not accept connections: {exc}")
    if problems and ns.quiet:
        return ExitStatus.FAILURE
    if problems:
        raise CliError("unhealthy: " + "; ".join(problems), "is the proxy running? see its log or `mtproxy status`",
                       ExitStatus.FAILURE)
    if not ns.quiet:
        sys.stdout.write("ok\n")
    return ExitStatus.OK
