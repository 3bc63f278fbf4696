"""An authenticated client's session: dial its DC, then relay both ways, each direction deciphered and
re-enciphered (or, in fast mode, DC->client forwarded untouched) and, for fake-TLS, framed as records;
bulk fast-mode downloads switch to a raw relay (rawrelay.py).

A session is the client connection that took the handshake (connection.py subclasses it): one object per
client socket from accept to close, so authenticating allocates no second protocol, moves no registry
entry and does not stop reading the client. What the client sends while its DC is dialled is kept (at most
DIAL_HOLD bytes, then reading pauses) and goes out behind the DC header.

Through the middle proxy (Phase.MIDDLE, runtime/middle.py) there is no DC socket: the client's stream is
deciphered and cut into its transport's packets, each sent to the relay as RPC_PROXY_REQ over a shared
relay link, and each answer is framed in the client's transport, enciphered (and put in records for
fake-TLS) and written to the client."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from mtproxy.accounts.bucket import TokenBucket
from mtproxy.crypto import ctr
from mtproxy.protocol import faketls, obfs2
from mtproxy.protocol.cipher import Keystream
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.handshake import AuthResult
from mtproxy.protocol.middleproxy_messages import forwardable
from mtproxy.protocol.transport import FrameDecoder, encode_frame

from . import rawrelay
from .buffers import send
from .dc import DcTarget
from .enforce import Grant
from .pair import Dial, Leg, Pair, Phase
from .relays import RelayClient
from .upstream import SocksDial

log = logging.getLogger("mtproxy.session")

_NEVER = -(1 << 62)  # _relayed once a raw relay could not be set up: the transport path goes on
_IN, _OUT = 1, 2  # _held: the direction(s) a rate limit holds (client->DC: the client is not read)
# client bytes kept while the DC is dialled, before the client is no longer read: a client's first requests
# fit, and the kernel's receive buffer holds the rest
DIAL_HOLD = 64 * 1024
# the largest client packet the relay path forwards (MTProxy mtproto-proxy.c MAX_POST_SIZE)
MAX_RELAYED_PACKET = 262144 * 4 - 4096
# answers a middle-proxy client may leave unread before it is taken for one that never reads: a shared relay
# link cannot be paused for one client (a few file parts of up to 1 MiB in flight fit)
MIDDLE_BACKLOG = 8 * 1024 * 1024


class Session(Pair):
    """Client->DC: the client's bytes are deciphered and re-enciphered in the receive buffer (`buffer_updated`).
    DC->client: `_up_buffer_updated`; in fast mode the DC's bytes are already what the client expects."""

    __slots__ = ("_early", "_from_client", "_from_dc", "_grant", "_held", "_hold_in", "_hold_out", "_meter",
                 "_middle", "_packets", "_raw", "_relayed", "_shaped", "_short", "_tls", "_tls_reader",
                 "_to_client", "_to_dc", "secret_id")

    def _open(self, auth: AuthResult, grant: Grant) -> None:
        """The handshake authenticated the client and its secret's limits admitted it (connection.py)."""
        self._begin(False)
        self._early: bytearray | None = None  # what the client sent while its DC is dialled
        self.secret_id = auth.secret_id
        self._from_client: Keystream = auth.from_client
        self._tls_reader = auth.tls_reader
        self._tls = auth.fake_tls
        # --tls-records shaped: no DC->client record shorter than a TLS 1.3 AEAD record (see _shaped_write)
        self._shaped = self._tls and self.ctx.shape_records
        # a short DC read held for what follows (made at the first: most sessions never hold one)
        self._short: rawrelay.ShortHold | None = None
        self._to_dc: Keystream  # set by connect(), before the client is read again
        self._from_dc: Keystream | None = None  # None in fast mode (both)
        self._to_client: Keystream | None = None
        self._relayed = 0  # DC->client bytes through the transport, until a raw relay takes over
        self._raw: rawrelay.SpliceRelay | rawrelay.RecordRelay | None = None
        self._middle: RelayClient | None = None  # through the middle proxy: the relay handle
        self._packets: FrameDecoder | None = None  # ... and the client's packets as they complete
        # per-secret limits (runtime/enforce.py): `_meter` is the grant only while the secret has a quota or
        # a rate limit, so a session without either never calls into it per read
        self._grant: Grant | None = grant
        self._meter: Grant | None = grant if grant.metered else None
        self._held = 0  # _IN | _OUT: reading paused by the rate limit, until _hold_in / _hold_out fire
        self._hold_in: asyncio.TimerHandle | None = None
        self._hold_out: asyncio.TimerHandle | None = None
        grant.holder = self
        self.ctx.session_opened(grant)

    def connect(self, auth: AuthResult) -> None:
        """Dial the client's DC (what the client sends meanwhile is held: `_before_relay`), or hand the
        session to a middle-proxy relay when the worker runs that path and one takes it."""
        ctx = self.ctx
        if ctx.middle is not None and self._open_middle(auth):
            return
        pending = auth.pending
        # what the client sent along with its handshake goes out with the DC header: one send, not two
        link = obfs2.dc_link(auth.to_client_keys, auth.tag, auth.dc_id, ctx.random_bytes, fast=ctx.fast_mode,
                             from_client=self._from_client, pending=pending)
        self._to_dc = link.to_dc
        self._from_dc = link.from_dc
        self._to_client = link.to_client
        target = ctx.dc_table.lookup(auth.dc_id)
        done = partial(self._dc_dialled, target, link.first, len(pending))
        via = ctx.via
        if via is None:
            self._dial = Dial(ctx, target.addresses, self._leg, done)
        else:  # the upstream's reply comes before `first` goes out: the dial hands over a connected socket
            self._dial = SocksDial(ctx, via, target.dc, target.addresses, self._leg, done)
        self._dial.start()

    def _leg(self) -> Leg:
        return Leg(self)

    def _dc_dialled(self, target: DcTarget, first: bytes, pending: int, dialled: bool | None) -> None:
        ctx = self.ctx
        dial, self._dial = self._dial, None
        if dialled is None:
            ctx.guard.out_of_fds()  # our shortage, not the DC's: neither an upstream failure nor its warning
            self.close()
            return
        if self.phase == Phase.CLOSED:  # aborted meanwhile (a removed secret, shutdown)
            return
        up = self.up
        if not dialled or up is None:
            ctx.counters.upstream_failed += 1
            if not isinstance(dial, SocksDial):
                log.warning("DC %d unreachable at %s", target.dc, ", ".join(map(str, target.addresses)))
            elif not dial.upstream_down:  # a failing upstream has its own warning, once per interval
                log.warning("DC %d unreachable through the SOCKS5 upstream %s: %s", target.dc,
                            ctx.via.address if ctx.via is not None else "?", dial.error)
            self.close()
            return
        up.write(first)
        if pending:
            ctx.count_in(self.secret_id, pending)
            if self._meter is not None and self._meter.moved(pending, 0) is not None:
                self.close()
                return
        early, self._early = self._early, None
        if early is None:
            self._relaying(paused=False)
            return
        # behind `first`, through the relay path (framing, ciphers, accounting, limits, backpressure)
        self.phase = Phase.RELAY
        self._buffers.recv[:len(early)] = early
        self.buffer_updated(len(early))
        if self.phase == Phase.CLOSED:
            return
        # reading stopped for a full hold resumes, unless a rate hold or the DC's backpressure holds it now
        # (each resumes it itself)
        self._relaying(paused=len(early) >= self._hold_limit() and not self._held & _IN
                       and not up.get_write_buffer_size())

    def _hold_limit(self) -> int:
        limits = self.ctx.limits
        return min(DIAL_HOLD, limits.buffer_size, limits.read_size)

    def _early_buffer(self) -> memoryview:
        """Where a read goes before the relay: while the DC is dialled, no more than the hold has room for."""
        recv_in = self._buffers.recv_in
        if self.phase != Phase.CONNECTING:
            return recv_in
        early = self._early
        return recv_in[: self._hold_limit() - (len(early) if early is not None else 0)]

    def _before_relay(self, nbytes: int) -> None:
        """A read before the relay: while the DC is dialled it is held (reading stops once the hold is
        full); after a close it is dropped. Through the middle proxy every read comes here."""
        if self.phase != Phase.CONNECTING:
            if self.phase == Phase.MIDDLE:
                self._middle_read(nbytes)
            return
        data = self._buffers.recv[:nbytes]
        early = self._early
        if early is None:
            self._early = early = data
        else:
            early += data
        if len(early) >= self._hold_limit():
            self.transport.pause_reading()

    # ----------------------------------------------------------------- client -> DC

    def get_buffer(self, sizehint: int) -> memoryview:
        up = self.up
        if up is None or self.phase != Phase.RELAY:
            return self._early_buffer()
        # no more than the DC can take
        return self._buffers.offer(up.get_write_buffer_size(), self.up_fd, self.activity)

    def buffer_updated(self, nbytes: int) -> None:
        """The payload is deciphered and re-enciphered where it was read."""
        if self.phase != Phase.RELAY:
            self._before_relay(nbytes)
            return
        self.activity += nbytes
        buffers = self._buffers
        buf = buffers.recv
        if self._tls_reader is not None:
            try:
                layout = self._tls_reader.layout(memoryview(buf)[:nbytes])
            except faketls.TlsFormatError:
                log.info("client %s broke TLS framing; closing", self.peer[0])
                self.close()
                return
        else:
            layout = faketls.plain_layout(nbytes)
        n = ctr.transform_upload(self._from_client, self._to_dc, buf, layout)
        if not n:
            return
        up = self.up
        assert up is not None
        send(up, self.up_fd, memoryview(buf)[:n])
        self.ctx.count_in(self.secret_id, n)
        if self._meter is not None:
            self._metered_in(n)

    # ----------------------------------------------------------------- DC -> client

    def _up_get_buffer(self, sizehint: int) -> memoryview:
        # no more than the client can take; fake-TLS adds a header per 16 KiB to what is read here
        return self._buffers.offer(self.transport.get_write_buffer_size(), self.fd, self.activity, self._tls)

    def _up_buffer_updated(self, nbytes: int) -> None:
        client = self.transport
        if client.is_closing():
            return
        self.activity += nbytes
        buffers = self._buffers
        data = memoryview(buffers.recv)[:nbytes]
        if self._from_dc is not None:
            # not fast mode: decipher what the DC sent, re-encipher for the client below
            self._from_dc.update_into(data, buffers.tmp)
            data = memoryview(buffers.tmp)[:nbytes]
        if self._tls:
            if self._shaped:
                self._shaped_write(client, data)
            else:
                out = buffers.out_view
                send(client, self.fd, out[: faketls.frame_records(data, out, self._to_client)])
            if self._to_client is None:
                self._count_towards_raw(client, nbytes)
        elif self._to_client is not None:
            self._to_client.update_into(data, buffers.out)
            send(client, self.fd, buffers.out_view[:nbytes])
        else:  # fast mode: the DC's bytes are already what the client expects
            send(client, self.fd, data)
            self._count_towards_raw(client, nbytes)
        self.ctx.count_out(self.secret_id, nbytes)
        if self._meter is not None:
            self._metered_out(nbytes)

    # ----------------------------------------------------------------- shaped records (--tls-records shaped)

    def _shaped_write(self, client: asyncio.Transport, data: memoryview) -> None:
        """`data` in records no shorter than faketls.MIN_AEAD_RECORD: a read too short for one is held and
        goes out in front of the next (or alone after rawrelay.SHORT_WAIT: `_send_short`)."""
        cipher = self._to_client
        short = self._take_short()
        if short:  # rare: the held bytes are enciphered already, so this read is too, then framed as is
            data = memoryview(short + (cipher.update(data) if cipher is not None else bytes(data)))
            cipher = None
        if len(data) < faketls.MIN_AEAD_RECORD:
            self._hold_short(cipher.update(data) if cipher is not None else bytes(data))
            return
        out = self._buffers.out_view
        send(client, self.fd, out[: faketls.frame_records(data, out, cipher, shaped=True)])

    def _shaped_stream(self, data: bytes) -> bytes:
        """Middle-proxy path: enciphered `data` with any held bytes in front; b"" when it is held itself."""
        short = self._take_short()
        if short:
            data = short + data
        if len(data) < faketls.MIN_AEAD_RECORD:
            self._hold_short(data)
            return b""
        return faketls.wrap_records(data, faketls.SHAPED_RECORD_PAYLOAD, shaped=True)

    def _hold_short(self, short: bytes) -> None:
        if self._short is None:
            self._short = rawrelay.ShortHold(self.ctx.loop, self._send_short)
        self._short.hold(short)

    def _take_short(self) -> bytes:
        return self._short.take() if self._short is not None else b""

    def _send_short(self) -> None:
        """Nothing followed the held bytes in time (or the session ends): one short record after all."""
        short = self._take_short()
        client = self.transport
        if short and not client.is_closing():
            client.write(faketls.record_header(len(short)) + short)

    def _up_eof(self) -> None:
        self._send_short()  # before the half-close
        super()._up_eof()

    # ----------------------------------------------------------------- backpressure (the client is full)

    # never while a raw relay runs: the client's transport is not written then, and the DC transport must
    # stay paused because the raw relay reads that socket
    def pause_writing(self) -> None:
        if self.up is not None and self._raw is None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        up = self.up
        if up is None or self.phase == Phase.CLOSED or self._raw is not None or self._held & _OUT:
            return
        # the low-water mark is 0: the buffer is empty now, the moment a bulk session can switch to a raw relay
        if self._from_dc is None and self._client_drained(self.transport):
            return
        up.resume_reading()

    # ----------------------------------------------------------------- raw relay (fast mode)

    def _count_towards_raw(self, client: asyncio.Transport, nbytes: int) -> None:
        self._relayed += nbytes
        self._client_drained(client)

    def _client_drained(self, client: asyncio.Transport) -> bool:
        """Switch to a raw relay if this fast-mode session is due and the client's transport holds nothing
        (a backlogged client gets here from resume_writing once its buffer is empty). True if switched."""
        if self._raw is not None or self._relayed < rawrelay.RAW_AFTER or client.get_write_buffer_size():
            return False
        if not self.ctx.raw_relays or not (rawrelay.RECORDS_AVAILABLE if self._tls else rawrelay.SPLICE_AVAILABLE):
            return False
        if self._meter is not None and self._meter.rate_out is not None:
            return False  # a rate-limited download stays where the bucket can pause it
        self._start_raw()
        return self._raw is not None

    def _start_raw(self) -> None:
        """A bulk session: hand DC->client to a raw relay (splice, or record-framed reads for fake-TLS).
        Only with the client's write buffer empty, since from now on the client socket is written beside
        its transport."""
        up = self.up
        assert up is not None
        ctx = self.ctx
        bound = ctx.limits.buffer_size
        held = self._short.held if self._short is not None else b""  # taken once the relay stands
        try:
            if self._tls:
                self._raw = rawrelay.RecordRelay(ctx.loop, ctx.record_buffers, self.up_fd, self.fd,
                                                 self._raw_bytes, self._up_eof, self.close, bound,
                                                 shaped=self._shaped, held=held)
                self._take_short()  # the relay holds it now
            else:
                self._raw = rawrelay.SpliceRelay(ctx.loop, ctx.pipes, self.up_fd, self.fd,
                                                 self._raw_bytes, self._up_eof, self.close, bound)
        except OSError as exc:  # out of descriptors: the transport path goes on
            log.debug("raw relay unavailable: %s", exc)
            self._relayed = _NEVER
            return
        up.pause_reading()

    def _raw_bytes(self, n: int) -> None:
        self.activity += n
        self.ctx.count_out(self.secret_id, n)
        if self._meter is not None and self._meter.moved(0, n) is not None:
            # not from inside the raw relay's read: it still holds this read's bytes (a shared pipe)
            self.ctx.loop.call_soon(self.close)

    def _stop_raw(self) -> None:
        self._send_short()  # the session closes: a held short read goes out (the transport path's)
        raw, self._raw = self._raw, None
        if raw is None:
            return
        client = self.transport
        if not client.is_closing():
            pending = raw.take_pending()  # whole records (fake-TLS) the client is still owed
            if pending:
                client.write(pending)
        raw.close()

    def _ended(self) -> None:
        self.ctx.ended(self, self.secret_id)
        middle, self._middle = self._middle, None
        if middle is not None:
            middle.close()
        for hold in (self._hold_in, self._hold_out):
            if hold is not None:
                hold.cancel()
        self._hold_in = self._hold_out = None
        self._take_short()
        grant, self._grant, self._meter = self._grant, None, None
        if grant is not None:
            grant.close()

    # ----------------------------------------------------------------- through the middle proxy

    def _open_middle(self, auth: AuthResult) -> bool:
        """A relay handle for this client (runtime/middle.py), or False: direct mode for it."""
        ctx = self.ctx
        middle = ctx.middle
        assert middle is not None
        handle = middle.open(self, auth.secret_id, auth.dc_id, auth.tag, self.peer, self._our_address())
        if handle is None:
            return False
        self._middle = handle
        self._packets = FrameDecoder(auth.tag, strict=True, max_frame=MAX_RELAYED_PACKET)
        self._to_client = auth.to_client_keys.new_cipher()
        self.phase = Phase.MIDDLE
        self._seen_activity = self.activity
        self._quiet_since = ctx.loop.time()
        if auth.pending:  # what came with the handshake: already out of its records, still enciphered
            self._client_stream(self._from_client.update(auth.pending), len(auth.pending))
        return True

    def _our_address(self) -> tuple[str, int]:
        """The address and port the client connected to, as the relay is told (RPC_PROXY_REQ)."""
        sock = self.transport.get_extra_info("sockname")
        return (str(sock[0]), int(sock[1])) if sock else ("", 0)

    def _middle_read(self, nbytes: int) -> None:
        view = memoryview(self._buffers.recv)[:nbytes]
        if self._tls_reader is not None:
            try:
                data = self._tls_reader.payload(view)
            except faketls.TlsFormatError:
                log.info("client %s broke TLS framing; closing", self.peer[0])
                self.close()
                return
        else:
            data = view
        if data:
            self._client_stream(self._from_client.update(data), len(data))

    def _client_stream(self, plain: bytes, n: int) -> None:
        """Deciphered client bytes: each completed packet goes to the relay, as the official proxy sends
        it (a padded transport's packet cut to a multiple of 4; one it would not forward is dropped)."""
        self.activity += n
        packets = self._packets
        handle = self._middle
        assert packets is not None and handle is not None
        try:
            completed = packets.feed_packets(plain)
        except ProtocolError as exc:
            log.info("client %s broke its transport framing (%s); closing", self.peer[0], exc)
            self.close()
            return
        padded = handle.transport_tag == obfs2.TAG_PADDED
        for packet, quick_ack in completed:
            if padded:
                packet = packet[: len(packet) & -4]
            if forwardable(packet):
                handle.send(packet, quick_ack)
            else:
                handle.refused_packet()
        self.ctx.count_in(self.secret_id, n)
        if self._meter is not None:
            self._metered_in(n)

    def _to_client_stream(self, plain: bytes) -> None:
        """Enciphered for the client (in records for fake-TLS) and written; a client that leaves more than
        MIDDLE_BACKLOG unread is closed, since the relay link it shares cannot wait for it."""
        client = self.transport
        to_client = self._to_client
        assert to_client is not None
        data = to_client.update(plain)
        if self._shaped:
            data = self._shaped_stream(data)
            if data:
                client.write(data)
        else:
            client.write(faketls.wrap_records(data) if self._tls else data)
        if client.get_write_buffer_size() > max(MIDDLE_BACKLOG, self.ctx.limits.buffer_size):
            log.info("client %s leaves its answers unread; closing", self.peer[0])
            self.close()

    def eof_received(self) -> bool:
        if self.phase == Phase.MIDDLE:  # the relay protocol has no half-close: the client is done, as the
            self.close()  # official proxy takes it (it closes on the client's EOF)
            return False
        return super().eof_received()

    # RelaySink: what the relay pool tells this session (runtime/relays.py)

    def relay_answer(self, data: bytes, flags: int) -> None:
        handle = self._middle
        if handle is None or self.phase != Phase.MIDDLE or self.transport.is_closing():
            return
        tag = handle.transport_tag
        # the official proxy pads a padded client's answer with 0-3 random bytes (tcp_rpc_write_packet_compact)
        padding = self.ctx.random_bytes(self.ctx.random_bytes(1)[0] & 3) if tag == obfs2.TAG_PADDED else b""
        try:
            frame = encode_frame(tag, data, padding)
        except ProtocolError as exc:
            log.info("relay answer for client %s cannot be framed (%s); closing", self.peer[0], exc)
            self.close()
            return
        n = len(data)
        self.activity += n
        self._to_client_stream(frame)
        self.ctx.count_out(self.secret_id, n)
        if self._meter is not None and self.phase == Phase.MIDDLE:
            self._metered_middle_out(n)

    def relay_quick_ack(self, confirm: bytes) -> None:
        handle = self._middle
        if handle is None or self.phase != Phase.MIDDLE or self.transport.is_closing():
            return
        # byte-reversed to an abridged client (MTProxy push_rpc_confirmation), and no length before it
        self._to_client_stream(confirm[::-1] if handle.transport_tag == obfs2.TAG_ABRIDGED else confirm)

    def relay_closed(self, reason: str) -> None:
        self._middle = None  # the pool has forgotten it already
        log.debug("session of %s ended by its relay: %s", self.peer[0], reason)
        self.close()

    # (also while the pool places this session on a full link, before it is in Phase.MIDDLE)
    def relay_pause_writing(self) -> None:
        if self.phase != Phase.CLOSED:
            self.transport.pause_reading()

    def relay_resume_writing(self) -> None:
        if self.phase != Phase.CLOSED and not self._held & _IN and not self.transport.is_closing():
            self.transport.resume_reading()

    def _metered_middle_out(self, n: int) -> None:
        """A download's quota and rate on the relay path. The relay link is shared and cannot be paused for
        one client, so a download over its rate stops the client's requests until the bucket refills."""
        grant = self._meter
        assert grant is not None
        self._charge_client(grant, 0, n, grant.rate_out)

    # ----------------------------------------------------------------- per-secret limits

    def rerated(self) -> None:
        """A reload changed the secret's limits: meter per read only if it now has a quota or rate limit."""
        grant = self._grant
        self._meter = grant if grant is not None and grant.metered else None
        if self._held & _IN and (self._meter is None or self._meter.rate_in is None):
            self._release_in()
        if self._held & _OUT and (self._meter is None or self._meter.rate_out is None):
            self._release_out()

    def _metered_in(self, n: int) -> None:
        grant = self._meter
        assert grant is not None
        self._charge_client(grant, n, 0, grant.rate_in)

    def _charge_client(self, grant: Grant, bytes_in: int, bytes_out: int, bucket: TokenBucket | None) -> None:
        """Bytes the client's reading pays for: the quota (closed when it runs out), then `bucket`'s rate
        (the client is not read while the bucket is in debt)."""
        if grant.moved(bytes_in, bytes_out) is not None:
            self.close()
            return
        if bucket is not None:
            bucket.consume(bytes_in + bytes_out)
            if not bucket.allowance() and not self._held & _IN:
                self._hold_client(bucket)

    def _hold_client(self, bucket: TokenBucket) -> None:
        """In debt: the client is not read until the bucket has a byte again."""
        self.transport.pause_reading()
        self._held |= _IN
        self._hold_in = self.ctx.loop.call_later(bucket.delay(1), self._release_in)

    def _metered_out(self, n: int) -> None:
        grant = self._meter
        assert grant is not None
        if grant.moved(0, n) is not None:
            self.close()
            return
        bucket = grant.rate_out
        up = self.up
        if bucket is not None and up is not None:
            bucket.consume(n)
            if not bucket.allowance():
                up.pause_reading()
                self._held |= _OUT
                self._hold_out = self.ctx.loop.call_later(bucket.delay(1), self._release_out)

    def _release_in(self) -> None:
        if self._hold_in is not None:
            self._hold_in.cancel()
            self._hold_in = None
        self._held &= ~_IN
        up = self.up
        # a full DC leg keeps the client paused: its drain (_up_drained) resumes it
        if self.phase != Phase.CLOSED and (up is None or not up.get_write_buffer_size()):
            self.transport.resume_reading()

    def _release_out(self) -> None:
        if self._hold_out is not None:
            self._hold_out.cancel()
            self._hold_out = None
        self._held &= ~_OUT
        up = self.up
        # a full client keeps the DC paused: its drain (resume_writing) resumes it
        if (self.phase != Phase.CLOSED and up is not None and self._raw is None
                and not self.transport.get_write_buffer_size()):
            up.resume_reading()

    def _up_drained(self) -> None:
        # Pair's, unless the rate limit holds the client (inlined: this runs whenever the DC leg drains)
        if not self._held & _IN and not self.transport.is_closing():
            self.transport.resume_reading()
