//! Twins of `kernels/cuda/elementwise.cu`: each output element depends on
//! one input element, so the thread loops reduce to plain loops.

use half::bf16;

use super::{EmbeddingShape, SiluMulShape};
use crate::KernelError;

/// `out[t] = table[ids[t]]` as f32; an id outside the table gives a zero
/// row, as on the device (callers validate ids; this keeps a bad one harmless).
pub fn embedding_gather(
    shape: &EmbeddingShape,
    ids: &[i32],
    table: &[bf16],
    out: &mut [f32],
) -> Result<(), KernelError> {
    shape.validate(ids.len(), table.len(), out.len())?;
    let h = shape.hidden;
    if h == 0 {
        return Ok(());
    }
    for (row, &id) in out.chunks_exact_mut(h).zip(ids) {
        match usize::try_from(id).ok().filter(|&i| i < shape.vocab) {
            Some(i) => {
                for (o, v) in row.iter_mut().zip(&table[i * h..(i + 1) * h]) {
                    *o = v.to_f32();
                }
            }
            None => row.fill(0.0),
        }
    }
    Ok(())
}

/// `residual[i] += delta[i]`.
pub fn residual_add(residual: &mut [f32], delta: &[bf16]) -> Result<(), KernelError> {
    if residual.len() != delta.len() {
        return Err(KernelError::WrongLength {
            what: "residual_add delta",
            expected: residual.len(),
            got: delta.len(),
        });
    }
    for (x, d) in residual.iter_mut().zip(delta) {
        *x += d.to_f32();
    }
    Ok(())
}

/// `out[r][i] = silu(gate_up[r][i]) * gate_up[r][ff + i]`, rounded to bf16.
pub fn silu_mul(
    shape: &SiluMulShape,
    gate_up: &[bf16],
    out: &mut [bf16],
) -> Result<(), KernelError> {
    shape.validate(gate_up.len(), out.len())?;
    let ff = shape.ff;
    if ff == 0 {
        return Ok(());
    }
    for (o, gu) in out.chunks_exact_mut(ff).zip(gate_up.chunks_exact(2 * ff)) {
        let (gate, up) = gu.split_at(ff);
        for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
            let (g, u) = (g.to_f32(), u.to_f32());
            *o = bf16::from_f32(g / (1.0 + (-g).exp()) * u);
        }
    }
    Ok(())
}
