// Causal attention over the paged KV cache, for decode (one query per
// sequence) and chunked prefill (a chunk of queries per sequence against all
// of that sequence's earlier KV plus the chunk's own, already written by
// `sluice_rope_kv_write`). GQA: query head h reads KV head h / (n_heads / n_kv_heads).
//
// One block per (query token, query head), SLUICE_ATTN_WARPS warps. Warp w
// takes keys w, w + W, w + 2W, ... and keeps its own online softmax (running
// max m, sum l, accumulator acc); lane l holds dims [l*dpl, (l+1)*dpl) of q and
// acc (dpl = head_dim / 32), so a warp reads each key/value row as one
// contiguous 2*head_dim-byte load. The warps' states are merged in warp order
// at the end. Memory is O(1) in the context length.
// One variant per KV element type (kv.cuh): `sluice_paged_attention` (bf16),
// `_f16`, `_fp8_e4m3`; K and V are widened to f32 as they are used.
// Twin: `cuda_twin::attention`. KV layout: kernels/cuda/README.md.
#include "common.cuh"
#include "kv.cuh"

#define MAX_DPL (SLUICE_ATTN_MAX_HEAD_DIM / SLUICE_WARP)

template <typename Kv>
__device__ __forceinline__ void paged_attention(
    const __nv_bfloat16* __restrict__ q,          // [tokens][n_heads * head_dim]
    const typename Kv::T* __restrict__ k_cache,   // [blocks][kv_heads][block_size][head_dim]
    const typename Kv::T* __restrict__ v_cache,
    const int32_t* __restrict__ block_tables,     // [seqs][max_blocks_per_seq]
    const int32_t* __restrict__ context_lens,     // [seqs]: KV length after this step's tokens
    const int32_t* __restrict__ query_starts,     // [seqs + 1], or null: one query per sequence
    __nv_bfloat16* __restrict__ out,              // [tokens][n_heads * head_dim]
    int n_seqs, int n_heads, int n_kv_heads, int head_dim, int block_size,
    int max_blocks_per_seq, float scale, float k_scale, float v_scale) {
    __shared__ float m_w[SLUICE_ATTN_WARPS], l_w[SLUICE_ATTN_WARPS];
    __shared__ float acc_w[SLUICE_ATTN_WARPS][SLUICE_ATTN_MAX_HEAD_DIM];
    const int head = blockIdx.x, token = blockIdx.y;
    const int lane = threadIdx.x % SLUICE_WARP, warp = threadIdx.x / SLUICE_WARP;
    const int dpl = head_dim / SLUICE_WARP;
    const int q_width = n_heads * head_dim;

    // Which sequence this query belongs to and how many keys it sees.
    int seq = token, n_keys;
    if (query_starts) {
        int lo = 0, hi = n_seqs - 1;  // last seq whose start <= token
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (query_starts[mid] <= token) lo = mid; else hi = mid - 1;
        }
        seq = lo;
        const int q_len = query_starts[seq + 1] - query_starts[seq];
        const int i = token - query_starts[seq];
        n_keys = context_lens[seq] - q_len + i + 1;
    } else {
        n_keys = context_lens[seq];
    }
    const int kvh = head / (n_heads / n_kv_heads);
    const int32_t* table = block_tables + (long long)seq * max_blocks_per_seq;

    float qr[MAX_DPL], acc[MAX_DPL];
    const __nv_bfloat16* qh = q + (long long)token * q_width + head * head_dim + lane * dpl;
