//! Twin of `kernels/cuda/gemv_q8_0.cu`: one warp per weight row, lane `l`
//! taking blocks `l, l + 32, ...`, each block's 32 products summed in order
//! and scaled, then the warp butterfly over the lanes' totals.

use half::{bf16, f16};

use super::reduce::warp_sum;
use super::{GemvShape, WARP};
use crate::KernelError;

/// Bytes of one Q8_0 block: an f16 scale and 32 int8 quants.
const BLOCK_BYTES: usize = 34;

/// `out[t][r] = Σ_c W[r][c] · x[t][c]`, `W` in GGUF Q8_0 bytes, `x` bf16,
/// `out` bf16 `[batch][rows]`.
pub fn gemv_q8_0(
    shape: &GemvShape,
    w: &[u8],
    x: &[bf16],
    out: &mut [bf16],
) -> Result<(), KernelError> {
    shape.validate(w.len(), x.len(), out.len())?;
    let (rows, cols) = (shape.rows, shape.cols);
    let blocks = cols / 32;
    let x: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    for r in 0..rows {
        let wr = &w[r * blocks * BLOCK_BYTES..(r + 1) * blocks * BLOCK_BYTES];
        for t in 0..shape.batch {
            let xt = &x[t * cols..(t + 1) * cols];
            let lanes: [f32; WARP] = std::array::from_fn(|lane| {
                let mut total = 0.0f32;
                for b in (lane..blocks).step_by(WARP) {
                    let blk = &wr[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let mut partial = 0.0f32;
                    for (j, &q) in blk[2..].iter().enumerate() {
                        partial += f32::from(q as i8) * xt[b * 32 + j];
                    }
                    total += d * partial;
                }
                total
            });
            out[t * rows + r] = bf16::from_f32(warp_sum(&lanes));
        }
    }
    Ok(())
}
