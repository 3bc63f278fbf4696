//! The server's x25519 key share in a fake-TLS flight: a point of Curve25519's prime-order subgroup drawn
//! from 32 random bytes, as `protocol.x25519.server_share` draws it (same bytes in, same share out).
//!
//! Why: random bytes are the u-coordinate of a point on the curve only half the time (else on its twist),
//! and one exponentiation tells which: a flight whose shares are twist points half the time is not a real
//! server's. The draw is RFC 9380's encoding to the curve with our random bytes for the hash: Elligator 2
//! (6.7.1) maps the number to a curve point, three doublings clear the cofactor 8. X-only arithmetic in
//! projective X:Z: one square test and one inversion, whatever the bytes, both by binary algorithms on whole
//! numbers (a Jacobi symbol, the extended Euclid) rather than exponentiations: the share is no secret
//! (nobody holds its scalar), so nothing here needs constant time, and they take ~7 µs where the two
//! exponentiations took ~11.
//!
//! Field elements mod p = 2^255 - 19 in five 51-bit limbs, products in u128.

const MASK: u64 = (1 << 51) - 1;
const A: u64 = 486662; // the curve's coefficient: v^2 = u^3 + A u^2 + u
const A24: u64 = 121666; // (A + 2) / 4, for doubling
const TRIES: u64 = 8; // numbers tried (r, r + 1, ...) before the fallback; a second needs r of a handful
const BASE_POINT: u8 = 9;

#[derive(Clone, Copy)]
struct Fe([u64; 5]);

impl Fe {
    const ZERO: Fe = Fe([0; 5]);
    const ONE: Fe = Fe([1, 0, 0, 0, 0]);

