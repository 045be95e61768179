// The KV cache's element types, as the kernels that write and read paged KV
// see them: a storage type T, and how an f32 is stored and read back. fp8
// e4m3 has a scale per tensor (vLLM's fp8 KV cache): stored = fp8(x / scale)
// with round-to-nearest-even and saturation to +-448 (NaN kept), read =
// float(stored) * scale. bf16 and f16 ignore the scale, so the bf16 variant
// computes exactly what the kernels computed before there were variants.
// Twin: `cuda_twin::kv_elem` (the same conversions, bit for bit).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

struct KvBf16 {
    typedef __nv_bfloat16 T;
    static __device__ __forceinline__ float load(T v, float) { return __bfloat162float(v); }
    static __device__ __forceinline__ T store(float v, float) { return __float2bfloat16_rn(v); }
};

struct KvF16 {
    typedef __half T;
    static __device__ __forceinline__ float load(T v, float) { return __half2float(v); }
    static __device__ __forceinline__ T store(float v, float) { return __float2half_rn(v); }
};

struct KvFp8E4m3 {
    typedef __nv_fp8_e4m3 T;
    static __device__ __forceinline__ float load(T v, float scale) { return float(v) * scale; }
    // __nv_fp8_e4m3(float) converts with __NV_SATFINITE, round to nearest even.
    static __device__ __forceinline__ T store(float v, float scale) { return T(v / scale); }
};
