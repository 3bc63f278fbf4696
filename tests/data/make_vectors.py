"""Known-answer vectors for the protocol core, computed independently of it.

This script shares no code with mtproxy: AES-CTR comes from pyaes (pure Python), hashes from hashlib,
and every byte layout is written out here from protocol.md. Run it to regenerate protocol_vectors.json:
    python3 tests/data/make_vectors.py > tests/data/protocol_vectors.json
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pyaes  # type: ignore[import-untyped]

FORBIDDEN = {b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", b"\xdd\xdd\xdd\xdd", b"\xee\xee\xee\xee"}


def stream(seed: bytes):
    """A deterministic byte source (SHA-256 in counter mode) standing in for os.urandom."""
    counter = 0
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return take


def ctr(key: bytes, iv: bytes, data: bytes, skip: int = 0) -> bytes:
    counter = pyaes.Counter(int.from_bytes(iv, "big"))
    aes = pyaes.AESModeOfOperationCTR(key, counter=counter)
    return aes.encrypt(bytes(skip) + data)[skip:]


def obfs2_vector(name: str, secret: bytes | None, tag: bytes, dc: int, seed: bytes) -> dict[str, object]:
    rand = stream(seed)
    while True:
        init = bytearray(rand(64))
        init[56:60] = tag
        init[60:62] = dc.to_bytes(2, "little", signed=True)
        if init[0] != 0xEF and bytes(init[:4]) not in FORBIDDEN and any(init[4:8]):
            break
    material = bytes(init[8:56])
    rev = material[::-1]
    c2s_key, c2s_iv = material[:32], material[32:]
    s2c_key, s2c_iv = rev[:32], rev[32:]
    if secret is not None:
        c2s_key = hashlib.sha256(c2s_key + secret).digest()
        s2c_key = hashlib.sha256(s2c_key + secret).digest()
    encrypted = ctr(c2s_key, c2s_iv, bytes(init))
    wire = bytes(init[:56]) + encrypted[56:]
    payload = b"known answer payload, client to server"
    reply = b"known answer payload, server to client"
    return {
        "name": name,
        "secret": secret.hex() if secret else None,
        "tag": tag.hex(),
        "dc_id": dc,
        "init_plain": bytes(init).hex(),
        "wire": wire.hex(),
        "c2s_key": c2s_key.hex(),
        "c2s_iv": c2s_iv.hex(),
        "s2c_key": s2c_key.hex(),
        "s2c_iv": s2c_iv.hex(),
        "payload": payload.hex(),
        "payload_encrypted": ctr(c2s_key, c2s_iv, payload, skip=64).hex(),
        "reply": reply.hex(),
        "reply_encrypted": ctr(s2c_key, s2c_iv, reply).hex(),
    }


def fast_mode_vector(seed: bytes) -> dict[str, object]:
    """The proxy's header towards a DC whose reply keys equal the client's (s2c) keys."""
    rand = stream(seed)
    client_s2c_key, client_s2c_iv = rand(32), rand(16)
    tag, dc = b"\xdd\xdd\xdd\xdd", -2
    header_rand = stream(seed + b"header")
    while True:
        init = bytearray(header_rand(64))
        init[8:56] = (client_s2c_key + client_s2c_iv)[::-1]
        init[56:60] = tag
        init[60:62] = dc.to_bytes(2, "little", signed=True)
        if init[0] != 0xEF and bytes(init[:4]) not in FORBIDDEN and any(init[4:8]):
            break
    to_dc_key, to_dc_iv = bytes(init[8:40]), bytes(init[40:56])
    header = bytes(init[:56]) + ctr(to_dc_key, to_dc_iv, bytes(init))[56:]
    return {
        "client_s2c_key": client_s2c_key.hex(),
        "client_s2c_iv": client_s2c_iv.hex(),
        "tag": tag.hex(),
        "dc_id": dc,
        "header_seed": (seed + b"header").hex(),
        "header": header.hex(),
    }


def client_hello(secret: bytes, domain: bytes, timestamp: int, seed: bytes) -> bytes:
    rand = stream(seed)

    def ext(kind: int, body: bytes) -> bytes:
        return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body

    sni = ext(0, (len(domain) + 3).to_bytes(2, "big") + b"\x00" + len(domain).to_bytes(2, "big") + domain)
    key_share = ext(0x33, (36).to_bytes(2, "big") + b"\x00\x1d\x00\x20" + rand(32))
    versions = ext(0x2B, b"\x02\x03\x04")
    extensions = ext(0x1A1A, b"") + sni + key_share + versions
    suites = b"\x2a\x2a\x13\x01\x13\x02\x13\x03\xc0\x2b"
    body = (
        b"\x03\x03" + bytes(32) + b"\x20" + rand(32) + len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
        + len(extensions).to_bytes(2, "big") + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = bytearray(b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake)
    digest = hmac.new(secret, bytes(record), hashlib.sha256).digest()
    stamp = timestamp.to_bytes(4, "little")
    record[11:43] = digest[:28] + bytes(a ^ b for a, b in zip(digest[28:], stamp, strict=True))
    return bytes(record)


P25519 = 2**255 - 19
A25519 = 486662


def curve_point_share(drawn: bytes) -> bytes:
    """The server's x25519 share for 32 random bytes, written here from RFC 9380 6.7.1 (Elligator 2 for
    curve25519, Z = 2) and RFC 7748's curve: r = the bytes little-endian, top bit ignored; u = the map's
    x-coordinate; three affine doublings x' = (x^2 - 1)^2 / (4x(x^2 + Ax + 1)) clear the cofactor 8; a point
    that becomes the identity on the way is replaced by r + 1's."""
    p, a = P25519, A25519

    def square(v: int) -> bool:  # Euler's criterion; 0 counts as a square, as RFC 9380's is_square
        return pow(v % p, (p - 1) // 2, p) in (0, 1)

    r = int.from_bytes(drawn[:32], "little") & (2**255 - 1)
    while True:
        x1 = -a * pow(1 + 2 * r * r, p - 2, p) % p
        gx1 = (x1 ** 3 + a * x1 ** 2 + x1) % p
        x = x1 if square(gx1) else (-x1 - a) % p
        for _ in range(3):
            denominator = 4 * x * (x * x + a * x + 1) % p
            if denominator == 0:
                break
            x = (x * x - 1) ** 2 * pow(denominator, p - 2, p) % p
        else:
            return x.to_bytes(32, "little")
        r += 1


def faketls_vector(seed: bytes) -> dict[str, object]:
    rand = stream(seed)
    secret = rand(16)
    domain = b"www.example.com"
    timestamp = 1_790_000_000
    hello = client_hello(secret, domain, timestamp, seed + b"hello")
    session_id = hello[44:76]
    # Server flight, with the proxy's random draws in order: 32 bytes for the x25519 share (a curve point made
    # from them), then the AES-256 key (32) whose CTR keystream from a zero counter block is the certificate
    # stand-in.
    server_rand = stream(seed + b"server")
    cert_size = 1234
    share = curve_point_share(server_rand(32))
    cert = ctr(server_rand(32), bytes(16), bytes(cert_size))
    extensions = b"\x00\x33\x00\x24\x00\x1d\x00\x20" + share + b"\x00\x2b\x00\x02\x03\x04"
    body = (
        b"\x03\x03" + bytes(32) + b"\x20" + session_id + b"\x13\x01" + b"\x00"
        + len(extensions).to_bytes(2, "big") + extensions
    )
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    flight = bytearray(
        b"\x16\x03\x03" + len(handshake).to_bytes(2, "big") + handshake
        + b"\x14\x03\x03\x00\x01\x01"
        + b"\x17\x03\x03" + cert_size.to_bytes(2, "big") + cert
    )
    flight[11:43] = hmac.new(secret, hello[11:43] + bytes(flight), hashlib.sha256).digest()
    return {
        "secret": secret.hex(),
        "domain": domain.decode(),
        "timestamp": timestamp,
        "hello": hello.hex(),
        "server_seed": (seed + b"server").hex(),
        "cert_size": cert_size,
        "server_flight": bytes(flight).hex(),
    }


def main() -> None:
    secret = bytes.fromhex("0123456789abcdef0123456789abcdef")
    vectors = {
        "obfs2": [
            obfs2_vector("abridged dc2", secret, b"\xef\xef\xef\xef", 2, b"v1"),
            obfs2_vector("intermediate media dc-4", secret, b"\xee\xee\xee\xee", -4, b"v2"),
            obfs2_vector("padded test dc 10003", secret, b"\xdd\xdd\xdd\xdd", 10003, b"v3"),
            obfs2_vector("dc side, no secret", None, b"\xdd\xdd\xdd\xdd", 203, b"v4"),
        ],
        "fast_mode": [fast_mode_vector(b"f1"), fast_mode_vector(b"f2")],
        "faketls": [faketls_vector(b"t1"), faketls_vector(b"t2")],
    }
    print(json.dumps(vectors, indent=1))


if __name__ == "__main__":
    main()