    /// The number in 32 little-endian bytes, its top bit ignored (not reduced: a value up to 2^255 - 1).
    fn from_bytes(b: &[u8; 32]) -> Fe {
        let w = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3) & (u64::MAX >> 1));
        Fe([
            w0 & MASK,
            (w0 >> 51 | w1 << 13) & MASK,
            (w1 >> 38 | w2 << 26) & MASK,
            (w2 >> 25 | w3 << 39) & MASK,
            w3 >> 12,
        ])
    }

    /// The canonical value (below p), little-endian.
    fn to_bytes(self) -> [u8; 32] {
        let mut h = self.carry().carry().0;
        // h < 2^255 now: subtract p once when h >= p, that is when h + 19 reaches 2^255
        let mut q = (h[0] + 19) >> 51;
        for limb in &h[1..] {
            q = (limb + q) >> 51;
        }
        h[0] += 19 * q;
        for i in 0..4 {
            h[i + 1] += h[i] >> 51;
            h[i] &= MASK;
        }
        h[4] &= MASK;
        let words = [
            h[0] | h[1] << 51,
            h[1] >> 13 | h[2] << 38,
            h[2] >> 26 | h[3] << 25,
            h[3] >> 39 | h[4] << 12,
        ];
        let mut out = [0u8; 32];
        for (i, word) in words.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// The same value with every limb below 2^51 + 2^13 (the top carry folded back times 19).
    fn carry(self) -> Fe {
        let mut h = self.0;
        for i in 0..4 {
            h[i + 1] += h[i] >> 51;
            h[i] &= MASK;
        }
        h[0] += 19 * (h[4] >> 51);
        h[4] &= MASK;
        Fe(h)
    }

    fn add(self, o: Fe) -> Fe {
        let (a, b) = (self.0, o.0);
        Fe([a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4]]).carry()
    }

    /// self - o, plus 2p so that no limb goes below zero (limbs of `o` below 2^52 - 38).
    fn sub(self, o: Fe) -> Fe {
        let (a, b) = (self.0, o.0);
        const P2_0: u64 = 2 * ((1 << 51) - 19);
        const P2_I: u64 = 2 * ((1 << 51) - 1);
        Fe([
            a[0] + P2_0 - b[0],
            a[1] + P2_I - b[1],
            a[2] + P2_I - b[2],
            a[3] + P2_I - b[3],
            a[4] + P2_I - b[4],
        ])
        .carry()
    }

    /// The five sums of a product reduced: limbs below 2^51 + 2^18 or so.
    fn reduce(r: [u128; 5]) -> Fe {
        let mut out = [0u64; 5];
        let mut c: u128 = 0;
        for i in 0..5 {
            let t = r[i] + c;
            out[i] = t as u64 & MASK;
            c = t >> 51;
        }
        out[0] += (c as u64) * 19;
        out[1] += out[0] >> 51;
        out[0] &= MASK;
        Fe(out)
    }

    fn mul(self, o: Fe) -> Fe {
        let [a0, a1, a2, a3, a4] = self.0.map(u128::from);
        let [b0, b1, b2, b3, b4] = o.0.map(u128::from);
        let (b1_19, b2_19, b3_19, b4_19) = (b1 * 19, b2 * 19, b3 * 19, b4 * 19);
        Fe::reduce([
            a0 * b0 + a1 * b4_19 + a2 * b3_19 + a3 * b2_19 + a4 * b1_19,
            a0 * b1 + a1 * b0 + a2 * b4_19 + a3 * b3_19 + a4 * b2_19,
            a0 * b2 + a1 * b1 + a2 * b0 + a3 * b4_19 + a4 * b3_19,
            a0 * b3 + a1 * b2 + a2 * b1 + a3 * b0 + a4 * b4_19,
            a0 * b4 + a1 * b3 + a2 * b2 + a3 * b1 + a4 * b0,
        ])
    }

    fn square(self) -> Fe {
        let [a0, a1, a2, a3, a4] = self.0.map(u128::from);
        let (d0, d1, d2) = (2 * a0, 2 * a1, 2 * a2);
        let (a3_19, a4_19) = (a3 * 19, a4 * 19);
        Fe::reduce([
            a0 * a0 + d1 * a4_19 + d2 * a3_19,
            d0 * a1 + d2 * a4_19 + a3 * a3_19,
            d0 * a2 + a1 * a1 + 2 * a3 * a4_19,
            d0 * a3 + d1 * a2 + a4 * a4_19,
            d0 * a4 + d1 * a3 + a2 * a2,
        ])
    }

    #[cfg(test)]
    fn square_times(self, n: u32) -> Fe {
        let mut t = self;
        for _ in 0..n {
            t = t.square();
        }
        t
    }

    fn mul_small(self, k: u64) -> Fe {
        Fe::reduce(self.0.map(|limb| u128::from(limb) * u128::from(k)))
    }

    /// (self^(2^250 - 1), self^11): the common start of the two exponents below (ref10's chain).
    #[cfg(test)]
    fn pow_2_250_1(self) -> (Fe, Fe) {
        let z2 = self.square();
        let z9 = self.mul(z2.square_times(2));
        let z11 = z2.mul(z9);
        let z_5 = z9.mul(z11.square()); // z^(2^5 - 1)
        let z_10 = z_5.square_times(5).mul(z_5);
        let z_20 = z_10.square_times(10).mul(z_10);
        let z_40 = z_20.square_times(20).mul(z_20);
        let z_50 = z_40.square_times(10).mul(z_10);
        let z_100 = z_50.square_times(50).mul(z_50);
        let z_200 = z_100.square_times(100).mul(z_100);
        (z_200.square_times(50).mul(z_50), z11)
    }

    /// 1 / self by Fermat, self^(p - 2) = self^(2^255 - 21); 0 for 0 (the reference for `invert`).
    #[cfg(test)]
    fn invert_by_power(self) -> Fe {
        let (z_250, z11) = self.pow_2_250_1();
        z_250.square_times(5).mul(z11)
    }

    /// Euler's criterion, self^((p - 1) / 2) = self^(2^254 - 10): 1 when self is a nonzero square (the
    /// reference for `is_square`).
    #[cfg(test)]
    fn is_square_by_power(self) -> bool {
        let (z_250, _) = self.pow_2_250_1();
        let z2 = self.square();
        let z6 = z2.mul(z2.square());
        z_250.square_times(4).mul(z6).to_bytes() == Fe::ONE.to_bytes()
    }

    /// 1 / self; 0 for 0. The binary extended Euclid on whole numbers: variable time (nothing here is
    /// secret), ~4x faster than the exponentiation.
    fn invert(self) -> Fe {
        Fe::from_bytes(&to_le_bytes(&inverse_mod_p(from_le_bytes(&self.to_bytes()))))
    }

    /// Whether self is a nonzero square: its Jacobi symbol (binary algorithm, variable time), ~4x faster
    /// than Euler's criterion.
    fn is_square(self) -> bool {
        jacobi_mod_p(from_le_bytes(&self.to_bytes())) == 1
    }
}

// ---- whole numbers below 2^256, little-endian u64 words, for the two variable-time algorithms above ----

