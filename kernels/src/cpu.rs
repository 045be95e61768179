//! Which SIMD instruction set the kernels run on, detected at run time.
//!
//! [`Isa::detect`] returns [`Isa::Avx2`] only on an x86-64 CPU with AVX2,
//! FMA and F16C (every AVX2 CPU in practice has the other two). That variant
//! carries an [`Avx2`] token: a zero-sized proof, only constructible by
//! detection, that lets safe methods call `#[target_feature]` functions.
//! Everything else runs portable Rust written so that the compiler
//! vectorises it for the baseline target.
//!
//! Detection is cheap (`is_x86_feature_detected!` caches its answer), so
//! kernels call it per call rather than keeping global state.
//!
//! On a CPU that also has AVX-512 VNNI the [`Avx2`] token says so, and the
//! batched int8 kernels use `vpdpbusd` (`matmul/vnni.rs`); everything else
//! stays on AVX2. Both give the same bits, so which one runs is a matter of
//! speed only.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
}

impl Isa {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = Avx2::detect() {
            return Isa::Avx2(token);
        }
        Isa::Scalar
    }
}

/// Vector primitives for code that is compiled once per instruction set:
/// a generic `#[inline(always)]` body takes `S: Simd` and is instantiated
/// inside a `#[target_feature]` function for [`Avx2Simd`] and plainly for
/// [`Portable`].
pub(crate) trait Simd {
    /// `Σ a[i]·b[i]` over the shorter length.
    ///
    /// # Safety
    /// The implementation's target features must be enabled in the caller.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;

    /// Dots of `q` with four vectors at least as long.
    ///
    /// # Safety
    /// As for [`Simd::dot`].
    #[inline(always)]
    unsafe fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: forwarded from the caller.
        k.map(|k| unsafe { Self::dot(q, k) })
    }

    /// Weighted sums of rows of `values` for several heads at once:
    /// `out[h·n + c] += Σ_p weights[h·rows.len() + p] · values[rows[p] + c]`,
    /// where `n = out.len() / heads` and `heads = weights.len() / rows.len()`.
    /// Each row is read once for all heads.
    ///
    /// # Safety
    /// As for [`Simd::dot`].
    unsafe fn weighted_sums(out: &mut [f32], weights: &[f32], rows: &[usize], values: &[f32]);

    /// Hints that `x` will be read soon (a no-op where there is no
    /// prefetch instruction).
    #[inline(always)]
    fn prefetch(x: &[f32]) {
        let _ = x;
    }
}

/// Plain Rust in shapes the compiler vectorises; no requirements.
pub(crate) struct Portable;

impl Simd for Portable {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes(a, b)
    }

    #[inline(always)]
    unsafe fn weighted_sums(out: &mut [f32], weights: &[f32], rows: &[usize], values: &[f32]) {
        let Some(heads) = weights.len().checked_div(rows.len()) else {
            return;
        };
        let n = out.len() / heads.max(1);
        for (o, w) in out
            .chunks_exact_mut(n.max(1))
            .zip(weights.chunks_exact(rows.len()))
        {
            for (&wp, &at) in w.iter().zip(rows) {
                for (o, x) in o.iter_mut().zip(&values[at..at + n]) {
                    *o += wp * x;
                }
            }
        }
    }
}

/// AVX2 + FMA intrinsics; callable only from code compiled with them.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2Simd;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2Simd {
    #[inline(always)]
    fn prefetch(x: &[f32]) {
        // One hint per 64-byte line.
        for line in x.chunks(16) {
            // SAFETY: a prefetch is a hint that never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { dot_avx2(a, b) }
    }

    #[inline(always)]
    unsafe fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        let n = q.len();
        assert!(k.iter().all(|k| k.len() >= n));
        let n8 = n / 8 * 8;
        // SAFETY: loads at i + 8 <= n8 <= every length; the caller
        // guarantees the target features.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < n8 {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (acc, k) in acc.iter_mut().zip(&k) {
                    *acc = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(i)), *acc);
                }
                i += 8;
            }
            // Four horizontal sums at once: hadd pairs, then fold the halves.
            let h01 = _mm256_hadd_ps(acc[0], acc[1]);
            let h23 = _mm256_hadd_ps(acc[2], acc[3]);
            let h = _mm256_hadd_ps(h01, h23);
            let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            for (o, k) in out.iter_mut().zip(&k) {
                *o += (n8..n).map(|t| q[t] * k[t]).sum::<f32>();
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn weighted_sums(out: &mut [f32], weights: &[f32], rows: &[usize], values: &[f32]) {
        let nk = rows.len();
        let Some(heads) = weights.len().checked_div(nk) else {
            return;
        };
        if heads == 0 {
            return;
        }
        let n = out.len() / heads;
        assert!(weights.len() == heads * nk && out.len() == heads * n);
        // Checked once here, so the loads in the strips need no checks.
        assert!(rows.iter().all(|&at| at + n <= values.len()));
        let mut h0 = 0;
        while h0 < heads {
            // Up to three heads share each loaded row; their accumulators
            // (heads x strip width) and the row's vectors fit 16 registers.
            let hb = (heads - h0).min(3);
            let o = &mut out[h0 * n..(h0 + hb) * n];
            let w = &weights[h0 * nk..(h0 + hb) * nk];
            // SAFETY: lengths checked above; features from the caller.
            unsafe {
                match hb {
                    1 => strips::<1, 8>(o, w, rows, values, n),
                    2 => strips::<2, 4>(o, w, rows, values, n),
                    _ => strips::<3, 3>(o, w, rows, values, n),
                }
            }
            h0 += hb;
        }
    }
}

