"""Which AES the engine runs on, decided once at start-up and handed down as one `Backend`.

`load` opens the libraries (libcrypto, the native library), self-tests each candidate against OpenSSL's CTR
and times GCM against CTR: the native library if it is here and passes, else the GCM keystream if it passes
and is clearly faster on this machine, else plain CTR. The engine calls it before forking (every worker
inherits the result) with the name the operator forced, if any (`MTPROXY_KEYSTREAM`, read by the engine).
Importing this module loads, runs and reads nothing."""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mtproxy.protocol import client, faketls, obfs2
from mtproxy.protocol.cipher import (
    CbcFactory,
    CbcStream,
    HelloAccept,
    HelloCheck,
    InitStart,
    Keystream,
    LinkStart,
    ScanFactory,
)
from mtproxy.protocol.replay import ReplayCheck, ReplayFilter
from mtproxy.protocol.secret import Secret, SecretKind

from .aesblock import BlockEncrypt, block_encryptor, cryptography_encrypt_block, open_libcrypto
from .ctr import ACCELERATE_AFTER, BLOCK, CtrStream, HandoffCtr, transform_upload
from .gcm import GcmIv, load_divider
from .native import WALK_VAES, NativeCtr, NativeReplay, NativeSecretScan, accept_hello, check_hello, open_library

KEYSTREAM_ENV: Final = "MTPROXY_KEYSTREAM"  # names one of KEYSTREAMS instead of choosing (read by the engine)
KEYSTREAMS: Final = {  # the backends' names, and what each is, for the start-up log line
    "native": "the native library (VAES)",
    # what a CPU without VAES runs; named, it is also chosen where VAES is there (tests, measurements)
    "native-aesni": "the native library (AES-NI; streams move to OpenSSL's CTR once they carry bulk)",
    "gcm": "OpenSSL's AES-GCM keystream",
    "ctr": "OpenSSL's AES-CTR",
}
NATIVE: Final = ("native", "native-aesni")
_GCM_WINS_BELOW: Final = 0.8  # GCM's time over CTR's on the same bytes; it must clearly win


def openssl_cbc(key: bytes, iv: bytes, encrypt: bool) -> CbcStream:
    """AES-256-CBC through `cryptography`, no padding, chained across `update` calls: the middle proxy's
    relay connections (`protocol.middleproxy`). One implementation whatever the keystream backend: CBC runs
    only on the relay leg, which the CTR backends do not serve."""
    if len(key) != 32 or len(iv) != 16:
        raise ValueError("AES-256-CBC takes a 32-byte key and a 16-byte IV")
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    return cipher.encryptor() if encrypt else cipher.decryptor()


@dataclass(frozen=True)
class Backend:
    """One AES implementation: what the protocol core (`protocol.cipher.Aes`) and the relay run on. The
    functions are bound once here, so a stream costs its constructor and nothing per chunk."""

    name: str  # one of KEYSTREAMS
    why: str  # why this one: forced, measured, or what the others failed
    new_stream: Callable[[bytes, bytes], Keystream]
    encrypt_block: BlockEncrypt
    secret_scan: ScanFactory | None = None  # None: SecretTable scans in Python with `encrypt_block`
    start_init: InitStart | None = None  # None: obfs2 derives the keys and starts the stream in Python
    tls_hello: HelloCheck | None = None  # None: faketls parses the ClientHello in Python
    tls_accept: HelloAccept | None = None  # None: faketls checks the digest with hashlib, builds the flight
    dc_link: LinkStart | None = None  # None: obfs2 builds the fast-mode DC header in Python
    replay_check: Callable[[memoryview], ReplayCheck] | None = None  # None: the replay filter runs in Python
    new_cbc: CbcFactory = openssl_cbc  # the middle proxy's relay connections


def openssl_ctr(encrypt_block: BlockEncrypt = cryptography_encrypt_block, why: str = "chosen by the caller") -> Backend:
    """OpenSSL's CTR through `cryptography`. With the default block cipher it opens no library: the load tool
    and the tests' peers use it as the independent control."""
    return Backend("ctr", why, CtrStream, encrypt_block)


def gcm_keystream(libcrypto: ctypes.CDLL | None, encrypt_block: BlockEncrypt,
                  why: str = "chosen by the caller") -> Backend:
    """OpenSSL's CTR, moving each stream to the GCM keystream after ACCELERATE_AFTER bytes."""
    return Backend("gcm", why, functools.partial(CtrStream, gcm_iv=GcmIv(encrypt_block, load_divider(libcrypto))),
                   encrypt_block)


