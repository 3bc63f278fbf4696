//! AES-256-CTR for mtproxy's relay, called from Python through ctypes (`mtproxy.crypto.native`).
//!
//! Why it exists: every uploaded byte takes two CTR passes (the client's key, then the DC's). OpenSSL's CTR
//! runs AES-NI, one block per instruction; VAES (AVX2) does two, and both passes can share one walk over
//! the bytes. The counter is a 128-bit big-endian number that carries across all 128 bits, as OpenSSL's
//! CTR mode counts. Without VAES (Zen 2, Skylake and older: common on rented servers) the walks run AES-NI,
//! eight blocks in flight. Entry points do nothing and return -1 on a CPU without AES-NI; Python asks
//! `mtp_available` first and keeps OpenSSL then.
//!
//! The same library runs the secret scan (the end of this file): SHA-256 (the CPU's SHA extensions, or a
//! portable fallback), HMAC-SHA256 from precomputed midstates and single AES-256 blocks with AES-NI.
//!
//! A stream's state is caller-owned memory of `mtp_state_size()` bytes, any alignment:
//! round keys (15 x 16), the next counter (u128, native order), the keystream of the last block begun
//! (16), and how many of its bytes are used (u64; 16 when none are left).

use core::arch::x86_64::*;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

mod curve25519;

const STATE_SIZE: usize = 288;
const OFF_COUNTER: usize = 240;
const OFF_PAD: usize = 256;
const OFF_USED: usize = 272;
const ROUNDS: usize = 14;
const RECORD_HEADER: usize = 5; // a TLS record's type, version and length

/// The entry points need AES-NI (with SSSE3 and SSE4.1, which every AES-NI CPU has).
fn cpu_ok() -> bool {
    is_x86_feature_detected!("aes") && is_x86_feature_detected!("sse4.1") && is_x86_feature_detected!("ssse3")
}

/// Set by `mtp_force_aesni` (tests, and measuring what a CPU without VAES runs): the AES-NI walk on a CPU
/// that has VAES too.
static FORCE_AESNI: AtomicBool = AtomicBool::new(false);

/// Two AES blocks per instruction (VAES on AVX2) for the keystream walks; else AES-NI, one per instruction.
fn vaes() -> bool {
    !FORCE_AESNI.load(Ordering::Relaxed)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("vaes")
        && cpu_ok()
}

struct Stream {
    rk: [__m128i; ROUNDS + 1],
    counter: u128,
    pad: [u8; 16],
    used: usize,
}

impl Stream {
    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    unsafe fn load(state: *const u8) -> Stream {
        let mut rk = [_mm_setzero_si128(); ROUNDS + 1];
        for (i, k) in rk.iter_mut().enumerate() {
            *k = _mm_loadu_si128(state.add(16 * i) as *const __m128i);
        }
        let counter = ptr::read_unaligned(state.add(OFF_COUNTER) as *const u128);
        let pad = ptr::read_unaligned(state.add(OFF_PAD) as *const [u8; 16]);
        let used = ptr::read_unaligned(state.add(OFF_USED) as *const u64) as usize;
        Stream { rk, counter, pad, used: used.min(16) }
    }

    unsafe fn store(&self, state: *mut u8) {
        ptr::write_unaligned(state.add(OFF_COUNTER) as *mut u128, self.counter);
        ptr::write_unaligned(state.add(OFF_PAD) as *mut [u8; 16], self.pad);
        ptr::write_unaligned(state.add(OFF_USED) as *mut u64, self.used as u64);
    }

    /// AES_K of one counter block given as a native-order u128.
    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    unsafe fn block(&self, counter: u128) -> __m128i {
        let v = _mm_set_epi64x((counter >> 64) as i64, counter as i64);
        let mut x = _mm_xor_si128(_mm_shuffle_epi8(v, bswap128()), self.rk[0]);
        for i in 1..ROUNDS {
            x = _mm_aesenc_si128(x, self.rk[i]);
        }
        _mm_aesenclast_si128(x, self.rk[ROUNDS])
    }

    /// The round keys in both lanes of a 256-bit register, for the VAES walk.
    #[target_feature(enable = "aes,avx2,vaes")]
    unsafe fn wide_keys(&self) -> [__m256i; ROUNDS + 1] {
        let mut rk2 = [_mm256_setzero_si256(); ROUNDS + 1];
        for (wide, narrow) in rk2.iter_mut().zip(self.rk.iter()) {
            *wide = _mm256_broadcastsi128_si256(*narrow);
        }
        rk2
    }

    /// Keystream for the next 8 blocks (4 registers of 2) with VAES, advancing the counter.
    #[target_feature(enable = "aes,avx2,vaes")]
    #[inline]
    unsafe fn next8_wide(&mut self, rk2: &[__m256i; ROUNDS + 1]) -> [__m256i; 4] {
        let c = self.counter;
        let mut v = [_mm256_setzero_si256(); 4];
        if (c as u64) <= u64::MAX - 7 {
            // no carry out of the low 64 bits within these 8 blocks: one add per pair
            let base = _mm256_broadcastsi128_si256(_mm_set_epi64x((c >> 64) as i64, c as i64));
            for (k, slot) in v.iter_mut().enumerate() {
                let step = _mm256_set_epi64x(0, 2 * k as i64 + 1, 0, 2 * k as i64);
                *slot = _mm256_add_epi64(base, step);
            }
        } else {
            for (k, slot) in v.iter_mut().enumerate() {
                let a = c.wrapping_add(2 * k as u128);
                let b = c.wrapping_add(2 * k as u128 + 1);
                *slot = _mm256_set_epi64x((b >> 64) as i64, b as i64, (a >> 64) as i64, a as i64);
            }
        }
        self.counter = c.wrapping_add(8);
        let swap = _mm256_broadcastsi128_si256(bswap128());
        let mut x = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            x[k] = _mm256_xor_si256(_mm256_shuffle_epi8(v[k], swap), rk2[0]);
        }
        for r in rk2.iter().take(ROUNDS).skip(1) {
            for xk in x.iter_mut() {
                *xk = _mm256_aesenc_epi128(*xk, *r);
            }
        }
        for xk in x.iter_mut() {
            *xk = _mm256_aesenclast_epi128(*xk, rk2[ROUNDS]);
        }
        x
    }

    /// Keystream for the next 8 blocks with AES-NI, advancing the counter: eight blocks in flight keep the
    /// AES unit busy through each instruction's latency.
    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    #[inline]
    unsafe fn next8_narrow(&mut self) -> [__m128i; 8] {
        let c = self.counter;
        let swap = bswap128();
        let mut x = [_mm_setzero_si128(); 8];
        if (c as u64) <= u64::MAX - 7 {
            let base = _mm_set_epi64x((c >> 64) as i64, c as i64);
            for (k, xk) in x.iter_mut().enumerate() {
                let v = _mm_add_epi64(base, _mm_set_epi64x(0, k as i64));
                *xk = _mm_xor_si128(_mm_shuffle_epi8(v, swap), self.rk[0]);
            }
        } else {
            for (k, xk) in x.iter_mut().enumerate() {
                let v = c.wrapping_add(k as u128);
                let v = _mm_set_epi64x((v >> 64) as i64, v as i64);
                *xk = _mm_xor_si128(_mm_shuffle_epi8(v, swap), self.rk[0]);
            }
        }
        self.counter = c.wrapping_add(8);
        for i in 1..ROUNDS {
            let r = self.rk[i];
            for xk in x.iter_mut() {
                *xk = _mm_aesenc_si128(*xk, r);
            }
        }
        let r = self.rk[ROUNDS];
        for xk in x.iter_mut() {
            *xk = _mm_aesenclast_si128(*xk, r);
        }
        x
    }

    /// XOR the unused bytes of the last block's keystream; returns how many bytes that took.
    unsafe fn drain_pad(&mut self, src: *const u8, dst: *mut u8, len: usize) -> usize {
        let take = (16 - self.used).min(len);
        for i in 0..take {
            *dst.add(i) = *src.add(i) ^ self.pad[self.used + i];
        }
        self.used += take;
        take
    }

    /// Whole blocks one at a time (fewer than a batch), then a partial block into the pad.
    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    unsafe fn finish(&mut self, src: *const u8, dst: *mut u8, len: usize) {
        let mut done = 0;
        while len - done >= 16 {
            let ks = self.block(self.counter);
            self.counter = self.counter.wrapping_add(1);
            let d = _mm_loadu_si128(src.add(done) as *const __m128i);
            _mm_storeu_si128(dst.add(done) as *mut __m128i, _mm_xor_si128(d, ks));
            done += 16;
        }
        if done < len {
            _mm_storeu_si128(self.pad.as_mut_ptr() as *mut __m128i, self.block(self.counter));
            self.counter = self.counter.wrapping_add(1);
            self.used = 0;
            self.drain_pad(src.add(done), dst.add(done), len - done);
        }
    }
}

#[inline]
unsafe fn bswap128() -> __m128i {
    _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

/// dst = src XOR the stream's next `len` keystream bytes; `src` and `dst` are the same or do not overlap.
unsafe fn walk_one(s: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    if vaes() {
        walk_one_wide(s, src, dst, len)
    } else {
        walk_one_narrow(s, src, dst, len)
    }
}

#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn walk_one_wide(s: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    let mut done = s.drain_pad(src, dst, len);
    let rk2 = s.wide_keys();
    while len - done >= 256 {
        let ks = [s.next8_wide(&rk2), s.next8_wide(&rk2)];
        for (h, half) in ks.iter().enumerate() {
            for (k, key) in half.iter().enumerate() {
                let at = done + 128 * h + 32 * k;
                let d = _mm256_loadu_si256(src.add(at) as *const __m256i);
                _mm256_storeu_si256(dst.add(at) as *mut __m256i, _mm256_xor_si256(d, *key));
            }
        }
        done += 256;
    }
    while len - done >= 128 {
        let ks = s.next8_wide(&rk2);
        for (k, key) in ks.iter().enumerate() {
            let at = done + 32 * k;
            let d = _mm256_loadu_si256(src.add(at) as *const __m256i);
            _mm256_storeu_si256(dst.add(at) as *mut __m256i, _mm256_xor_si256(d, *key));
        }
        done += 128;
    }
    s.finish(src.add(done), dst.add(done), len - done);
}

