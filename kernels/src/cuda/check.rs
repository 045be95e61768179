//! The device half of the kernel tests: every kernel on random inputs of
//! serving shapes (Llama-3.1-8B's heads, a 128k vocabulary), compared with
//! its CPU twin. It needs a GPU, so CI only checks that it refuses cleanly
//! without one; `sluice-gpucheck` runs it on a lent machine.

use half::bf16;

use half::f16;

use super::{AttentionBuffers, DeviceKv, Gpu, GpuError, In, RopeKvBuffers};
use crate::cuda_twin::{
    self as twin, max_relative_error, AttentionShape, EmbeddingShape, KvLayout, NormShape,
};
use crate::cuda_twin::{
    Fp8E4m3, GemvShape, KvScales, RopeKvShape, RowSampling, SampleShape, SiluMulShape,
};
use crate::rope::{Rope, RopeStyle};

/// A kernel's result passes when its error relative to the twin's output
/// scale is below this (one bf16 rounding is 2^-9).
pub const TOLERANCE: f32 = 1e-2;

/// fp8 KV writes: the device's f32 rotation differs from the twin's in the
/// last bits (fused multiply-adds), which can move a value across an e4m3
/// rounding midpoint: one e4m3 step, 2^-4 of the value, is allowed.
pub const FP8_WRITE_TOLERANCE: f32 = 0.07;

/// fp8 scales the checks use, so that a kernel ignoring them fails.
const FP8_SCALES: KvScales = KvScales { k: 2.0, v: 0.5 };

/// One kernel's comparison with its twin.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCheck {
    pub name: &'static str,
    /// The shape it ran at, in words.
    pub shape: String,
    /// `max |device - twin| / max |twin|` over the outputs (for sampling:
    /// the fraction of rows whose token differs).
    pub max_rel_error: f32,
    pub passed: bool,
    /// Why it failed to run, when it did not.
    pub error: Option<String>,
}

/// Opens device `ordinal` and runs [`run_all`]; without a GPU, the error
/// [`Gpu::open`] gives.
pub fn run_on_device(ordinal: usize, seed: u64) -> Result<Vec<KernelCheck>, GpuError> {
    let gpu = Gpu::open(ordinal)?;
    Ok(run_all(&gpu, seed))
}

/// Every kernel once, on inputs drawn from `seed`.
pub fn run_all(gpu: &Gpu, seed: u64) -> Vec<KernelCheck> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let checks: [(&'static str, CheckFn, f32); 14] = [
        ("embedding_gather", check_embedding, TOLERANCE),
        ("residual_add", check_residual_add, TOLERANCE),
        ("silu_mul", check_silu_mul, TOLERANCE),
        ("rms_norm", check_rms_norm, TOLERANCE),
        ("rms_norm_rows", check_rms_norm_rows, TOLERANCE),
        ("add_rms_norm", check_add_rms_norm, TOLERANCE),
        ("rope_kv_write", check_rope_kv, TOLERANCE),
        ("rope_kv_write_f16", check_rope_kv_f16, TOLERANCE),
        (
            "rope_kv_write_fp8_e4m3",
            check_rope_kv_fp8,
            FP8_WRITE_TOLERANCE,
        ),
        ("paged_attention", check_attention, TOLERANCE),
        ("paged_attention_f16", check_attention_f16, TOLERANCE),
        ("paged_attention_fp8_e4m3", check_attention_fp8, TOLERANCE),
        ("sample", check_sample, TOLERANCE),
        ("gemv_q8_0", check_gemv, TOLERANCE),
    ];
    checks
        .into_iter()
        .map(|(name, check, tolerance)| match check(gpu, &mut rng) {
            Ok((shape, err)) => KernelCheck {
                name,
                shape,
                max_rel_error: err,
                passed: err < tolerance,
                error: None,
            },
            Err(e) => KernelCheck {
                name,
                shape: String::new(),
                max_rel_error: f32::INFINITY,
                passed: false,
                error: Some(e),
            },
        })
        .collect()
}

/// Returns the shape in words and the relative error, or why it could not run.
type CheckFn = fn(&Gpu, &mut Rng) -> Result<(String, f32), String>;

/// xorshift64*: inputs only need to be varied and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    fn bf16s(&mut self, n: usize, scale: f32) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(self.uniform() * scale))
            .collect()
    }
}