type Wide = [u64; 4];
const P: Wide = [0xffff_ffff_ffff_ffed, u64::MAX, u64::MAX, 0x7fff_ffff_ffff_ffff];
const WIDE_ONE: Wide = [1, 0, 0, 0];

fn from_le_bytes(b: &[u8; 32]) -> Wide {
    core::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()))
}

fn to_le_bytes(w: &Wide) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, word) in w.iter().enumerate() {
        out[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn is_zero(a: &Wide) -> bool {
    (a[0] | a[1] | a[2] | a[3]) == 0
}

fn at_least(a: &Wide, b: &Wide) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

/// a -= b, for a >= b.
fn sub_wide(a: &mut Wide, b: &Wide) {
    let mut borrow = false;
    for i in 0..4 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(borrow as u64);
        a[i] = d;
        borrow = b1 | b2;
    }
}

/// a += b; the carry out of the top word.
fn add_wide(a: &mut Wide, b: &Wide) -> bool {
    let mut carry = false;
    for i in 0..4 {
        let (s, c1) = a[i].overflowing_add(b[i]);
        let (s, c2) = s.overflowing_add(carry as u64);
        a[i] = s;
        carry = c1 | c2;
    }
    carry
}

/// a >>= n, for n below 64, with `top` shifted in from above.
fn shr_wide(a: &mut Wide, n: u32, top: u64) {
    if n == 0 {
        return;
    }
    for i in 0..3 {
        a[i] = a[i] >> n | a[i + 1] << (64 - n);
    }
    a[3] = a[3] >> n | top << (64 - n);
}

/// 19^-1 mod 2^64 (Newton's iteration doubles the correct low bits each step: 5, 10, 20, 40, 80).
const INV19: u64 = {
    let mut inv: u64 = 19;
    let mut i = 0;
    while i < 5 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(19u64.wrapping_mul(inv)));
        i += 1;
    }
    inv
};

/// a / 2^k mod p, for a below p and k below 64: (a + m p) / 2^k with m = a / 19 mod 2^k, since p = -19
/// mod 2^k makes a + m p a multiple of 2^k; below 2p, so one subtraction reduces it.
fn halve_mod_p(a: &mut Wide, k: u32) {
    if k == 0 {
        return;
    }
    let m = a[0].wrapping_mul(INV19) & ((1u64 << k) - 1);
    let mut sum = [0u64; 5];
    let mut carry: u128 = 0;
    for i in 0..4 {
        let t = (m as u128) * (P[i] as u128) + (a[i] as u128) + carry;
        sum[i] = t as u64;
        carry = t >> 64;
    }
    sum[4] = carry as u64;
    for i in 0..4 {
        a[i] = sum[i] >> k | sum[i + 1] << (64 - k);
    }
    if at_least(a, &P) {
        sub_wide(a, &P);
    }
}

/// Removes the factors of 2 from u (not 0), dividing x by as many mod p.
fn strip_twos(u: &mut Wide, x: &mut Wide) {
    while u[0] == 0 {
        *u = [u[1], u[2], u[3], 0];
        halve_mod_p(x, 32);
        halve_mod_p(x, 32);
    }
    let zeros = u[0].trailing_zeros();
    shr_wide(u, zeros, 0);
    halve_mod_p(x, zeros);
}

/// a - b mod p, for a and b below p.
fn sub_mod_p(a: &mut Wide, b: &Wide) {
    if !at_least(a, b) {
        add_wide(a, &P);
    }
    sub_wide(a, b);
}

/// The Jacobi symbol (a / p) of a below p: 1, -1, or 0 for 0. Binary algorithm: halvings flip the sign by
/// p mod 8, swaps by quadratic reciprocity, subtractions keep it.
fn jacobi_mod_p(a: Wide) -> i32 {
    let (mut a, mut n, mut sign) = (a, P, 1);
    while !is_zero(&a) {
        while a[0] == 0 {
            a = [a[1], a[2], a[3], 0]; // 64 halvings: an even count, the sign stays
        }
        let zeros = a[0].trailing_zeros();
        shr_wide(&mut a, zeros, 0);
        if zeros & 1 == 1 && matches!(n[0] & 7, 3 | 5) {
            sign = -sign;
        }
        if !at_least(&a, &n) {
            core::mem::swap(&mut a, &mut n);
            if a[0] & 3 == 3 && n[0] & 3 == 3 {
                sign = -sign;
            }
        }
        sub_wide(&mut a, &n);
    }
    if n == WIDE_ONE {
        sign
    } else {
        0
    }
}

