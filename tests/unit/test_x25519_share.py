"""The server's x25519 share in a fake-TLS flight is a point of Curve25519's prime-order subgroup, as a real
server's is, from both builders (`protocol.x25519`, the native library) and the same from both. Checked
against arithmetic of the test's own (RFC 7748's ladder, itself checked against OpenSSL's X25519 through
`cryptography`): Euler's criterion says the point is on the curve, not its twist; times the group order it
is the identity."""

from __future__ import annotations

import ctypes
import os
import random

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtproxy.crypto import native
from mtproxy.protocol import client, faketls, x25519

from .test_native_faketls import KEY, PLAIN, TDLIB_HELLOS

P = 2**255 - 19
ORDER = 2**252 + 27742317777372353535851937790883648493  # the prime-order subgroup's (RFC 7748 4.1)
HYBRID = faketls.HelloShape(0x1302, (faketls.EXT_SUPPORTED_VERSIONS, faketls.EXT_KEY_SHARE), faketls.X25519MLKEM768)


def ladder(k: int, u: int) -> tuple[int, int]:
    """k times the point at u, as projective X:Z (Z = 0: the identity): RFC 7748 5's ladder, any k."""
    x2, z2, x3, z3 = 1, 0, u, 1
    for t in reversed(range(k.bit_length())):
        if k >> t & 1:
            x2, z2, x3, z3 = x3, z3, x2, z2
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb, da, cb = a * a % P, b * b % P, d * a % P, c * b % P
        e = aa - bb
        x3, z3 = (da + cb) ** 2 % P, u * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
        if k >> t & 1:
            x2, z2, x3, z3 = x3, z3, x2, z2
    return x2, z2


def on_curve(u: int) -> bool:
    """Euler's criterion on v^2 = u^3 + 486662 u^2 + u: a censor's one exponentiation."""
    return pow((u**3 + 486662 * u * u + u) % P, (P - 1) // 2, P) == 1


def assert_subgroup_point(share: bytes) -> None:
    u = int.from_bytes(share, "little")
    assert len(share) == 32 and 0 < u < P and on_curve(u)
    assert ladder(ORDER, u)[1] == 0  # prime order: neither a twist point nor one with a small-order part


def test_ladder_agrees_with_openssl() -> None:
    rng = random.Random(25519)
    for _ in range(20):
        private = rng.randbytes(32)
        share = x25519.server_share(rng.randbytes(32))
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(share))
        k = int.from_bytes(private, "little") & ~7 & (2**255 - 1) | 2**254  # clamped (RFC 7748 5)
        x, z = ladder(k, int.from_bytes(share, "little"))
        assert shared == (x * pow(z, P - 2, P) % P).to_bytes(32, "little")


def test_random_bytes_are_twist_points_half_the_time() -> None:
    """What the share avoids: Euler's criterion tells random bytes from a point about half the time."""
    twist = sum(not on_curve(int.from_bytes(os.urandom(32), "little") % P) for _ in range(2000))
    assert 800 < twist < 1200


def test_python_shares_are_subgroup_points() -> None:
    shares = [x25519.server_share(os.urandom(32)) for _ in range(3000)]
    assert all(on_curve(int.from_bytes(share, "little")) for share in shares)
    assert len(set(shares)) == len(shares)
    for share in shares[:150]:
        assert_subgroup_point(share)
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(share))  # not of small order


def test_numbers_mapped_to_the_identity_take_the_next() -> None:
    """Elligator 2 maps 0 to the point of order 2: the share is then 1's; the top bit and multiples of p
    change nothing."""
    one = (1).to_bytes(32, "little")
    assert x25519.subgroup_point(0)[1] == 0
    assert x25519.server_share(bytes(32)) == x25519.server_share(one) == x25519.server_share(P.to_bytes(32, "little"))
    assert x25519.server_share(bytes(31) + b"\x80") == x25519.server_share(bytes(32))
    assert_subgroup_point(x25519.server_share(bytes(32)))


def native_share(lib: ctypes.CDLL, drawn: bytes, shape: faketls.HelloShape = faketls.DEFAULT_SHAPE) -> bytes:
    """The x25519 share of the native library's flight to TDLib's hello for these random bytes."""
    record = TDLIB_HELLOS[0]
    hello, accepted = native.check_hello(lib, record, KEY, drawn, 1000, shape)
    assert accepted is not None and client.verify_server_flight(KEY, hello.random, accepted[1])
    flight = accepted[1]
    hello_end = 5 + int.from_bytes(flight[3:5], "big")
    # the default shape ends with supported_versions (6 bytes) after the share; the hybrid one with the share
    end = hello_end - 6 if shape == faketls.DEFAULT_SHAPE else hello_end
    return flight[end - 32 : end]


def test_native_shares_are_the_same_subgroup_points(lib: ctypes.CDLL) -> None:
    for i in range(3000):
        drawn = os.urandom(faketls.FLIGHT_RANDOM)
        share = native_share(lib, drawn, HYBRID if i % 2 else faketls.DEFAULT_SHAPE)
        assert share == x25519.server_share(drawn[:32])
        if i < 150:
            assert_subgroup_point(share)
    for number in (0, 1, P, P + 1, 2**255 - 1, 2**256 - 1):
        drawn = number.to_bytes(32, "little") + bytes(32)
        assert native_share(lib, drawn) == x25519.server_share(drawn[:32])


@settings(max_examples=300, deadline=None)
@given(drawn=st.binary(min_size=faketls.FLIGHT_RANDOM, max_size=faketls.FLIGHT_RANDOM))
@example(drawn=bytes(faketls.FLIGHT_RANDOM))
@example(drawn=b"\xff" * faketls.FLIGHT_RANDOM)
def test_native_flight_is_the_reference_for_any_draw(lib: ctypes.CDLL, drawn: bytes) -> None:
    hello = faketls.parse_client_hello(TDLIB_HELLOS[0])
    for shape in (faketls.DEFAULT_SHAPE, HYBRID):
        expected = faketls.accept_hello(PLAIN, hello, KEY, drawn, 1000, shape=shape)
        assert expected is not None
        assert native.accept_hello(lib, hello, KEY, drawn, 1000, shape) == expected