def native_library(lib: ctypes.CDLL, encrypt_block: BlockEncrypt, why: str = "chosen by the caller") -> Backend:
    """The native library's streams, secret scan, init start and fake-TLS handshake (`native.open_library`
    gives `lib`), after the walk it runs now: `native` (VAES), or `native-aesni`, whose streams move to
    OpenSSL's CTR once they carry bulk (`ctr.HandoffCtr`)."""
    vaes = lib.mtp_walk() == WALK_VAES
    stream: type[NativeCtr] = NativeCtr if vaes else HandoffCtr
    return Backend("native" if vaes else "native-aesni", why, functools.partial(stream, lib), encrypt_block,
                   functools.partial(NativeSecretScan, lib), functools.partial(stream.start_init, lib),
                   functools.partial(check_hello, lib), functools.partial(accept_hello, lib),
                   dc_link=functools.partial(stream.link, lib), replay_check=functools.partial(NativeReplay, lib))


def load(forced: str = "") -> Backend:
    """Open the libraries and choose (see the module's docstring); `forced` names one of KEYSTREAMS instead
    (its self-test still runs, and plain CTR takes over on a failure). Raises ValueError on an unknown name."""
    if forced and forced not in KEYSTREAMS:
        raise ValueError(f"{KEYSTREAM_ENV} must be one of {', '.join(KEYSTREAMS)}, not {forced!r}")
    libcrypto = open_libcrypto()
    encrypt_block = block_encryptor(libcrypto)
    lib = open_library() if forced in ("", *NATIVE) else None
    if lib is not None:
        lib.mtp_force_aesni(forced == "native-aesni")  # for the process: the library's walks are its functions
    return choose(forced, native_library(lib, encrypt_block) if lib is not None else None,
                  gcm_keystream(libcrypto, encrypt_block), openssl_ctr(encrypt_block), gcm_time_over_ctr)


def choose(forced: str, native: Backend | None, gcm: Backend, ctr: Backend,
           gcm_over_ctr: Callable[[], float]) -> Backend:
    """The first candidate that passes its self-test (and, for GCM unforced, is clearly faster than CTR)."""
    if forced == "ctr":
        return replace(ctr, why=f"{KEYSTREAM_ENV}=ctr")
    failures: list[str] = []
    for name in [forced] if forced else ["native", "gcm"]:
        candidate = native if name in NATIVE else gcm
        try:
            if candidate is None:
                raise RuntimeError("not built here, or this CPU lacks AES-NI")
            self_test(candidate)
        except Exception as exc:  # whatever the library, OpenSSL or cryptography refuses, plain CTR works
            failures.append(f"{name}: {exc}")
            continue
        if forced:
            return replace(candidate, why=f"{KEYSTREAM_ENV}={name}")
        if name == "gcm":
            ratio = gcm_over_ctr()
            if ratio >= _GCM_WINS_BELOW:
                failures.append(f"gcm: measured, it takes {ratio:.2f}x the time of CTR")
                continue
            return replace(candidate, why=f"measured: GCM takes {ratio:.2f}x the time of CTR")
        return replace(candidate, why="the native library passed its self-test")
    return replace(ctr, why="; ".join(failures))


def _reference(key: bytes, iv: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)