fn f32s(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Uploads, runs `launch`, downloads: the glue every check shares.
macro_rules! up {
    ($gpu:expr, $host:expr) => {
        $gpu.stream().clone_htod(&$host).map_err(text)?
    };
}
macro_rules! down {
    ($gpu:expr, $dev:expr) => {
        $gpu.stream().clone_dtoh(&$dev).map_err(text)?
    };
}

fn check_embedding(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let shape = EmbeddingShape {
        tokens: 64,
        vocab: 1000,
        hidden: 4096,
    };
    let table = rng.bf16s(shape.vocab * shape.hidden, 1.0);
    let ids: Vec<i32> = (0..shape.tokens)
        .map(|_| rng.below(shape.vocab) as i32)
        .collect();
    let mut want = vec![0.0; shape.tokens * shape.hidden];
    twin::embedding_gather(&shape, &ids, &table, &mut want).map_err(text)?;
    let (d_ids, d_table) = (up!(gpu, ids), up!(gpu, table));
    let mut d_out = gpu.stream().alloc_zeros::<f32>(want.len()).map_err(text)?;
    gpu.embedding_gather(&shape, &d_ids, &d_table, &mut d_out)
        .map_err(text)?;
    let got: Vec<f32> = down!(gpu, d_out);
    Ok((format!("{shape:?}"), max_relative_error(&got, &want)))
}

fn check_residual_add(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let n = 64 * 4096 + 17;
    let x = rng.f32s(n, 4.0);
    let delta = rng.bf16s(n, 1.0);
    let mut want = x.clone();
    twin::residual_add(&mut want, &delta).map_err(text)?;
    let (mut d_x, d_delta) = (up!(gpu, x), up!(gpu, delta));
    gpu.residual_add(&mut d_x, &d_delta).map_err(text)?;
    let got: Vec<f32> = down!(gpu, d_x);
    Ok((format!("{n} elements"), max_relative_error(&got, &want)))
}

fn check_silu_mul(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let shape = SiluMulShape {
        rows: 64,
        ff: 14336,
    };
    let gate_up = rng.bf16s(shape.rows * 2 * shape.ff, 4.0);
    let mut want = vec![bf16::ZERO; shape.rows * shape.ff];
    twin::silu_mul(&shape, &gate_up, &mut want).map_err(text)?;
    let d_gate_up = up!(gpu, gate_up);
    let mut d_out = gpu.stream().alloc_zeros::<bf16>(want.len()).map_err(text)?;
    gpu.silu_mul(&shape, &d_gate_up, &mut d_out).map_err(text)?;
    let got: Vec<bf16> = down!(gpu, d_out);
    Ok((
        format!("{shape:?}"),
        max_relative_error(&f32s(&got), &f32s(&want)),
    ))
}

fn check_rms_norm(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let shape = NormShape {
        rows: 64,
        dim: 4096,
        eps: 1e-5,
    };
    let x = rng.f32s(shape.rows * shape.dim, 3.0);
    let weight = rng.bf16s(shape.dim, 1.0);
    let mut want = vec![bf16::ZERO; x.len()];
    twin::rms_norm(&shape, &x, None, &weight, &mut want).map_err(text)?;
    let (d_x, d_w) = (up!(gpu, x), up!(gpu, weight));
    let mut d_out = gpu.stream().alloc_zeros::<bf16>(want.len()).map_err(text)?;
    gpu.rms_norm(&shape, &d_x, &d_w, &mut d_out).map_err(text)?;
    let got: Vec<bf16> = down!(gpu, d_out);
    Ok((
        format!("{shape:?}"),
        max_relative_error(&f32s(&got), &f32s(&want)),
    ))
}

fn check_rms_norm_rows(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let (x_rows, dim) = (64, 4096);
    let ids: Vec<i32> = (0..8).map(|_| rng.below(x_rows) as i32).collect();
    let shape = NormShape {
        rows: ids.len(),
        dim,
        eps: 1e-5,
    };
    let x = rng.f32s(x_rows * dim, 3.0);
    let weight = rng.bf16s(dim, 1.0);
    let mut want = vec![bf16::ZERO; ids.len() * dim];
    twin::rms_norm(&shape, &x, Some(&ids), &weight, &mut want).map_err(text)?;
    let (d_x, d_ids, d_w) = (up!(gpu, x), up!(gpu, ids), up!(gpu, weight));
    let mut d_out = gpu.stream().alloc_zeros::<bf16>(want.len()).map_err(text)?;
    gpu.rms_norm_rows(&shape, &d_x, &d_ids, &d_w, &mut d_out)
        .map_err(text)?;
    let got: Vec<bf16> = down!(gpu, d_out);
    Ok((
        format!("{shape:?} gathered from {x_rows} rows"),
        max_relative_error(&f32s(&got), &f32s(&want)),
    ))
}

fn check_add_rms_norm(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let shape = NormShape {
        rows: 64,
        dim: 4096,
        eps: 1e-5,
    };
    let x = rng.f32s(shape.rows * shape.dim, 3.0);
    let delta = rng.bf16s(x.len(), 1.0);
    let weight = rng.bf16s(shape.dim, 1.0);
    let mut want_res = x.clone();
    let mut want = vec![bf16::ZERO; x.len()];
    twin::add_rms_norm(&shape, &mut want_res, &delta, &weight, &mut want).map_err(text)?;
    let (mut d_x, d_delta, d_w) = (up!(gpu, x), up!(gpu, delta), up!(gpu, weight));
    let mut d_out = gpu.stream().alloc_zeros::<bf16>(want.len()).map_err(text)?;
    gpu.add_rms_norm(&shape, &mut d_x, &d_delta, &d_w, &mut d_out)
        .map_err(text)?;
    let (got_res, got): (Vec<f32>, Vec<bf16>) = (down!(gpu, d_x), down!(gpu, d_out));
    let err =
        max_relative_error(&got_res, &want_res).max(max_relative_error(&f32s(&got), &f32s(&want)));
    Ok((format!("{shape:?}"), err))
}

/// Llama-3.1-8B's attention shape, 16-token blocks.
fn llama_kv(num_blocks: usize) -> KvLayout {
    KvLayout {
        num_blocks,
        block_size: 16,
        n_kv_heads: 8,
        head_dim: 128,
    }
}

fn check_rope_kv(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    rope_kv_of::<bf16>(gpu, rng, KvScales::ONE)
}

fn check_rope_kv_f16(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    rope_kv_of::<f16>(gpu, rng, KvScales::ONE)
}

fn check_rope_kv_fp8(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    rope_kv_of::<Fp8E4m3>(gpu, rng, FP8_SCALES)
}

/// Widens a cache read back from the device (or the twin's) to f32.
fn kv_f32<K: DeviceKv>(x: &[K], scale: f32) -> Vec<f32> {
    x.iter().map(|v| v.load(scale)).collect()
}

/// The `K` variant of RoPE + KV write against its twin.
fn rope_kv_of<K: DeviceKv>(
    gpu: &Gpu,
    rng: &mut Rng,
    scales: KvScales,
) -> Result<(String, f32), String> {
    let kv = llama_kv(64);
    let shape = RopeKvShape {
        tokens: 64,
        n_heads: 32,
        kv,
        style: RopeStyle::HalfSplit,
    };
    let rope = Rope::new(128, 500_000.0, RopeStyle::HalfSplit, None);
    let qkv = rng.bf16s(shape.tokens * shape.qkv_width(), 2.0);
    let positions: Vec<i32> = (0..shape.tokens).map(|_| rng.below(8000) as i32).collect();
    // Distinct slots, one padding token.
    let mut slots: Vec<i32> = (0..shape.tokens)
        .map(|t| (t * 7 % (kv.num_blocks * kv.block_size)) as i32)
        .collect();
    slots[5] = -1;
    let q_len = shape.tokens * shape.n_heads * kv.head_dim;
    let (mut q, mut k, mut v) = (
        vec![bf16::ZERO; q_len],
        vec![K::default(); kv.layer_len()],
        vec![K::default(); kv.layer_len()],
    );
    twin::rope_kv_write(
        &shape,
        twin::RopeKvBuffers {
            qkv: &qkv,
            bias: None,
            positions: &positions,
            slots: &slots,
            inv_freq: rope.inv_freq(),
            q_out: &mut q,
            k_cache: &mut k,
            v_cache: &mut v,
            kv_scales: scales,
        },
    )
    .map_err(text)?;
    let (d_qkv, d_pos, d_slots, d_freq) = (
        up!(gpu, qkv),
        up!(gpu, positions),
        up!(gpu, slots),
        up!(gpu, rope.inv_freq().to_vec()),
    );
    let s = gpu.stream();
    let mut d_q = s.alloc_zeros::<bf16>(q_len).map_err(text)?;
    let mut d_k = s.alloc_zeros::<K>(kv.layer_len()).map_err(text)?;
    let mut d_v = s.alloc_zeros::<K>(kv.layer_len()).map_err(text)?;
    gpu.rope_kv_write(
        &shape,
        RopeKvBuffers {
            qkv: &d_qkv,
            bias: None,
            positions: &d_pos,
            slots: &d_slots,
            inv_freq: &d_freq,
            q_out: &mut d_q,
            k_cache: &mut d_k,
            v_cache: &mut d_v,
            kv_scales: scales,
        },
    )
    .map_err(text)?;
    let (gq, gk, gv): (Vec<bf16>, Vec<K>, Vec<K>) =
        (down!(gpu, d_q), down!(gpu, d_k), down!(gpu, d_v));
    let err = max_relative_error(&f32s(&gq), &f32s(&q))
        .max(max_relative_error(
            &kv_f32(&gk, scales.k),
            &kv_f32(&k, scales.k),
        ))
        .max(max_relative_error(
            &kv_f32(&gv, scales.v),
            &kv_f32(&v, scales.v),
        ));
    Ok((
        format!(
            "{} tokens, 32/8 heads x 128, positions < 8000, {} cache {scales:?}",
            shape.tokens,
            K::DTYPE.as_str()
        ),
        err,
    ))
}

/// Decode (8 sequences, one of them padding) and a prefill step (three
/// chunks, one after cached tokens), both against the twin.
fn check_attention(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    attention_of::<bf16>(gpu, rng, KvScales::ONE)
}

fn check_attention_f16(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    attention_of::<f16>(gpu, rng, KvScales::ONE)
}

fn check_attention_fp8(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    attention_of::<Fp8E4m3>(gpu, rng, FP8_SCALES)
}

/// The `K` variant of paged attention against its twin, both reading the
/// same cache bits.
fn attention_of<K: DeviceKv>(
    gpu: &Gpu,
    rng: &mut Rng,
    scales: KvScales,
) -> Result<(String, f32), String> {
    let kv = llama_kv(512);
    let (n_heads, max_blocks) = (32, 64);
    let k: Vec<K> = (0..kv.layer_len())
        .map(|_| K::store(rng.uniform(), scales.k))
        .collect();
    let v: Vec<K> = (0..kv.layer_len())
        .map(|_| K::store(rng.uniform(), scales.v))
        .collect();
    let (d_k, d_v) = (up!(gpu, k), up!(gpu, v));
    let width = n_heads * kv.head_dim;
    let mut worst = 0.0f32;
    let decode_lens = [1usize, 16, 17, 300, 513, 1000, 0, 64];
    let prefill = [(0usize, 100usize), (300, 37), (999, 1)];
    for (lens, starts) in [
        (decode_lens.to_vec(), None),
        (
            prefill.iter().map(|&(c, n)| c + n).collect::<Vec<_>>(),
            Some(prefill.iter().map(|&(_, n)| n).collect::<Vec<_>>()),
        ),
    ] {
        // Block tables: distinct random blocks per sequence.
        let mut tables = vec![0i32; lens.len() * max_blocks];
        let mut free: Vec<i32> = (0..kv.num_blocks as i32).collect();
        for (s, &len) in lens.iter().enumerate() {
            for b in 0..len.div_ceil(kv.block_size) {
                tables[s * max_blocks + b] = free.swap_remove(rng.below(free.len()));
            }
        }
        let query_starts: Option<Vec<i32>> = starts.map(|n| {
            let mut qs = vec![0i32];
            for len in n {
                qs.push(qs.last().copied().unwrap_or(0) + len as i32);
            }
            qs
        });
        let n_tokens = query_starts
            .as_ref()
            .map_or(lens.len(), |qs| qs.last().copied().unwrap_or(0) as usize);
        let shape = AttentionShape {
            n_seqs: lens.len(),
            n_tokens,
            n_heads,
            kv,
            max_blocks_per_seq: max_blocks,
            scale: 1.0 / (kv.head_dim as f32).sqrt(),
        };
        let q = rng.bf16s(n_tokens * width, 1.0);
        let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut want = vec![bf16::ZERO; q.len()];
        twin::paged_attention(
            &shape,
            twin::AttentionBuffers {
                q: &q,
                k_cache: &k,
                v_cache: &v,
                kv_scales: scales,
                block_tables: &tables,
                context_lens: &ctx,
                query_starts: query_starts.as_deref(),
                out: &mut want,
            },
        )
        .map_err(text)?;
        let (d_q, d_tables, d_ctx) = (up!(gpu, q), up!(gpu, tables), up!(gpu, ctx));
        let d_qs = match &query_starts {
            Some(qs) => Some(up!(gpu, qs.clone())),
            None => None,
        };
        let mut d_out = gpu.stream().alloc_zeros::<bf16>(q.len()).map_err(text)?;
        let prefill = d_qs.is_some();
        let buf = AttentionBuffers {
            q: &d_q,
            k_cache: &d_k,
            v_cache: &d_v,
            kv_scales: scales,
            block_tables: &d_tables,
            context_lens: &d_ctx,
            query_starts: d_qs.as_ref().map(|q| q as In<'_, i32>),
            out: &mut d_out,
        };
        if prefill {
            gpu.paged_attention_prefill(&shape, buf)
        } else {
            gpu.paged_attention_decode(&shape, buf)
        }
        .map_err(text)?;
        let got: Vec<bf16> = down!(gpu, d_out);
        worst = worst.max(max_relative_error(&f32s(&got), &f32s(&want)));
    }
    Ok((
        format!(
            "decode 8 seqs (len 0..1000) + prefill 3 chunks, 32/8 heads x 128, 16-token blocks, {} cache {scales:?}",
            K::DTYPE.as_str()
        ),
        worst,
    ))
}

fn check_sample(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    let shape = SampleShape {
        rows: 16,
        vocab: 128_256,
    };
    let logits: Vec<f32> = (0..shape.rows * shape.vocab)
        .map(|i| {
            if i % 311 == 0 {
                8.0 + rng.uniform() * 4.0
            } else {
                rng.uniform() * 6.0
            }
        })
        .collect();
    let settings = [
        RowSampling {
            temperature: 0.0,
            top_p: 1.0,
            ..Default::default()
        },
        RowSampling {
            temperature: 0.8,
            top_p: 1.0,
            ..Default::default()
        },
        RowSampling {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 50,
            ..Default::default()
        },
        RowSampling {
            temperature: 1.0,
            top_p: 0.9,
            min_p: 0.05,
            ..Default::default()
        },
    ];
    let params: Vec<RowSampling> = (0..shape.rows)
        .map(|r| RowSampling {
            uniform: (rng.uniform() + 1.0) / 2.0,
            ..settings[r % settings.len()]
        })
        .collect();
    let mut want = vec![0i32; shape.rows];
    twin::sample(&shape, &logits, &params, &mut want).map_err(text)?;
    let (d_logits, d_params) = (up!(gpu, logits), up!(gpu, params));
    let mut d_out = gpu.stream().alloc_zeros::<i32>(shape.rows).map_err(text)?;
    gpu.sample(&shape, &d_logits, &d_params, &mut d_out)
        .map_err(text)?;
    let got: Vec<i32> = down!(gpu, d_out);
    let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    Ok((
        format!("{shape:?}, greedy/temperature/top-k/top-p+min-p"),
        differ as f32 / shape.rows as f32,
    ))
}

fn check_gemv(gpu: &Gpu, rng: &mut Rng) -> Result<(String, f32), String> {
    // Llama-3.1-8B's down projection at decode batch 8, random quants with sane scales.
    let shape = GemvShape {
        rows: 4096,
        cols: 14336,
        batch: 8,
    };
    let mut w = vec![0u8; shape.rows * shape.cols / 32 * 34];
    for block in w.chunks_exact_mut(34) {
        block[..2].copy_from_slice(&half::f16::from_f32(rng.uniform() * 0.01).to_le_bytes());
        for q in &mut block[2..] {
            *q = rng.next() as u8;
        }
    }
    let x = rng.bf16s(shape.batch * shape.cols, 1.0);
    let mut want = vec![bf16::ZERO; shape.batch * shape.rows];
    twin::gemv_q8_0(&shape, &w, &x, &mut want).map_err(text)?;
    let (d_w, d_x) = (up!(gpu, w), up!(gpu, x));
    let mut d_out = gpu.stream().alloc_zeros::<bf16>(want.len()).map_err(text)?;
    gpu.gemv_q8_0(&shape, &d_w, &d_x, &mut d_out)
        .map_err(text)?;
    let got: Vec<bf16> = down!(gpu, d_out);
    Ok((
        format!("{shape:?}"),
        max_relative_error(&f32s(&got), &f32s(&want)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check needs a device; without a driver it says so instead of
    /// running (or panicking).
    #[test]
    fn the_check_refuses_cleanly_without_a_gpu() {
        // SAFETY: only tries to dlopen the library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            let checks = run_on_device(0, 1).expect("a GPU machine opens its device");
            assert_eq!(checks.len(), 10);
            assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
            return;
        }
        let err = run_on_device(0, 1).unwrap_err();
        assert!(matches!(err, GpuError::NoDriver), "{err}");
    }
}
