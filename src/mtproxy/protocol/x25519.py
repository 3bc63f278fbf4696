"""The server's x25519 key share in a fake-TLS flight: a point of Curve25519's prime-order subgroup drawn
from 32 random bytes (the native library's `curve25519::server_share` draws the same share from the same
bytes).

Random bytes are the u-coordinate of a point on the curve only half the time (else on its twist), and one
exponentiation tells which, so a flight's share must be a real point. The draw is RFC 9380's encoding to
the curve with our random bytes for the hash: Elligator 2 (RFC 9380 6.7.1, Z = 2) maps the number to a
point, three doublings (RFC 7748 5's ladder step) clear the cofactor 8. Nobody holds the share's scalar:
the proxy never completes a key exchange."""

from __future__ import annotations

P = 2**255 - 19
A = 486662  # the curve: v^2 = u^3 + A u^2 + u
_A24 = (A + 2) // 4
_TRIES = 8  # numbers tried (r, r + 1, ...): only a handful of r give the identity
BASE_POINT = 9


def is_square(a: int) -> bool:
    """Whether `a` is a nonzero square mod p: its Jacobi symbol, by the reciprocity steps (a fifth of what
    Euler's criterion, a^((p - 1) / 2), takes with int pow(); the native library takes that)."""
    n, symbol = P, 1
    a %= P
    while a:
        zeros = (a & -a).bit_length() - 1
        a >>= zeros
        if zeros & 1 and n & 7 in (3, 5):
            symbol = -symbol
        if a & n & 3 == 3:
            symbol = -symbol
        a, n = n % a, a
    return n == 1 and symbol == 1


def _double(x: int, z: int) -> tuple[int, int]:
    aa, bb = (x + z) ** 2 % P, (x - z) ** 2 % P
    e = aa - bb
    return aa * bb % P, e * (bb + _A24 * e) % P


def subgroup_point(r: int) -> tuple[int, int]:
    """8 times Elligator 2's point for `r` mod p, as projective X:Z. x1 = -A / (1 + 2r^2) = N / D is the
    point's u when x1^3 + A x1^2 + x1 is a square, else -x1 - A = -2 A r^2 / D; that value is a square when
    N (N^2 + A N D + D^2) D is (D^4 is one). D is never 0 (-1/2 is no square mod p), nor the value."""
    r2 = r * r % P
    n, d = -A % P, (1 + 2 * r2) % P
    on_curve = n * (n * n + A * n * d + d * d) * d % P
    x = n if is_square(on_curve) else -2 * A * r2 % P
    z = d
    for _ in range(3):
        x, z = _double(x, z)
    return x, z


def server_share(drawn: bytes) -> bytes:
    """The share for 32 random bytes: the u-coordinate, little-endian, of `subgroup_point` of their number
    (little-endian, top bit ignored), or of the next number when that point is the identity; after _TRIES
    numbers, the base point."""
    r = int.from_bytes(drawn[:32], "little") & (2**255 - 1)
    for i in range(_TRIES):
        x, z = subgroup_point(r + i)
        if z:  # else the identity (x is never 0 but there)
            return (x * pow(z, -1, P) % P).to_bytes(32, "little")
    return BASE_POINT.to_bytes(32, "little")
