//! Compute kernels for Sluice's local inference, CPU first.
//!
//! Everything a decoder forward pass needs and nothing it does not: weight
//! matrices in GGML's quantised block formats ([`quant`], [`Matrix`]), a matmul
//! that quantises activations to 8 bits per row and dots them against weight
//! blocks so that one pass over the weights serves every row of a batch
//! ([`matmul`]), RMSNorm and friends ([`ops`]), rotary embeddings ([`rope`]) and
//! attention that reads K/V through a block table ([`attention`]).
//!
//! Every fast kernel has a plain reference implementation beside it, and the
//! tests compare the two on random inputs. This crate knows nothing about
//! models, requests or I/O; it must not depend on tokio or on any model code.
//! GPU twins of these kernels belong behind the `cuda` feature.

pub mod attention;
mod cpu;
pub mod matmul;
pub mod ops;
pub mod quant;
pub mod rope;
#[cfg(test)]
mod test_util;

pub use matmul::{matmul, Matrix};
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
}
