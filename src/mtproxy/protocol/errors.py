"""What a peer or an operator did wrong, as typed values; "need more bytes" is a state, not an error."""

from __future__ import annotations

import enum


class ProtocolError(Exception):
    """Base of every error raised by the protocol core."""


class TlsFormatError(ProtocolError):
    """Bytes that are not the TLS shape we require (`faketls`)."""


class ProxyHeaderError(ProtocolError):
    """Bytes that are not a valid PROXY protocol header (`proxyheader`): the connection must be closed."""


class Socks5Error(ProtocolError):
    """A SOCKS5 exchange failed (`socks5`). `target` is True when the server blamed the target (another
    address may work), False when the upstream itself is the problem (protocol, authentication, its own
    failure); `reply` is the RFC 1928 reply code when the server sent one."""

    def __init__(self, message: str, *, target: bool = False, reply: int | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.reply = reply


class MiddleProxyError(ProtocolError):
    """A middle-proxy relay broke the protocol or refused us (`middleproxy`): the relay connection is over.
    `reason` is a stable token for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AdTagError(ProtocolError, ValueError):
    """Not an ad tag (`adtag`); the message says what is wrong with it and where to get one."""


class NatInfoError(ProtocolError, ValueError):
    """A `--nat-info` value the official proxy would refuse (`natinfo`); the message names the value."""


class ProxyConfigError(ProtocolError, ValueError):
    """proxy-multi.conf or proxy-secret is not what the official proxy accepts (`proxyconfig`). `line` is
    1-based, 0 when the error is about the whole file."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class SecretFormatError(ProtocolError, ValueError):
    """A secret or fake-TLS domain as written by an operator or a link is not valid."""


class RejectReason(enum.Enum):
    """Why a connection did not authenticate. The value is the stable token written to logs and metrics."""

    UNKNOWN_SECRET = "unknown-secret"  # obfuscated2 init matches no secret (also: random bytes)
    MODE_DISABLED = "mode-disabled"  # a classic/dd client where only fake-TLS is accepted, or vice versa
    REPLAY = "replay"  # an init or hello we have already seen
    TLS_MALFORMED = "tls-malformed"  # starts like TLS but is not a ClientHello we can parse
    TLS_BAD_HMAC = "tls-bad-hmac"  # a well-formed hello whose digest matches no secret (e.g. a browser)
    TLS_SKEW = "tls-skew"  # the digest verified but the timestamp is outside the window
    TLS_BAD_SNI = "tls-bad-sni"  # the SNI names none of the configured domains
    TLS_BAD_INIT = "tls-bad-init"  # after the TLS handshake, the obfuscated2 init did not decrypt
    HANDSHAKE_TIMEOUT = "handshake-timeout"  # the runtime gave up waiting for the handshake bytes
    HANDSHAKE_EOF = "handshake-eof"  # the client closed its side before the handshake was complete
    SCAN_BUSY = "scan-busy"  # no hint names its secret and the worker's scan budget had no room for it in time
    # --proxy-protocol: the connection comes from the load balancer, so these name no client (runtime/proxied.py)
    PROXY_UNTRUSTED = "proxy-untrusted"  # the source is not a --trusted-proxy address
    PROXY_HEADER_MISSING = "proxy-header-missing"  # the first bytes are not a PROXY header (a client's, say)
    PROXY_HEADER_MALFORMED = "proxy-header-malformed"  # a broken, oversized or cut-off PROXY header
    PROXY_HEADER_TIMEOUT = "proxy-header-timeout"  # no complete PROXY header within the handshake timeout
