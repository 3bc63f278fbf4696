"""What `mtproxy doctor` asks the network and the kernel: name resolution, TCP dials, a TLS web site's first
flight and clock, a middle-proxy relay's handshake, and who listens on a port. Every network call has a
timeout; the judgments live in operations/doctor_rules.py, and the resolver, the dialer and the clock are
passed in so tests are exact.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from ..crypto.backend import openssl_cbc
from ..protocol.errors import MiddleProxyError
from ..protocol.flight import FlightMeter, merged_size
from ..protocol.middleproxy import Ready, RelayConnection, RelayEndpoints
from ..protocol.natinfo import NatRule, relay_address
from ..protocol.proxyconfig import ProxySecret, Relay
from ..protocol.socks5 import Credentials, Socks5Client, Socks5Error, Stage

# hostname -> its addresses ([] when it has none); raises OSError when it cannot be resolved at all
Resolver = Callable[[str], list[str]]
# (host, port, timeout) -> a connected TCP socket: `direct_dial`, or through a SOCKS5 upstream (`socks5_dialer`)
Dialer = Callable[[str, int, float], socket.socket]

MAX_HEADER_BYTES = 64 << 10


def system_resolver(timeout: float) -> Resolver:
    """The host's resolver (getaddrinfo) with a deadline: getaddrinfo itself has none, so it runs in a
    daemon thread that is abandoned, not waited for, when the deadline passes."""

    def resolve(name: str) -> list[str]:
        outcome: list[list[str] | OSError] = []

        def lookup() -> None:
            try:
                infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
                outcome.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
            except socket.gaierror as exc:
                if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                    outcome.append([])
                else:
                    outcome.append(OSError(exc.errno, exc.strerror))
            except OSError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=lookup, name=f"resolve {name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if not outcome:
            raise OSError(f"no answer from the resolver within {timeout:g} s")
        result = outcome[0]
        if isinstance(result, OSError):
            raise result
        return result

    return resolve


def direct_dial(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection straight from this host."""
    return socket.create_connection((host, port), timeout=timeout)


