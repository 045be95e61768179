//! F32 weights repacked once into column panels, and an outer-product GEMM
//! over them: the path for models whose every matmul covers many activation
//! rows (encoders, where a call carries all tokens of a batch).
//!
//! Why a second f32 path: `float.rs` dots 3 activation rows against 4 weight
//! rows and finishes each pair with a horizontal sum, in AVX2 only. Here the
//! weights are laid out once, at load, in panels of [`PANEL`] output
//! features stored k-major (`panel[kk * PANEL + c]` is weight row
//! `p·PANEL + c`, input feature `kk`), so one k step loads a panel's weights
//! in a few vectors, broadcasts one activation per row of the tile and runs
//! an FMA per (row, vector) into its own accumulator, with no reductions at
//! all (the BLIS micro-kernel shape). AVX-512: 8 rows x 3 vectors of 16;
//! AVX2: 3 rows x 3 vectors of 8, twice per panel. Measured on a Zen 5 core
//! (MiniLM's shapes, 32 rows): ~200 GFLOP/s with AVX-512 against ~95 for
//! `float.rs`; the AVX2 variant is level with `float.rs` or a little ahead.
//!
//! Batch invariance: output element `(i, j)` lives in one accumulator lane
//! that adds `x[i][kk] · w[j][kk]` for kk = 0, 1, ... in order, one FMA each
//! (one multiply and one add each on the portable path), in every tile shape
//! and every column split; so a row's result is bit-identical alone or in
//! any batch. AVX2 and portable results differ from each other in the last
//! bits (fused versus separate rounding).
//!
//! Memory: the panels replace the row-major weights for the layers that use
//! them (callers keep one or the other); a partial last panel is padded with
//! zeros, at most `PANEL - 1` rows.

use rayon::prelude::*;

use super::{nothing_to_compute, Matrix};
use crate::cpu::Isa;
#[cfg(target_arch = "x86_64")]
use crate::cpu::{Avx2, Avx512};

/// Output features per panel: three AVX-512 vectors of sixteen (the AVX2
/// kernel takes a panel in two passes of 24).
pub const PANEL: usize = 48;

/// Which micro-kernel runs, detected at run time. AVX-512 is used where the
/// CPU has it (on AMD Zen 5 its FMAs are 512 bits wide, twice AVX2's work
/// per instruction); FMA is the same single rounding in every width, so the
/// AVX2 and AVX-512 kernels give identical bits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PackedIsa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(#[allow(dead_code, reason = "a proof token: holding it is its use")] Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
}

impl PackedIsa {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = Avx512::detect() {
            return PackedIsa::Avx512(token);
        }
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(token) => PackedIsa::Avx2(token),
            Isa::Scalar => PackedIsa::Scalar,
        }
    }

    /// Every kernel this CPU can run, for tests.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let mut all = vec![PackedIsa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if let Isa::Avx2(token) = Isa::detect() {
                all.push(PackedIsa::Avx2(token));
            }
            if let Some(token) = Avx512::detect() {
                all.push(PackedIsa::Avx512(token));
            }
        }
        all
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            PackedIsa::Scalar => "portable",
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx512(_) => "avx512",
        }
    }

    /// Activation rows per micro-kernel call.
    fn rows_per_tile(self) -> usize {
        match self {
            PackedIsa::Scalar => 2,
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx2(_) => 3,
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx512(_) => 8,
        }
    }
}

/// Below this many multiply-adds a task is not worth a rayon hand-off.
const MIN_TASK_WORK: usize = 1 << 16;

/// An f32 weight matrix of `rows` output by `cols` input features, packed
/// into k-major panels of [`PANEL`] rows for [`matmul_packed`].
#[derive(Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({}x{})", self.rows, self.cols)
    }
}