#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn walk_one_narrow(s: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    let mut done = s.drain_pad(src, dst, len);
    while len - done >= 128 {
        let ks = s.next8_narrow();
        for (k, key) in ks.iter().enumerate() {
            let at = done + 16 * k;
            let d = _mm_loadu_si128(src.add(at) as *const __m128i);
            _mm_storeu_si128(dst.add(at) as *mut __m128i, _mm_xor_si128(d, *key));
        }
        done += 128;
    }
    s.finish(src.add(done), dst.add(done), len - done);
}

/// Both keystreams over the same bytes. Every chunk is loaded before it is stored, so `dst` may also lie
/// before `src` in the same buffer (the gather below moves payloads toward the front).
unsafe fn walk_two(a: &mut Stream, b: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    if a.used != b.used {
        // the streams are at different offsets within a block: no shared walk
        walk_one(a, src, dst, len);
        walk_one(b, dst, dst, len);
        return;
    }
    let head = a.drain_pad(src, dst, len);
    b.drain_pad(dst, dst, head);
    let done = if vaes() {
        walk_two_wide(a, b, src.add(head), dst.add(head), len - head)
    } else {
        walk_two_narrow(a, b, src.add(head), dst.add(head), len - head)
    } + head;
    a.finish(src.add(done), dst.add(done), len - done);
    b.finish(dst.add(done), dst.add(done), len - done);
}

/// The whole 128-byte batches of `walk_two` (both streams at a block boundary); returns the bytes done.
#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn walk_two_wide(a: &mut Stream, b: &mut Stream, src: *const u8, dst: *mut u8, len: usize) -> usize {
    let (ra, rb) = (a.wide_keys(), b.wide_keys());
    let mut done = 0;
    while len - done >= 128 {
        let ka = a.next8_wide(&ra);
        let kb = b.next8_wide(&rb);
        for k in 0..4 {
            let at = done + 32 * k;
            let d = _mm256_loadu_si256(src.add(at) as *const __m256i);
            let out = _mm256_xor_si256(d, _mm256_xor_si256(ka[k], kb[k]));
            _mm256_storeu_si256(dst.add(at) as *mut __m256i, out);
        }
        done += 128;
    }
    done
}

/// As `walk_two_wide` with AES-NI: 16 blocks of both keystreams would not fit the 16 registers, so each
/// batch goes through the first stream, then (still in L1) the second.
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn walk_two_narrow(a: &mut Stream, b: &mut Stream, src: *const u8, dst: *mut u8, len: usize) -> usize {
    let mut done = 0;
    while len - done >= 128 {
        let ka = a.next8_narrow();
        for (k, key) in ka.iter().enumerate() {
            let at = done + 16 * k;
            let d = _mm_loadu_si128(src.add(at) as *const __m128i);
            _mm_storeu_si128(dst.add(at) as *mut __m128i, _mm_xor_si128(d, *key));
        }
        let kb = b.next8_narrow();
        for (k, key) in kb.iter().enumerate() {
            let at = done + 16 * k;
            let d = _mm_loadu_si128(dst.add(at) as *const __m128i);
            _mm_storeu_si128(dst.add(at) as *mut __m128i, _mm_xor_si128(d, *key));
        }
        done += 128;
    }
    done
}

#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn expand_key(key: *const u8, state: *mut u8) {
    let rk = round_keys(_mm_loadu_si128(key as *const __m128i), _mm_loadu_si128(key.add(16) as *const __m128i));
    for (i, k) in rk.iter().enumerate() {
        _mm_storeu_si128(state.add(16 * i) as *mut __m128i, *k);
    }
}

/// Which keystream walk runs: 2 VAES, 1 AES-NI, 0 none (the entry points refuse).
#[no_mangle]
pub extern "C" fn mtp_walk() -> i32 {
    if vaes() {
        2
    } else {
        cpu_ok() as i32
    }
}

/// Run the AES-NI walk even where VAES is there (`on` non-zero), or choose again (0); returns the previous
/// setting. For tests and for measuring what a CPU without VAES runs.
#[no_mangle]
pub extern "C" fn mtp_force_aesni(on: i32) -> i32 {
    FORCE_AESNI.swap(on != 0, Ordering::Relaxed) as i32
}

/// 1 when this CPU can run the entry points below, else 0.
#[no_mangle]
pub extern "C" fn mtp_available() -> i32 {
    cpu_ok() as i32
}

/// Bytes of caller-owned memory one stream's state takes.
#[no_mangle]
pub extern "C" fn mtp_state_size() -> usize {
    STATE_SIZE
}

/// Start a stream: `key` is 32 bytes, `iv` the first counter block (16 bytes, big-endian).
///
/// # Safety
/// `state` must point to `mtp_state_size()` writable bytes, `key` to 32 and `iv` to 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn mtp_ctr_init(state: *mut u8, key: *const u8, iv: *const u8) -> i32 {
    if !cpu_ok() {
        return -1;
    }
    expand_key(key, state);
    let counter = u128::from_be_bytes(ptr::read_unaligned(iv as *const [u8; 16]));
    ptr::write_unaligned(state.add(OFF_COUNTER) as *mut u128, counter);
    ptr::write_bytes(state.add(OFF_PAD), 0, 16);
    ptr::write_unaligned(state.add(OFF_USED) as *mut u64, 16);
    0
}

/// dst = src XOR the stream's next `len` keystream bytes. `src` and `dst` are the same or do not overlap.
///
/// # Safety
/// `state` as from `mtp_ctr_init`; `src` readable and `dst` writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mtp_ctr_xor(state: *mut u8, src: *const u8, dst: *mut u8, len: usize) -> i32 {
    if !cpu_ok() {
        return -1;
    }
    let mut s = Stream::load(state);
    walk_one(&mut s, src, dst, len);
    s.store(state);
    0
}

/// The upload in one walk: gather the payload toward the front of `buf` and pass it through both
/// keystreams (`first`'s, then `second`'s: the client's decrypt and the DC's encrypt). The payload is
/// `buf[..head]` (all of it for classic, or the rest of a record begun earlier), then `count` records of
/// `length` payload bytes whose headers start at `first_record`, `stride` bytes apart, then
/// `buf[tail_start..tail_start + tail_len]`. It lands at `buf[..head + count * length + tail_len]`. The
/// caller has checked the record headers.
///
/// Returns -2, touching nothing, unless every range lies within `buf_len` bytes and the payload only
/// moves toward the front: `head <= first_record`, `length + 5 <= stride`, the records end by
/// `tail_start`.
///
/// # Safety
/// `first` and `second` as from `mtp_ctr_init`, distinct; `buf` writable for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mtp_gather_xor2(
    first: *mut u8,
    second: *mut u8,
    buf: *mut u8,
    buf_len: usize,
    head: usize,
    first_record: usize,
    stride: usize,
    length: usize,
    count: usize,
    tail_start: usize,
    tail_len: usize,
) -> i32 {
    if !cpu_ok() {
        return -1;
    }
    let records_end = count.checked_mul(stride).and_then(|r| r.checked_add(first_record));
    let tail_end = tail_start.checked_add(tail_len);
    let fits = match (records_end, tail_end) {
        (Some(records_end), Some(tail_end)) => {
            head <= first_record
                && (count == 0 || length.checked_add(RECORD_HEADER).is_some_and(|l| l <= stride))
                && records_end <= tail_start
                && tail_end <= buf_len
        }
        _ => false,
    };
    if !fits {
        return -2;
    }
    let mut a = Stream::load(first);
    let mut b = Stream::load(second);
    walk_two(&mut a, &mut b, buf, buf, head);
    let mut out = head;
    for i in 0..count {
        let src = buf.add(first_record + i * stride + RECORD_HEADER);
        walk_two(&mut a, &mut b, src, buf.add(out), length);
        out += length;
    }
    walk_two(&mut a, &mut b, buf.add(tail_start), buf.add(out), tail_len);
    a.store(first);
    b.store(second);
    0
}

// ---- the secret scan: SHA-256, HMAC-SHA256 and one AES block per configured secret ----
//
// A client without a per-address hint is tried against every secret: classic and dd derive a key with
// SHA-256(init[8..40] + secret) and decrypt the CTR block holding the tag; fake-TLS computes
// HMAC-SHA256(secret, ClientHello with its random zeroed) and compares it with the random. These run
// here with the SHA extensions where the CPU has them (a portable SHA-256 otherwise) and AES-NI.


const SHA_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const SHA_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];
const SHA_BLOCK: usize = 64;
const MIDSTATES_SIZE: usize = 64; // one key's HMAC inner then outer state, 8 native-order u32 each
const SECRET_KEY_SIZE: usize = 16;
const INIT_SIZE: usize = 64;
const TLS_RANDOM: usize = 32;
const DIGEST_CHECKED: usize = 28; // the random's last 4 bytes carry the client's clock
const KNOWN_TAGS: [u32; 3] = [0xefefefef, 0xeeeeeeee, 0xdddddddd];
const NO_MATCH: i32 = -1;
const BAD_ARGUMENT: i32 = -2;
const NO_CPU_SUPPORT: i32 = -3;
const LANES: usize = 4; // candidates hashed together (see `compress_sha_ni`)

