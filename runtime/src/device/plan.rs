//! One step packed for a device: the engine's [`SeqBatch`]es become the flat
//! `i32` arrays the device kernels read, padded to a CUDA-graph bucket when
//! the step is pure decode.
//!
//! The arrays follow vLLM's conventions, which the kernels share:
//! - one row per token of the step, sequences one after another;
//! - `slot_mapping[row] = block * block_size + offset` is where that token's
//!   K/V is written; `-1` (a padding row) writes nowhere;
//! - `block_tables` is `[seq][max_blocks_per_seq]`: a fixed row width, so the
//!   buffers (and a captured graph) never change shape; entries past a
//!   sequence's last block are 0 and never read (kernels read
//!   `ceil(seq_len / block_size)` of them);
//! - `seq_lens[seq]` counts the keys the sequence attends to after this step
//!   (its earlier tokens plus this step's), 0 for a padding sequence, whose
//!   attention output is zero;
//! - `query_start` is the prefix sum of each sequence's rows (`seqs + 1`
//!   entries): the rows of sequence `s` are `query_start[s]..query_start[s+1]`;
//! - `logits_rows` names the rows whose hidden state goes through the LM
//!   head: the last row of each sequence that wants logits, in order. Only
//!   those logits leave the device.

use sluice_models::SeqBatch;

/// Batch sizes that decode steps are padded to, so that one CUDA graph per
/// size serves every batch: exact up to 8 (small batches are common and
/// padding them would double their cost), then powers of two.
pub const DECODE_BUCKETS: [usize; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64];

/// The smallest bucket holding `n` sequences; `None` above the largest
/// (such a step runs without a graph).
pub fn decode_bucket(n: usize) -> Option<usize> {
    DECODE_BUCKETS.iter().copied().find(|&b| b >= n)
}

/// What the step buffers were sized for; a step beyond them is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Rows (tokens) one step may carry, padding included.
    pub max_tokens: usize,
    /// Sequences one step may carry, padding included.
    pub max_seqs: usize,
    /// Width of a block-table row: the longest context in blocks.
    pub max_blocks_per_seq: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl PlanLimits {
    /// Limits for an engine whose steps carry at most `max_num_batched_tokens`
    /// tokens and `max_num_seqs` sequences with contexts up to `max_model_len`;
    /// room for the largest graph bucket the sequence cap allows.
    pub fn for_engine(
        max_num_batched_tokens: usize,
        max_num_seqs: usize,
        max_model_len: usize,
        block_size: usize,
        num_blocks: usize,
    ) -> Self {
        let bucket = decode_bucket(max_num_seqs).unwrap_or(max_num_seqs);
        Self {
            max_tokens: max_num_batched_tokens.max(bucket),
            max_seqs: max_num_seqs.max(bucket),
            max_blocks_per_seq: max_model_len.div_ceil(block_size.max(1)),
            block_size,
            num_blocks,
        }
    }
}

/// Why a step cannot be packed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the step has {tokens} tokens; the device buffers hold {max}")]
    TooManyTokens { tokens: usize, max: usize },
    #[error("the step has {seqs} sequences; the device buffers hold {max}")]
    TooManySeqs { seqs: usize, max: usize },
    #[error("sequence {seq} needs {needed} blocks; its table has {given}")]
    TableTooShort {
        seq: usize,
        needed: usize,
        given: usize,
    },
    #[error("sequence {seq} needs {needed} blocks; a block-table row holds {max}")]
    ContextTooLong {
        seq: usize,
        needed: usize,
        max: usize,
    },
    #[error("sequence {seq} names block {block}; the cache has {num_blocks}")]
    BlockOutOfRange {
        seq: usize,
        block: u32,
        num_blocks: usize,
    },
    #[error("sequence {seq} runs no tokens")]
    EmptySequence { seq: usize },
}

/// A step as the device sees it (see the module docs for each array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub tokens: Vec<i32>,
    pub positions: Vec<i32>,
    pub slot_mapping: Vec<i32>,
    pub block_tables: Vec<i32>,
    pub seq_lens: Vec<i32>,
    pub query_start: Vec<i32>,
    pub logits_rows: Vec<i32>,
    /// Rows holding real tokens; the rest (up to `tokens.len()`) are padding.
    pub real_tokens: usize,
    /// Sequences that are real; the rest (up to `seq_lens.len()`) are padding.
    pub real_seqs: usize,
    /// `Some(bucket)` for a pure-decode step padded to `bucket` rows, which
    /// may run as that bucket's graph.
    pub graph_bucket: Option<usize>,
    /// The most rows of any one sequence (1 in a decode step).
    pub max_query_len: usize,
    /// The most keys any one sequence attends to.
    pub max_seq_len: usize,
}

