//! Twins of `kernels/cuda/norm.cu`: one block of [`NORM_THREADS`] per row;
//! thread `t` sums the squares of elements `t, t + 256, ...` in order, then
//! the block sum.

use half::bf16;

use super::reduce::block_sum;
use super::{NormShape, NORM_THREADS};
use crate::KernelError;

/// `out[r] = rmsnorm(x[row_ids[r]]) * weight` (`row_ids` `None`: row `r`).
/// Gathering lets the final norm read only the rows whose logits are wanted.
pub fn rms_norm(
    shape: &NormShape,
    x: &[f32],
    row_ids: Option<&[i32]>,
    weight: &[bf16],
    out: &mut [bf16],
) -> Result<(), KernelError> {
    let dim = shape.dim;
    let x_rows = x.len().checked_div(dim).unwrap_or(0);
    let rows = row_ids.map_or(shape.rows, |_| x_rows);
    shape.validate(x.len(), rows, weight.len(), out.len())?;
    if let Some(ids) = row_ids {
        if ids.len() != shape.rows {
            return Err(KernelError::WrongLength {
                what: "norm row_ids",
                expected: shape.rows,
                got: ids.len(),
            });
        }
    }
    for (r, o) in out.chunks_exact_mut(dim).enumerate() {
        let src = match row_ids {
            None => r,
            Some(ids) => usize::try_from(ids[r])
                .ok()
                .filter(|&i| i < x_rows)
                .ok_or_else(|| {
                    KernelError::BadShape(format!("norm row id {} outside {x_rows} rows", ids[r]))
                })?,
        };
        norm_row(&x[src * dim..(src + 1) * dim], weight, shape.eps, o);
    }
    Ok(())
}

/// `residual[r] += delta[r]`, then `out[r] = rmsnorm(residual[r]) * weight`.
pub fn add_rms_norm(
    shape: &NormShape,
    residual: &mut [f32],
    delta: &[bf16],
    weight: &[bf16],
    out: &mut [bf16],
) -> Result<(), KernelError> {
    shape.validate(residual.len(), shape.rows, weight.len(), out.len())?;
    if delta.len() != residual.len() {
        return Err(KernelError::WrongLength {
            what: "add_rms_norm delta",
            expected: residual.len(),
            got: delta.len(),
        });
    }
    super::residual_add(residual, delta)?;
    let dim = shape.dim;
    for (x, o) in residual.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        norm_row(x, weight, shape.eps, o);
    }
    Ok(())
}

fn norm_row(x: &[f32], weight: &[bf16], eps: f32, out: &mut [bf16]) {
    let mut partial = [0.0f32; NORM_THREADS];
    for (t, p) in partial.iter_mut().enumerate() {
        for v in x.iter().skip(t).step_by(NORM_THREADS) {
            *p += v * v;
        }
    }
    let total = block_sum(&partial);
    let inv = 1.0 / (total / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = bf16::from_f32(v * inv * w.to_f32());
    }
}