/// Set only by the tests (`mtp_sha_force_portable`): the portable SHA-256 must stay right on a CPU that
/// has the extensions too.
static FORCE_PORTABLE_SHA: AtomicBool = AtomicBool::new(false);

fn scan_cpu_ok() -> bool {
    is_x86_feature_detected!("aes") && is_x86_feature_detected!("sse4.1") && is_x86_feature_detected!("ssse3")
}

fn sha_extensions() -> bool {
    !FORCE_PORTABLE_SHA.load(Ordering::Relaxed)
        && is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("ssse3")
}

/// SHA-256's compression over whole 64-byte blocks, chosen once per entry point call.
#[derive(Clone, Copy)]
struct Sha {
    extensions: bool,
}

impl Sha {
    fn new() -> Sha {
        Sha { extensions: sha_extensions() }
    }

    #[inline]
    fn compress(self, state: &mut [u32; 8], blocks: &[u8]) {
        self.compress_lanes(core::array::from_mut(state), [blocks]);
    }

    /// Each state over its own blocks; every lane has the same number of whole blocks.
    #[inline]
    fn compress_lanes<const L: usize>(self, states: &mut [[u32; 8]; L], blocks: [&[u8]; L]) {
        debug_assert!(blocks.iter().all(|b| b.len() % SHA_BLOCK == 0 && b.len() == blocks[0].len()));
        if self.extensions {
            // SAFETY: `sha_extensions` saw the CPU features this needs
            unsafe { compress_sha_ni(states, blocks) }
        } else {
            for (state, lane) in states.iter_mut().zip(blocks) {
                compress_portable(state, lane);
            }
        }
    }

    /// The digest of a message whose first `prefix` bytes (a multiple of 64) are already in `state`
    /// and whose remaining bytes are `data`.
    fn finish(self, state: [u32; 8], prefix: u64, data: &[u8]) -> [u8; 32] {
        let [digest] = self.finish_lanes([state], prefix, [data]);
        digest
    }

    /// `finish` of `L` messages of the same length, each from its own state.
    fn finish_lanes<const L: usize>(self, mut states: [[u32; 8]; L], prefix: u64, data: [&[u8]; L]) -> [[u8; 32]; L] {
        let len = data[0].len();
        debug_assert!(data.iter().all(|d| d.len() == len));
        let whole = len - len % SHA_BLOCK;
        self.compress_lanes(&mut states, data.map(|d| &d[..whole]));
        let rest = len - whole;
        let tail_len = if rest + 9 <= SHA_BLOCK { SHA_BLOCK } else { 2 * SHA_BLOCK };
        let bits = (prefix + len as u64).wrapping_mul(8);
        let mut tails = [[0u8; 2 * SHA_BLOCK]; L];
        for (tail, lane) in tails.iter_mut().zip(data) {
            tail[..rest].copy_from_slice(&lane[whole..]);
            tail[rest] = 0x80;
            tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
        }
        self.compress_lanes(&mut states, core::array::from_fn(|l| &tails[l][..tail_len]));
        states.map(|state| digest_bytes(&state))
    }
}

fn digest_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state.iter()) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn compress_portable(state: &mut [u32; 8], blocks: &[u8]) {
    for block in blocks.chunks_exact(SHA_BLOCK) {
        let mut w = [0u32; 64];
        for (t, word) in block.chunks_exact(4).enumerate() {
            w[t] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16].wrapping_add(s0).wrapping_add(w[t - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for t in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(SHA_K[t]).wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The same compression with SHA256RNDS2 and SHA256MSG1/2 (Intel's SHA extensions): the state lives as
/// ABEF and CDGH, four rounds' message words per register. `L` messages of the same length at once, one
/// state each: a round's latency is several cycles, and independent lanes fill it.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_sha_ni<const L: usize>(states: &mut [[u32; 8]; L], blocks: [&[u8]; L]) {
    let byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bu64 as i64, 0x0405060700010203u64 as i64);
    let mut abef = [_mm_setzero_si128(); L];
    let mut cdgh = [_mm_setzero_si128(); L];
    for l in 0..L {
        let dcba = _mm_loadu_si128(states[l].as_ptr() as *const __m128i);
        let hgfe = _mm_loadu_si128(states[l].as_ptr().add(4) as *const __m128i);
        let cdab = _mm_shuffle_epi32::<0xB1>(dcba);
        let efgh = _mm_shuffle_epi32::<0x1B>(hgfe);
        abef[l] = _mm_alignr_epi8::<8>(cdab, efgh);
        cdgh[l] = _mm_blend_epi16::<0xF0>(efgh, cdab);
    }
    let count = blocks[0].len() / SHA_BLOCK;
    for b in 0..count {
        let (abef_in, cdgh_in) = (abef, cdgh);
        let mut w = [[_mm_setzero_si128(); 4]; L];
        for l in 0..L {
            let block = blocks[l].as_ptr().add(SHA_BLOCK * b);
            for (i, slot) in w[l].iter_mut().enumerate() {
                *slot = _mm_shuffle_epi8(_mm_loadu_si128(block.add(16 * i) as *const __m128i), byteswap);
            }
        }
        for g in 0..16 {
            let k = _mm_loadu_si128(SHA_K.as_ptr().add(4 * g) as *const __m128i);
            for l in 0..L {
                let w = &mut w[l];
                if g >= 4 {
                    // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16], four words at once
                    let sum = _mm_add_epi32(
                        _mm_sha256msg1_epu32(w[g % 4], w[(g + 1) % 4]),
                        _mm_alignr_epi8::<4>(w[(g + 3) % 4], w[(g + 2) % 4]),
                    );
                    w[g % 4] = _mm_sha256msg2_epu32(sum, w[(g + 3) % 4]);
                }
                let msg = _mm_add_epi32(w[g % 4], k);
                cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], msg);
                abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], _mm_shuffle_epi32::<0x0E>(msg));
            }
        }
        for l in 0..L {
            abef[l] = _mm_add_epi32(abef[l], abef_in[l]);
            cdgh[l] = _mm_add_epi32(cdgh[l], cdgh_in[l]);
        }
    }
    for l in 0..L {
        let feba = _mm_shuffle_epi32::<0x1B>(abef[l]);
        let dchg = _mm_shuffle_epi32::<0xB1>(cdgh[l]);
        _mm_storeu_si128(states[l].as_mut_ptr() as *mut __m128i, _mm_blend_epi16::<0xF0>(feba, dchg));
        _mm_storeu_si128(states[l].as_mut_ptr().add(4) as *mut __m128i, _mm_alignr_epi8::<8>(dchg, feba));
    }
}

/// HMAC-SHA256's inner and outer states after the key's padded block (RFC 2104).
fn hmac_midstates(sha: Sha, key: &[u8]) -> ([u32; 8], [u32; 8]) {
    let mut block = [0u8; SHA_BLOCK];
    if key.len() > SHA_BLOCK {
        block[..32].copy_from_slice(&sha.finish(SHA_IV, 0, key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = SHA_IV;
    let mut outer = SHA_IV;
    let ipad = block.map(|b| b ^ 0x36);
    let opad = block.map(|b| b ^ 0x5c);
    sha.compress(&mut inner, &ipad);
    sha.compress(&mut outer, &opad);
    (inner, outer)
}

fn read_midstate(bytes: &[u8]) -> [u32; 8] {
    let mut state = [0u32; 8];
    for (word, chunk) in state.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    state
}

/// AES-256 round keys of a key in two registers: the key schedule with AESKEYGENASSIST (Intel's AES-NI
/// white paper, figure 28).
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn round_keys(mut t1: __m128i, mut t3: __m128i) -> [__m128i; ROUNDS + 1] {
    #[inline(always)]
    unsafe fn spread(mut t: __m128i) -> __m128i {
        let mut u = _mm_slli_si128::<4>(t);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        _mm_xor_si128(t, u)
    }
    let mut rk = [_mm_setzero_si128(); ROUNDS + 1];
    rk[0] = t1;
    rk[1] = t3;
    macro_rules! even {
        ($rcon:literal, $i:expr) => {
            t1 = _mm_xor_si128(spread(t1), _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(t3)));
            rk[$i] = t1;
        };
    }
    macro_rules! odd {
        ($i:expr) => {
            t3 = _mm_xor_si128(spread(t3), _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1)));
            rk[$i] = t3;
        };
    }
    even!(0x01, 2);
    odd!(3);
    even!(0x02, 4);
    odd!(5);
    even!(0x04, 6);
    odd!(7);
    even!(0x08, 8);
    odd!(9);
    even!(0x10, 10);
    odd!(11);
    even!(0x20, 12);
    odd!(13);
    even!(0x40, 14);
    rk
}

/// AES-256 of one block under a 32-byte key.
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn encrypt_one(key: &[u8; 32], block: __m128i) -> __m128i {
    let rk = round_keys(
        _mm_loadu_si128(key.as_ptr() as *const __m128i),
        _mm_loadu_si128(key.as_ptr().add(16) as *const __m128i),
    );
    let mut x = _mm_xor_si128(block, rk[0]);
    for k in &rk[1..ROUNDS] {
        x = _mm_aesenc_si128(x, *k);
    }
    _mm_aesenclast_si128(x, rk[ROUNDS])
}

/// Which candidates to try, in order: `indexes` (each below the table's size), leaving out `exclude` and,
/// when `skip_domain` is not -1, every key whose entry in `domains` equals it (those were tried first).
struct Candidates<'a> {
    indexes: &'a [i32],
    exclude: i32,
    domains: Option<&'a [i32]>,
    skip_domain: i32,
}

