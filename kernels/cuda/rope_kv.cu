// RoPE on the new tokens' q and k, fused with the paged KV write: reads the
// fused QKV GEMM output once, writes rotated q to its own buffer and rotated
// k plus v into their cache slots. One block of SLUICE_ROPE_THREADS per token.
// One variant per KV element type (kv.cuh): `sluice_rope_kv_write` (bf16),
// `_f16`, `_fp8_e4m3`. Twin: `cuda_twin::rope_kv`. KV layout: kernels/cuda/README.md.
#include "common.cuh"
#include "kv.cuh"

// Style 0: pairs (2i, 2i+1) (GGUF llama); style 1: pairs (i, i + d/2) (HF rotate_half).
__device__ __forceinline__ void pair_dims(int style, int i, int half, int* a, int* b) {
    if (style == 0) { *a = 2 * i; *b = 2 * i + 1; }
    else { *a = i; *b = i + half; }
}

template <typename Kv>
__device__ __forceinline__ void rope_kv_write(
    const __nv_bfloat16* __restrict__ qkv,      // [tokens][q_dim + 2 * kv_dim]
    const __nv_bfloat16* __restrict__ bias,     // [q_dim + 2 * kv_dim] or null
    const int32_t* __restrict__ positions,      // [tokens]
    const int32_t* __restrict__ slots,          // [tokens]: block * block_size + offset, < 0 = write nothing
    const float* __restrict__ inv_freq,         // [head_dim / 2], scaling applied
    __nv_bfloat16* __restrict__ q_out,          // [tokens][q_dim]
    typename Kv::T* __restrict__ k_cache,       // [blocks][kv_heads][block_size][head_dim]
    typename Kv::T* __restrict__ v_cache,
    int n_heads, int n_kv_heads, int head_dim, int block_size, int style,
    float k_scale, float v_scale) {
    __shared__ float cos_t[SLUICE_ATTN_MAX_HEAD_DIM / 2];
    __shared__ float sin_t[SLUICE_ATTN_MAX_HEAD_DIM / 2];
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int width = q_dim + 2 * kv_dim;
    const __nv_bfloat16* row = qkv + (long long)t * width;
    const float pos = (float)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        // The product rounded to f32 first, as the CPU's `pos as f32 * f`.
        sincosf(pos * inv_freq[i], &s, &c);
        cos_t[i] = c;
        sin_t[i] = s;
    }
    __syncthreads();
    const int slot = slots[t];
    long long cache_base = -1;  // element offset of (block, head 0, offset, dim 0)
    if (slot >= 0) {
        const long long block = slot / block_size, offset = slot % block_size;
        cache_base = (block * n_kv_heads * block_size + offset) * head_dim;
    }
    // Element j of the row with its bias, in f32.
    auto at = [&](int j) { return ld_bf16(row + j) + (bias ? ld_bf16(bias + j) : 0.0f); };

    for (int j = threadIdx.x; j < (n_heads + n_kv_heads) * half; j += blockDim.x) {
        const int head = j / half, i = j % half;
        int a, b;
        pair_dims(style, i, half, &a, &b);
        const bool is_q = head < n_heads;
        const int base = head * head_dim;  // k heads follow q heads in the row
        const float x0 = at(base + a), x1 = at(base + b);
        const float c = cos_t[i], s = sin_t[i];
        const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        if (is_q) {
            __nv_bfloat16* q = q_out + (long long)t * q_dim + base;
            q[a] = to_bf16(y0);
            q[b] = to_bf16(y1);
        } else if (cache_base >= 0) {
            const int kvh = head - n_heads;
            typename Kv::T* k = k_cache + cache_base + (long long)kvh * block_size * head_dim;
            k[a] = Kv::store(y0, k_scale);
            k[b] = Kv::store(y1, k_scale);
        }
    }
    if (cache_base < 0) return;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        const int kvh = j / head_dim, d = j % head_dim;
        v_cache[cache_base + (long long)kvh * block_size * head_dim + d] =
            Kv::store(at(q_dim + kv_dim + j), v_scale);
    }
}

#define SLUICE_ROPE_KV_VARIANT(NAME, KV)                                                          \
    extern "C" __global__ void NAME(                                                              \
        const __nv_bfloat16* __restrict__ qkv, const __nv_bfloat16* __restrict__ bias,           \
        const int32_t* __restrict__ positions, const int32_t* __restrict__ slots,                \
        const float* __restrict__ inv_freq, __nv_bfloat16* __restrict__ q_out,                   \
        KV::T* __restrict__ k_cache, KV::T* __restrict__ v_cache, int n_heads, int n_kv_heads,   \
        int head_dim, int block_size, int style, float k_scale, float v_scale) {                 \
        rope_kv_write<KV>(qkv, bias, positions, slots, inv_freq, q_out, k_cache, v_cache,        \
                          n_heads, n_kv_heads, head_dim, block_size, style, k_scale, v_scale);   \
    }

SLUICE_ROPE_KV_VARIANT(sluice_rope_kv_write, KvBf16)
SLUICE_ROPE_KV_VARIANT(sluice_rope_kv_write_f16, KvF16)
SLUICE_ROPE_KV_VARIANT(sluice_rope_kv_write_fp8_e4m3, KvFp8E4m3)