impl PackedMatrix {
    /// Packs any [`Matrix`], dequantising its rows to f32 (exact for F32,
    /// F16 and BF16 weights).
    pub fn from_matrix(w: &Matrix) -> Self {
        let (rows, cols) = (w.rows(), w.cols());
        let mut packed = Self::zeroed(rows, cols);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut row);
            packed.put_row(r, &row);
        }
        packed
    }

    /// Packs row-major f32 values (`rows * cols`).
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "matrix shape mismatch");
        let mut packed = Self::zeroed(rows, cols);
        for (r, row) in values.chunks_exact(cols.max(1)).take(rows).enumerate() {
            packed.put_row(r, row);
        }
        packed
    }

    fn zeroed(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            panels: vec![0.0; rows.div_ceil(PANEL) * PANEL * cols],
        }
    }

    fn put_row(&mut self, r: usize, row: &[f32]) {
        let panel = &mut self.panels[(r / PANEL) * PANEL * self.cols..][..PANEL * self.cols];
        for (kk, &v) in row.iter().enumerate() {
            panel[kk * PANEL + r % PANEL] = v;
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Heap bytes held by the panels.
    pub fn heap_bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<f32>()
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * PANEL * self.cols..][..PANEL * self.cols]
    }
}

/// `out[i*n + j] = Σ_k x[i*k_dim + k] · w[j, k]` for `m` activation rows,
/// with f32 activations throughout.
pub fn matmul_packed(w: &PackedMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    matmul_packed_with(w, x, m, out, PackedIsa::detect());
}

pub(crate) fn matmul_packed_with(
    w: &PackedMatrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    isa: PackedIsa,
) {
    let (n, k) = (w.rows, w.cols);
    if nothing_to_compute(n, k, x, m, out) {
        return;
    }
    let panels = n.div_ceil(PANEL);
    // A few tasks per thread, so that a core slowed by another process does
    // not hold up the call; none smaller than MIN_TASK_WORK.
    let tasks = (rayon::current_num_threads() * 2)
        .min(n * m * k / MIN_TASK_WORK)
        .clamp(1, panels);
    let per_task = panels.div_ceil(tasks);
    let run = |first: usize| -> (usize, Vec<f32>) {
        let count = per_task.min(panels - first);
        // Row-major [m][count·PANEL]: whole tiles are stored without masks,
        // and the padding columns are dropped when copying out.
        let width = count * PANEL;
        let mut buf = vec![0.0f32; m * width];
        for p in 0..count {
            panel_rows(
                isa,
                w.panel(first + p),
                x,
                m,
                k,
                &mut buf[p * PANEL..],
                width,
            );
        }
        (first, buf)
    };
    let results: Vec<(usize, Vec<f32>)> = if tasks == 1 {
        vec![run(0)]
    } else {
        (0..panels)
            .step_by(per_task)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(run)
            .collect()
    };
    for (first, buf) in results {
        let j0 = first * PANEL;
        let width = buf.len() / m;
        let live = width.min(n - j0);
        for (dst, src) in out.chunks_exact_mut(n).zip(buf.chunks_exact(width)) {
            dst[j0..j0 + live].copy_from_slice(&src[..live]);
        }
    }
}

/// One panel against all `m` activation rows; row i's [`PANEL`] results go
/// to `out[i * ldo..][..PANEL]`.
fn panel_rows(
    isa: PackedIsa,
    panel: &[f32],
    x: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let mr = isa.rows_per_tile();
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(mr);
        let (x, out) = (&x[i * k..(i + rows) * k], &mut out[i * ldo..]);
        assert!(panel.len() == PANEL * k && out.len() >= (rows - 1) * ldo + PANEL);
        match isa {
            PackedIsa::Scalar => match rows {
                1 => portable_tile::<1>(panel, x, k, out, ldo),
                _ => portable_tile::<2>(panel, x, k, out, ldo),
            },
            // SAFETY (both arms): the token proves the target features, and
            // the lengths the kernel relies on are checked above.
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx2(_) => unsafe {
                match rows {
                    1 => avx2::tile::<1>(panel, x, k, out, ldo),
                    2 => avx2::tile::<2>(panel, x, k, out, ldo),
                    _ => avx2::tile::<3>(panel, x, k, out, ldo),
                }
            },
            #[cfg(target_arch = "x86_64")]
            PackedIsa::Avx512(_) => unsafe {
                match rows {
                    1 => avx512::tile::<1>(panel, x, k, out, ldo),
                    2 => avx512::tile::<2>(panel, x, k, out, ldo),
                    3 => avx512::tile::<3>(panel, x, k, out, ldo),
                    4 => avx512::tile::<4>(panel, x, k, out, ldo),
                    5 => avx512::tile::<5>(panel, x, k, out, ldo),
                    6 => avx512::tile::<6>(panel, x, k, out, ldo),
                    7 => avx512::tile::<7>(panel, x, k, out, ldo),
                    _ => avx512::tile::<8>(panel, x, k, out, ldo),
                }
            },
        }
        i += rows;
    }
}