impl Candidates<'_> {
    /// Whether every index lies in `0..count`.
    fn valid(&self, count: usize) -> bool {
        self.indexes.iter().all(|&index| index >= 0 && (index as usize) < count)
    }

    /// The candidates in order, once `valid` holds.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.indexes.iter().filter_map(move |&index| {
            let skipped = index == self.exclude
                || (self.skip_domain != -1 && self.domains.is_some_and(|d| d[index as usize] == self.skip_domain));
            (!skipped).then_some(index as usize)
        })
    }

    /// The first candidate `hits` accepts, trying `LANES` at a time (`hits` returns the first accepted lane
    /// of a batch; a short last batch repeats its last index), -1 when none, -2 on an index outside
    /// `0..count`.
    fn first(&self, count: usize, mut hits: impl FnMut(&[usize; LANES]) -> Option<usize>) -> i32 {
        if !self.valid(count) {
            return BAD_ARGUMENT;
        }
        let mut batch = [0usize; LANES];
        let mut filled = 0;
        let mut found = None;
        for index in self.iter() {
            batch[filled] = index;
            filled += 1;
            if filled == LANES {
                found = hits(&batch);
                filled = 0;
                if found.is_some() {
                    break;
                }
            }
        }
        if found.is_none() && filled > 0 {
            for lane in filled..LANES {
                batch[lane] = batch[filled - 1];
            }
            found = hits(&batch);
        }
        found.map_or(NO_MATCH, |lane| batch[lane] as i32)
    }
}

/// Whether `count` items of `size` bytes make a slice Rust can hold (at most isize::MAX bytes).
fn fits(count: usize, size: usize) -> bool {
    count.checked_mul(size).is_some_and(|bytes| bytes <= isize::MAX as usize)
}

/// # Safety
/// Each pointer readable for the length given with it (`domains` for `count` i32, or null).
unsafe fn candidates<'a>(
    indexes: *const i32,
    n_indexes: usize,
    exclude: i32,
    domains: *const i32,
    count: usize,
    skip_domain: i32,
) -> Candidates<'a> {
    Candidates {
        indexes: if n_indexes == 0 { &[] } else { core::slice::from_raw_parts(indexes, n_indexes) },
        exclude,
        domains: if domains.is_null() || count == 0 { None } else { Some(core::slice::from_raw_parts(domains, count)) },
        skip_domain,
    }
}

/// 1 when the SHA-256 below runs on the CPU's SHA extensions, 0 when it runs the portable code.
#[no_mangle]
pub extern "C" fn mtp_sha_extensions() -> i32 {
    sha_extensions() as i32
}

/// For the tests only: nonzero makes every later call use the portable SHA-256 even where the CPU has the
/// extensions. Returns the previous setting.
#[no_mangle]
pub extern "C" fn mtp_sha_force_portable(on: i32) -> i32 {
    FORCE_PORTABLE_SHA.swap(on != 0, Ordering::Relaxed) as i32
}

/// out = SHA-256(data) (32 bytes). Returns 0, or -2 on a null pointer.
///
/// # Safety
/// `data` readable for `len` bytes (may be null when `len` is 0), `out` writable for 32.
#[no_mangle]
pub unsafe extern "C" fn mtp_sha256(data: *const u8, len: usize, out: *mut u8) -> i32 {
    if out.is_null() || (data.is_null() && len != 0) || !fits(len, 1) {
        return BAD_ARGUMENT;
    }
    let message = if len == 0 { &[][..] } else { core::slice::from_raw_parts(data, len) };
    let digest = Sha::new().finish(SHA_IV, 0, message);
    ptr::copy_nonoverlapping(digest.as_ptr(), out, 32);
    0
}

/// The HMAC-SHA256 midstates of `count` keys of `key_len` bytes each, packed in `keys`, into `out`
/// (`MIDSTATES_SIZE` = 64 bytes a key: the inner then the outer state, 8 native-order u32 each), what
/// `mtp_tls_scan` takes. Returns 0, or -2 on a null pointer or sizes that overflow.
///
/// # Safety
/// `keys` readable for `key_len * count` bytes, `out` writable for `64 * count`.
#[no_mangle]
pub unsafe extern "C" fn mtp_hmac_prepare(keys: *const u8, key_len: usize, count: usize, out: *mut u8) -> i32 {
    if !fits(key_len, count) || !fits(count, MIDSTATES_SIZE) || (count != 0 && out.is_null()) {
        return BAD_ARGUMENT;
    }
    let total = key_len * count;
    if keys.is_null() && total != 0 {
        return BAD_ARGUMENT;
    }
    let keys = if total == 0 { &[][..] } else { core::slice::from_raw_parts(keys, total) };
    let sha = Sha::new();
    for i in 0..count {
        let (inner, outer) = hmac_midstates(sha, &keys[key_len * i..key_len * (i + 1)]);
        for (w, word) in inner.iter().chain(outer.iter()).enumerate() {
            ptr::write_unaligned(out.add(MIDSTATES_SIZE * i + 4 * w) as *mut [u8; 4], word.to_ne_bytes());
        }
    }
    0
}

/// The classic/dd scan: the first of `indexes` (skipping `exclude`) whose 16-byte key in `keys` decrypts
/// `init`'s tag to a known one: key = SHA-256(init[8..40] + secret), the tag block is CTR block 3 from the
/// big-endian counter at init[40..56], and the tag is stream bytes 56..60. Returns that index, -1 when
/// none, -2 on a bad argument (an index outside `0..n_keys`, a null pointer), -3 without AES-NI.
///
/// # Safety
/// `init` readable for 64 bytes, `keys` for `16 * n_keys`, `indexes` for `n_indexes` i32.
#[no_mangle]
pub unsafe extern "C" fn mtp_obfs2_scan(
    init: *const u8,
    keys: *const u8,
    n_keys: usize,
    indexes: *const i32,
    n_indexes: usize,
    exclude: i32,
) -> i32 {
    if !scan_cpu_ok() {
        return NO_CPU_SUPPORT;
    }
    if init.is_null()
        || (n_keys != 0 && keys.is_null())
        || (n_indexes != 0 && indexes.is_null())
        || !fits(n_keys, SECRET_KEY_SIZE)
        || !fits(n_indexes, 4)
    {
        return BAD_ARGUMENT;
    }
    let init = &*(init as *const [u8; INIT_SIZE]);
    let keys = if n_keys == 0 { &[][..] } else { core::slice::from_raw_parts(keys, SECRET_KEY_SIZE * n_keys) };
    obfs2_scan(init, keys, &candidates(indexes, n_indexes, exclude, ptr::null(), 0, -1))
}

#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn obfs2_scan(init: &[u8; INIT_SIZE], keys: &[u8], candidates: &Candidates<'_>) -> i32 {
    let sha = Sha::new();
    // one SHA block: the init's 32 key bytes, the secret's 16, the padding and the 384-bit length
    let mut block = [0u8; SHA_BLOCK];
    block[..32].copy_from_slice(&init[8..40]);
    block[48] = 0x80;
    block[56..].copy_from_slice(&384u64.to_be_bytes());
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&init[40..56]);
    let counter = u128::from_be_bytes(iv).wrapping_add(3).to_be_bytes();
    let counter = _mm_loadu_si128(counter.as_ptr() as *const __m128i);
    let tag_cipher = u32::from_le_bytes([init[56], init[57], init[58], init[59]]);
    let mut blocks = [block; LANES];
    candidates.first(keys.len() / SECRET_KEY_SIZE, |batch| {
        for (block, &index) in blocks.iter_mut().zip(batch) {
            block[32..48].copy_from_slice(&keys[SECRET_KEY_SIZE * index..SECRET_KEY_SIZE * (index + 1)]);
        }
        let mut states = [SHA_IV; LANES];
        sha.compress_lanes(&mut states, core::array::from_fn(|l| &blocks[l][..]));
        (0..LANES).find(|&lane| {
            let keystream = encrypt_one(&digest_bytes(&states[lane]), counter);
            let word = _mm_extract_epi32::<2>(keystream) as u32; // stream bytes 56..60 of the block 48..64
            KNOWN_TAGS.contains(&(word ^ tag_cipher))
        })
    })
}

/// The fake-TLS scan: the first of `indexes` whose HMAC-SHA256 (midstates from `mtp_hmac_prepare`, 64
/// bytes a key in `midstates`) of `record` (the ClientHello record, its random zeroed) matches the first 28
/// bytes of `random` (the record's own random). Skips `exclude`, and every key whose `domains` entry is
/// `skip_domain` unless that is -1 (`domains`, one i32 a key, may be null then). Each candidate's compare
/// takes the same time whatever the bytes. On a match writes the client's clock (the digest's last 4
/// bytes XOR the random's, little-endian) to `timestamp` and returns the index; else -1, -2 on a bad
/// argument, -3 without AES-NI and SSE4.1.
///
/// # Safety
/// `record` readable for `record_len` bytes, `random` for 32, `midstates` for `64 * n_keys`, `domains`
/// (unless null) for `n_keys` i32, `indexes` for `n_indexes` i32; `timestamp` writable for a u32.
#[no_mangle]
pub unsafe extern "C" fn mtp_tls_scan(
    record: *const u8,
    record_len: usize,
    random: *const u8,
    midstates: *const u8,
    n_keys: usize,
    domains: *const i32,
    indexes: *const i32,
    n_indexes: usize,
    exclude: i32,
    skip_domain: i32,
    timestamp: *mut u32,
) -> i32 {
    if !scan_cpu_ok() {
        return NO_CPU_SUPPORT;
    }
    if record.is_null()
        || random.is_null()
        || timestamp.is_null()
        || (n_keys != 0 && midstates.is_null())
        || (n_indexes != 0 && indexes.is_null())
        || (skip_domain != -1 && domains.is_null())
        || !fits(record_len, 1)
        || !fits(n_keys, MIDSTATES_SIZE)
        || !fits(n_indexes, 4)
    {
        return BAD_ARGUMENT;
    }
    let record = core::slice::from_raw_parts(record, record_len);
    let random = &*(random as *const [u8; TLS_RANDOM]);
    let midstates =
        if n_keys == 0 { &[][..] } else { core::slice::from_raw_parts(midstates, MIDSTATES_SIZE * n_keys) };
    let sha = Sha::new();
    let mut clock = 0u32;
    let found = candidates(indexes, n_indexes, exclude, domains, n_keys, skip_domain).first(n_keys, |batch| {
        let keyed = batch.map(|index| &midstates[MIDSTATES_SIZE * index..MIDSTATES_SIZE * (index + 1)]);
        let inner = sha.finish_lanes(keyed.map(|k| read_midstate(&k[..32])), SHA_BLOCK as u64, [record; LANES]);
        let digests = sha.finish_lanes(
            keyed.map(|k| read_midstate(&k[32..])),
            SHA_BLOCK as u64,
            core::array::from_fn(|l| &inner[l][..]),
        );
        let lane = (0..LANES).find(|&lane| {
            let mut differ = 0u8;
            for (a, b) in digests[lane][..DIGEST_CHECKED].iter().zip(random[..DIGEST_CHECKED].iter()) {
                differ |= a ^ b;
            }
            // black_box: the compiler must not turn the sum of differences into an early exit
            core::hint::black_box(differ) == 0
        })?;
        let mut tail = [0u8; 4];
        for i in 0..4 {
            tail[i] = digests[lane][DIGEST_CHECKED + i] ^ random[DIGEST_CHECKED + i];
        }
        clock = u32::from_le_bytes(tail);
        Some(lane)
    });
    if found >= 0 {
        ptr::write_unaligned(timestamp, clock);
    }
    found
}

