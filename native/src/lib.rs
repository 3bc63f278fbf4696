//! AES-256-CTR for mtproxy's relay, called from Python through ctypes (`mtproxy.crypto.native`).
//!
//! Why it exists: every uploaded byte takes two CTR passes (the client's key, then the DC's). OpenSSL's CTR
//! runs AES-NI, one block per instruction; VAES (AVX2) does two, and both passes can share one walk over
//! the bytes. The counter is a 128-bit big-endian number that carries across all 128 bits, as OpenSSL's
//! CTR mode counts. Entry points do nothing and return -1 on a CPU without AES-NI, AVX2 and VAES; Python
//! asks `mtp_available` first and keeps OpenSSL then.
//!
//! A stream's state is caller-owned memory of `mtp_state_size()` bytes, any alignment:
//! round keys (15 x 16), the next counter (u128, native order), the keystream of the last block begun
//! (16), and how many of its bytes are used (u64; 16 when none are left).

use core::arch::x86_64::*;
use core::ptr;

const STATE_SIZE: usize = 288;
const OFF_COUNTER: usize = 240;
const OFF_PAD: usize = 256;
const OFF_USED: usize = 272;
const ROUNDS: usize = 14;
const RECORD_HEADER: usize = 5; // a TLS record's type, version and length

fn cpu_ok() -> bool {
    is_x86_feature_detected!("aes") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("vaes")
}

struct Stream {
    rk: [__m128i; ROUNDS + 1],
    rk2: [__m256i; ROUNDS + 1],
    counter: u128,
    pad: [u8; 16],
    used: usize,
}

impl Stream {
    #[target_feature(enable = "aes,avx2,vaes")]
    unsafe fn load(state: *const u8) -> Stream {
        let mut rk = [_mm_setzero_si128(); ROUNDS + 1];
        let mut rk2 = [_mm256_setzero_si256(); ROUNDS + 1];
        for i in 0..=ROUNDS {
            rk[i] = _mm_loadu_si128(state.add(16 * i) as *const __m128i);
            rk2[i] = _mm256_broadcastsi128_si256(rk[i]);
        }
        let counter = ptr::read_unaligned(state.add(OFF_COUNTER) as *const u128);
        let pad = ptr::read_unaligned(state.add(OFF_PAD) as *const [u8; 16]);
        let used = ptr::read_unaligned(state.add(OFF_USED) as *const u64) as usize;
        Stream { rk, rk2, counter, pad, used: used.min(16) }
    }

    unsafe fn store(&self, state: *mut u8) {
        ptr::write_unaligned(state.add(OFF_COUNTER) as *mut u128, self.counter);
        ptr::write_unaligned(state.add(OFF_PAD) as *mut [u8; 16], self.pad);
        ptr::write_unaligned(state.add(OFF_USED) as *mut u64, self.used as u64);
    }

    /// AES_K of one counter block given as a native-order u128.
    #[target_feature(enable = "aes,avx2,vaes")]
    unsafe fn block(&self, counter: u128) -> __m128i {
        let v = _mm_set_epi64x((counter >> 64) as i64, counter as i64);
        let mut x = _mm_xor_si128(_mm_shuffle_epi8(v, bswap128()), self.rk[0]);
        for i in 1..ROUNDS {
            x = _mm_aesenc_si128(x, self.rk[i]);
        }
        _mm_aesenclast_si128(x, self.rk[ROUNDS])
    }

    /// Keystream for the next 8 blocks (4 registers of 2), advancing the counter.
    #[target_feature(enable = "aes,avx2,vaes")]
    #[inline]
    unsafe fn next8(&mut self) -> [__m256i; 4] {
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
            x[k] = _mm256_xor_si256(_mm256_shuffle_epi8(v[k], swap), self.rk2[0]);
        }
        for i in 1..ROUNDS {
            let r = self.rk2[i];
            for xk in x.iter_mut() {
                *xk = _mm256_aesenc_epi128(*xk, r);
            }
        }
        let r = self.rk2[ROUNDS];
        for xk in x.iter_mut() {
            *xk = _mm256_aesenclast_epi128(*xk, r);
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
    #[target_feature(enable = "aes,avx2,vaes")]
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

#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn walk_one(s: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    let mut done = s.drain_pad(src, dst, len);
    while len - done >= 256 {
        let ks = [s.next8(), s.next8()];
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
        let ks = s.next8();
        for (k, key) in ks.iter().enumerate() {
            let at = done + 32 * k;
            let d = _mm256_loadu_si256(src.add(at) as *const __m256i);
            _mm256_storeu_si256(dst.add(at) as *mut __m256i, _mm256_xor_si256(d, *key));
        }
        done += 128;
    }
    s.finish(src.add(done), dst.add(done), len - done);
}

/// Both keystreams over the same bytes. Every 32-byte chunk is loaded before it is stored, so `dst` may
/// also lie before `src` in the same buffer (the gather below moves payloads toward the front).
#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn walk_two(a: &mut Stream, b: &mut Stream, src: *const u8, dst: *mut u8, len: usize) {
    if a.used != b.used {
        // the streams are at different offsets within a block: no shared walk
        walk_one(a, src, dst, len);
        walk_one(b, dst, dst, len);
        return;
    }
    let head = a.drain_pad(src, dst, len);
    b.drain_pad(dst, dst, head);
    let mut done = head;
    while len - done >= 128 {
        let ka = a.next8();
        let kb = b.next8();
        for k in 0..4 {
            let at = done + 32 * k;
            let d = _mm256_loadu_si256(src.add(at) as *const __m256i);
            let out = _mm256_xor_si256(d, _mm256_xor_si256(ka[k], kb[k]));
            _mm256_storeu_si256(dst.add(at) as *mut __m256i, out);
        }
        done += 128;
    }
    a.finish(src.add(done), dst.add(done), len - done);
    b.finish(dst.add(done), dst.add(done), len - done);
}

#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn expand_key(key: *const u8, state: *mut u8) {
    // AES-256 key schedule with AESKEYGENASSIST (Intel's white paper, figure 28)
    unsafe fn spread(mut t: __m128i) -> __m128i {
        let mut u = _mm_slli_si128::<4>(t);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        _mm_xor_si128(t, u)
    }
    let mut t1 = _mm_loadu_si128(key as *const __m128i);
    let mut t3 = _mm_loadu_si128(key.add(16) as *const __m128i);
    let mut rk = [_mm_setzero_si128(); ROUNDS + 1];
    rk[0] = t1;
    rk[1] = t3;
    macro_rules! round_pair {
        ($rcon:literal, $i:expr, $last:expr) => {
            let t2 = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(t3));
            t1 = _mm_xor_si128(spread(t1), t2);
            rk[$i] = t1;
            if !$last {
                let t2 = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1));
                t3 = _mm_xor_si128(spread(t3), t2);
                rk[$i + 1] = t3;
            }
        };
    }
    round_pair!(0x01, 2, false);
    round_pair!(0x02, 4, false);
    round_pair!(0x04, 6, false);
    round_pair!(0x08, 8, false);
    round_pair!(0x10, 10, false);
    round_pair!(0x20, 12, false);
    round_pair!(0x40, 14, true);
    for (i, k) in rk.iter().enumerate() {
        _mm_storeu_si128(state.add(16 * i) as *mut __m128i, *k);
    }
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