/// 1 / a mod p for a below p (0 for 0): the binary extended Euclid, u = x1 a and v = x2 a mod p throughout.
fn inverse_mod_p(a: Wide) -> Wide {
    if is_zero(&a) {
        return a;
    }
    let (mut u, mut v, mut x1, mut x2) = (a, P, WIDE_ONE, [0u64; 4]);
    strip_twos(&mut u, &mut x1);
    while u != WIDE_ONE && v != WIDE_ONE {
        // u and v are odd here: their difference is even, and only the one that shrank needs stripping
        if at_least(&u, &v) {
            sub_wide(&mut u, &v);
            sub_mod_p(&mut x1, &x2);
            strip_twos(&mut u, &mut x1);
        } else {
            sub_wide(&mut v, &u);
            sub_mod_p(&mut x2, &x1);
            strip_twos(&mut v, &mut x2);
        }
    }
    if u == WIDE_ONE {
        x1
    } else {
        x2
    }
}

/// The u-coordinate (X:Z) of twice the point at X:Z (RFC 7748 5's ladder step without the addition).
fn double(x: Fe, z: Fe) -> (Fe, Fe) {
    let aa = x.add(z).square();
    let bb = x.sub(z).square();
    let e = aa.sub(bb);
    (aa.mul(bb), e.mul(bb.add(e.mul_small(A24))))
}

/// The point of the prime-order subgroup for the number `r` (mod p): 8 times Elligator 2's point for it, as
/// X:Z. Elligator 2 with Z = 2: x1 = -A / (1 + 2r^2), the point's u is x1 when x1^3 + A x1^2 + x1 is a
/// square, else -x1 - A. With x1 = N / D: that value's square-ness is that of N (N^2 + A N D + D^2) D (D^4
/// is a square), and -x1 - A = -2 A r^2 / D. D is never 0 (-1/2 is no square mod p), nor the value (x^2 +
/// A x + 1 has no root: A^2 - 4 is no square).
fn subgroup_point(r: Fe) -> (Fe, Fe) {
    let r2 = r.square();
    let d = Fe::ONE.add(r2.mul_small(2));
    let n = Fe::ZERO.sub(Fe::ONE.mul_small(A));
    let curve = n.square().add(n.mul(d).mul_small(A)).add(d.square());
    let mut x = if n.mul(curve).mul(d).is_square() {
        n
    } else {
        Fe::ZERO.sub(r2.mul_small(2 * A))
    };
    let mut z = d;
    for _ in 0..3 {
        (x, z) = double(x, z);
    }
    (x, z)
}

/// The server's x25519 share for 32 random bytes: the u-coordinate, little-endian, of `subgroup_point` of
/// their number (top bit ignored), or of the next number when that point is the identity (for a handful of
/// numbers: those Elligator 2 maps to a point of order 1..8); after TRIES numbers, the base point.
pub fn server_share(drawn: &[u8; 32]) -> [u8; 32] {
    let r = Fe::from_bytes(drawn);
    for i in 0..TRIES {
        let (x, z) = subgroup_point(r.add(Fe([i, 0, 0, 0, 0])));
        let u = x.mul(z.invert()).to_bytes();
        if u != [0u8; 32] {
            return u;
        }
    }
    let mut base = [0u8; 32];
    base[0] = BASE_POINT;
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers of every size: small, near p, with long runs of zero bits (the word-shift paths).
    fn samples() -> Vec<Fe> {
        let mut out = vec![Fe::ONE, Fe([2, 0, 0, 0, 0]), Fe::ZERO.sub(Fe::ONE), Fe([0, 0, 0, 0, 1 << 40])];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut b = [0u8; 32];
            for chunk in b.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            out.push(Fe::from_bytes(&b));
        }
        out
    }

    #[test]
    fn binary_algorithms_agree_with_the_exponentiations() {
        for f in samples() {
            assert_eq!(f.invert().to_bytes(), f.invert_by_power().to_bytes());
            assert_eq!(f.mul(f.invert()).to_bytes(), Fe::ONE.to_bytes());
            assert_eq!(f.is_square(), f.is_square_by_power());
            assert!(f.square().is_square());
        }
        assert_eq!(Fe::ZERO.invert().to_bytes(), [0u8; 32]);
        assert!(!Fe::ZERO.is_square());
    }
}
