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

    /// `Σ a[i]·b[i]` over the shorter length.
    #[inline]
    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the token proves AVX2 and FMA.
            Isa::Avx2(_) => unsafe { dot_avx2(a, b) },
            Isa::Scalar => dot_lanes(a, b),
        }
    }

    /// `y[i] += alpha · x[i]` over the shorter length.
    #[inline]
    pub(crate) fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the token proves AVX2 and FMA.
            Isa::Avx2(_) => unsafe { axpy_avx2(alpha, x, y) },
            Isa::Scalar => {
                for (yv, xv) in y.iter_mut().zip(x) {
                    *yv += alpha * xv;
                }
            }
        }
    }
}

/// Proof that the running CPU has AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        .then_some(Avx2(()))
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

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
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

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let n8 = n / 8 * 8;
    // SAFETY: accesses at i + 8 <= n8 <= both lengths; x and y cannot
    // overlap (one is borrowed shared, the other exclusively).
    unsafe {
        let av = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i < n8 {
            let py = y.as_mut_ptr().add(i);
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(py));
            _mm256_storeu_ps(py, v);
            i += 8;
        }
    }
    for (yv, xv) in y[n8..n].iter_mut().zip(&x[n8..n]) {
        *yv += alpha * xv;
    }
}
