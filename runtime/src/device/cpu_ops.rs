//! [`DeviceOps`] on the CPU: each operation reads the same flat arrays a GPU
//! kernel reads (slot mapping, fixed-width block tables, query offsets,
//! logits rows) and computes with the crate's reference CPU kernels, so the
//! host side of a device step is tested end to end without a GPU.
//!
//! Weights are held as f32 matrices. With `round_weights_to_bf16` they are
//! first rounded to bf16, as a GPU stores them: the test that runs this way
//! predicts how far the GPU's tokens may drift from the CPU engine's.

use std::ops::Range;

use sluice_kernels::attention::{paged_attention, PagedKv};
use sluice_kernels::cuda_twin::{
    self as twin, Fp8E4m3, KvDType, KvElem, KvScales, RowSampling, SampleShape,
};
use sluice_kernels::ops::{rms_norm, silu_mul};
use sluice_kernels::rope::RopeStyle;
use sluice_kernels::{matmul, Matrix};
use sluice_models::ModelError;

use super::ops::{DeviceOps, LayerKv, NormArgs, RopeTable, StepCtx};

#[derive(Debug, Clone, Copy, Default)]
pub struct CpuOps {
    /// Round every weight to bf16 on upload, as the GPU holds them.
    pub round_weights_to_bf16: bool,
    /// `None`: K and V kept in f32, exactly as the CPU engine keeps them.
    /// `Some(dtype)`: each K and V value rounded as a GPU cache of that type
    /// stores it (scale 1, as the CUDA executor uses), so a test sees what
    /// f16 or fp8 KV does to a model's logits.
    pub kv_storage: Option<KvDType>,
}

fn to_bf16_and_back(values: &mut [f32]) {
    for v in values {
        *v = half::bf16::from_f32(*v).to_f32();
    }
}

fn bad(what: String) -> ModelError {
    ModelError::Device(what)
}

/// The first `n` entries of `v`, or an error naming `what` (an op asked for
/// more rows than its buffer holds: a bug in the caller, not a panic).
fn head<'a, T>(v: &'a [T], n: usize, what: &str) -> Result<&'a [T], ModelError> {
    v.get(..n).ok_or_else(|| {
        bad(format!(
            "{what}: {n} values asked of a buffer of {}",
            v.len()
        ))
    })
}

fn head_mut<'a, T>(v: &'a mut [T], n: usize, what: &str) -> Result<&'a mut [T], ModelError> {
    let len = v.len();
    v.get_mut(..n)
        .ok_or_else(|| bad(format!("{what}: {n} values asked of a buffer of {len}")))
}

fn index(v: i32, what: &str) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| bad(format!("{what}: negative index {v}")))
}

impl DeviceOps for CpuOps {
    type Buf = Vec<f32>;
    type Mat = Matrix;
    type Ids = Vec<i32>;
    type Floats = Vec<f32>;
    type Kv = Vec<f32>;

    fn name(&self) -> String {
        let mut notes = Vec::new();
        if self.round_weights_to_bf16 {
            notes.push("bf16 weights".to_string());
        }
        if let Some(dtype) = self.kv_storage {
            notes.push(format!("{} KV", dtype.as_str()));
        }
        if notes.is_empty() {
            "cpu".into()
        } else {
            format!("cpu ({})", notes.join(", "))
        }
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(vec![0.0; len])
    }
    fn alloc_ids(&mut self, len: usize) -> Result<Vec<i32>, ModelError> {
        Ok(vec![0; len])
    }
    fn alloc_floats(&mut self, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(vec![0.0; len])
    }

    fn upload(&mut self, values: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut v = values.to_vec();
        if self.round_weights_to_bf16 {
            to_bf16_and_back(&mut v);
        }
        Ok(v)
    }

    fn upload_f32(&mut self, values: &[f32]) -> Result<Vec<f32>, ModelError> {
        Ok(values.to_vec())
    }

