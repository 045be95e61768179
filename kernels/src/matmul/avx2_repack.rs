//! Batched int8 kernels on weight tiles repacked for AVX2.
//!
//! A tile holds [`NR`] = 8 weight rows. For each block, its 32 values per
//! row form eight *slices*; slice `j` holds values `4j..4j+4` of rows 0..8,
//! one row per 32-bit lane:
//!
//! ```text
//! block b: slice 0: [r0 v0..3][r1 v0..3]...[r7 v0..3]   slice 1: [r0 v4..7]...   ... slice 7
//! ```
//!
//! 4-bit tiles store slices `j` and `j + 4` in one 32-byte vector (slice `j`
//! in the low nibbles, `j + 4` in the high ones), so a block takes 128 bytes
//! for eight rows, as in GGML; Q8_0 tiles store the signed bytes, 256 per
//! block. Block scales (and 4-bit mins) are kept as f32.
//!
//! Broadcasting activation values `4j..4j+4` to all lanes, one `maddubs`
//! then computes partial dots for all eight rows at once, and lane `r` of the
//! final vector *is* row `r`'s result: no horizontal sums, one scale vector
//! (the eight rows' block scales times the activation's) per block. For
//! 4-bit weights the eight slices' i16 partials add up in i16 without
//! overflow (8 · 2 · 15 · 127 = 30480 < 32767), so a block costs about 20
//! vector ops for 8 (row, activation) pairs instead of ~45 one pair at a
//! time. Q8_0 needs the sign trick and a widening per slice (~35 ops).
//!
//! [`Matrix`](super::Matrix) repacks its weights once when it is built
//! ([`Avx2::repack`]) and the batched path reads those tiles
//! ([`Avx2::int8_packed`]); [`Avx2::int8_tiles`] repacks per call, for a
//! matrix that has no tiles. Per block and lane, these kernels and the
//! one-row kernel (`avx2.rs`, which reads the GGML bytes) take the same float
//! steps (`scale_block`, `offset_block`, one final add), which is what keeps
//! a row's result independent of the batch it came in.

use std::arch::x86_64::*;

use super::avx2::{offset_block, scale_block};
use super::int8::Format;
use super::quantize_act::QuantizedActs;
use crate::cpu::Avx2;

/// Weight rows per tile: one per 32-bit lane of a 256-bit register.
pub(crate) const NR: usize = 8;

/// Activation rows a kernel call takes, so each weight slice loaded serves
/// several of them: as many as the 16 ymm registers hold without spilling
/// (the Q8_0 kernel keeps two weight registers per slice).
const R: usize = 4;
const R_Q8: usize = 3;

/// [`NR`] weight rows in the layout above.
pub(crate) struct Tile {
    nb: usize,
    /// 4-bit: `nb · 128` bytes, two slices per 32 bytes (values 0..=15 in
    /// each nibble). Q8_0: `nb · 256` bytes of signed values.
    pub(super) q: Vec<u8>,
    /// `nb · 8` block scales, `[block][row]`.
    pub(super) d: Vec<f32>,
    /// 4-bit only: `nb · 8` block mins, `[block][row]` (Q4_0: `-8d`).
    pub(super) min: Vec<f32>,
}

impl Tile {
    pub(crate) fn new(format: Format, k: usize) -> Self {
        let nb = k / 32;
        let signed = format == Format::Q8_0;
        Self {
            nb,
            q: vec![0; nb * if signed { 256 } else { 128 }],
            d: vec![0.0; nb * NR],
            min: vec![0.0; if signed { 0 } else { nb * NR }],
        }
    }

    /// Whether this tile has the sizes `format` with `nb` blocks per row
    /// needs: what every unchecked access in the kernels relies on.
    pub(super) fn fits(&self, format: Format, nb: usize) -> bool {
        let signed = format == Format::Q8_0;
        self.nb == nb
            && self.q.len() == nb * if signed { 256 } else { 128 }
            && self.d.len() == nb * NR
            && self.min.len() == if signed { 0 } else { nb * NR }
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.q.len() + 4 * (self.d.len() + self.min.len())
    }
}