def socks5_dialer(upstream: tuple[str, int], credentials: Credentials | None) -> Dialer:
    """A Dialer whose connections leave through the SOCKS5 server at `upstream` (an address: resolve a name
    first), as the engine's DC legs do with --upstream; `timeout` bounds the connect and the exchange."""

    def dial(host: str, port: int, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        sock = socket.create_connection(upstream, timeout=timeout)
        try:
            _socks5_exchange(sock, Socks5Client(host, port, credentials), deadline, until=Stage.CONNECTED)
        except BaseException:
            sock.close()
            raise
        return sock

    return dial


def socks5_check(upstream: tuple[str, int], credentials: Credentials | None, timeout: float) -> str | None:
    """None when the SOCKS5 server at `upstream` lets us in (greeting, and the login when one is given), else
    why not. No CONNECT is asked for: this is the upstream's own health, the DCs are checked through it."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(upstream, timeout=timeout) as sock:
            # any address does: the exchange stops before the CONNECT request would go out
            _socks5_exchange(sock, Socks5Client("192.0.2.1", 443, credentials), deadline, until=Stage.REPLY)
    except (OSError, ValueError, Socks5Error) as exc:
        return reason(exc)
    return None


def _socks5_exchange(sock: socket.socket, client: Socks5Client, deadline: float, until: Stage) -> None:
    sock.sendall(client.greeting())
    while client.stage is not until:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(512)
        if not chunk:
            raise Socks5Error("the SOCKS5 server closed the connection during the exchange")
        reply = client.receive(chunk)
        if reply and client.stage is not until:
            sock.sendall(reply)
    sock.settimeout(None)


def reason(exc: BaseException) -> str:
    """An exception as the few words an operator needs ("connection refused", "timed out")."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def dial_check(dial: Dialer, host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout`, else why not."""
    try:
        dial(host, port, timeout).close()
    except (OSError, ValueError, Socks5Error) as exc:
        return reason(exc)
    return None


@dataclass(frozen=True)
class RelayAnswer:
    """A middle-proxy relay's handshake as the engine's relay links make it: `error` None when the relay
    said ready, else why not; `nat_warning` when our address toward it is probably not what it sees."""

    error: str | None
    nat_warning: str | None = None


def relay_check(relay: Relay, secret: ProxySecret, nat_rules: tuple[NatRule, ...], timeout: float) -> RelayAnswer:
    """Dial `relay` directly (as the engine does, never through an upstream) and run the RPC nonce exchange
    and handshake (protocol/middleproxy.py) within `timeout`: it proves the relay is reachable, that
    proxy-secret is the one it holds, and that the address we claim is the one it sees (behind NAT without
    --nat-info the keys differ and the relay drops us)."""
    deadline = time.monotonic() + timeout
    try:
        sock = direct_dial(str(relay.ip), relay.port, timeout)
    except OSError as exc:
        return RelayAnswer(reason(exc))
    with sock:
        local, peer = sock.getsockname(), sock.getpeername()
        ours = relay_address(ipaddress.ip_address(local[0]), relay.ip, nat_rules)
        try:
            codec = RelayConnection(secret, RelayEndpoints(ours.ip, int(local[1]), ipaddress.ip_address(peer[0]),
                                                           int(peer[1])),
                                    openssl_cbc, now=int(time.time()), nonce=os.urandom(16),
                                    pid=os.getpid() & 0xFFFF, start_time=int(time.time()))
            sock.sendall(codec.start())
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return RelayAnswer("no handshake answer in time", ours.warning)
                sock.settimeout(left)
                data = sock.recv(1 << 16)
                if not data:
                    return RelayAnswer("it closed the connection during the handshake", ours.warning)
                received = codec.receive(data)
                if received.send:
                    sock.sendall(received.send)
                if any(isinstance(event, Ready) for event in received.events):
                    return RelayAnswer(None, ours.warning)
        except MiddleProxyError as exc:
            return RelayAnswer(f"{exc.reason}: {exc}", ours.warning)
        except (OSError, ValueError) as exc:
            return RelayAnswer(reason(exc), ours.warning)


def fetch_document(url: str, timeout: float, limit: int = 1 << 20) -> bytes:
    """GET `url` (http or https), at most `limit` bytes; OSError (with the reason) for anything but 200."""
    import urllib.error  # here: only doctor's middle-proxy check fetches, and only without a cached copy
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(reason(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)) from None
    if len(body) > limit:
        raise OSError(f"larger than {limit} bytes")
    return body


@dataclass(frozen=True)
class SiteAnswer:
    """What one HTTPS request to a web site showed."""

    tls_version: str  # "TLSv1.3", "TLSv1.2", …
    flight: int  # the encrypted first flight as one record (`flight.merged_size`; 0 before TLS 1.3)
    date: datetime | None  # the response's Date header; None when it sent none (or no response)
    received_at: datetime  # our clock when the response's headers arrived


def ask_site(address: str, port: int, sni: str, timeout: float, clock: Callable[[], datetime]) -> SiteAnswer:
    """Connect to address:port, handshake as a browser would for `sni` (nothing is verified: only sizes and
    the clock are read), measure the server's first flight, send `HEAD /` and read the Date header.
    Raises OSError, ssl.SSLError or ValueError; `timeout` bounds the whole exchange."""
    deadline = time.monotonic() + timeout
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    meter = FlightMeter()
    with socket.create_connection((address, port), timeout=timeout) as sock:

        def receive() -> bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            return sock.recv(65536)

        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            if done:
                break
            chunk = receive()
            if not chunk:
                raise ValueError("the site closed the connection during the TLS handshake")
            meter.feed(chunk)
            incoming.write(chunk)
        version = tls.version() or ""
        tls.write(f"HEAD / HTTP/1.1\r\nHost: {sni}\r\nUser-Agent: mtproxy-doctor\r\nAccept: */*\r\n"
                  "Connection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEADER_BYTES:
            try:
                head += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            chunk = receive()
            if not chunk:
                break
            incoming.write(chunk)
        received_at = clock()
    flight = merged_size(meter.total, meter.records) if version == "TLSv1.3" else 0  # as the engine learns it
    return SiteAnswer(version, flight, _date_header(head), received_at)


def _date_header(head: bytes) -> datetime | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "date":
            with contextlib.suppress(TypeError, ValueError, IndexError):
                return parsedate_to_datetime(value.strip())
    return None


# ----------------------------------------------------------------- who listens on a port

@dataclass(frozen=True)
class Listener:
    """A listening TCP socket, and the process holding it when /proc lets us see it."""

    address: str
    port: int
    inode: int
    pid: int | None = None
    program: str = ""  # /proc/PID/comm
    command: str = ""  # /proc/PID/cmdline, spaces between arguments


_LISTEN = "0A"


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address: IPv4 as one little-endian word, IPv6 as four."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening(port: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Every TCP socket listening on `port` in this network namespace, with its process where visible
    (another user's descriptors need root to read)."""
    found: list[Listener] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            host, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port:
                found.append(Listener(_address(host), port, int(fields[9])))
    if not found:
        return found
    owners = _socket_owners({listener.inode for listener in found}, proc)
    return [_with_owner(listener, owners.get(listener.inode), proc) for listener in found]


def _socket_owners(inodes: set[int], proc: Path) -> dict[int, int]:
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's (needs root)
        for fd in descriptors:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None:
                owners.setdefault(inode, int(entry.name))
    return owners


def _with_owner(listener: Listener, pid: int | None, proc: Path) -> Listener:
    if pid is None:
        return listener
    program = command = ""
    with contextlib.suppress(OSError):
        program = (proc / str(pid) / "comm").read_text().strip()
    with contextlib.suppress(OSError):
        command = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return Listener(listener.address, listener.port, listener.inode, pid, program, command)
