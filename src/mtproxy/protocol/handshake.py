"""The server-side handshake as a state machine over bytes: feed what arrived, get the next step.

Steps: NeedMore (maybe with bytes to send), Rejected (with everything received, for the mask),
Authenticated (an AuthResult: the client's secret, DC and ciphers and the stream bytes that followed the init),
or ScanNeeded: on a large table, a client no hint identifies costs a scan of every secret, and the caller
decides when that runs (`Handshake.scan`), so a flood of such clients cannot starve the others."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from . import faketls, obfs2
from .cipher import Aes, Keystream, SecretScan
from .errors import RejectReason, TlsFormatError
from .replay import ReplayFilter
from .secret import Secret

RandomBytes = Callable[[int], bytes]

OBFS2_REPLAY_TTL = 24 * 3600.0  # no timestamp in a classic init: remember as long as capacity allows


class SecretTable:
    """The live set of secrets, with the per-secret state the hot path needs precomputed. `aes` is what the
    scans run on: its `secret_scan` (the native library) when it has one, else the loops below."""

    def __init__(self, entries: Sequence[tuple[str, Secret]], aes: Aes) -> None:
        self.ids: tuple[str, ...] = tuple(secret_id for secret_id, _ in entries)
        self.secrets: tuple[Secret, ...] = tuple(secret for _, secret in entries)
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("secret ids must be unique")
        self._keyed = tuple(faketls.keyed_hmac(secret.key) for secret in self.secrets)
        by_domain: dict[str, list[int]] = {}
        for index, secret in enumerate(self.secrets):
            if secret.domain is not None:
                by_domain.setdefault(secret.domain, []).append(index)
        self._by_domain = {domain: tuple(indexes) for domain, indexes in by_domain.items()}
        self._aes = aes
        self._scan: SecretScan | None = aes.secret_scan(self.secrets) if aes.secret_scan is not None else None

    def __len__(self) -> int:
        return len(self.secrets)

    def keyed_hmac(self, index: int) -> hmac.HMAC:
        return self._keyed[index]

    def check_hello(self, record: bytes, index: int, drawn: bytes = b"", cert_size: int = 0,
                    shape: faketls.HelloShape = faketls.DEFAULT_SHAPE,
                    ) -> tuple[faketls.ClientHello, tuple[int, bytes] | None]:
        """A whole ClientHello record parsed (TlsFormatError when malformed) and, for `index` >= 0, accepted
        under that secret (`faketls.check_hello`)."""
        if index < 0:
            return faketls.check_hello(self._aes, record)
        return faketls.check_hello(self._aes, record, self.secrets[index].key, drawn, cert_size, self._keyed[index],
                                   shape)

    def accept_hello(self, hello: faketls.ClientHello, index: int, drawn: bytes, cert_size: int,
                     shape: faketls.HelloShape = faketls.DEFAULT_SHAPE) -> tuple[int, bytes] | None:
        """The client's clock and the server's flight if the hello's digest verifies under secret `index`
        (`faketls.accept_hello`), else None."""
        return faketls.accept_hello(self._aes, hello, self.secrets[index].key, drawn, cert_size, self._keyed[index],
                                    shape)

    def with_domain(self, domain: str | None) -> tuple[int, ...]:
        """The indexes of the secrets whose fake-TLS domain is `domain`."""
        return self._by_domain.get(domain, ()) if domain is not None else ()

    def find_obfs2(self, init: bytes, exclude: int) -> int:
        """The full scan: the first secret in table order, `exclude` left out, whose key decrypts this
        64-byte init to a known tag; -1 when none does."""
        if self._scan is not None:
            return self._scan.find_obfs2(init, exclude)
        trial = obfs2.InitTrial(init, self._aes)
        for index, secret in enumerate(self.secrets):
            if index != exclude and trial.matches(secret.key):
                return index
        return -1

    def find_tls(self, hello: faketls.ClientHello, domain: str | None, exclude: int) -> tuple[int, int] | None:
        """The full scan: the first secret, `exclude` left out, under which the hello's digest verifies —
        those whose domain is `domain` first, then the rest in table order — and the client's clock; None
        when none does."""
        if self._scan is not None:
            return self._scan.find_tls(hello, domain, exclude)
        group = self.with_domain(domain)
        in_group = frozenset(group)
        rest = (index for index in range(len(self.secrets)) if index not in in_group)
        for index in (*group, *rest):
            if index == exclude:
                continue
            timestamp = faketls.client_timestamp(self._keyed[index], hello)
            if timestamp is not None:
                return index, timestamp
        return None


@dataclass(frozen=True)
class HandshakeSettings:
    allow_obfuscated: bool = True  # classic and dd clients (obfuscated2 without TLS)
    allow_faketls: bool = True
    tls_domains: frozenset[str] = frozenset()  # SNI must be one of these; empty accepts any SNI
    max_skew_past: float = 600.0  # a hello this old is refused: old captures fail
    max_skew_future: float = 600.0  # phones with a fast clock still pass
    cert_size: int = 2500  # size of the fake encrypted certificate record
    cert_size_jitter: int = 0  # real sites' flights vary by a few bytes (tickets, OCSP): vary ours too
    hello_shape: faketls.HelloShape = faketls.DEFAULT_SHAPE  # the mask site's ServerHello (protocol.flight)
    # from this many secrets on, trying every secret is the caller's to schedule (ScanNeeded); below it the
    # scan is cheap enough to run inline, as is a fake-TLS SNI group of fewer secrets than this
    inline_scan_limit: int = 64


@dataclass
class AuthResult:
    """An authenticated client: which secret, which DC, and the client leg's ciphers."""

    secret_index: int
    secret_id: str
    tag: bytes
    dc_id: int
    fake_tls: bool
    from_client: Keystream = field(repr=False)  # positioned after the 64-byte init
    to_client_keys: obfs2.StreamKeys = field(repr=False)
    pending: bytes = field(repr=False)  # obfuscated stream bytes that followed the init, still encrypted
    tls_reader: faketls.TlsRecordReader | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NeedMore:
    send: bytes = b""


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    received: bytes = field(repr=False)  # everything read so far, to replay to the mask
    maskable: bool = True  # False once we have answered as a proxy: then just close