/// An obfuscated2 init's streams in one call: what the acceptor does to a received init and what an
/// initiator does to the init it sends, since CTR runs the same both ways. The forward stream's key is
/// SHA-256(init[8..40] + secret), or init[8..40] itself when `secret_len` is 0 (the proxy's header towards
/// a DC); its counter starts at init[40..56]. The stream starts in `state` and runs over the 64 init bytes
/// into `out[..64]`, so it is left after them; `out[64..112]` gets the reverse direction's key (derived the
/// same way from the reversed bytes 8..56) and counter block. Returns 0, -1 without AES-NI,
/// -2 on a null pointer or a secret longer than 32 bytes.
///
/// # Safety
/// `init` readable for 64 bytes, `secret` for `secret_len` (may be null when 0), `state` writable for
/// `mtp_state_size()` bytes, `out` for 112.
#[no_mangle]
pub unsafe extern "C" fn mtp_obfs2_start(
    init: *const u8,
    secret: *const u8,
    secret_len: usize,
    state: *mut u8,
    out: *mut u8,
) -> i32 {
    if !cpu_ok() {
        return -1;
    }
    if init.is_null() || state.is_null() || out.is_null() || secret_len > 32 || (secret.is_null() && secret_len != 0) {
        return BAD_ARGUMENT;
    }
    let init = &*(init as *const [u8; INIT_SIZE]);
    let mut forward = [0u8; 64];
    forward[..32].copy_from_slice(&init[8..40]);
    let mut backward = [0u8; 64];
    for i in 0..48 {
        backward[i] = init[55 - i];
    }
    let keys = if secret_len == 0 {
        let mut f = [0u8; 32];
        let mut b = [0u8; 32];
        f.copy_from_slice(&forward[..32]);
        b.copy_from_slice(&backward[..32]);
        [f, b]
    } else {
        let secret = core::slice::from_raw_parts(secret, secret_len);
        forward[32..32 + secret_len].copy_from_slice(secret);
        let backward_iv: [u8; 16] = backward[32..48].try_into().unwrap_or([0; 16]);
        backward[32..32 + secret_len].copy_from_slice(secret);
        let n = 32 + secret_len;
        let digests = Sha::new().finish_lanes([SHA_IV; 2], 0, [&forward[..n], &backward[..n]]);
        backward[32..48].copy_from_slice(&backward_iv);
        digests
    };
    mtp_ctr_init(state, keys[0].as_ptr(), init[40..56].as_ptr());
    mtp_ctr_xor(state, init.as_ptr(), out, INIT_SIZE);
    ptr::copy_nonoverlapping(keys[1].as_ptr(), out.add(INIT_SIZE), 32);
    ptr::copy_nonoverlapping(backward[32..48].as_ptr(), out.add(INIT_SIZE + 32), 16);
    0
}

/// First words no initiator may send (`obfs2.is_acceptable_init`): they would read as HTTP, TLS or a
/// transport tag.
const FORBIDDEN_STARTS: [[u8; 4]; 7] = [*b"HEAD", *b"POST", *b"GET ", *b"OPTI", [0x16, 0x03, 0x01, 0x02],
                                        [0xdd; 4], [0xee; 4]];
const UNACCEPTABLE_INIT: i32 = -4;

/// The proxy's header towards a DC in fast mode, and the client's first bytes behind it, in one call. The
/// init is `drawn` (64 random bytes) with bytes 8..56 the client's reverse key and counter block reversed
/// (`reverse`: 48 bytes as `mtp_obfs2_start` gives them; the DC takes its reply keys from the reversed bytes
/// 8..56, so it answers in the stream the client expects), `tag` at 56..60 and `dc_id` at 60..62 (little
/// endian). An init that would read as another protocol returns -4, touching nothing: the caller draws
/// again. Otherwise the DC stream starts in `dc_state` (key init[8..40], counter init[40..56]) and runs over
/// the init, `out[..64]` gets the header (init[..56] in the clear, the rest enciphered) and
/// `out[64..64 + pending_len]` the `pending` bytes, deciphered with `from_client` and enciphered for the DC.
/// Returns 0, -1 without AES-NI, -2 on a null pointer.
///
/// # Safety
/// `reverse` readable for 48 bytes, `tag` for 4, `drawn` for 64, `pending` for `pending_len` (may be null
/// when 0); `from_client` a stream from `mtp_ctr_init` (may be null when `pending_len` is 0), `dc_state`
/// writable for `mtp_state_size()` bytes, `out` for 64 + `pending_len`.
#[no_mangle]
pub unsafe extern "C" fn mtp_obfs2_link(
    reverse: *const u8,
    tag: *const u8,
    dc_id: i32,
    drawn: *const u8,
    from_client: *mut u8,
    pending: *const u8,
    pending_len: usize,
    dc_state: *mut u8,
    out: *mut u8,
) -> i32 {
    if !cpu_ok() {
        return -1;
    }
    if reverse.is_null() || tag.is_null() || drawn.is_null() || dc_state.is_null() || out.is_null()
        || (pending_len != 0 && (pending.is_null() || from_client.is_null()))
    {
        return BAD_ARGUMENT;
    }
    let mut init = ptr::read_unaligned(drawn as *const [u8; INIT_SIZE]);
    let reverse = &*(reverse as *const [u8; 48]);
    for i in 0..48 {
        init[8 + i] = reverse[47 - i];
    }
    ptr::copy_nonoverlapping(tag, init.as_mut_ptr().add(56), 4);
    init[60..62].copy_from_slice(&(dc_id as i16).to_le_bytes());
    let start: [u8; 4] = [init[0], init[1], init[2], init[3]];
    if init[0] == 0xef || FORBIDDEN_STARTS.contains(&start) || init[4..8] == [0; 4] {
        return UNACCEPTABLE_INIT;
    }
    mtp_ctr_init(dc_state, init[8..40].as_ptr(), init[40..56].as_ptr());
    mtp_ctr_xor(dc_state, init.as_ptr(), out, INIT_SIZE);
    ptr::copy_nonoverlapping(init.as_ptr(), out, 56);
    if pending_len != 0 {
        let behind = out.add(INIT_SIZE);
        mtp_ctr_xor(from_client, pending, behind, pending_len);
        mtp_ctr_xor(dc_state, behind, behind, pending_len);
    }
    0
}

// ---- the replay filter (`mtproxy.protocol.replay.ReplayFilter` is the reference and owns the layout) ----

const REPLAY_HEADER: usize = 16;
const REPLAY_WAYS: usize = 8;
const REPLAY_SLOT: usize = 24; // a 16-byte digest, then the time it was inserted and its expiry (u32 LE each)

/// The replay filter's lookup and insert on its memory (`mem_len` bytes: a 16-byte header, then buckets of 8
/// slots). Returns 1 when `key` (16 bytes) is in its bucket and has not expired at `now` (unix seconds); else
/// 0, and with `ttl` above 0 remembers it until `now + ttl` in the slot that expired longest ago, else the
/// oldest one. -2 on a null pointer or memory too small for one bucket. The caller holds the filter's lock
/// when several processes share the memory.
///
/// # Safety
/// `mem` writable for `mem_len` bytes, `key` readable for 16.
#[no_mangle]
pub unsafe extern "C" fn mtp_replay_check(mem: *mut u8, mem_len: usize, key: *const u8, now: u64, ttl: u64) -> i32 {
    if mem.is_null() || key.is_null() || mem_len < REPLAY_HEADER + REPLAY_WAYS * REPLAY_SLOT {
        return BAD_ARGUMENT;
    }
    let buckets = ((mem_len - REPLAY_HEADER) / (REPLAY_WAYS * REPLAY_SLOT)) as u64;
    let key = ptr::read_unaligned(key as *const [u8; 16]);
    let index = u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8])) % buckets;
    let bucket = mem.add(REPLAY_HEADER + index as usize * REPLAY_WAYS * REPLAY_SLOT);
    let field = |way: usize, at: usize| u32::from_le_bytes(ptr::read_unaligned(bucket.add(way * REPLAY_SLOT + at) as *const [u8; 4]));
    // (time, way) of the first slot with the least expiry, and of the first with the least insertion
    let (mut soonest, mut oldest) = ((field(0, 20), 0), (field(0, 16), 0));
    for way in 0..REPLAY_WAYS {
        let expiry = field(way, 20);
        if ptr::read_unaligned(bucket.add(way * REPLAY_SLOT) as *const [u8; 16]) == key && u64::from(expiry) > now {
            return 1;
        }
        if expiry < soonest.0 {
            soonest = (expiry, way);
        }
        let inserted = field(way, 16);
        if inserted < oldest.0 {
            oldest = (inserted, way);
        }
    }
    if ttl == 0 {
        return 0;
    }
    let victim = if u64::from(soonest.0) <= now { soonest.1 } else { oldest.1 };
    let slot = bucket.add(victim * REPLAY_SLOT);
    ptr::write_unaligned(slot as *mut [u8; 16], key);
    ptr::write_unaligned(slot.add(16) as *mut [u8; 4], ((now & 0xffff_ffff) as u32).to_le_bytes());
    let expiry = now.saturating_add(ttl.max(1)).min(0xffff_ffff) as u32;
    ptr::write_unaligned(slot.add(20) as *mut [u8; 4], expiry.to_le_bytes());
    0
}