def self_test(backend: Backend) -> None:
    """A backend's streams against OpenSSL's CTR: across the 64-bit and 128-bit counter carries and, past
    ACCELERATE_AFTER, across a 32-bit wrap (where a GCM keystream must start a new context), in uneven
    pieces; then the upload's two passes, plain and over a gathered run of records; then its secret scan, its
    init start and its fake-TLS handshake, if it has them. Raises ValueError."""
    key, other = bytes(range(32)), bytes(range(32, 64))
    data = bytes(range(256)) * 4 + b"tail"
    # at ACCELERATE_AFTER the counter is two blocks before its low 32 bits wrap
    near_wrap = (1 << 32) - ACCELERATE_AFTER // BLOCK - 2
    cases = [(top + b"\xff" * 7 + b"\xf0", data) for top in (b"\x01" * 8, b"\xff" * 8)]  # 16 blocks to the carry
    cases.append((bytes(range(100, 112)) + near_wrap.to_bytes(4, "big"), bytes(ACCELERATE_AFTER) + data))
    for iv, plain in cases:
        stream, got = backend.new_stream(key, iv), bytearray()
        for piece in (plain[:7], plain[7:300], plain[300:301], plain[301:]):
            got += stream.update(piece)
        if got != _reference(key, iv, plain):
            raise ValueError("its keystream is not AES-CTR's")
    iv = cases[0][0]
    twice = _reference(other, iv, _reference(key, iv, data))
    buf = bytearray(data)
    transform_upload(backend.new_stream(key, iv), backend.new_stream(other, iv), buf, faketls.plain_layout(len(buf)))
    if buf != twice:
        raise ValueError("its two-pass walk is not two AES-CTR passes")
    buf = bytearray(faketls.wrap_records(data, 100))
    layout = faketls.TlsRecordReader().layout(memoryview(buf))
    n = transform_upload(backend.new_stream(key, iv), backend.new_stream(other, iv), buf, layout)
    if not layout[4] or buf[:n] != twice:
        raise ValueError("its record gather is not two AES-CTR passes over the payload")
    for block in (bytes(range(16)), bytes(range(48))):  # one block (the scan), a run (the certificate)
        if backend.encrypt_block(key, block) != Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block):
            raise ValueError("its block cipher is not AES-256")
    if backend.secret_scan is not None:
        _test_scan(backend, backend.secret_scan)
    if backend.start_init is not None:
        _test_init_start(backend, backend.start_init, data)
    if backend.dc_link is not None:
        _test_dc_link(backend, backend.dc_link, data)
    if backend.replay_check is not None:
        _test_replay(backend.replay_check)
    if backend.tls_hello is not None or backend.tls_accept is not None:
        _test_tls(backend)


def _test_init_start(backend: Backend, start: InitStart, data: bytes) -> None:
    """An init's one-call start against `obfs2.derive_keys` and OpenSSL's CTR, with a secret and without."""
    init = bytes(range(64))
    for secret_key in (None, bytes(range(16))):
        out, stream, reverse = start(init, secret_key)
        forward, backward = obfs2.derive_keys(init, secret_key, backend)
        if out + stream.update(data) != _reference(forward.key, forward.iv, init + data):
            raise ValueError("its init start is not obfuscated2's stream")
        if reverse != backward.key + backward.iv:
            raise ValueError("its init start gives the wrong reverse keys")


def _test_dc_link(backend: Backend, link: LinkStart, data: bytes) -> None:
    """The one-call fast-mode DC header against `obfs2.build_init` on plain CTR streams: the header, the
    client's bytes behind it, and the DC stream after them; random bytes that make a refused init are refused."""
    reverse, drawn, plain = bytes(range(48)), bytes(range(100, 164)), openssl_ctr()
    client_key, client_iv = bytes(range(200, 232)), bytes(range(16))
    made = link(reverse, obfs2.TAG_PADDED, -2, drawn, backend.new_stream(client_key, client_iv), data)
    built = obfs2.build_init(lambda n: drawn, obfs2.TAG_PADDED, -2, None, plain, reverse[::-1])
    behind = built.to_acceptor.update(_reference(client_key, client_iv, data))
    if made is None or made[0] != built.wire + behind or made[1].update(data) != built.to_acceptor.update(data):
        raise ValueError("its DC link is not obfuscated2's header and stream")
    refused = b"\xef" + drawn[1:]  # an abridged tag's first byte: the init would read as a transport tag
    if link(reverse, obfs2.TAG_PADDED, 2, refused, backend.new_stream(client_key, client_iv), b"") is not None:
        raise ValueError("its DC link sent an init that reads as another protocol")


def _test_replay(accelerated: Callable[[memoryview], ReplayCheck]) -> None:
    """Its replay filter against the Python one, step by step on twin memories of one bucket: lookups,
    inserts, a repeat, an expiry, and the evictions of a full bucket (expired first, else the oldest)."""
    python, native = bytearray(ReplayFilter.memory_size(8)), bytearray(ReplayFilter.memory_size(8))
    ours, theirs = ReplayFilter(python), ReplayFilter(native, accelerated)
    steps = [(bytes([i]) * 16, 1000 + i, 5 + i % 3) for i in range(12)]  # 12 keys for 8 slots
    for key, now, ttl in [*steps, (bytes([3]) * 16, 1010, 5), (bytes([11]) * 16, 1013, 5), (bytes(16), 1100, 5)]:
        if (ours.seen(key, now), ours.check_and_add(key, now, ttl)) != (theirs.seen(key, now),
                                                                       theirs.check_and_add(key, now, ttl)):
            raise ValueError("its replay filter answers otherwise than the Python one")
        if python != native:
            raise ValueError("its replay filter remembers otherwise than the Python one")


