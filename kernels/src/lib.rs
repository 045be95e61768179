//! Compute kernels for Sluice's local inference, CPU first.
//!
//! Everything a decoder forward pass needs and nothing it does not: weight
//! matrices in GGML's block formats, read straight from GGUF bytes ([`quant`],
//! [`Matrix`]); `out = x · Wᵀ` ([`matmul()`]); RMSNorm, SwiGLU and softmax
//! ([`ops`]); rotary embeddings ([`rope`]); and causal attention that reads
//! K/V through a block table ([`attention`]).
//!
//! The design decision that shapes the crate: a matmul call takes all `m`
//! activation rows of a step at once, and its kernels are built so that the
//! weights are read once per call and each weight block, once unpacked, is
//! used against many activation rows. For Q4_0/Q4_1/Q8_0 the activations are
//! quantised to 8 bits per block of 32 (as llama.cpp does) and dotted in
//! integer arithmetic; from two rows on, eight weight rows are repacked so
//! that one SIMD multiply serves all eight. That is what makes batched decode
//! and prefill cheaper per row than one row at a time, where a per-row GEMV
//! gains nothing. Work is split across output columns with rayon.
//!
//! A second decision constrains the first: a row's result must not depend
//! on the batch. Continuous batching runs a sequence alone or beside others,
//! and recomputes it in prefill chunks of other sizes after preemption; its
//! greedy tokens must not change, and a last-bit difference can flip an
//! argmax. So the one-row and many-row kernels, and every edge case of a
//! tile, compute each output element with the same float operations in the
//! same order (exact integer block sums first, then one fixed sequence of
//! roundings), and a test compares rows bit for bit across batch sizes.
//!
//! SIMD kernels (AVX2 + FMA + F16C) are chosen at run time; every kernel
//! also exists as portable Rust, and every fast path has a plain reference
//! beside it ([`matmul::matmul_reference`],
//! [`attention::paged_attention_reference`]) that the tests compare against.
//! This crate knows nothing about models, requests or I/O; it must not
//! depend on tokio or on any model code.
//!
//! GPU kernels (`kernels/cuda/*.cu`, bf16 with f32 arithmetic) are compiled
//! ahead of time and launched through [`cuda`] (behind the `cuda` feature);
//! their CPU twins, which replay each kernel's index arithmetic and are
//! tested on every build, are in [`cuda_twin`].

pub mod attention;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_twin;
pub mod matmul;
pub mod ops;
pub mod quant;
pub mod rope;
#[cfg(test)]
mod test_util;

pub use matmul::{
    matmul, matmul_packed, matmul_with_precision, ActivationPrecision, Matrix, PackedMatrix,
};
pub use quant::WeightDType;

/// What can go wrong when building kernel inputs; kernels themselves do not fail.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{dtype:?} matrix of {rows}x{cols} needs {expected} bytes, got {got}")]
    WrongByteLength {
        dtype: WeightDType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype:?} packs {block} values per block, but a row has {cols} values")]
    RowNotBlockAligned {
        dtype: WeightDType,
        block: usize,
        cols: usize,
    },
    #[error("a {rows}x{cols} matrix needs {} values, got {got}", rows * cols)]
    WrongValueCount {
        rows: usize,
        cols: usize,
        got: usize,
    },
    #[error("cannot quantise to {0:?}")]
    UnsupportedTarget(WeightDType),
    #[error("{what}: expected {expected} elements, got {got}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    BadShape(String),
}