#pragma unroll
    for (int d = 0; d < MAX_DPL; d++) {
        qr[d] = d < dpl ? ld_bf16(qh + d) : 0.0f;
        acc[d] = 0.0f;
    }
    // Element offset of this lane's slice of key p's K/V row.
    auto row_of = [&](int p) {
        const long long block = table[p / block_size];
        return ((block * n_kv_heads + kvh) * block_size + p % block_size) * head_dim + lane * dpl;
    };
    // K/V of the warp's next key are loaded while the current one is used:
    // a decode step is bound by these loads' latency, not by arithmetic.
    // The arithmetic, and so the twin, is that of one key at a time.
    typename Kv::T k_cur[MAX_DPL], v_cur[MAX_DPL], k_next[MAX_DPL], v_next[MAX_DPL];
    if (warp < n_keys) {
        const long long row = row_of(warp);
#pragma unroll
        for (int d = 0; d < MAX_DPL; d++)
            if (d < dpl) { k_cur[d] = k_cache[row + d]; v_cur[d] = v_cache[row + d]; }
    }
    float m = -INFINITY, l = 0.0f;
    for (int p = warp; p < n_keys; p += SLUICE_ATTN_WARPS) {
        const int p_next = p + SLUICE_ATTN_WARPS;
        if (p_next < n_keys) {
            const long long row = row_of(p_next);
#pragma unroll
            for (int d = 0; d < MAX_DPL; d++)
                if (d < dpl) { k_next[d] = k_cache[row + d]; v_next[d] = v_cache[row + d]; }
        }
        float partial = 0.0f;
#pragma unroll
        for (int d = 0; d < MAX_DPL; d++)
            if (d < dpl) partial += qr[d] * Kv::load(k_cur[d], k_scale);
        const float s = warp_sum(partial) * scale;
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new);
        const float e = expf(s - m_new);
        l = l * alpha + e;
#pragma unroll
        for (int d = 0; d < MAX_DPL; d++)
            if (d < dpl) acc[d] = acc[d] * alpha + e * Kv::load(v_cur[d], v_scale);
        m = m_new;
#pragma unroll
        for (int d = 0; d < MAX_DPL; d++) { k_cur[d] = k_next[d]; v_cur[d] = v_next[d]; }
    }
    if (lane == 0) {
        m_w[warp] = m;
        l_w[warp] = l;
    }
#pragma unroll
    for (int d = 0; d < MAX_DPL; d++)
        if (d < dpl) acc_w[warp][lane * dpl + d] = acc[d];
    __syncthreads();

    float m_all = -INFINITY;
    for (int w = 0; w < SLUICE_ATTN_WARPS; w++) m_all = fmaxf(m_all, m_w[w]);
    __nv_bfloat16* o = out + (long long)token * q_width + head * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        if (m_all == -INFINITY) {  // no keys: a padding row of a graph bucket
            o[d] = to_bf16(0.0f);
            continue;
        }
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < SLUICE_ATTN_WARPS; w++) {
            // A warp that saw no key has m = -inf, l = 0, acc = 0: factor 0.
            const float f = m_w[w] == -INFINITY ? 0.0f : expf(m_w[w] - m_all);
            num += acc_w[w][d] * f;
            den += l_w[w] * f;
        }
        o[d] = to_bf16(num / den);
    }
}

#define SLUICE_ATTENTION_VARIANT(NAME, KV)                                                        \
    extern "C" __global__ void __launch_bounds__(SLUICE_ATTN_WARPS * SLUICE_WARP) NAME(           \
        const __nv_bfloat16* __restrict__ q, const KV::T* __restrict__ k_cache,                  \
        const KV::T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,             \
        const int32_t* __restrict__ context_lens, const int32_t* __restrict__ query_starts,      \
        __nv_bfloat16* __restrict__ out, int n_seqs, int n_heads, int n_kv_heads, int head_dim,  \
        int block_size, int max_blocks_per_seq, float scale, float k_scale, float v_scale) {     \
        paged_attention<KV>(q, k_cache, v_cache, block_tables, context_lens, query_starts, out,  \
                            n_seqs, n_heads, n_kv_heads, head_dim, block_size,                   \
                            max_blocks_per_seq, scale, k_scale, v_scale);                        \
    }

SLUICE_ATTENTION_VARIANT(sluice_paged_attention, KvBf16)
SLUICE_ATTENTION_VARIANT(sluice_paged_attention_f16, KvF16)
SLUICE_ATTENTION_VARIANT(sluice_paged_attention_fp8_e4m3, KvFp8E4m3)
