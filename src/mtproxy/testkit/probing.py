"""An active prober, as a censor's scanner would be: it sends one kind of probe and records what comes back, when
the first byte comes, and how and when the connection ends. Run against the mask site directly and through the
proxy (whose --mask is that site), interleaved, it tells whether the proxy is distinguishable from the site."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# what the proxy's handshake or a failed probe may leave us waiting for, at most, per connection
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    """What one probe connection sends: `pieces` written one by one with TCP_NODELAY (a yield to the loop
    between them, `gap` seconds when set), then a half-close or silence. `tls_sni`: instead of pieces, a real TLS
    client (Python's ssl over the raw socket) completes a handshake asking for that name, then says nothing."""

    pieces: tuple[bytes, ...] = ()
    half_close: bool = False
    gap: float = 0.0
    tls_sni: str | None = None


@dataclass
class Observation:
    """Times are seconds from the moment the probe's flight was sent (the send of its last piece; of a TLS
    client's hello): a prober preempted right after its send would otherwise see an answer in no time.
    `ended`: "fin" (the server closed), "rst" (reset), "open" (still open when the window ended: it waits for
    the client)."""

    answer: bytes = b""
    first_byte: float | None = None
    ended: str = "open"
    closed: float | None = None
    handshake_done: bool = False


def shape(answer: bytes) -> tuple[str, ...]:
    """What an answer is, without what differs between two of the site's own answers: an HTTP answer's status
    line and headers less Date, its body's length and hash; a TLS answer's record types and lengths; anything
    else as it is."""
    if not answer:
        return ("nothing",)
    if answer.startswith(b"HTTP/"):
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = [line.decode("latin-1") for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
        return ("http", *lines, f"body {len(body)} {hashlib.sha256(body).hexdigest()[:16]}")
    if answer[0] in (0x14, 0x15, 0x16, 0x17):
        records: list[str] = ["tls"]
        at = 0
        while at + 5 <= len(answer):
            length = int.from_bytes(answer[at + 3 : at + 5], "big")
            records.append(f"{answer[at]}:{answer[at + 1 : at + 3].hex()}:{length}")
            at += 5 + length
        if at != len(answer):
            records.append("cut")  # the last record did not come whole
        return tuple(records)
    return ("raw", answer.hex())


async def probe(host: str, port: int, what: Probe, window: float, source: str | None = None) -> Observation:
    """One probe from `source` (an address of this host): connect, send, then read until the server ends the
    connection or `window` seconds pass."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    seen = Observation()
    try:
        if source is not None:
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
        if what.tls_sni is not None:
            sent = await _tls_handshake(sock, what.tls_sni, seen, window)
        else:
            sent = time.monotonic()
            for index, piece in enumerate(what.pieces):
                if index:
                    await asyncio.sleep(what.gap)
                sent = time.monotonic()
                await loop.sock_sendall(sock, piece)
            if what.half_close:
                sock.shutdown(socket.SHUT_WR)
        while seen.ended == "open" and await _receive(sock, seen, sent, sent + window) is not None:
            pass
    except (ConnectionResetError, BrokenPipeError) as exc:  # the server reset while the probe was sending
        seen.ended = "rst"
        seen.answer += f"<{type(exc).__name__} while sending>".encode()
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:  # shutdown() on a connection the server already reset
            raise
        seen.ended = "rst"
        seen.answer += b"<reset before half-close>"
    finally:
        sock.close()
    return seen


async def _receive(sock: socket.socket, seen: Observation, sent: float, deadline: float) -> bytes | None:
    """The next chunk; b"" once the server closed or reset (`seen` says which), None when the window is over."""
    loop = asyncio.get_running_loop()
    try:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(deadline - time.monotonic(), 0))
    except TimeoutError:
        return None
    except ConnectionResetError:
        seen.ended, seen.closed = "rst", time.monotonic() - sent
        return b""
    now = time.monotonic() - sent
    if not chunk:
        seen.ended, seen.closed = "fin", now
        return b""
    if seen.first_byte is None:
        seen.first_byte = now
    seen.answer += chunk
    return chunk


async def _tls_handshake(sock: socket.socket, sni: str, seen: Observation, window: float) -> float:
    """Python's TLS client over memory BIOs on `sock`: the hello, the server's flight, the client's Finished.
    Returns when the hello went out; the handshake's outcome is in `seen`."""
    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a scanner asks for the site's name; it need not trust the answer
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    sent = 0.0
    deadline = time.monotonic() + window
    while True:
        try:
            tls.do_handshake()
            seen.handshake_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            return sent
        data = outgoing.read()
        if data:
            if not sent:
                sent = time.monotonic()
            await loop.sock_sendall(sock, data)
        if seen.handshake_done:
            return sent
        chunk = await _receive(sock, seen, sent, deadline)
        if not chunk:
            return sent
        incoming.write(chunk)


# ----------------------------------------------------------------- many probes, interleaved

Target = tuple[str, int]


def times(observations: Sequence[Observation], which: str) -> list[float]:
    """The `which` ("first_byte" or "closed") of each observation that has one, sorted."""
    values = (getattr(seen, which) for seen in observations)
    return sorted(value for value in values if value is not None)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


async def compare(paths: dict[str, Target], classes: dict[str, Callable[[int], Probe]], rounds: int,
                  window: float, stagger: float, seed: int = 1) -> dict[str, dict[str, list[Observation]]]:
    """Each class's probe `rounds` times on every path: one round sends the same probe to each path back to
    back (the order alternating), the rounds of all classes shuffled and started `stagger` seconds apart, so
    drift and load fall on all paths alike. Each round comes from its own loopback address (127.0.x.y), as
    a scanner fleet's probes do: per-address caps are not what is compared. Returns class -> path ->
    observations, in round order."""
    rng = random.Random(seed)
    names = list(paths)
    schedule = [(name, index) for name in classes for index in range(rounds)]
    rng.shuffle(schedule)
    results = {name: {path: [Observation() for _ in range(rounds)] for path in names} for name in classes}
    tasks: list[asyncio.Task[None]] = []

    async def one(name: str, path: str, index: int, what: Probe, source: str) -> None:
        host, port = paths[path]
        results[name][path][index] = await probe(host, port, what, window, source)

    for number, (name, index) in enumerate(schedule):
        what = classes[name](index)
        order = names if number % 2 == 0 else names[::-1]
        source = f"127.0.{1 + number // 250}.{1 + number % 250}"
        for path in order:
            tasks.append(asyncio.create_task(one(name, path, index, what, source)))
            await asyncio.sleep(stagger)
    await asyncio.gather(*tasks)
    return results
