//! Batched int8 kernels for CPUs with AVX-512 VNNI, on the AVX2 tiles.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each group
//! of four products into an i32 lane, in one instruction: the work of
//! AVX2's `maddubs` + `madd` + add, with no i16 step to saturate. On 512-bit
//! registers one instruction covers two tiles (16 weight rows, one per
//! lane) against four activation values broadcast from memory.
//!
//! The tiles are the ones `avx2_repack.rs` builds (a matrix keeps one
//! repacked copy whatever the CPU); a register's two 256-bit halves come
//! from two adjacent tiles, so a kernel call covers [`NR2`] weight rows.
//!
//! Q8_0 weights are signed and so are the activations, while `vpdpbusd`
//! needs one unsigned side: the kernel flips each weight byte's top bit
//! (`w + 128` read as unsigned, 0..=255) and takes `128 · Σq_x` back off,
//! from the activation block's exact integer sum.
//!
//! Batch invariance: the block sums are the same exact integers the AVX2
//! kernels compute, and they enter f32 through the same steps per lane
//! (`fma(isum, d_w·d_x, acc)`, `fma(min, s_x, acc_min)`, one final add;
//! the lane-wise results of these instructions do not depend on the vector
//! width), so a result is bit-identical to the AVX2 kernels' (the one-row
//! kernel's included), which the tests check.

use std::arch::x86_64::*;

use super::avx2_repack::{prefetch, Tile, NR};
use super::int8::Format;
use super::quantize_act::QuantizedActs;
use crate::cpu::Vnni512;

/// Weight rows per kernel call: two tiles, one row per i32 lane of a zmm.
pub(crate) const NR2: usize = 2 * NR;

/// Activation rows per kernel call: eight rows' accumulators (block sum,
/// scaled sum, offset sum) take 24 of the 32 zmm registers and leave room
/// for the unpacked weights, so a decode step of eight sequences unpacks
/// each weight block once.
const R: usize = 8;

type Kernel = unsafe fn([&Tile; 2], Option<[&Tile; 2]>, &QuantizedActs, usize) -> [[f32; NR2]; R];

/// The kernel for `format` and `rows` (1..=R) activation rows.
fn kernel_for(format: Format, rows: usize) -> Kernel {
    macro_rules! pick {
        ($f:ident) => {
            match rows {
                1 => $f::<1>,
                2 => $f::<2>,
                3 => $f::<3>,
                4 => $f::<4>,
                5 => $f::<5>,
                6 => $f::<6>,
                7 => $f::<7>,
                _ => $f::<R>,
            }
        };
    }
    match format {
        Format::Q8_0 => pick!(kernel_q8),
        Format::Q4_0 | Format::Q4_1 => pick!(kernel_u4),
    }
}

impl Vnni512 {
    /// The first `rows` weight rows of `tiles` (repacked by
    /// `Avx2::repack`) against all `m` activation rows; result (r, i) into
    /// `out_t[i * rows + r]`. The contract of `Avx2::int8_packed`.
    pub(crate) fn int8_packed(
        self,
        format: Format,
        tiles: &[Tile],
        rows: usize,
        acts: &QuantizedActs,
        m: usize,
        out_t: &mut [f32],
    ) {
        let (k, nb) = (acts.k, acts.k / 32);
        // The lengths every unchecked access in the kernels relies on.
        assert!(k % 32 == 0 && rows <= tiles.len() * NR && out_t.len() == rows * m);
        assert!(tiles.iter().all(|t| t.fits(format, nb)));
        assert!(acts.qs.len() >= m * k && acts.d.len() >= m * nb);
        assert!(acts.s.len() >= m * nb && acts.sums.len() >= m * nb);
        let mut first = 0;
        while first < rows {
            let live = (rows - first).min(NR2);
            let t = first / NR;
            // A lone last tile is paired with itself; its copy's lanes are
            // computed and dropped.
            let pair = [&tiles[t], &tiles[if live > NR { t + 1 } else { t }]];
            // The pair after this one, whose blocks the kernel prefetches
            // (its own again at the end of the task).
            let next = match tiles.get(t + 2..) {
                Some([a, b, ..]) => [a, b],
                Some([a]) => [a, a],
                _ => pair,
            };
            let mut i = 0;
            while i < m {
                let take = (m - i).min(R);
                // SAFETY: `self` proves the target features; both tiles fit
                // k (checked above), and activation rows i..i + take < m exist.
                // Only the first pass over the pair prefetches: at prefill
                // sizes the repeats cost ~5%.
                let next = (i == 0).then_some(next);
                let res = unsafe { kernel_for(format, take)(pair, next, acts, i) };
                for (t2, lanes) in res.iter().take(take).enumerate() {
                    let at = (i + t2) * rows + first;
                    out_t[at..at + live].copy_from_slice(&lanes[..live]);
                }
                i += take;
            }
            first += live;
        }
    }
}

/// The 32-byte vectors at `lo` and `hi` as one 64-byte vector.
///
/// # Safety
/// AVX-512 F in the caller; 32 readable bytes at each pointer.
#[inline(always)]
unsafe fn join(lo: *const u8, hi: *const u8) -> __m512i {
    // SAFETY: forwarded from the caller.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(lo.cast())),
            _mm256_loadu_si256(hi.cast()),
        )
    }
}

/// Eight f32 at `lo` and eight at `hi` as one vector.
///
/// # Safety
/// As [`join`].
#[inline(always)]
unsafe fn join_ps(lo: *const f32, hi: *const f32) -> __m512 {
    // SAFETY: forwarded from the caller.
    unsafe { _mm512_castsi512_ps(join(lo.cast(), hi.cast())) }
}