impl Avx2 {
    /// Repacks whole GGML rows (`row_bytes` each, `row_bytes > 0`) into one
    /// tile per [`NR`] rows, the last padded with zero rows.
    pub(crate) fn repack(self, format: Format, weights: &[u8], row_bytes: usize) -> Vec<Tile> {
        use rayon::prelude::*;
        let nb = row_bytes / format.block_bytes();
        assert!(row_bytes > 0 && row_bytes == nb * format.block_bytes());
        assert!(weights.len().is_multiple_of(row_bytes));
        weights
            .par_chunks(NR * row_bytes)
            .map(|chunk| {
                let mut tile = Tile::new(format, nb * 32);
                // SAFETY: `self` proves the target features.
                unsafe { fill_avx2(&mut tile, format, chunk, row_bytes) };
                tile
            })
            .collect()
    }

    /// Weight rows `weights` (whole GGML rows, `row_bytes` each) against all
    /// `m` activation rows, repacking them here; result (r, i) into
    /// `out_t[i * rows + r]`.
    pub(crate) fn int8_tiles(
        self,
        format: Format,
        weights: &[u8],
        row_bytes: usize,
        acts: &QuantizedActs,
        m: usize,
        out_t: &mut [f32],
    ) {
        let (k, nb) = (acts.k, acts.k / 32);
        let rows = weights.len() / row_bytes.max(1);
        assert!(k % 32 == 0 && row_bytes == nb * format.block_bytes());
        assert!(rows * row_bytes == weights.len() && out_t.len() == rows * m);
        let mut tile = Tile::new(format, k);
        for (t, chunk) in weights.chunks(NR * row_bytes).enumerate() {
            // SAFETY: `self` proves the target features.
            unsafe { fill_avx2(&mut tile, format, chunk, row_bytes) };
            let live = chunk.len() / row_bytes;
            self.tile_rows(format, [&tile, &tile], acts, m, out_t, t * NR, live);
        }
    }

    /// The first `rows` weight rows of `tiles` (repacked by [`Avx2::repack`])
    /// against all `m` activation rows; result (r, i) into `out_t[i * rows + r]`.
    pub(crate) fn int8_packed(
        self,
        format: Format,
        tiles: &[Tile],
        rows: usize,
        acts: &QuantizedActs,
        m: usize,
        out_t: &mut [f32],
    ) {
        assert!(rows <= tiles.len() * NR && out_t.len() == rows * m);
        for (t, tile) in tiles.iter().enumerate().take(rows.div_ceil(NR)) {
            let live = (rows - t * NR).min(NR);
            let next = tiles.get(t + 1).unwrap_or(tile);
            self.tile_rows(format, [tile, next], acts, m, out_t, t * NR, live);
        }
    }

    /// One tile (`tiles[0]`; `tiles[1]` is the next one, prefetched)
    /// against all `m` activation rows: the result of its row r
    /// (r < `live`) and activation i into `out[i * stride + first + r]`,
    /// where `stride = out.len() / m`.
    #[allow(clippy::too_many_arguments)]
    fn tile_rows(
        self,
        format: Format,
        tiles: [&Tile; 2],
        acts: &QuantizedActs,
        m: usize,
        out: &mut [f32],
        first: usize,
        live: usize,
    ) {
        let [tile, following] = tiles;
        let (k, nb) = (acts.k, acts.k / 32);
        // The lengths every unchecked access in the kernels relies on.
        assert!(k % 32 == 0 && tile.fits(format, nb));
        assert!(acts.qs.len() >= m * k && acts.d.len() >= m * nb && acts.s.len() >= m * nb);
        let stride = out.len() / m;
        assert!(live <= NR && first + live <= stride && out.len() == stride * m);
        let mut i = 0;
        while i < m {
            let take = (m - i).min(if format == Format::Q8_0 { R_Q8 } else { R });
            // Only the first pass over the tile prefetches the next one: at
            // prefill sizes the repeats cost ~5%.
            let next = (i == 0).then_some(following);
            // SAFETY: `self` proves the target features; the tile fits k
            // (checked above), and activation rows i..i + take < m exist.
            let res = unsafe {
                match (format, take) {
                    (Format::Q8_0, 1) => kernel_q8::<1>(tile, next, acts, i),
                    (Format::Q8_0, 2) => kernel_q8::<2>(tile, next, acts, i),
                    (Format::Q8_0, _) => kernel_q8::<R_Q8>(tile, next, acts, i),
                    (_, 1) => kernel_u4::<1>(tile, next, acts, i),
                    (_, 2) => kernel_u4::<2>(tile, next, acts, i),
                    (_, 3) => kernel_u4::<3>(tile, next, acts, i),
                    _ => kernel_u4::<R>(tile, next, acts, i),
                }
            };
            for (t2, lanes) in res.iter().take(take).enumerate() {
                let at = (i + t2) * stride + first;
                out[at..at + live].copy_from_slice(&lanes[..live]);
            }
            i += take;
        }
    }
}