    fn upload_matrix(
        &mut self,
        n: usize,
        k: usize,
        row: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<Matrix, ModelError> {
        let mut values = vec![0.0f32; n * k];
        for (r, out) in values.chunks_exact_mut(k.max(1)).enumerate() {
            row(r, out);
        }
        if self.round_weights_to_bf16 {
            to_bf16_and_back(&mut values);
        }
        Ok(Matrix::from_f32(n, k, &values))
    }

    fn clone_matrix(&mut self, m: &Matrix) -> Result<Matrix, ModelError> {
        Ok(m.clone())
    }

    fn write_ids(&mut self, dst: &mut Vec<i32>, values: &[i32]) -> Result<(), ModelError> {
        head_mut(dst, values.len(), "write_ids")?.copy_from_slice(values);
        Ok(())
    }

    fn alloc_kv(&mut self, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(vec![0.0; len])
    }

    fn zero(&mut self, kv: &mut Vec<f32>) -> Result<(), ModelError> {
        kv.fill(0.0);
        Ok(())
    }

    fn embedding(
        &mut self,
        table: &Matrix,
        tokens: &Vec<i32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let h = table.cols();
        let out = head_mut(out, rows * h, "embedding")?;
        for (dst, &tok) in out
            .chunks_exact_mut(h)
            .zip(head(tokens, rows, "embedding")?)
        {
            let tok = index(tok, "embedding token")?;
            if tok >= table.rows() {
                return Err(bad(format!("embedding: token {tok} of {}", table.rows())));
            }
            table.dequantize_row(tok, dst);
        }
        Ok(())
    }

    fn rms_norm(
        &mut self,
        x: &Vec<f32>,
        row_ids: Option<&Vec<i32>>,
        weight: &Vec<f32>,
        norm: NormArgs,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let NormArgs { eps, rows, dim } = norm;
        let weight = head(weight, dim, "rms_norm weight")?;
        let out = head_mut(out, rows * dim, "rms_norm")?;
        match row_ids {
            None => rms_norm(head(x, rows * dim, "rms_norm")?, weight, eps, out),
            Some(ids) => {
                for (dst, &r) in out.chunks_exact_mut(dim).zip(head(ids, rows, "row ids")?) {
                    let at = index(r, "row id")? * dim;
                    let src = x
                        .get(at..at + dim)
                        .ok_or_else(|| bad(format!("rms_norm: row {r} is outside the input")))?;
                    rms_norm(src, weight, eps, dst);
                }
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        residual: &mut Vec<f32>,
        delta: &Vec<f32>,
        len: usize,
    ) -> Result<(), ModelError> {
        let delta = head(delta, len, "add")?;
        for (a, b) in head_mut(residual, len, "add")?.iter_mut().zip(delta) {
            *a += b;
        }
        Ok(())
    }

    fn gemm(
        &mut self,
        x: &Vec<f32>,
        w: &Matrix,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let x = head(x, rows * w.cols(), "gemm input")?;
        let out = head_mut(out, rows * w.rows(), "gemm output")?;
        matmul(w, x, rows, out);
        Ok(())
    }

    fn gemm_logits(
        &mut self,
        x: &Vec<f32>,
        w: &Matrix,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.gemm(x, w, rows, out)
    }

    fn rope_kv_write(
        &mut self,
        qkv: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        rope: &RopeTable<Vec<f32>>,
        kv: &mut LayerKv<Vec<f32>>,
        step: StepCtx<'_, Vec<i32>>,
        q_out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let StepCtx { ids, shape, attn } = step;
        let (qd, kvd) = (attn.q_dim(), attn.kv_dim());
        let width = qd + 2 * kvd;
        let rows = head(qkv, shape.rows * width, "rope_kv_write")?;
        let q_out = head_mut(q_out, shape.rows * qd, "rope_kv_write q")?;
        let bias = bias.map(|b| head(b, width, "qkv bias")).transpose()?;
        let positions = head(&ids.positions, shape.rows, "positions")?;
        let slots = head(&ids.slot_mapping, shape.rows, "slot_mapping")?;
        let mut cos = vec![0.0f32; rope.inv_freq.len()];
        let mut sin = vec![0.0f32; rope.inv_freq.len()];
        let mut row = vec![0.0f32; width];
        let items = rows.chunks_exact(width).zip(q_out.chunks_exact_mut(qd));
        for (((src, q_dst), &pos), &slot) in items.zip(positions).zip(slots) {
            row.copy_from_slice(src);
            if let Some(b) = bias {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
            // The same float operations as `Rope::apply`, so the rotation is
            // bit-identical to the CPU engine's.
            for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(&rope.inv_freq) {
                (*s, *c) = (pos as f32 * f).sin_cos();
            }
            let (q, rest) = row.split_at_mut(qd);
            let (k, v) = rest.split_at_mut(kvd);
            let heads = q
                .chunks_exact_mut(attn.head_dim)
                .chain(k.chunks_exact_mut(attn.head_dim));
            for one_head in heads {
                rotate(one_head, &cos, &sin, rope.style);
            }
            q_dst.copy_from_slice(q);
            if slot < 0 {
                continue;
            }
            let at = index(slot, "slot")? * kvd;
            let outside = || bad(format!("rope_kv_write: slot {slot} is outside the cache"));
            let k_dst = kv.k.get_mut(at..at + kvd).ok_or_else(outside)?;
            store_kv(k_dst, k, self.kv_storage);
            let v_dst = kv.v.get_mut(at..at + kvd).ok_or_else(outside)?;
            store_kv(v_dst, v, self.kv_storage);
        }
        Ok(())
    }

    fn attention(
        &mut self,
        q: &Vec<f32>,
        kv: &LayerKv<Vec<f32>>,
        step: StepCtx<'_, Vec<i32>>,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let StepCtx { ids, shape, attn } = step;
        let qd = attn.q_dim();
        let view = PagedKv {
            k: &kv.k,
            v: &kv.v,
            block_size: attn.block_size,
            n_kv_heads: attn.kv_heads,
            head_dim: attn.head_dim,
        };
        let starts = head(&ids.query_start, shape.seqs + 1, "query_start")?;
        let seq_lens = head(&ids.seq_lens, shape.seqs, "seq_lens")?;
        let q = head(q, shape.rows * qd, "attention q")?;
        let out = head_mut(out, shape.rows * qd, "attention output")?;
        let mut table = Vec::with_capacity(shape.max_blocks_per_seq);
        for (s, &seq_len) in seq_lens.iter().enumerate() {
            let first = index(starts[s], "query_start")?;
            let last = index(starts[s + 1], "query_start")?;
            let n_q = last.saturating_sub(first);
            let rows = first * qd..last * qd;
            let outside = || bad(format!("attention: rows {first}..{last} out of range"));
            let dst = out.get_mut(rows.clone()).ok_or_else(outside)?;
            let seq_len = index(seq_len, "seq_len")?;
            if seq_len == 0 {
                // A padding sequence: attends to nothing.
                dst.fill(0.0);
                continue;
            }
            let first_pos = seq_len
                .checked_sub(n_q)
                .ok_or_else(|| bad(format!("attention: {n_q} queries but {seq_len} keys")))?;
            let row = ids
                .block_tables
                .get(s * shape.max_blocks_per_seq..)
                .unwrap_or_default();
            table.clear();
            for &b in head(row, seq_len.div_ceil(attn.block_size), "block table")? {
                table.push(u32::try_from(b).map_err(|_| bad(format!("block id {b}")))?);
            }
            let q = q.get(rows).ok_or_else(outside)?;
            paged_attention(q, first_pos, attn.heads, &view, &table, attn.scale, dst);
        }
        Ok(())
    }

    fn silu_mul(
        &mut self,
        gate_up: &Vec<f32>,
        rows: usize,
        ff: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let gate_up = head(gate_up, rows * 2 * ff, "silu_mul input")?;
        let out = head_mut(out, rows * ff, "silu_mul output")?;
        for (a, gu) in out.chunks_exact_mut(ff).zip(gate_up.chunks_exact(2 * ff)) {
            a.copy_from_slice(&gu[..ff]);
            silu_mul(a, &gu[ff..]);
        }
        Ok(())
    }

    fn read_logits(&mut self, src: &Vec<f32>, range: Range<usize>) -> Result<Vec<f32>, ModelError> {
        let len = src.len();
        src.get(range.clone())
            .map(<[f32]>::to_vec)
            .ok_or_else(|| bad(format!("logits {range:?} asked of a buffer of {len}")))
    }

    /// The CUDA kernel's twin: what the device computes, on the host.
    fn sample(
        &mut self,
        logits: &Vec<f32>,
        vocab: usize,
        params: &[RowSampling],
    ) -> Result<Vec<i32>, ModelError> {
        let shape = SampleShape {
            rows: params.len(),
            vocab,
        };
        let logits = head(logits, shape.rows * vocab, "sample logits")?;
        let mut ids = vec![0; shape.rows];
        twin::sample(&shape, logits, params, &mut ids).map_err(|e| bad(e.to_string()))?;
        Ok(ids)
    }
}

/// `src` into `dst`, each value as a cache of `dtype` would read it back.
fn store_kv(dst: &mut [f32], src: &[f32], dtype: Option<KvDType>) {
    fn round<K: KvElem>(dst: &mut [f32], src: &[f32]) {
        let scale = KvScales::ONE.k;
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = K::store(s, scale).load(scale);
        }
    }
    match dtype {
        None => dst.copy_from_slice(src),
        Some(KvDType::Bf16) => round::<half::bf16>(dst, src),
        Some(KvDType::F16) => round::<half::f16>(dst, src),
        Some(KvDType::Fp8E4m3) => round::<Fp8E4m3>(dst, src),
    }
}

/// One head's rotation, as `Rope::apply` does it.
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    match style {
        RopeStyle::Interleaved => {
            for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        }
        RopeStyle::HalfSplit => {
            let half = head.len() / 2;
            let (a, b) = head.split_at_mut(half);
            for (((x0, x1), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                let (v0, v1) = (*x0, *x1);
                *x0 = v0 * c - v1 * s;
                *x1 = v0 * s + v1 * c;
            }
        }
    }
}
