// out[t][r] = Σ_c W[r][c] · x[t][c] for GGUF Q8_0 weights read as stored (34-byte
// blocks: f16 scale d, then 32 int8), bf16 activations, for the small
// batches (≤ SLUICE_GEMV_MAX_BATCH rows) of decode where reading 1 byte per
// weight instead of bf16's 2 halves the step's memory traffic.
// One warp per weight row: lane l takes blocks l, l + 32, ...; per block the
// 32 products are summed in order, scaled by d, added to the lane's total;
// then the warp butterfly. Twin: `cuda_twin::gemv_q8_0`.
#include <cuda_fp16.h>
#include "common.cuh"

#define Q8_0_BLOCK_BYTES 34

extern "C" __global__ void __launch_bounds__(SLUICE_GEMV_WARPS * SLUICE_WARP) sluice_gemv_q8_0(
    const uint8_t* __restrict__ w,          // [rows][cols / 32 blocks of 34 bytes]
    const __nv_bfloat16* __restrict__ x,    // [batch][cols]
    __nv_bfloat16* __restrict__ out,        // [batch][rows]
    int rows, int cols, int batch) {
    const int lane = threadIdx.x % SLUICE_WARP, warp = threadIdx.x / SLUICE_WARP;
    const int row = blockIdx.x * SLUICE_GEMV_WARPS + warp;
    if (row >= rows) return;  // whole warps leave: no barrier below
    const int blocks = cols / 32;
    const uint8_t* wr = w + (long long)row * blocks * Q8_0_BLOCK_BYTES;
    float total[SLUICE_GEMV_MAX_BATCH];
#pragma unroll
    for (int t = 0; t < SLUICE_GEMV_MAX_BATCH; t++) total[t] = 0.0f;
    for (int b = lane; b < blocks; b += SLUICE_WARP) {
        const uint8_t* blk = wr + (long long)b * Q8_0_BLOCK_BYTES;
        // Blocks start at even offsets: the scale and the quants are 2-byte aligned.
        const float d = __half2float(*reinterpret_cast<const __half*>(blk));
        const uint16_t* q2 = reinterpret_cast<const uint16_t*>(blk + 2);
        float partial[SLUICE_GEMV_MAX_BATCH];
#pragma unroll
        for (int t = 0; t < SLUICE_GEMV_MAX_BATCH; t++) partial[t] = 0.0f;
        for (int j2 = 0; j2 < 16; j2++) {
            const uint16_t pair = q2[j2];
            const float q0 = (float)(int8_t)(pair & 0xff), q1 = (float)(int8_t)(pair >> 8);
            const int c = b * 32 + 2 * j2;
#pragma unroll
            for (int t = 0; t < SLUICE_GEMV_MAX_BATCH; t++) {
                if (t < batch) {
                    partial[t] += q0 * ld_bf16(x + (long long)t * cols + c);
                    partial[t] += q1 * ld_bf16(x + (long long)t * cols + c + 1);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < SLUICE_GEMV_MAX_BATCH; t++) total[t] += d * partial[t];
    }
#pragma unroll
    for (int t = 0; t < SLUICE_GEMV_MAX_BATCH; t++) {
        if (t < batch) {
            const float sum = warp_sum(total[t]);
            if (lane == 0) out[(long long)t * rows + row] = to_bf16(sum);
        }
    }
}
