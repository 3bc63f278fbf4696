"""The client side of SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): a CONNECT to an
IPv4 or IPv6 address (or a name), as bytes in and the next bytes to send out. No IO: the engine's DC dial
(runtime/upstream.py) and `mtproxy doctor` (host/netprobe.py) drive it over their own sockets.

What the server sends is bounded before it is buffered: a method choice and an auth status are 2 bytes,
a CONNECT reply at most 4 + 1 + 255 + 2; anything after the reply belongs to the target and is handed
back as `surplus`."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from .errors import Socks5Error

__all__ = ["Credentials", "Socks5Client", "Socks5Error", "Stage", "connect_request"]

VERSION = 5
AUTH_VERSION = 1  # RFC 1929's sub-negotiation version
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
SUCCEEDED = 0x00

# RFC 1928 section 6. The ones that say the server is working but this target is not reachable through it
# are the target's fault: another address of the same DC may still work.
REPLY_MESSAGES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by the server's rules",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused by the target",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
TARGET_REPLIES = frozenset({0x02, 0x03, 0x04, 0x05, 0x06, 0x08})


@dataclass(frozen=True)
class Credentials:
    """RFC 1929 username and password: 1 to 255 bytes each."""

    username: bytes
    password: bytes

    def __post_init__(self) -> None:
        for what, value in (("username", self.username), ("password", self.password)):
            if not 1 <= len(value) <= 255:
                raise ValueError(f"a SOCKS5 {what} must be 1 to 255 bytes, got {len(value)}")

    def __repr__(self) -> str:  # never the password, whatever prints this
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class Stage(enum.Enum):
    METHOD = "method"  # greeting sent, waiting for the server's choice of method
    AUTH = "auth"  # username/password sent, waiting for its status
    REPLY = "reply"  # CONNECT sent, waiting for the reply
    CONNECTED = "connected"
    FAILED = "failed"


def connect_request(host: str, port: int) -> bytes:
    """CONNECT to an IPv4 or IPv6 address (Telegram's DCs), or to a name (a --dc-override may give one: the
    SOCKS server resolves it); raises ValueError for a name or a port SOCKS5 cannot carry."""
    if not 0 < port <= 65535:
        raise ValueError(f"port {port} is out of range")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) <= 255:
            raise ValueError(f"host name {host!r} is not 1 to 255 bytes") from None
        return bytes((VERSION, CONNECT, 0, ATYP_DOMAIN, len(name))) + name + port.to_bytes(2, "big")
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((VERSION, CONNECT, 0, atyp)) + address.packed + port.to_bytes(2, "big")


class Socks5Client:
    """One CONNECT: `greeting()` first, then every byte the server sends goes to `receive`, which returns
    what to send next (b"" while more is needed). Raises Socks5Error on a refusal or a malformed answer;
    once `connected`, `bound` is the server's outgoing address and `surplus` what came after the reply."""

    __slots__ = ("_buffer", "_credentials", "_request", "bound", "stage", "surplus")

    def __init__(self, host: str, port: int, credentials: Credentials | None = None) -> None:
        self._request = connect_request(host, port)
        self._credentials = credentials
        self._buffer = b""
        self.stage = Stage.METHOD
        self.bound: tuple[str, int] | None = None
        self.surplus = b""

    @property
    def connected(self) -> bool:
        return self.stage is Stage.CONNECTED

    def greeting(self) -> bytes:
        methods = (NO_AUTH, USERNAME_PASSWORD) if self._credentials is not None else (NO_AUTH,)
        return bytes((VERSION, len(methods), *methods))

    def receive(self, data: bytes) -> bytes:
        if self.stage in (Stage.CONNECTED, Stage.FAILED):
            raise Socks5Error(f"the exchange is over ({self.stage.value}): no more bytes expected")
        self._buffer += data
        try:
            return self._advance()
        except Socks5Error:
            self.stage = Stage.FAILED
            self._buffer = b""
            raise

    def _advance(self) -> bytes:
        out = b""
        while self.stage not in (Stage.CONNECTED, Stage.FAILED):
            need = self._needed()
            if need is None or len(self._buffer) < need:
                return out
            message, self._buffer = self._buffer[:need], self._buffer[need:]
            out += self._handle(message)
        return out

    def _needed(self) -> int | None:
        """Bytes the current message has in all, None until enough of it is here to tell."""
        if self.stage is not Stage.REPLY:
            return 2
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        if buffer[0] != VERSION:
            raise Socks5Error(f"malformed SOCKS5 reply: version {buffer[0]}, not 5")
        if buffer[1] != SUCCEEDED:  # the code says it all; a server may close before the rest
            raise self._refusal(buffer[1])
        if len(buffer) < 4:
            return None
        atyp = buffer[3]
        if atyp == ATYP_IPV4:
            return 4 + 4 + 2
        if atyp == ATYP_IPV6:
            return 4 + 16 + 2
        if atyp == ATYP_DOMAIN:
            return None if len(buffer) < 5 else 4 + 1 + buffer[4] + 2
        raise Socks5Error(f"malformed SOCKS5 reply: address type {atyp} is none of 1, 3, 4")

    def _handle(self, message: bytes) -> bytes:
        if self.stage is Stage.METHOD:
            return self._method(message)
        if self.stage is Stage.AUTH:
            if message[0] != AUTH_VERSION:
                raise Socks5Error(f"malformed SOCKS5 authentication reply: version {message[0]}, not 1")
            if message[1] != 0:
                raise Socks5Error("the SOCKS5 server rejected the username/password")
            self.stage = Stage.REPLY
            return self._request
        return self._reply(message)

    def _method(self, message: bytes) -> bytes:
        if message[0] != VERSION:
            raise Socks5Error(f"not a SOCKS5 server (it answered version {message[0]} to a SOCKS5 greeting)")
        method = message[1]
        if method == NO_AUTH:
            self.stage = Stage.REPLY
            return self._request
        credentials = self._credentials
        if method == USERNAME_PASSWORD and credentials is not None:
            self.stage = Stage.AUTH
            return (bytes((AUTH_VERSION, len(credentials.username))) + credentials.username
                    + bytes((len(credentials.password),)) + credentials.password)
        if method == NO_ACCEPTABLE_METHOD:
            if credentials is None:
                raise Socks5Error("the SOCKS5 server requires authentication: give socks5://USER:PASS@HOST:PORT")
            raise Socks5Error("the SOCKS5 server accepts neither no authentication nor username/password")
        raise Socks5Error(f"the SOCKS5 server chose authentication method {method:#04x}, which was not offered")

    def _reply(self, message: bytes) -> bytes:
        if message[2] != 0:
            raise Socks5Error(f"malformed SOCKS5 reply: reserved byte {message[2]}, not 0")
        atyp, body = message[3], message[4:-2]
        if atyp == ATYP_DOMAIN:
            host = body[1:].decode("ascii", "replace")
        else:
            host = str(ipaddress.ip_address(body))
        self.bound = (host, int.from_bytes(message[-2:], "big"))
        self.surplus, self._buffer = self._buffer, b""
        self.stage = Stage.CONNECTED
        return b""

    @staticmethod
    def _refusal(code: int) -> Socks5Error:
        text = REPLY_MESSAGES.get(code, f"unassigned reply code {code:#04x}")
        return Socks5Error(f"the SOCKS5 server answered: {text}", target=code in TARGET_REPLIES, reply=code)