// ---- the fake-TLS handshake: a ClientHello checked, the server's flight built ----
//
// `mtproxy.protocol.faketls` holds the references (`parse_client_hello`; `client_timestamp`, then
// `build_server_flight` of `cert_stand_in`). `mtp_tls_hello` parses, and accepts under the hinted secret in the
// same call; `mtp_tls_accept` tries each further candidate. Every read of
// the record is bounds-checked: a malformed hello is an answer (-1), never a read past its end.

const HELLO_PREFIX: [u8; 3] = [0x16, 0x03, 0x01];
const TLS_RANDOM_OFFSET: usize = 11;
const MIN_HELLO_PAYLOAD: usize = 64;
const MAX_RECORD_PAYLOAD: usize = 16384;
const SESSION_ID_OFFSET: usize = TLS_RANDOM_OFFSET + TLS_RANDOM + 1; // after the random and its length byte
const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];
const HELLO_MALFORMED: i32 = -1;
const NO_NAME: u32 = u32::MAX;
// ServerHello's extensions: key_share (x25519's 32 bytes, or X25519MLKEM768's ML-KEM-768 ciphertext then
// x25519's share), supported_versions (TLS 1.3)
const EXT_KEY_SHARE: usize = 0x0033;
const X25519: u16 = 0x001d;
const X25519MLKEM768: u16 = 0x11ec;
const X25519_SHARE: usize = 32;
const HYBRID_SHARE: usize = 1120;
const SUPPORTED_VERSIONS: [u8; 6] = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
const CHANGE_CIPHER_SPEC: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// The big-endian number in `data[at..at + n]`, None past the end.
fn be(data: &[u8], at: usize, n: usize) -> Option<usize> {
    let bytes = data.get(at..at.checked_add(n)?)?;
    Some(bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize))
}

/// A TLS vector with a `width`-byte length at `pos`, ending by `end`: (its start, its end).
fn vector(data: &[u8], pos: usize, width: usize, end: usize) -> Option<(usize, usize)> {
    let start = pos + width;
    if start > end {
        return None;
    }
    let stop = start + be(data, pos, width)?;
    (stop <= end).then_some((start, stop))
}

/// The server_name extension's body at `data[start..end]`: the first host_name's (offset, length), or
/// NO_NAME when it has none; None when malformed or not ASCII.
fn server_name(data: &[u8], start: usize, end: usize) -> Option<(u32, u32)> {
    let end = end.min(start + 2 + be(data, start, 2).filter(|_| start + 2 <= end)?);
    let mut pos = start + 2;
    while pos < end {
        if pos + 3 > end {
            return None;
        }
        let name_type = data[pos];
        let name_end = pos + 3 + be(data, pos + 1, 2)?;
        if name_end > end {
            return None;
        }
        if name_type == 0 {
            let name = data.get(pos + 3..name_end)?;
            return name.is_ascii().then_some(((pos + 3) as u32, name.len() as u32));
        }
        pos = name_end;
    }
    Some((NO_NAME, 0))
}

/// What the handshake needs of a well-formed ClientHello record: the session id's length (it starts at
/// SESSION_ID_OFFSET), the last server_name extension's host name, the first TLS 1.3 suite offered (0: none),
/// and what a shaped ServerHello answers (`faketls.client_offers`): the TLS 1.3 suites offered (bit i for
/// TLS13_SUITES[i]), whether a key share for X25519MLKEM768 is among its key shares.
struct Hello {
    session_id_len: u32,
    name: (u32, u32),
    suite: u32,
    suites: u8,
    hybrid: bool,
}

/// Whether the key_share extension's body at `r[start..end]` holds a share for `group`, walked as
/// `faketls.client_offers` walks it (a share's length may run past the list: the walk just ends).
fn offers_share(r: &[u8], start: usize, end: usize, group: usize) -> bool {
    if start + 2 > end {
        return false;
    }
    let Some(listed) = be(r, start, 2) else { return false };
    let shares_end = end.min(start + 2 + listed);
    let mut share = start + 2;
    while share + 4 <= shares_end {
        if be(r, share, 2) == Some(group) {
            return true;
        }
        let Some(length) = be(r, share + 2, 2) else { return false };
        share += 4 + length;
    }
    false
}

/// `parse_client_hello`'s checks, in its order; None when it raises.
fn parse_hello(r: &[u8]) -> Option<Hello> {
    if r.len() < RECORD_HEADER || r[..3] != HELLO_PREFIX {
        return None;
    }
    let length = be(r, 3, 2)?;
    if !(MIN_HELLO_PAYLOAD..=MAX_RECORD_PAYLOAD).contains(&length) || r.len() != RECORD_HEADER + length {
        return None;
    }
    let total = r.len();
    if *r.get(RECORD_HEADER)? != 0x01 {
        return None;
    }
    let body_end = RECORD_HEADER + 4 + be(r, RECORD_HEADER + 1, 3)?;
    if body_end > total || TLS_RANDOM_OFFSET + TLS_RANDOM > body_end {
        return None;
    }
    let (sid_start, sid_end) = vector(r, TLS_RANDOM_OFFSET + TLS_RANDOM, 1, body_end)?;
    let (suites_start, suites_end) = vector(r, sid_end, 2, body_end)?;
    if (suites_end - suites_start) % 2 != 0 {
        return None;
    }
    let (_, mut pos) = vector(r, suites_end, 1, body_end)?;
    let mut name = (NO_NAME, 0);
    let mut hybrid = false;
    if pos < body_end {
        let extensions_end = pos + 2 + be(r, pos, 2).filter(|_| pos + 2 <= body_end)?;
        if extensions_end > body_end {
            return None;
        }
        pos += 2;
        while pos < extensions_end {
            if pos + 4 > extensions_end {
                return None;
            }
            let ext_type = be(r, pos, 2)?;
            let ext_end = pos + 4 + be(r, pos + 2, 2)?;
            if ext_end > extensions_end {
                return None;
            }
            if ext_type == 0 {
                name = server_name(r, pos + 4, ext_end)?;
            } else if ext_type == EXT_KEY_SHARE {
                hybrid |= offers_share(r, pos + 4, ext_end, X25519MLKEM768 as usize);
            }
            pos = ext_end;
        }
    }
    let listed = r.get(suites_start..suites_end)?.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    let mut suite = 0;
    let mut suites = 0u8;
    for offered in listed {
        if let Some(i) = TLS13_SUITES.iter().position(|&s| s == offered) {
            suite = if suites == 0 { u32::from(offered) } else { suite };
            suites |= 1 << i;
        }
    }
    Some(Hello { session_id_len: (sid_end - sid_start) as u32, name, suite, suites, hybrid })
}

/// A ServerHello's shape (`faketls.HelloShape`, packed by `crypto.native.pack_shape`): bits 0..16 the cipher
/// suite (0: the client's first), 16..32 the key share group, bit 32 set when supported_versions comes first,
/// 40..56 the suite the certificate size was measured on (0: none). `Fitted` is that shape as one client can
/// be answered (`faketls.fit_shape`).
#[derive(Clone, Copy)]
struct Fitted {
    suite: u16,
    versions_first: bool,
    hybrid: bool,
    measured: u16,
}

/// A TLS 1.3 suite's hash length, its Finished message's size (`faketls.FINISHED_SIZES`).
fn finished_size(suite: u16) -> Option<usize> {
    match suite {
        0x1301 | 0x1303 => Some(32),
        0x1302 => Some(48),
        _ => None,
    }
}

impl Fitted {
    /// `faketls.answered_cert_size`: the measured size moved by the difference between this suite's Finished
    /// and the measured suite's, within one record.
    fn cert_size(self, measured_size: usize) -> usize {
        let Some(measured) = finished_size(self.measured) else { return measured_size };
        let answered = finished_size(self.suite).unwrap_or(measured);
        (measured_size + answered).saturating_sub(measured).clamp(1, MAX_RECORD_PAYLOAD)
    }

    fn share_len(self) -> usize {
        if self.hybrid {
            HYBRID_SHARE
        } else {
            X25519_SHARE
        }
    }
}

fn shape_cipher(shape: u64) -> u16 {
    (shape & 0xffff) as u16
}

fn shape_group(shape: u64) -> u16 {
    (shape >> 16 & 0xffff) as u16
}

/// Whether fitting `shape` to a client whose first TLS 1.3 suite is `suite` needs the rest of its offers.
fn needs_offers(shape: u64, suite: u16) -> bool {
    let cipher = shape_cipher(shape);
    (cipher != 0 && cipher != suite) || shape_group(shape) != X25519
}