@dataclass(frozen=True)
class Authenticated:
    auth: AuthResult
    send: bytes = b""


@dataclass(frozen=True)
class ScanNeeded:
    """Only trying `cost` more secrets can tell whose client this is. The caller calls `Handshake.scan` when
    it has the time; bytes that arrive meanwhile may be fed and are kept."""

    cost: int


Step = NeedMore | Rejected | Authenticated | ScanNeeded

_START, _OBFS2, _TLS_HELLO, _TLS_INIT, _DONE, _OBFS2_SCAN, _TLS_SCAN = range(7)
_MAX_TLS_INIT_BUFFER = 2 * (faketls.RECORD_HEADER_SIZE + faketls.MAX_CLIENT_RECORD)


class Handshake:
    """One connection's handshake. Time, randomness and the AES come from the caller, so tests are exact."""

    def __init__(
        self,
        table: SecretTable,
        settings: HandshakeSettings,
        replay: ReplayFilter,
        random_bytes: RandomBytes,
        *,
        aes: Aes,
        hint: int | None = None,
        replay_guard: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._table = table
        self._settings = settings
        self._replay = replay
        self._random = random_bytes
        self._aes = aes
        self._hint = hint
        self._replay_guard = replay_guard
        self._state = _START
        self._received = bytearray()
        self._secret_index = -1
        self._tls_reader: faketls.TlsRecordReader | None = None
        self._tls_payload = bytearray()
        self._hello: faketls.ClientHello | None = None  # parsed, while a fake-TLS scan waits
        self._drawn: tuple[bytes, int] | None = None  # the server flight's random bytes and size, once drawn
        self._now = 0.0

    @property
    def received(self) -> bytes:
        return bytes(self._received)

    @property
    def buffered(self) -> int:
        """How many bytes were received so far."""
        return len(self._received)

    def feed(self, data: bytes, now: float) -> Step:
        if self._state == _DONE:
            raise RuntimeError("handshake already finished")
        if self._state in (_OBFS2_SCAN, _TLS_SCAN):
            self._received += data  # the client's next bytes, kept for after the scan
            return NeedMore()
        return self._finish(self._advance(data, now))

    def scan(self, now: float) -> Step:
        """Run the scan a ScanNeeded asked for: the handshake goes on as if it had never waited."""
        self._now = now
        if self._state == _OBFS2_SCAN:
            return self._finish(self._scan_obfs2(self._hint_index()))
        if self._state == _TLS_SCAN:
            assert self._hello is not None
            return self._finish(self._scan_tls(self._hello, now))
        raise RuntimeError("no scan is waiting")

    def _finish(self, step: Step) -> Step:
        if isinstance(step, ScanNeeded):
            self._state = _OBFS2_SCAN if self._state == _OBFS2 else _TLS_SCAN
        elif not isinstance(step, NeedMore):
            self._state = _DONE
        return step

    def _reject(self, reason: RejectReason, *, maskable: bool = True) -> Rejected:
        return Rejected(reason, bytes(self._received), maskable)

    def _advance(self, data: bytes, now: float) -> Step:
        self._now = now
        if self._state == _TLS_INIT:
            return self._feed_tls_init(data)
        self._received += data
        if self._state == _START:
            head = bytes(self._received[: len(faketls.HELLO_PREFIX)])
            looks_tls = self._settings.allow_faketls and faketls.HELLO_PREFIX.startswith(head)
            if looks_tls and len(head) < len(faketls.HELLO_PREFIX):
                return NeedMore()
            if looks_tls:
                self._state = _TLS_HELLO
            elif self._settings.allow_obfuscated:
                self._state = _OBFS2
            else:
                return self._reject(RejectReason.MODE_DISABLED)
        if self._state == _OBFS2:
            return self._feed_obfs2()
        return self._feed_tls_hello(now)

    def _check_replay(self, digest: bytes, now: float, ttl: float) -> bool:
        if self._replay_guard is None:
            return self._replay.check_and_add(digest, now, ttl)
        with self._replay_guard():
            return self._replay.check_and_add(digest, now, ttl)

    def _replayed(self, digest: bytes, now: float) -> bool:
        """A replayed capture is refused before the scan it would cost (a lookup: nothing is remembered)."""
        if self._replay_guard is None:
            return self._replay.seen(digest, now)
        with self._replay_guard():
            return self._replay.seen(digest, now)

    def _hint_index(self) -> int:
        hint = self._hint
        return hint if hint is not None and 0 <= hint < len(self._table) else -1

    def _scan_or_defer(self, cost: int) -> ScanNeeded | None:
        """ScanNeeded when trying `cost` more secrets is the caller's to schedule; None to scan inline."""
        if cost > 0 and len(self._table) >= self._settings.inline_scan_limit:
            return ScanNeeded(cost)
        return None

    def _feed_obfs2(self) -> Step:
        if len(self._received) < obfs2.INIT_SIZE:
            # No client starts with these words (HTTP, ef, dd/ee tags): hand such probes to the mask at
            # once, as a web server would answer them, instead of after the handshake timeout.
            if obfs2.is_forbidden_start(bytes(self._received[:4])):
                return self._reject(RejectReason.UNKNOWN_SECRET)
            return NeedMore()
        init = bytes(self._received[: obfs2.INIT_SIZE])
        hint = self._hint_index()
        if hint >= 0:
            # decoded outright: it is usually the client's, and a trial first would cost a hash and an AES
            # block more
            decoded = obfs2.decode_init(init, self._table.secrets[hint].key, self._aes)
            if decoded is not None:
                return self._obfs2_found(init, hint, decoded)
        if self._replayed(init[8:24], self._now):
            return self._reject(RejectReason.REPLAY)
        deferred = self._scan_or_defer(len(self._table) - (hint >= 0))
        return deferred if deferred is not None else self._scan_obfs2(hint)

    def _scan_obfs2(self, exclude: int) -> Step:
        init = bytes(self._received[: obfs2.INIT_SIZE])
        index = self._table.find_obfs2(init, exclude)
        decoded = obfs2.decode_init(init, self._table.secrets[index].key, self._aes) if index >= 0 else None
        if decoded is None:
            return self._reject(RejectReason.UNKNOWN_SECRET)
        return self._obfs2_found(init, index, decoded)

    def _obfs2_found(self, init: bytes, index: int, decoded: obfs2.DecodedInit) -> Step:
        if self._check_replay(init[8:24], self._now, OBFS2_REPLAY_TTL):
            return self._reject(RejectReason.REPLAY)
        return Authenticated(self._auth_result(index, decoded, fake_tls=False, pending=bytes(self._received[64:])))

    def _feed_tls_hello(self, now: float) -> Step:
        received = self._received
        if len(received) < faketls.RECORD_HEADER_SIZE:
            return NeedMore()
        try:
            total = faketls.hello_record_length(bytes(received[: faketls.RECORD_HEADER_SIZE]))
        except TlsFormatError:
            return self._reject(RejectReason.TLS_MALFORMED)
        if len(received) < total:
            return NeedMore()
        table = self._table
        hint = self._hint_index()
        draws = self._draws() if hint >= 0 else (b"", 0)  # the hinted secret, usually the client's, is tried at once
        try:
            hello, accepted = table.check_hello(bytes(received[:total]), hint, *draws, self._settings.hello_shape)
            faketls.choose_cipher_suite(hello)
        except TlsFormatError:
            return self._reject(RejectReason.TLS_MALFORMED)
        domains = self._settings.tls_domains
        if domains and hello.sni not in domains:
            return self._reject(RejectReason.TLS_BAD_SNI)
        if accepted is not None:
            return self._tls_found(hello, hint, accepted, now)
        group = table.with_domain(hello.sni)
        # the operator's per-user-group domains: a new client costs a few tries, never a scan
        if len(group) < self._settings.inline_scan_limit:
            for index in group:
                accepted = self._accept(hello, index) if index != hint else None
                if accepted is not None:
                    return self._tls_found(hello, index, accepted, now)
        if self._replayed(hello.random, now):
            return self._reject(RejectReason.REPLAY)
        self._hello = hello
        deferred = self._scan_or_defer(len(table) - (hint >= 0))
        return deferred if deferred is not None else self._scan_tls(hello, now)

    def _scan_tls(self, hello: faketls.ClientHello, now: float) -> Step:
        # the SNI's group first: a large group was not tried inline; a small one costs a few tries again
        found = self._table.find_tls(hello, hello.sni, self._hint_index())
        accepted = self._accept(hello, found[0]) if found is not None else None
        if found is None or accepted is None:
            return self._reject(RejectReason.TLS_BAD_HMAC)
        return self._tls_found(hello, found[0], accepted, now)

    def _accept(self, hello: faketls.ClientHello, index: int) -> tuple[int, bytes] | None:
        return self._table.accept_hello(hello, index, *self._draws(), self._settings.hello_shape)

    def _draws(self) -> tuple[bytes, int]:
        """The server flight's random bytes and certificate size, drawn once (the size's jitter first) however
        many secrets are tried."""
        if self._drawn is None:
            size = self._cert_size()
            self._drawn = faketls.draw_flight_random(self._random), size
        return self._drawn

    def _tls_found(self, hello: faketls.ClientHello, index: int, accepted: tuple[int, bytes], now: float) -> Step:
        self._hello = None
        timestamp, flight = accepted
        skew = now - timestamp
        if skew > self._settings.max_skew_past or -skew > self._settings.max_skew_future:
            return self._reject(RejectReason.TLS_SKEW)
        ttl = self._settings.max_skew_past + self._settings.max_skew_future
        if self._check_replay(hello.random, now, ttl):
            return self._reject(RejectReason.REPLAY)
        self._secret_index = index
        self._state = _TLS_INIT
        self._tls_reader = faketls.TlsRecordReader()
        total = len(hello.record)
        if len(self._received) == total:
            return NeedMore(flight)
        rest = bytes(self._received[total:])
        del self._received[total:]  # _feed_tls_init records them again
        step = self._feed_tls_init(rest)
        if isinstance(step, Authenticated):
            return Authenticated(step.auth, flight)
        if isinstance(step, NeedMore):
            return NeedMore(flight)
        return step

    def _cert_size(self) -> int:
        size, jitter = self._settings.cert_size, self._settings.cert_size_jitter
        if jitter > 0:
            size += int.from_bytes(self._random(2), "big") % (2 * jitter + 1) - jitter
        return min(max(size, 1), faketls.MAX_RECORD_PAYLOAD)

    def _feed_tls_init(self, data: bytes) -> Step:
        assert self._tls_reader is not None
        self._received += data
        try:
            payload = self._tls_reader.unwrap(data)
        except TlsFormatError:
            return self._reject(RejectReason.TLS_BAD_INIT, maskable=False)
        if self._tls_payload or len(payload) < obfs2.INIT_SIZE:  # the init comes in pieces: gather them
            self._tls_payload += payload
            if len(self._tls_payload) < obfs2.INIT_SIZE:
                if len(self._received) > _MAX_TLS_INIT_BUFFER + 20000:
                    return self._reject(RejectReason.TLS_BAD_INIT, maskable=False)
                return NeedMore()
            payload = bytes(self._tls_payload)
        decoded = obfs2.decode_init(payload[: obfs2.INIT_SIZE], self._table.secrets[self._secret_index].key, self._aes)
        if decoded is None:
            return self._reject(RejectReason.TLS_BAD_INIT, maskable=False)
        auth = self._auth_result(self._secret_index, decoded, fake_tls=True, pending=payload[obfs2.INIT_SIZE :])
        auth.tls_reader = self._tls_reader
        return Authenticated(auth)

    def _auth_result(self, index: int, decoded: obfs2.DecodedInit, *, fake_tls: bool, pending: bytes) -> AuthResult:
        return AuthResult(
            secret_index=index,
            secret_id=self._table.ids[index],
            tag=decoded.tag,
            dc_id=decoded.dc_id,
            fake_tls=fake_tls,
            from_client=decoded.from_initiator,
            to_client_keys=decoded.to_initiator,
            pending=pending,
        )
