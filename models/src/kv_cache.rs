//! Paged K/V storage: the memory the runtime's block manager hands out.
//!
//! Each layer holds K and V as `[block][slot][kv_head][head_dim]` f32. The
//! model writes a token's K/V at the slot its block table names and attention
//! reads back through the same table; which block belongs to whom is decided
//! outside this crate.

use sluice_kernels::attention::PagedKv;

use crate::config::LlamaConfig;

pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    num_blocks: usize,
    block_size: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    pub fn new(cfg: &LlamaConfig, num_blocks: usize, block_size: usize) -> Self {
        let per_layer = num_blocks * block_size * cfg.kv_dim();
        let layers = (0..cfg.num_layers)
            .map(|_| (vec![0.0; per_layer], vec![0.0; per_layer]))
            .collect();
        Self {
            layers,
            num_blocks,
            block_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        }
    }

    /// Zeroes every block in place: the state of `new` without holding a
    /// second copy of the memory while it is made.
    pub fn clear(&mut self) {
        for (k, v) in &mut self.layers {
            k.fill(0.0);
            v.fill(0.0);
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn view(&self, layer: usize) -> PagedKv<'_> {
        let (k, v) = &self.layers[layer];
        PagedKv {
            k,
            v,
            block_size: self.block_size,
            n_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Stores one token's K and V (`kv_dim` values each) at `pos` of the sequence whose table is `block_table`.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let width = self.num_kv_heads * self.head_dim;
        // The token's K/V for all heads start where head 0's does.
        let off = self.view(layer).offset(block_table, pos, 0);
        let (lk, lv) = &mut self.layers[layer];
        lk[off..off + width].copy_from_slice(k);
        lv[off..off + width].copy_from_slice(v);
    }
}