impl StepPlan {
    /// Packs `seqs`. `pad_decode` pads a pure-decode step to its graph bucket.
    pub fn pack(
        seqs: &[SeqBatch<'_>],
        limits: &PlanLimits,
        pad_decode: bool,
    ) -> Result<Self, PlanError> {
        let real_tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let real_seqs = seqs.len();
        let pure_decode = real_seqs > 0 && seqs.iter().all(|s| s.tokens.len() == 1);
        let graph_bucket = if pad_decode && pure_decode {
            decode_bucket(real_seqs).filter(|&b| b <= limits.max_seqs && b <= limits.max_tokens)
        } else {
            None
        };
        let padded_seqs = graph_bucket.unwrap_or(real_seqs);
        let padded_tokens = real_tokens + (padded_seqs - real_seqs);
        if padded_tokens > limits.max_tokens {
            return Err(PlanError::TooManyTokens {
                tokens: padded_tokens,
                max: limits.max_tokens,
            });
        }
        if padded_seqs > limits.max_seqs {
            return Err(PlanError::TooManySeqs {
                seqs: padded_seqs,
                max: limits.max_seqs,
            });
        }
        let width = limits.max_blocks_per_seq;
        let bs = limits.block_size;
        let mut plan = Self {
            tokens: Vec::with_capacity(padded_tokens),
            positions: Vec::with_capacity(padded_tokens),
            slot_mapping: Vec::with_capacity(padded_tokens),
            block_tables: vec![0; padded_seqs * width],
            seq_lens: Vec::with_capacity(padded_seqs),
            query_start: Vec::with_capacity(padded_seqs + 1),
            logits_rows: Vec::new(),
            real_tokens,
            real_seqs,
            graph_bucket,
            max_query_len: 0,
            max_seq_len: 0,
        };
        plan.query_start.push(0);
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(PlanError::EmptySequence { seq: i });
            }
            let end = s.start_pos + s.tokens.len();
            let needed = end.div_ceil(bs);
            if needed > width {
                return Err(PlanError::ContextTooLong {
                    seq: i,
                    needed,
                    max: width,
                });
            }
            let table = s
                .block_table
                .get(..needed)
                .ok_or(PlanError::TableTooShort {
                    seq: i,
                    needed,
                    given: s.block_table.len(),
                })?;
            if let Some(&block) = table.iter().find(|&&b| b as usize >= limits.num_blocks) {
                return Err(PlanError::BlockOutOfRange {
                    seq: i,
                    block,
                    num_blocks: limits.num_blocks,
                });
            }
            for (dst, &b) in plan.block_tables[i * width..].iter_mut().zip(table) {
                *dst = b as i32;
            }
            for (k, &tok) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + k;
                plan.tokens.push(tok as i32);
                plan.positions.push(pos as i32);
                let slot = table[pos / bs] as usize * bs + pos % bs;
                plan.slot_mapping.push(slot as i32);
            }
            let rows_so_far = plan.tokens.len();
            plan.query_start.push(rows_so_far as i32);
            plan.seq_lens.push(end as i32);
            if s.want_logits {
                plan.logits_rows.push(rows_so_far as i32 - 1);
            }
            plan.max_query_len = plan.max_query_len.max(s.tokens.len());
            plan.max_seq_len = plan.max_seq_len.max(end);
        }
        // Padding sequences: one row each that reads token 0 at position 0,
        // writes no K/V, attends to nothing and is never read out.
        for _ in real_seqs..padded_seqs {
            plan.tokens.push(0);
            plan.positions.push(0);
            plan.slot_mapping.push(-1);
            plan.seq_lens.push(0);
            plan.query_start.push(plan.tokens.len() as i32);
        }
        Ok(plan)
    }

    /// Rows the device computes, padding included.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Sequences the device sees, padding included.
    pub fn seqs(&self) -> usize {
        self.seq_lens.len()
    }
}
