"""What the protocol core needs of AES, as types: a CTR keystream, one raw block and, for the middle proxy,
CBC. The caller passes an implementation in (`mtproxy.crypto.backend` builds one at start-up); the core never
picks one itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .secret import Secret

if TYPE_CHECKING:  # faketls imports this module
    from .faketls import ClientHello, HelloShape
    from .replay import ReplayCheck

Bytes = bytes | bytearray | memoryview


class Keystream(Protocol):
    """AES-256-CTR positioned somewhere in its stream; the same object encrypts and decrypts."""

    def update(self, data: Bytes, /) -> bytes: ...

    def update_into(self, data: Bytes, buf: bytearray | memoryview, /) -> int: ...


class CbcStream(Protocol):
    """AES-256-CBC without padding, chained across calls: one direction of a middle-proxy relay connection.
    `update` takes whole 16-byte blocks."""

    def update(self, data: Bytes, /) -> bytes: ...


# (key, iv, encrypt) -> one CBC direction (`mtproxy.crypto.backend.openssl_cbc`)
CbcFactory = Callable[[bytes, bytes, bool], CbcStream]


class SecretScan(Protocol):
    """Every secret of a table tried on one client, built once per secret set (`mtproxy.crypto.native`):
    the answers of `SecretTable`'s own loops in fewer instructions. `exclude` is an index already tried."""

    def find_obfs2(self, init: bytes, exclude: int) -> int: ...

    def find_tls(self, hello: ClientHello, domain: str | None, exclude: int) -> tuple[int, int] | None: ...


ScanFactory = Callable[[Sequence[Secret]], SecretScan]

# An obfuscated2 init's crypto in one step (`obfs2.start_streams` is the reference): given the 64 bytes and
# the secret's key (None for the proxy's header towards a DC), (the 64 bytes through the forward stream, that
# stream positioned after them, the reverse direction's key and counter block as 48 bytes).
InitStart = Callable[[bytes, bytes | None], tuple[bytes, Keystream, bytes]]

# The proxy's header towards a DC in fast mode in one step (`obfs2.dc_link`'s Python path is the reference):
# given the client's reverse key and counter block (48 bytes), the tag, the DC id, 64 random bytes, the client's
# stream and the bytes that came behind its init, (the header with those bytes re-enciphered for the DC behind
# it, the DC stream positioned after them), or None when the random bytes make an init that reads as another
# protocol (the caller draws again).
LinkStart = Callable[[bytes, bytes, int, bytes, Keystream, bytes], "tuple[bytes, Keystream] | None"]

# A fake-TLS ClientHello's two steps, each one call. Check: the whole record parsed (`faketls.parse_client_hello`
# is the reference: TlsFormatError when malformed) and, given a secret key, the FLIGHT_RANDOM random bytes, the
# certificate size and the ServerHello's shape, accepted under that key in the same call, as Accept does.
# Accept: given a parsed hello, a secret key, the random bytes, the size and the shape, (the client's clock,
# the server's flight) when the digest verifies under that key, else None (`faketls.accept_hello`'s Python
# path is the reference).
HelloCheck = Callable[[bytes, bytes | None, bytes, int, "HelloShape"], tuple["ClientHello", tuple[int, bytes] | None]]
HelloAccept = Callable[["ClientHello", bytes, bytes, int, "HelloShape"], tuple[int, bytes] | None]

class Aes(Protocol):
    """The AES the core runs on: `new_stream(key, iv)` starts a CTR stream at counter block `iv`;
    `encrypt_block(key, blocks)` is AES-256 of whole blocks (ECB: one in the secret scan's inner loop, a run
    of counter blocks for the fake certificate's keystream); `secret_scan`, when
    not None, builds a table's whole scan (SHA-256, HMAC and AES together) instead of that loop;
    `start_init`, when not None, does an init's key derivation, stream set-up and 64 bytes in one call, and
    `dc_link` the fast-mode DC header with the client's first bytes behind it, and `replay_check` the replay
    filter's lookup and insert on its memory;
    `tls_hello` and `tls_accept`, when not None, parse a fake-TLS ClientHello (and accept it under the hinted
    secret), and accept one under a further key: check its digest, build the server's flight."""

    @property
    def new_stream(self) -> Callable[[bytes, bytes], Keystream]: ...

    @property
    def encrypt_block(self) -> Callable[[bytes, bytes], bytes]: ...

    @property
    def secret_scan(self) -> ScanFactory | None: ...

    @property
    def start_init(self) -> InitStart | None: ...

    @property
    def dc_link(self) -> LinkStart | None: ...

    @property
    def replay_check(self) -> Callable[[memoryview], ReplayCheck] | None: ...

    @property
    def tls_hello(self) -> HelloCheck | None: ...

    @property
    def tls_accept(self) -> HelloAccept | None: ...