/// Activation bytes `p..p + 4` in every 32-bit lane.
///
/// # Safety
/// AVX-512 F in the caller; 4 readable bytes at `p`.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    // SAFETY: forwarded from the caller.
    unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// `acc + f32(isum) · (d_w · d_x)` per lane: `scale_block` of `avx2.rs` on
/// 16 lanes.
///
/// # Safety
/// AVX-512 F in the caller.
#[inline(always)]
unsafe fn scale_block(acc: __m512, isum: __m512i, dw: __m512, dx: f32) -> __m512 {
    #[allow(unused_unsafe)]
    // SAFETY: register-only intrinsics; the caller has the target features.
    unsafe {
        _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(isum),
            _mm512_mul_ps(dw, _mm512_set1_ps(dx)),
            acc,
        )
    }
}

/// Two 4-bit tiles against activation rows `i..i + RR` (rows past `RR` of
/// the result are zeros).
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI; both tiles hold `a.k / 32`
/// blocks; activation rows `i..i + RR` exist. `next` (the following pair,
/// if any) is only prefetched.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel_u4<const RR: usize>(
    t: [&Tile; 2],
    next: Option<[&Tile; 2]>,
    a: &QuantizedActs,
    i: usize,
) -> [[f32; NR2]; R] {
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: tile offsets b·128 + j·32 + 32 <= nb·128 and b·8 + 8 <= nb·8;
    // activation offsets (i + r)·k + b·32 + 32 <= m·k and (i + r)·nb + b <
    // m·nb for rows that exist.
    unsafe {
        let mask = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); RR];
        let mut acc_min = [_mm512_setzero_ps(); RR];
        for b in 0..nb {
            let (w0, w1) = (t[0].q.as_ptr().add(b * 128), t[1].q.as_ptr().add(b * 128));
            for n in next.iter().flatten() {
                prefetch(n.q.as_ptr().wrapping_add(b * 128), 128);
            }
            let mut p = [_mm512_setzero_si512(); RR];
            for j in 0..4 {
                // Slice j in the low nibbles, slice j + 4 in the high ones.
                let packed = join(w0.add(j * 32), w1.add(j * 32));
                let lo = _mm512_and_si512(packed, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), mask);
                for (r, p) in p.iter_mut().enumerate() {
                    let y = a.qs.as_ptr().add((i + r) * k + b * 32 + 4 * j);
                    *p = _mm512_dpbusd_epi32(*p, lo, bcast4(y));
                    *p = _mm512_dpbusd_epi32(*p, hi, bcast4(y.add(16)));
                }
            }
            let dw = join_ps(t[0].d.as_ptr().add(b * NR), t[1].d.as_ptr().add(b * NR));
            let mins = join_ps(t[0].min.as_ptr().add(b * NR), t[1].min.as_ptr().add(b * NR));
            for r in 0..RR {
                let at = (i + r) * nb + b;
                acc[r] = scale_block(acc[r], p[r], dw, *a.d.get_unchecked(at));
                acc_min[r] =
                    _mm512_fmadd_ps(mins, _mm512_set1_ps(*a.s.get_unchecked(at)), acc_min[r]);
            }
        }
        let mut out = [[0.0f32; NR2]; R];
        for r in 0..RR {
            _mm512_storeu_ps(out[r].as_mut_ptr(), _mm512_add_ps(acc[r], acc_min[r]));
        }
        out
    }
}

/// Two Q8_0 tiles against activation rows `i..i + RR`, weights offset to
/// unsigned by flipping their top bit.
///
/// # Safety
/// As [`kernel_u4`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel_q8<const RR: usize>(
    t: [&Tile; 2],
    next: Option<[&Tile; 2]>,
    a: &QuantizedActs,
    i: usize,
) -> [[f32; NR2]; R] {
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: tile offsets b·256 + j·32 + 32 <= nb·256 and b·8 + 8 <= nb·8;
    // activation offsets as in kernel_u4.
    unsafe {
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [_mm512_setzero_ps(); RR];
        for b in 0..nb {
            let (w0, w1) = (t[0].q.as_ptr().add(b * 256), t[1].q.as_ptr().add(b * 256));
            for n in next.iter().flatten() {
                prefetch(n.q.as_ptr().wrapping_add(b * 256), 256);
            }
            let mut p = [_mm512_setzero_si512(); RR];
            for j in 0..8 {
                let w = _mm512_xor_si512(join(w0.add(j * 32), w1.add(j * 32)), flip);
                for (r, p) in p.iter_mut().enumerate() {
                    let y = a.qs.as_ptr().add((i + r) * k + b * 32 + 4 * j);
                    *p = _mm512_dpbusd_epi32(*p, w, bcast4(y));
                }
            }
            let dw = join_ps(t[0].d.as_ptr().add(b * NR), t[1].d.as_ptr().add(b * NR));
            for r in 0..RR {
                let at = (i + r) * nb + b;
                // Σ (w + 128)·y = Σ w·y + 128·Σy, exactly in i32.
                let offset = _mm512_set1_epi32(128 * *a.sums.get_unchecked(at));
                let isum = _mm512_sub_epi32(p[r], offset);
                acc[r] = scale_block(acc[r], isum, dw, *a.d.get_unchecked(at));
            }
        }
        let mut out = [[0.0f32; NR2]; R];
        for r in 0..RR {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }
}
