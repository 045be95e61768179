// RMSNorm over f32 rows into bf16, optionally fused with the residual add
// that precedes it. One block of SLUICE_NORM_THREADS per row; thread t sums
// the squares of elements t, t + 256, ... in that order, then `block_sum`.
// Twin: `cuda_twin::norm`.
#include "common.cuh"

__device__ __forceinline__ void norm_row(const float* x, const __nv_bfloat16* __restrict__ weight,
                                         __nv_bfloat16* __restrict__ out, int dim, float eps,
                                         float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += x[i] * x[i];
    const float total = block_sum(ss, scratch);
    // 1 / sqrt rather than rsqrtf: the CPU model's rounding, not a faster one.
    const float inv = 1.0f / sqrtf(total / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = to_bf16(x[i] * inv * ld_bf16(weight + i));
}

// out[r] = rmsnorm(x[row_ids ? row_ids[r] : r]) * weight. `row_ids` (may be
// null) lets the final norm read only the rows whose logits are wanted.
extern "C" __global__ void sluice_rms_norm(
    const float* __restrict__ x, const int32_t* __restrict__ row_ids,
    const __nv_bfloat16* __restrict__ weight, __nv_bfloat16* __restrict__ out, int dim, float eps) {
    __shared__ float scratch[33];
    const int r = blockIdx.x;
    const long long src = row_ids ? row_ids[r] : r;
    norm_row(x + src * dim, weight, out + (long long)r * dim, dim, eps, scratch);
}

// residual[r] += delta[r]; out[r] = rmsnorm(residual[r]) * weight: the add
// after a sublayer and the norm before the next one, in one pass over the row.
extern "C" __global__ void sluice_add_rms_norm(
    float* __restrict__ residual, const __nv_bfloat16* __restrict__ delta,
    const __nv_bfloat16* __restrict__ weight, __nv_bfloat16* __restrict__ out, int dim, float eps) {
    __shared__ float scratch[33];
    const long long r = blockIdx.x;
    float* x = residual + r * dim;
    const __nv_bfloat16* d = delta + r * dim;
    // Each thread adds exactly the elements it later reads: no barrier needed.
    for (int i = threadIdx.x; i < dim; i += blockDim.x) x[i] += ld_bf16(d + i);
    norm_row(x, weight, out + r * dim, dim, eps, scratch);
}