/// The portable micro-kernel: one accumulator per output element, in a
/// shape the compiler vectorises across the panel's lanes.
fn portable_tile<const R: usize>(panel: &[f32], x: &[f32], k: usize, out: &mut [f32], ldo: usize) {
    let mut acc = [[0.0f32; PANEL]; R];
    for (kk, w) in panel.chunks_exact(PANEL).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[r * k + kk];
            for (a, w) in acc.iter_mut().zip(w) {
                *a += xv * w;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * ldo..r * ldo + PANEL].copy_from_slice(acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// Columns per pass: three vectors of eight. 3 rows x 3 vectors = 9
    /// accumulators, 3 weight vectors and a broadcast stay within the 16
    /// registers (4 rows spilled one accumulator, whose chain then ran
    /// through memory at half speed).
    const HALF: usize = 24;

    /// # Safety
    /// The CPU must support AVX2 and FMA; `panel.len() == PANEL * k`,
    /// `x.len() == R * k` and `out.len() >= (R - 1) * ldo + PANEL`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(
        panel: &[f32],
        x: &[f32],
        k: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        // SAFETY: every load reads panel[kk·PANEL + c0 ..][..HALF] or
        // x[r·k + kk] with kk < k, r < R and c0 + HALF <= PANEL, and every
        // store writes out[r·ldo + c0 ..][..HALF], all inside the lengths
        // the caller guarantees.
        unsafe {
            let (wp, xp, op) = (panel.as_ptr(), x.as_ptr(), out.as_mut_ptr());
            for c0 in (0..PANEL).step_by(HALF) {
                let mut acc = [[_mm256_setzero_ps(); 3]; R];
                for kk in 0..k {
                    let w: [__m256; 3] =
                        std::array::from_fn(|v| _mm256_loadu_ps(wp.add(kk * PANEL + c0 + v * 8)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xb = _mm256_broadcast_ss(&*xp.add(r * k + kk));
                        for (a, w) in acc.iter_mut().zip(&w) {
                            *a = _mm256_fmadd_ps(xb, *w, *a);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (v, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(op.add(r * ldo + c0 + v * 8), *a);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// # Safety
    /// The CPU must support AVX-512F; `panel.len() == PANEL * k`,
    /// `x.len() == R * k` and `out.len() >= (R - 1) * ldo + PANEL`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize>(
        panel: &[f32],
        x: &[f32],
        k: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        const V: usize = PANEL / 16;
        // SAFETY: every load reads panel[kk·PANEL ..][..PANEL] or
        // x[r·k + kk] with kk < k and r < R, and every store writes
        // out[r·ldo ..][..PANEL], all inside the lengths the caller
        // guarantees.
        unsafe {
            let (wp, xp, op) = (panel.as_ptr(), x.as_ptr(), out.as_mut_ptr());
            // 8 rows x 3 vectors = 24 of the 32 registers.
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for kk in 0..k {
                let w: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(wp.add(kk * PANEL + v * 16)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xp.add(r * k + kk));
                    for (a, w) in acc.iter_mut().zip(&w) {
                        *a = _mm512_fmadd_ps(xb, *w, *a);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(op.add(r * ldo + v * 16), *a);
                }
            }
        }
    }
}