/// `faketls.fit_shape`: the site's cipher and group where the client offers them, else its first suite and
/// x25519.
fn fit(hello: &Hello, shape: u64) -> Fitted {
    let cipher = shape_cipher(shape);
    let offered = TLS13_SUITES.iter().position(|&s| s == cipher).is_some_and(|i| hello.suites & (1 << i) != 0);
    Fitted {
        suite: if offered { cipher } else { hello.suite as u16 },
        versions_first: shape >> 32 & 1 == 1,
        hybrid: shape_group(shape) == X25519MLKEM768 && hello.hybrid,
        measured: (shape >> 40 & 0xffff) as u16,
    }
}

/// Two HMAC-SHA256 under one key (its midstates), each of a first block then the rest, hashed side by side
/// over the blocks both have: one lane alone waits on each round's latency, two fill it.
fn hmac_pair(sha: Sha, key: &([u32; 8], [u32; 8]), a: (&[u8; SHA_BLOCK], &[u8]), b: (&[u8; SHA_BLOCK], &[u8])) -> [[u8; 32]; 2] {
    let (inner, outer) = *key;
    let mut states = [inner; 2];
    sha.compress_lanes(&mut states, [&a.0[..], &b.0[..]]);
    let shared = a.1.len().min(b.1.len()) / SHA_BLOCK * SHA_BLOCK;
    sha.compress_lanes(&mut states, [&a.1[..shared], &b.1[..shared]]);
    let prefix = (2 * SHA_BLOCK + shared) as u64;
    let inner_a = sha.finish(states[0], prefix, &a.1[shared..]);
    let inner_b = sha.finish(states[1], prefix, &b.1[shared..]);
    sha.finish_lanes([outer; 2], SHA_BLOCK as u64, [&inner_a[..], &inner_b[..]])
}

/// `faketls.parse_client_hello`'s checks on one whole ClientHello record and, given a secret key (`key_len`
/// not 0), `mtp_tls_accept` under it in the same call, its ServerHello in `shape` (see `Fitted`): the hinted
/// secret's handshake, one call. Returns -1
/// when `parse_client_hello` would raise, else, packed into one number: bits 0..8 the session id's length (it
/// starts at byte 44), 8..24 the host name's offset in the record (0xffff: the hello names no host), 24..40
/// its length, 40..56 the first TLS 1.3 cipher suite offered (0: none). With a key, `out[..8]` gets the
/// client's clock (a little-endian i64; -1 when the digest differs or no TLS 1.3 suite is offered) and
/// `out[8..]` the flight when the clock is not -1 (its length follows from its ServerHello's record header
/// and the certificate size). -2 on a bad argument (a null pointer; with a key, a certificate size outside
/// 1..16384 or `out_len` under 8 + the flight's size), -3 with a key but without AES-NI.
///
/// # Safety
/// `record` readable for `record_len` bytes; with a key, `key` readable for `key_len` bytes, `drawn` for 64,
/// `out` writable for `out_len`.
#[no_mangle]
pub unsafe extern "C" fn mtp_tls_hello(
    record: *const u8,
    record_len: usize,
    key: *const u8,
    key_len: usize,
    drawn: *const u8,
    cert_size: usize,
    out: *mut u8,
    out_len: usize,
    shape: u64,
) -> i64 {
    if record.is_null() || !fits(record_len, 1) {
        return BAD_ARGUMENT as i64;
    }
    let r = core::slice::from_raw_parts(record, record_len);
    let Some(hello) = parse_hello(r) else {
        return HELLO_MALFORMED as i64;
    };
    let sid_len = hello.session_id_len as usize;
    if key_len != 0 {
        if !cpu_ok() {
            return NO_CPU_SUPPORT as i64;
        }
        let fitted = fit(&hello, shape);
        let size = flight_size(sid_len, fitted.cert_size(cert_size), fitted.share_len());
        if key.is_null()
            || drawn.is_null()
            || out.is_null()
            || !fits(key_len, 1)
            || !fits(out_len, 1)
            || !(1..=MAX_RECORD_PAYLOAD).contains(&cert_size)
            || out_len < 8 + size
        {
            return BAD_ARGUMENT as i64;
        }
        let out = core::slice::from_raw_parts_mut(out, out_len);
        let mut clock = -1i64;
        if hello.suite != 0 {
            let key = core::slice::from_raw_parts(key, key_len);
            let flight = &mut out[8..8 + size];
            // a parsed record is at least 69 bytes and holds its session id
            clock = accept(r, sid_len, fitted, key, &*(drawn as *const [u8; 64]), flight).map_or(-1, i64::from);
        }
        out[..8].copy_from_slice(&clock.to_le_bytes());
    }
    let name_at = if hello.name.0 == NO_NAME { 0xffff } else { hello.name.0 as i64 };
    sid_len as i64 | name_at << 8 | (hello.name.1 as i64) << 24 | (hello.suite as i64) << 40
}

/// `faketls.client_timestamp`'s verdict on a ClientHello's random given the HMAC-SHA256 of the hello with
/// that random zeroed: the first 28 bytes compared in constant time; the client's clock (the digest's last 4
/// bytes XOR the random's, little-endian) when they match.
fn hello_clock(digest: &[u8; 32], random: &[u8]) -> Option<u32> {
    let mut differ = 0u8;
    for (a, b) in digest[..DIGEST_CHECKED].iter().zip(&random[..DIGEST_CHECKED]) {
        differ |= a ^ b;
    }
    if core::hint::black_box(differ) != 0 {
        return None;
    }
    let mut tail = [0u8; 4];
    for i in 0..4 {
        tail[i] = digest[DIGEST_CHECKED + i] ^ random[DIGEST_CHECKED + i];
    }
    Some(u32::from_le_bytes(tail))
}

/// The bytes of the server's flight for a session id of `session_id_len` bytes, a certificate record of
/// `cert_size` and a key share of `share_len`.
fn flight_size(session_id_len: usize, cert_size: usize, share_len: usize) -> usize {
    let hello_body = 2 + TLS_RANDOM + 1 + session_id_len + 2 + 1 + 2 + 8 + share_len + SUPPORTED_VERSIONS.len();
    RECORD_HEADER + 4 + hello_body + CHANGE_CIPHER_SPEC.len() + RECORD_HEADER + cert_size
}

/// Writes bytes one after another into a buffer the caller sized.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// `faketls.build_server_flight` of `faketls.cert_stand_in` into `flight` (exactly `flight_size` bytes), its
/// ServerHello's random left zero for the HMAC: ServerHello (echoing the session id, in the `fitted` shape:
/// its suite, its extension order, the x25519 share `key_share` or the hybrid one, whose ML-KEM part is the
/// keystream after the certificate's), ChangeCipherSpec, and one application-data record of AES-256-CTR
/// keystream under `cert_key` from a zero counter block. The caller has checked `cpu_ok`.
unsafe fn write_flight(session_id: &[u8], fitted: Fitted, key_share: &[u8], cert_key: &[u8; 32], flight: &mut [u8]) {
    let share_len = fitted.share_len();
    let bare = flight_size(session_id.len(), 0, share_len);
    let cert_size = flight.len() - bare;
    let handshake = bare - CHANGE_CIPHER_SPEC.len() - 2 * RECORD_HEADER;
    let extensions = 8 + share_len + SUPPORTED_VERSIONS.len();
    let group = if fitted.hybrid { X25519MLKEM768 } else { X25519 };
    let mut w = Writer { buf: flight, at: 0 };
    w.put(&[0x16, 0x03, 0x03]);
    w.put(&(handshake as u16).to_be_bytes());
    w.put(&[0x02]);
    w.put(&((handshake - 4) as u32).to_be_bytes()[1..]);
    w.put(&[0x03, 0x03]);
    w.put(&[0u8; TLS_RANDOM]);
    w.put(&[session_id.len() as u8]);
    w.put(session_id);
    w.put(&fitted.suite.to_be_bytes());
    w.put(&[0x00]);
    w.put(&(extensions as u16).to_be_bytes());
    if fitted.versions_first {
        w.put(&SUPPORTED_VERSIONS);
    }
    w.put(&(EXT_KEY_SHARE as u16).to_be_bytes());
    w.put(&((4 + share_len) as u16).to_be_bytes());
    w.put(&group.to_be_bytes());
    w.put(&(share_len as u16).to_be_bytes());
    let mlkem_at = w.at;
    w.buf[mlkem_at..mlkem_at + share_len - X25519_SHARE].fill(0);
    w.at += share_len - X25519_SHARE;
    w.put(key_share);
    if !fitted.versions_first {
        w.put(&SUPPORTED_VERSIONS);
    }
    w.put(&CHANGE_CIPHER_SPEC);
    w.put(&[0x17, 0x03, 0x03]);
    w.put(&(cert_size as u16).to_be_bytes());
    let body_at = w.at;
    let flight = w.buf;
    flight[body_at..].fill(0);
    let mut state = [0u8; STATE_SIZE];
    mtp_ctr_init(state.as_mut_ptr(), cert_key.as_ptr(), [0u8; 16].as_ptr());
    let body = flight[body_at..].as_mut_ptr();
    mtp_ctr_xor(state.as_mut_ptr(), body, body, cert_size);
    let mlkem = flight[mlkem_at..].as_mut_ptr();
    mtp_ctr_xor(state.as_mut_ptr(), mlkem, mlkem, share_len - X25519_SHARE);
}