/// Repacks `rows.len() / row_bytes` (at most [`NR`]) GGML rows into `tile`;
/// missing rows become zeros, whose results the caller ignores.
///
/// Per block: each row's 32 values are unpacked into one register (eight
/// 4-byte groups), and an 8x8 transpose of 32-bit lanes turns the eight row
/// registers into the eight slices. The eight rows' f16 scales convert in
/// one `vcvtph2ps`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill_avx2(tile: &mut Tile, format: Format, rows: &[u8], row_bytes: usize) {
    let (nb, bb) = (tile.nb, format.block_bytes());
    let count = (rows.len() / row_bytes).min(NR);
    let signed = format == Format::Q8_0;
    assert!(row_bytes == nb * bb && rows.len() >= count * row_bytes);
    assert!(tile.fits(format, nb));
    // SAFETY: block b of row r < count starts at r·row_bytes + b·bb and
    // spans bb bytes within `rows`; tile stores at b·256 + j·32 + 32 <=
    // nb·256 (Q8_0), b·128 + j·32 + 32 <= nb·128 (4-bit, j < 4) and
    // b·8 + 8 <= nb·8 (sizes asserted above).
    unsafe {
        let mask = _mm256_set1_epi8(0x0f);
        for b in 0..nb {
            let mut v = [_mm256_setzero_si256(); NR];
            let mut half_d = [0u16; NR];
            let mut half_m = [0u16; NR];
            for r in 0..count {
                let blk = rows.as_ptr().add(r * row_bytes + b * bb);
                half_d[r] = blk.cast::<u16>().read_unaligned();
                v[r] = if signed {
                    _mm256_loadu_si256(blk.add(2).cast())
                } else {
                    half_m[r] = blk.add(2).cast::<u16>().read_unaligned();
                    let p = _mm_loadu_si128(blk.add(bb - 16).cast());
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(p), p), mask)
                };
            }
            let slices = transpose_8x8_epi32(v);
            if signed {
                let q = tile.q.as_mut_ptr().add(b * 256);
                for (j, s) in slices.iter().enumerate() {
                    _mm256_storeu_si256(q.add(j * 32).cast(), *s);
                }
            } else {
                // Values are 0..=15, so the 16-bit shift keeps each byte's
                // nibble within its byte.
                let q = tile.q.as_mut_ptr().add(b * 128);
                for j in 0..4 {
                    let hi = _mm256_slli_epi16::<4>(slices[j + 4]);
                    _mm256_storeu_si256(q.add(j * 32).cast(), _mm256_or_si256(slices[j], hi));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(half_d.as_ptr().cast()));
            _mm256_storeu_ps(tile.d.as_mut_ptr().add(b * NR), d);
            if !signed {
                let min = if format == Format::Q4_1 {
                    _mm256_cvtph_ps(_mm_loadu_si128(half_m.as_ptr().cast()))
                } else {
                    _mm256_mul_ps(d, _mm256_set1_ps(-8.0))
                };
                _mm256_storeu_ps(tile.min.as_mut_ptr().add(b * NR), min);
            }
        }
    }
}

/// `out[j]` lane `r` = `v[r]` lane `j`, for 32-bit lanes.
#[inline(always)]
unsafe fn transpose_8x8_epi32(v: [__m256i; 8]) -> [__m256i; 8] {
    #[allow(unused_unsafe)]
    // SAFETY: register-only intrinsics; the caller has the target features.
    unsafe {
        let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
        let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
        let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
        let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
        // u_j: lanes 0..4 of rows 0..4 (low half) and 4..8 of them (high).
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }
}

