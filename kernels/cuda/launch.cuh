// Launch geometry shared by the kernels and their CPU twins.
// `kernels/src/cuda_twin/mod.rs` holds the same numbers as Rust constants;
// a unit test there reads this file and fails when the two disagree, because
// the twins reproduce each kernel's thread loops and reduction order.
#pragma once

#define SLUICE_WARP 32
// Embedding gather, residual add, SiLU-mul: threads per block.
#define SLUICE_ELEMENTWISE_THREADS 256
// RMSNorm: one block per row.
#define SLUICE_NORM_THREADS 256
// RoPE + KV write: one block per token.
#define SLUICE_ROPE_THREADS 128
// Paged attention: one block per (query token, query head), this many warps
// each walking every SLUICE_ATTN_WARPS-th key with its own online softmax.
#define SLUICE_ATTN_WARPS 8
// Largest head size: each lane holds head_dim / 32 values of q and of the
// output accumulator in registers.
#define SLUICE_ATTN_MAX_HEAD_DIM 256
// Sampling: one block per row; each thread owns a contiguous run of the vocabulary.
#define SLUICE_SAMPLE_THREADS 1024
// Top-k / top-p keep at most this many candidates on the device (sorted in shared memory).
#define SLUICE_SAMPLE_MAX_CANDIDATES 1024
// Q8_0 GEMV: warps per block, one weight row per warp; at most this many activation rows.
#define SLUICE_GEMV_WARPS 4
#define SLUICE_GEMV_MAX_BATCH 8
