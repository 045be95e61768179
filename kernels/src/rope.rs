//! Rotary position embeddings.

/// Which pairs of a head's dimensions rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGML's "normal" mode, used for GGUF llama weights
    /// (the converter permuted Q and K so this matches HF's half-split).
    Interleaved,
    /// Pairs (i, i + d/2): HF's `rotate_half`, GGML's NEOX mode (Qwen2 GGUF, all HF safetensors).
    HalfSplit,
}

/// Frequency scaling from a model's `rope_scaling` config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// Inverse frequencies of one head, with scaling applied; cos/sin are computed
/// per position so that long-context models need no position-sized table.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
    style: RopeStyle,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32, style: RopeStyle, scaling: Option<RopeScaling>) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f32 / head_dim as f32);
                match scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: orig,
                    }) => {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let low_wavelen = orig / low_freq_factor;
                        let high_wavelen = orig / high_freq_factor;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (orig / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect();
        Self {
            inv_freq,
            head_dim,
            style,
        }
    }

    /// Rotates every head of one token (`x` holds `n_heads * head_dim` values) for position `pos`.
    /// Divides each frequency by its factor: how Llama 3.1 GGUF files carry
    /// their rope scaling (a `rope_freqs.weight` tensor of `head_dim / 2`).
    /// Factors beyond the frequency count are ignored.
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Self {
        for (f, k) in self.inv_freq.iter_mut().zip(factors) {
            *f /= k;
        }
        self
    }

    /// The inverse frequency of each rotated pair, scaling and frequency
    /// factors applied: what the GPU's RoPE kernel takes as its table.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        // cos/sin once per call, shared by all heads; on the stack for the
        // head sizes models use, so a token's RoPE allocates nothing.
        let mut stack = [0.0f32; 2 * STACK_HALF];
        let mut heap = Vec::new();
        let table: &mut [f32] = if half <= STACK_HALF {
            &mut stack[..2 * half]
        } else {
            heap.resize(2 * half, 0.0);
            &mut heap
        };
        let (cos, sin) = table.split_at_mut(half);
        for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            (*s, *c) = (pos as f32 * f).sin_cos();
        }
        for head in x.chunks_exact_mut(self.head_dim) {
            match self.style {
                RopeStyle::Interleaved => {
                    for ((pair, c), s) in head.chunks_exact_mut(2).zip(&*cos).zip(&*sin) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::HalfSplit => {
                    let (a, b) = head.split_at_mut(half);
                    for (((x0, x1), c), s) in a.iter_mut().zip(b.iter_mut()).zip(&*cos).zip(&*sin) {
                        let (v0, v1) = (*x0, *x1);
                        *x0 = v0 * c - v1 * s;
                        *x1 = v0 * s + v1 * c;
                    }
                }
            }
        }
    }
}

/// Half head sizes up to this keep their cos/sin table on the stack.
const STACK_HALF: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_factors_of_two_equal_linear_scaling_by_two() {
        let base = Rope::new(16, 10_000.0, RopeStyle::HalfSplit, None);
        let by_factors = base.clone().with_freq_factors(&[2.0; 8]);
        let linear = Rope::new(
            16,
            10_000.0,
            RopeStyle::HalfSplit,
            Some(RopeScaling::Linear { factor: 2.0 }),
        );
        let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b, mut c) = (x.clone(), x.clone(), x);
        by_factors.apply(&mut a, 11);
        linear.apply(&mut b, 11);
        base.apply(&mut c, 11);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-6);
        }
        assert!(a.iter().zip(&c).any(|(p, q)| (p - q).abs() > 1e-3));
    }
}