/// Prefetches the cache lines of `bytes` bytes from `p`: the tiles are
/// separate allocations of a few KiB, so the hardware prefetcher loses the
/// stream at every tile (or pair of tiles, `vnni.rs`); the kernels ask for
/// the next tile's block while they compute on this one's (LM head at m = 8
/// with VNNI: ~25% faster).
#[inline(always)]
pub(super) fn prefetch(p: *const u8, bytes: usize) {
    let mut at = 0;
    while at < bytes {
        #[allow(unused_unsafe)]
        // SAFETY: a prefetch is a hint that never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at).cast())
        };
        at += 64;
    }
}

/// Broadcast of activation bytes `at..at + 4` to all eight 32-bit lanes.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller points at 4 readable bytes.
    unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// A 4-bit tile against activation rows `i..i + RR` (only the first `RR`
/// rows of the result are meaningful when called with RR = 1).
///
/// # Safety
/// AVX2, FMA, F16C; the tile holds `acts.k / 32` blocks; rows `i..i + RR`
/// exist. `next` (the following tile, if any) is only prefetched.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_u4<const RR: usize>(
    t: &Tile,
    next: Option<&Tile>,
    a: &QuantizedActs,
    i: usize,
) -> [[f32; NR]; R] {
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: tile offsets b·128 + j·32 + 32 <= nb·128 and b·8 + 8 <= nb·8;
    // activation offsets (i + r)·k + b·32 + 4j + 4 <= m·k and (i + r)·nb + b
    // < m·nb for rows that exist.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); RR];
        let mut acc_min = [_mm256_setzero_ps(); RR];
        for b in 0..nb {
            let wq = t.q.as_ptr().add(b * 128);
            if let Some(n) = next {
                prefetch(n.q.as_ptr().wrapping_add(b * 128), 128);
            }
            let mut p = [_mm256_setzero_si256(); RR];
            for j in 0..8 {
                let packed = _mm256_loadu_si256(wq.add((j % 4) * 32).cast());
                let w = if j < 4 {
                    _mm256_and_si256(packed, mask)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask)
                };
                for (r, p) in p.iter_mut().enumerate() {
                    let y = bcast4(a.qs.as_ptr().add((i + r) * k + b * 32 + 4 * j));
                    *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(w, y));
                }
            }
            let dw = _mm256_loadu_ps(t.d.as_ptr().add(b * NR));
            let mins = _mm256_loadu_ps(t.min.as_ptr().add(b * NR));
            for r in 0..RR {
                let at = (i + r) * nb + b;
                let isum = _mm256_madd_epi16(p[r], ones);
                acc[r] = scale_block(acc[r], isum, dw, *a.d.get_unchecked(at));
                acc_min[r] = offset_block(acc_min[r], mins, *a.s.get_unchecked(at));
            }
        }
        let mut out = [[0.0f32; NR]; R];
        for r in 0..RR {
            _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(acc[r], acc_min[r]));
        }
        out
    }
}

/// A Q8_0 tile against activation rows `i..i + RR`: per slice the sign trick,
/// then a widening to i32 (two slices' i16 partials could overflow).
///
/// # Safety
/// As [`kernel_u4`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_q8<const RR: usize>(
    t: &Tile,
    next: Option<&Tile>,
    a: &QuantizedActs,
    i: usize,
) -> [[f32; NR]; R] {
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: tile offsets b·256 + j·32 + 32 <= nb·256 and b·8 + 8 <= nb·8;
    // activation offsets as in kernel_u4.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); RR];
        for b in 0..nb {
            let wq = t.q.as_ptr().add(b * 256);
            if let Some(n) = next {
                prefetch(n.q.as_ptr().wrapping_add(b * 256), 256);
            }
            let mut p = [_mm256_setzero_si256(); RR];
            for j in 0..8 {
                let wsgn = _mm256_loadu_si256(wq.add(j * 32).cast());
                let wabs = _mm256_abs_epi8(wsgn);
                for (r, p) in p.iter_mut().enumerate() {
                    let y = bcast4(a.qs.as_ptr().add((i + r) * k + b * 32 + 4 * j));
                    let p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(y, wsgn));
                    *p = _mm256_add_epi32(*p, _mm256_madd_epi16(p16, ones));
                }
            }
            let dw = _mm256_loadu_ps(t.d.as_ptr().add(b * NR));
            for r in 0..RR {
                acc[r] = scale_block(acc[r], p[r], dw, *a.d.get_unchecked((i + r) * nb + b));
            }
        }
        let mut out = [[0.0f32; NR]; R];
        for r in 0..RR {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }
}
