// Embedding gather, residual add and SiLU-mul: memory-bound, one element per
// thread per step of a grid-stride loop. Twins: `cuda_twin::elementwise`.
#include "common.cuh"

// out[t][i] = table[ids[t]][i] as f32: the residual stream is kept in f32
// (as the CPU model does), the table in bf16. One block per token. An id
// outside the vocabulary gives a zero row (the host validates ids first;
// this only keeps a bad one from reading outside the table).
extern "C" __global__ void sluice_embedding_gather(
    const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ table,
    float* __restrict__ out, int vocab, int hidden) {
    const int t = blockIdx.x;
    const int id = ids[t];
    float* row = out + (size_t)t * hidden;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = 0.0f;
        return;
    }
    const __nv_bfloat16* src = table + (size_t)id * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = ld_bf16(src + i);
}

// residual[i] += delta[i]: f32 residual stream, bf16 layer output.
extern "C" __global__ void sluice_residual_add(
    float* __restrict__ residual, const __nv_bfloat16* __restrict__ delta, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        residual[i] += ld_bf16(delta + i);
}

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][ff + i]: the fused gate/up
// GEMM output holds the gate in its first ff columns, as the CPU model's
// `w_gate_up` does.
extern "C" __global__ void sluice_silu_mul(
    const __nv_bfloat16* __restrict__ gate_up, __nv_bfloat16* __restrict__ out, int rows, int ff) {
    const long long n = (long long)rows * ff;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += (long long)gridDim.x * blockDim.x) {
        const long long r = j / ff, i = j % ff;
        const float g = ld_bf16(gate_up + r * 2 * ff + i);
        const float u = ld_bf16(gate_up + r * 2 * ff + ff + i);
        out[j] = to_bf16(g / (1.0f + expf(-g)) * u);
    }
}
