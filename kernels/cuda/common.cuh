// Helpers shared by the kernels: bf16 loads, and warp/block sums whose order
// of additions is fixed (the CPU twins replay it: `cuda_twin::reduce`).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>
#include "launch.cuh"

__device__ __forceinline__ float ld_bf16(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float v) { return __float2bfloat16_rn(v); }

// XOR butterfly: after it every lane holds the same sum (a + b == b + a).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block: each warp's butterfly, then warp 0 butterflies the
// per-warp sums (missing warps count as 0). Every thread gets the result.
// `scratch` holds at least 33 floats; blockDim.x is a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % SLUICE_WARP, warp = threadIdx.x / SLUICE_WARP;
    const int warps = blockDim.x / SLUICE_WARP;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? scratch[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    float total = scratch[32];
    __syncthreads();  // scratch may be reused at once
    return total;
}