def _test_tls(backend: Backend) -> None:
    """Its fake-TLS hello check and accept against the Python references in `protocol.faketls`: a hello, a
    record it must refuse, the right key (the flight byte for byte, in the default ServerHello shape and in a
    post-quantum site's) and a wrong one."""
    key, drawn = bytes(range(16)), bytes(range(100, 100 + faketls.FLIGHT_RANDOM))
    record = client.build_client_hello(key, "example.com", lambda n: bytes(i % 251 for i in range(n)), 1e9)
    hello = faketls.parse_client_hello(record)
    python = replace(backend, tls_hello=None, tls_accept=None)
    hybrid = faketls.HelloShape(0x1302, (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE),
                                faketls.X25519MLKEM768)
    for shape in (faketls.DEFAULT_SHAPE, hybrid):
        reference = faketls.accept_hello(python, hello, key, drawn, 1000, shape=shape)
        if reference is None:
            raise ValueError("its streams do not make the reference flight")
        if backend.tls_hello is not None:
            for secret_key, expected in ((None, None), (key, reference), (bytes(16), None)):
                if backend.tls_hello(record, secret_key, drawn, 1000, shape) != (hello, expected):
                    raise ValueError("its ClientHello check is not faketls' parse, digest check and server flight")
        if backend.tls_accept is not None:
            if backend.tls_accept(hello, key, drawn, 1000, shape) != reference:
                raise ValueError("its ClientHello accept is not faketls' digest check and server flight")
            if backend.tls_accept(hello, bytes(16), drawn, 1000, shape) is not None:
                raise ValueError("its ClientHello accept takes a wrong key")
    if backend.tls_hello is not None:
        try:
            backend.tls_hello(record[:-1], None, b"", 0, faketls.DEFAULT_SHAPE)
        except faketls.TlsFormatError:
            pass
        else:
            raise ValueError("its ClientHello check takes a truncated record")


def _test_scan(backend: Backend, factory: ScanFactory) -> None:
    """A scan of three secrets finds a classic init's and a fake-TLS hello's secret (the last), and nothing
    under the others."""
    counter = iter(range(1 << 30))

    def random_bytes(n: int) -> bytes:
        return bytes((next(counter) * 7 + 3) % 256 for _ in range(n))

    secrets = [Secret(bytes(range(i, i + 16)), SecretKind.FAKE_TLS, "example.com") for i in (0, 16, 32)]
    scan, others = factory(secrets), factory(secrets[:2])
    init = obfs2.build_init(random_bytes, obfs2.TAG_PADDED, 2, secrets[2].key, backend).wire
    if scan.find_obfs2(init, -1) != 2 or scan.find_obfs2(init, 2) != -1 or others.find_obfs2(init, -1) != -1:
        raise ValueError("its secret scan does not find a classic init's secret")
    hello = faketls.parse_client_hello(client.build_client_hello(secrets[2].key, "example.com", random_bytes, 1e9))
    if (scan.find_tls(hello, "example.com", -1) != (2, 1_000_000_000) or scan.find_tls(hello, None, 2) is not None
            or others.find_tls(hello, "example.com", -1) is not None):
        raise ValueError("its secret scan does not find a fake-TLS hello's secret")


def gcm_time_over_ctr() -> float:
    """GCM's best time over CTR's on the same 1 MiB, in alternating rounds (a CPU still raising its clock
    must not favour whichever runs second)."""
    key, data = bytes(32), bytearray(1 << 20)
    out = bytearray(len(data) + BLOCK)
    contexts = [Cipher(algorithms.AES(key), mode).encryptor() for mode in (modes.CTR(bytes(BLOCK)),
                                                                            modes.GCM(bytes(BLOCK)))]
    best = [float("inf"), float("inf")]
    for _ in range(4):
        for i, context in enumerate(contexts):
            start = time.perf_counter()
            context.update_into(data, out)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[1] / best[0]