/// [`Simd::weighted_sums`] for `H` heads, in column strips of `8·C` (then
/// 8, then single columns) so that `H x C` accumulators stay in registers
/// over all rows.
///
/// # Safety
/// AVX2 and FMA in the caller; `out.len() == H·n`, `w.len() == H·rows.len()`,
/// and every `rows[p] + n <= values.len()`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn strips<const H: usize, const C: usize>(
    out: &mut [f32],
    w: &[f32],
    rows: &[usize],
    values: &[f32],
    n: usize,
) {
    let mut c0 = 0;
    // SAFETY: forwarded from the caller; strips end at c0 + 8·C <= n.
    unsafe {
        while c0 + 8 * C <= n {
            strip::<H, C>(out, w, rows, values, n, c0);
            c0 += 8 * C;
        }
        while c0 + 8 <= n {
            strip::<H, 1>(out, w, rows, values, n, c0);
            c0 += 8;
        }
    }
    let nk = rows.len();
    for h in 0..H {
        for (p, &at) in rows.iter().enumerate() {
            let wp = w[h * nk + p];
            for (o, x) in out[h * n + c0..(h + 1) * n]
                .iter_mut()
                .zip(&values[at + c0..at + n])
            {
                *o += wp * x;
            }
        }
    }
}

/// Columns `c0..c0 + 8·C` of [`strips`].
///
/// # Safety
/// As for [`strips`], and `c0 + 8·C <= n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn strip<const H: usize, const C: usize>(
    out: &mut [f32],
    w: &[f32],
    rows: &[usize],
    values: &[f32],
    n: usize,
    c0: usize,
) {
    let nk = rows.len();
    // SAFETY: loads at rows[p] + c0 + 8·C <= rows[p] + n <= values.len(),
    // weights at h·nk + p < H·nk, stores at h·n + c0 + 8·C <= H·n.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; H];
        for (p, &at) in rows.iter().enumerate() {
            let v = values.as_ptr().add(at + c0);
            let mut x = [_mm256_setzero_ps(); C];
            for (c, x) in x.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(v.add(8 * c));
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let wv = _mm256_set1_ps(*w.get_unchecked(h * nk + p));
                for (acc, x) in acc.iter_mut().zip(&x) {
                    *acc = _mm256_fmadd_ps(wv, *x, *acc);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                let o = out.as_mut_ptr().add(h * n + c0 + 8 * c);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *acc));
            }
        }
    }
}

/// Proof that the running CPU has AVX2, FMA and F16C, and whether the
/// int8 kernels may also use AVX-512 VNNI ([`Vnni512`]).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    vnni512: bool,
}

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    fn detect() -> Option<Self> {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        avx2.then(|| Avx2 {
            vnni512: Vnni512::detect() && !vnni_disabled(),
        })
    }

    /// The AVX-512 VNNI token, when the CPU has it (and it is not turned off).
    pub(crate) fn vnni512(self) -> Option<Vnni512> {
        self.vnni512.then_some(Vnni512(()))
    }

    /// This token without VNNI, so that tests run the plain AVX2 kernels on
    /// a CPU that has both.
    #[cfg(test)]
    pub(crate) fn without_vnni(self) -> Self {
        Avx2 { vnni512: false }
    }
}

/// Proof that the running CPU has AVX-512 F, BW, VL and VNNI (on top of
/// what [`Avx2`] proves): `vpdpbusd` on 512-bit registers. Only [`Avx2`]
/// hands it out.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vnni512(());

#[cfg(target_arch = "x86_64")]
impl Vnni512 {
    fn detect() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
}

/// `SLUICE_KERNELS_NO_VNNI=1` keeps the int8 kernels on AVX2 on a CPU with
/// VNNI, so that both can be timed in one build; `SLUICE_KERNELS_NO_AVX512=1`
/// does that and keeps every other kernel off AVX-512 too (what an AVX2-only
/// CPU runs). Results are the same bits either way (exact integer block
/// sums; one FMA chain per element in the packed f32 kernel); only speed
/// differs. Read once per process.
#[cfg(target_arch = "x86_64")]
fn vnni_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| env_flag("SLUICE_KERNELS_NO_VNNI") || avx512_disabled())
}

/// See [`vnni_disabled`].
#[cfg(target_arch = "x86_64")]
fn avx512_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| env_flag("SLUICE_KERNELS_NO_AVX512"))
}

#[cfg(target_arch = "x86_64")]
fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Proof that the running CPU has AVX-512F (which implies AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f") && Avx2::detect().is_some() && !avx512_disabled())
            .then_some(Avx512(()))
    }
}

/// Portable f32 dot product in eight independent lanes: the shape the
/// compiler turns into SIMD without being allowed to reassociate floats.
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += xa[l] * xb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of the eight lanes.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    // Register-only intrinsics are unsafe to call before Rust 1.87 even in a
    // target_feature function, and "unused unsafe" from then on.
    #[allow(unused_unsafe)]
    // SAFETY: the caller guarantees the target features.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// Inlined into its callers (a `#[target_feature]` function cannot be
/// `inline(always)`), so that short vectors pay no call.
///
/// # Safety
/// The caller must be compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let n16 = n / 16 * 16;
    // SAFETY: loads at i + 16 <= n16 <= both lengths.
    unsafe {
        // Two accumulators so consecutive FMAs do not wait on each other.
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n16 {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8)), s1);
            i += 16;
        }
        let tail: f32 = a[n16..n].iter().zip(&b[n16..n]).map(|(x, y)| x * y).sum();
        hsum(_mm256_add_ps(s0, s1)) + tail
    }
}