/// A parsed ClientHello tried under one secret key, and the server's flight when it verifies. `record` is
/// a hello `mtp_tls_hello` accepted, with its session id's length and the TLS 1.3 suite it chose; `drawn`
/// is 64 random bytes, the x25519 share's (`curve25519::server_share`) then the certificate stand-in's AES
/// key; `shape` as `mtp_tls_hello` takes it (the record is parsed again only when fitting it needs the client's offers). When the digest
/// verifies (`faketls.client_timestamp`), writes the flight (`faketls.build_server_flight` of
/// `faketls.cert_stand_in`: the size for this session id, `cert_size` and the fitted shape, at most
/// `out_len`; its length follows from its ServerHello's record header) to `out` and returns the client's
/// clock; else returns -1 (what `out` then holds is no flight: its HMAC is missing). -2 on a bad argument (a
/// null pointer, a record under 64 bytes or too short for its session id, a suite of 0, a certificate size
/// outside 1..16384, `out_len` under the flight's size, a record that does not parse when it must), -3
/// without AES-NI.
///
/// # Safety
/// `record` readable for `record_len` bytes, `key` for `key_len` (may be null when 0), `drawn` for 64,
/// `out` writable for `out_len`.
#[no_mangle]
pub unsafe extern "C" fn mtp_tls_accept(
    record: *const u8,
    record_len: usize,
    session_id_len: usize,
    suite: u32,
    key: *const u8,
    key_len: usize,
    drawn: *const u8,
    cert_size: usize,
    out: *mut u8,
    out_len: usize,
    shape: u64,
) -> i64 {
    if !cpu_ok() {
        return NO_CPU_SUPPORT as i64;
    }
    if record.is_null()
        || drawn.is_null()
        || out.is_null()
        || (key.is_null() && key_len != 0)
        || !fits(record_len, 1)
        || !fits(key_len, 1)
        || session_id_len > 255
        || record_len < SHA_BLOCK.max(SESSION_ID_OFFSET + session_id_len)
        || suite == 0
        || suite > 0xffff
        || !(1..=MAX_RECORD_PAYLOAD).contains(&cert_size)
    {
        return BAD_ARGUMENT as i64;
    }
    let r = core::slice::from_raw_parts(record, record_len);
    let fitted = if needs_offers(shape, suite as u16) {
        match parse_hello(r) {
            Some(hello) if hello.suite == suite => fit(&hello, shape),
            _ => return BAD_ARGUMENT as i64,
        }
    } else {
        Fitted { suite: suite as u16, versions_first: shape >> 32 & 1 == 1, hybrid: false, measured: (shape >> 40 & 0xffff) as u16 }
    };
    let size = flight_size(session_id_len, fitted.cert_size(cert_size), fitted.share_len());
    if out_len < size {
        return BAD_ARGUMENT as i64;
    }
    let key = if key_len == 0 { &[][..] } else { core::slice::from_raw_parts(key, key_len) };
    let flight = core::slice::from_raw_parts_mut(out, size);
    accept(r, session_id_len, fitted, key, &*(drawn as *const [u8; 64]), flight).map_or(NO_MATCH as i64, i64::from)
}

/// The version of the flights `mtp_tls_hello` and `mtp_tls_accept` build, which `crypto.native` requires
/// (an older build is not loaded): 2, a ServerHello shape taken and the x25519 share a point of the
/// prime-order subgroup drawn from the random bytes (`curve25519::server_share`). Builds of version 1 had
/// `mtp_tls_shapes` instead.
#[no_mangle]
pub extern "C" fn mtp_flight_version() -> i32 {
    2
}

/// `mtp_tls_accept`'s work on checked arguments: `r` at least 64 bytes and holding the session id,
/// `flight` exactly `flight_size` bytes. The caller has checked `cpu_ok`.
unsafe fn accept(r: &[u8], session_id_len: usize, fitted: Fitted, key: &[u8], drawn: &[u8; 64], flight: &mut [u8]) -> Option<u32> {
    let mut cert_key = [0u8; 32];
    cert_key.copy_from_slice(&drawn[32..]);
    let mut share_random = [0u8; 32];
    share_random.copy_from_slice(&drawn[..32]);
    let key_share = curve25519::server_share(&share_random);
    // the flight is built before the digest is known: its HMAC then runs beside the hello's
    write_flight(&r[SESSION_ID_OFFSET..SESSION_ID_OFFSET + session_id_len], fitted, &key_share, &cert_key, flight);
    let random = &r[TLS_RANDOM_OFFSET..TLS_RANDOM_OFFSET + TLS_RANDOM];
    let mut hello_first = [0u8; SHA_BLOCK];
    hello_first.copy_from_slice(&r[..SHA_BLOCK]);
    hello_first[TLS_RANDOM_OFFSET..TLS_RANDOM_OFFSET + TLS_RANDOM].fill(0);
    // the flight's HMAC covers the client's random, then the flight with its own random still zero
    let mut flight_first = [0u8; SHA_BLOCK];
    flight_first[..TLS_RANDOM].copy_from_slice(random);
    flight_first[TLS_RANDOM..].copy_from_slice(&flight[..SHA_BLOCK - TLS_RANDOM]);
    let sha = Sha::new();
    let [hello_digest, flight_digest] = hmac_pair(
        sha,
        &hmac_midstates(sha, key),
        (&hello_first, &r[SHA_BLOCK..]),
        (&flight_first, &flight[SHA_BLOCK - TLS_RANDOM..]),
    );
    let clock = hello_clock(&hello_digest, random)?;
    flight[TLS_RANDOM_OFFSET..TLS_RANDOM_OFFSET + TLS_RANDOM].copy_from_slice(&flight_digest);
    Some(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A few kilobytes of bytes that are not all alike.
    fn sample(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    fn state(key: &[u8], iv: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; STATE_SIZE];
        assert_eq!(unsafe { mtp_ctr_init(s.as_mut_ptr(), key.as_ptr(), iv.as_ptr()) }, 0);
        s
    }

    /// The keystream one block at a time (`Stream::block`), independent of the walks' batches.
    fn reference(key: &[u8], iv: &[u8], skip: usize, data: &[u8]) -> Vec<u8> {
        let s = state(key, iv);
        let stream = unsafe { Stream::load(s.as_ptr()) };
        let counter = u128::from_be_bytes(iv.try_into().unwrap());
        data.iter()
            .enumerate()
            .map(|(i, byte)| {
                let at = skip + i;
                let mut block = [0u8; 16];
                unsafe {
                    let ks = stream.block(counter.wrapping_add((at / 16) as u128));
                    _mm_storeu_si128(block.as_mut_ptr() as *mut __m128i, ks);
                }
                byte ^ block[at % 16]
            })
            .collect()
    }

    fn xor(s: &mut [u8], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; data.len()];
        assert_eq!(unsafe { mtp_ctr_xor(s.as_mut_ptr(), data.as_ptr(), out.as_mut_ptr(), data.len()) }, 0);
        out
    }

    /// Both walks (VAES where the CPU has it, and AES-NI forced) against NIST's vector and the one-block
    /// reference: lengths around the batches, streams begun mid-block, counters that carry out of the low
    /// 64 bits and out of all 128 within a batch, and the two-stream walk with the gather.
    #[test]
    fn walks_match_the_reference() {
        assert!(cpu_ok(), "these tests need AES-NI");
        let walks: &[bool] = if is_x86_feature_detected!("vaes") && is_x86_feature_detected!("avx2") {
            &[false, true]
        } else {
            &[true]
        };
        for &forced in walks {
            mtp_force_aesni(forced as i32);
            assert_eq!(mtp_walk(), if forced { 1 } else { 2 });
            // NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt
            let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
            let iv = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
            let plain = hex(concat!("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
                                    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"));
            let cipher = hex(concat!("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5",
                                     "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"));
            assert_eq!(xor(&mut state(&key, &iv), &plain), cipher);

            let key = sample(32, 7);
            let ivs = [sample(16, 3), hex("00000000000000fffffffffffffffffd"), hex("fffffffffffffffffffffffffffffffe")];
            for iv in &ivs {
                for &first in &[0usize, 1, 15, 16, 17, 100, 127, 128, 129, 255, 256, 257, 1000] {
                    for &second in &[0usize, 5, 128, 300, 4096 + 3] {
                        let data = sample(first + second, first as u8);
                        let mut s = state(&key, iv);
                        let mut got = xor(&mut s, &data[..first]);
                        got.extend(xor(&mut s, &data[first..]));
                        assert_eq!(got, reference(&key, iv, 0, &data), "forced {forced} {first}+{second}");
                    }
                }
                // two streams over the same bytes, gathering records toward the front
                let other = sample(32, 9);
                for &offset in &[0usize, 3, 16] {
                    let (head, stride, length, count, tail) = (37usize, 1029usize, 1024usize, 3usize, 700usize);
                    let first_record = head + 11;
                    let tail_start = first_record + count * stride + 2;
                    let buf = sample(tail_start + tail, 1);
                    let mut payload = buf[..head].to_vec();
                    for i in 0..count {
                        let at = first_record + i * stride + RECORD_HEADER;
                        payload.extend_from_slice(&buf[at..at + length]);
                    }
                    payload.extend_from_slice(&buf[tail_start..]);
                    let mut a = state(&key, iv);
                    let mut b = state(&other, iv);
                    let pre = sample(offset, 2);
                    xor(&mut a, &pre);
                    xor(&mut b, &pre);
                    let mut work = buf.clone();
                    let result = unsafe {
                        mtp_gather_xor2(a.as_mut_ptr(), b.as_mut_ptr(), work.as_mut_ptr(), work.len(), head,
                                        first_record, stride, length, count, tail_start, tail)
                    };
                    assert_eq!(result, 0);
                    let want = reference(&other, iv, offset, &reference(&key, iv, offset, &payload));
                    assert_eq!(&work[..payload.len()], &want[..], "forced {forced} gather at offset {offset}");
                }
            }
        }
        mtp_force_aesni(0);
    }
}
