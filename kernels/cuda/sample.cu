// On-device sampling: one block per logits row picks the next token, so
// only the chosen ids leave the device. Semantics are the CPU sampler's
// (runtime/src/sampler.rs, step 3): greedy argmax (lowest id on ties) when
// temperature < 1e-5 or NaN; else weights exp((l - max) / T), top-k, top-p
// (smallest run of best tokens whose weight reaches p of the total), min-p
// relative to the best token, and one draw with the row's given uniform
// number, walking candidates best first (index order when nothing truncates).
// Penalties, logit bias, grammar masks and logprobs are applied before this
// kernel or on the host.
//
// Returns -1 for a row the device cannot sample exactly as the CPU would:
// top_k above SLUICE_SAMPLE_MAX_CANDIDATES, or a top-p nucleus that is not
// reached within the best SLUICE_SAMPLE_MAX_CANDIDATES tokens. The host then
// samples that row from its logits.
//
// Thread t owns the contiguous vocabulary run [t*chunk, (t+1)*chunk); sums
// are in f64, per thread in index order, then over threads in thread order
// by thread 0. Twin: `cuda_twin::sample`.
#include "common.cuh"

// Mirrors `cuda_twin::sample::RowSampling` (#[repr(C)]).
struct RowSampling {
    float temperature;
    float top_p;
    float min_p;
    float uniform;  // in [0, 1)
    int top_k;      // 0 = off
};

#define T SLUICE_SAMPLE_THREADS
#define MAXC SLUICE_SAMPLE_MAX_CANDIDATES

// NaN never wins, +inf is merely very large: the CPU sampler's cleaning.
__device__ __forceinline__ float clean(float l) {
    if (isnan(l)) return -INFINITY;
    if (l == INFINITY) return 3.402823466e38f;
    return l;
}

// Larger key = better token: logit descending (total order, -0 < +0), then id ascending.
__device__ __forceinline__ unsigned long long sort_key(float l, int i) {
    unsigned int bits = __float_as_uint(l);
    bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return ((unsigned long long)bits << 32) | (unsigned long long)(0xFFFFFFFFu - (unsigned int)i);
}

__device__ __forceinline__ int key_id(unsigned long long key) {
    return (int)(0xFFFFFFFFu - (unsigned int)(key & 0xFFFFFFFFull));
}

// a better than b: larger value, then lower index.
__device__ __forceinline__ bool better(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

extern "C" __global__ void __launch_bounds__(T) sluice_sample(
    const float* __restrict__ logits,            // [rows][vocab]
    const RowSampling* __restrict__ params,      // [rows]
    int32_t* __restrict__ out_ids,               // [rows]
    int vocab) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    __shared__ double s_sum[T];
    __shared__ unsigned long long s_keys[MAXC];
    __shared__ float s_w[MAXC];
    __shared__ int s_hist[256];
    __shared__ unsigned long long s_prefix;
    __shared__ int s_remaining, s_count;

    const int row = blockIdx.x, tid = threadIdx.x;
    const int lane = tid % SLUICE_WARP, warp = tid / SLUICE_WARP;
    const float* lg = logits + (long long)row * vocab;
    const int chunk = (vocab + T - 1) / T;
    const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);

    // 1. Argmax, lowest id on ties; an empty run offers (-inf, INT_MAX).
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = begin; i < end; i++) {
        const float v = clean(lg[i]);
        if (bi == 0x7fffffff || v > bv) { bv = v; bi = i; }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, offset);
        if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { s_val[warp] = bv; s_idx[warp] = bi; }
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < T / SLUICE_WARP; w++)
            if (better(s_val[w], s_idx[w], bv, bi)) { bv = s_val[w]; bi = s_idx[w]; }
        s_val[0] = bv;
        s_idx[0] = bi;
    }
    __syncthreads();
    const float max = s_val[0];
    const int best = s_idx[0];

    const RowSampling p = params[row];
    const bool greedy = isnan(p.temperature) || p.temperature < 1e-5f;
    if (greedy || max == -INFINITY) {  // all -inf: the CPU falls back to argmax too
        if (tid == 0) out_ids[row] = best;
        return;
    }
    const float inv_t = 1.0f / p.temperature;
    const float min_p = fmaxf(p.min_p, 0.0f);
    const bool top_k_on = p.top_k > 0 && p.top_k < vocab;
    const bool top_p_on = p.top_p < 1.0f;
    const double u = (double)p.uniform;
#define WEIGHT(l) expf(((l) - max) * inv_t)

    if (!top_k_on && !top_p_on) {
        // 2a. Every token, in index order, min-p zeroing the small ones.
        double sum = 0.0;
        for (int i = begin; i < end; i++) {
            float w = WEIGHT(clean(lg[i]));
            if (w < min_p) w = 0.0f;
            sum += (double)w;
        }
        s_sum[tid] = sum;
        __syncthreads();
        if (tid != 0) return;
        double total = 0.0;
        for (int t = 0; t < T; t++) total += s_sum[t];
        if (isnan(total) || total <= 0.0) { out_ids[row] = best; return; }
        const double target = u * total;
        // First run whose end passes the target, then walk from its start.
        double cum = 0.0;
        int c = 0;
        while (c < T && target >= cum + s_sum[c]) { cum += s_sum[c]; c++; }
        int last = -1;
        if (c == T) {  // rounding left the target past the end: the last weighted token wins
            for (int i = vocab - 1; i >= 0 && last < 0; i--) {
                float w = WEIGHT(clean(lg[i]));
                if (w < min_p) w = 0.0f;
                if (w > 0.0f) last = i;
            }
            out_ids[row] = last < 0 ? best : last;
            return;
        }
        for (int i = min(vocab, c * chunk); i < vocab; i++) {
            float w = WEIGHT(clean(lg[i]));
            if (w < min_p) w = 0.0f;
            if (w <= 0.0f) continue;
            cum += (double)w;
            last = i;
            if (target < cum) break;
        }
        out_ids[row] = last < 0 ? best : last;
        return;
    }

    // 2b. The best `want` tokens: radix select of the want-th largest key, 8 bits a pass.
    if (top_k_on && p.top_k > MAXC) {
        if (tid == 0) out_ids[row] = -1;
        return;
    }
    const int want = top_k_on ? p.top_k : min(MAXC, vocab);
    if (tid == 0) { s_prefix = 0ull; s_remaining = want; s_count = 0; }
    for (int pass = 0; pass < 8; pass++) {
        const int shift = 56 - 8 * pass;
        for (int b = tid; b < 256; b += T) s_hist[b] = 0;
        __syncthreads();
        const unsigned long long prefix = s_prefix;
        for (int i = begin; i < end; i++) {
            const unsigned long long key = sort_key(clean(lg[i]), i);
            if (pass == 0 || ((key ^ prefix) >> (shift + 8)) == 0ull)
                atomicAdd(&s_hist[(key >> shift) & 255ull], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int remaining = s_remaining;
            for (int b = 255; b >= 0; b--) {
                if (s_hist[b] >= remaining) { s_prefix = prefix | ((unsigned long long)b << shift); break; }
                remaining -= s_hist[b];
            }
            s_remaining = remaining;
        }
        __syncthreads();
    }
    const unsigned long long kth = s_prefix;  // keys are unique: exactly `want` are >= kth
    for (int j = tid; j < MAXC; j += T) s_keys[j] = 0ull;  // 0 sorts after every real key
    __syncthreads();
    for (int i = begin; i < end; i++) {
        const unsigned long long key = sort_key(clean(lg[i]), i);
        if (key >= kth) s_keys[atomicAdd(&s_count, 1)] = key;
    }
    // Total weight of the whole vocabulary, for top-p without top-k.
    double sum = 0.0;
    if (top_p_on && !top_k_on)
        for (int i = begin; i < end; i++) sum += (double)WEIGHT(clean(lg[i]));
    s_sum[tid] = sum;
    __syncthreads();
    // Bitonic sort of the candidates, best first.
    for (int size = 2; size <= MAXC; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int j = tid; j < MAXC; j += T) {
                const int partner = j ^ stride;
                if (partner > j) {
                    const bool descending = (j & size) == 0;
                    const unsigned long long a = s_keys[j], b = s_keys[partner];
                    if ((a < b) == descending) { s_keys[j] = b; s_keys[partner] = a; }
                }
            }
            __syncthreads();
        }
    }
    // Each candidate's weight once, in parallel: the walks below are one
    // thread's (their order of additions is the CPU's), so they should
    // read shared memory, not scattered logits.
    for (int j = tid; j < want; j += T) s_w[j] = WEIGHT(clean(lg[key_id(s_keys[j])]));
    __syncthreads();
    if (tid != 0) return;

    int keep = want;
    if (top_p_on) {
        double total = 0.0;
        if (top_k_on) {
            for (int j = 0; j < want; j++) total += (double)s_w[j];
        } else {
            for (int t = 0; t < T; t++) total += s_sum[t];
        }
        const double target = (double)p.top_p * total;
        double cum = 0.0;
        for (int j = 0; j < want; j++) {
            cum += (double)s_w[j];
            if (cum >= target) { keep = j + 1; break; }
        }
        // Not reached inside the best MAXC: the CPU would look further.
        if (!top_k_on && keep == want && want < vocab) { out_ids[row] = -1; return; }
    }
    double total = 0.0;
    for (int j = 0; j < keep; j++) {
        const float w = s_w[j];
        if (w >= min_p) total += (double)w;
    }
    if (isnan(total) || total <= 0.0) { out_ids[row] = best; return; }
    const double target = u * total;
    double cum = 0.0;
    int last = best;
    for (int j = 0; j < keep; j++) {
        const int id = key_id(s_keys[j]);
        const float w = s_w[j];
        if (w < min_p || w <= 0.0f) continue;
        cum += (double)w;
        last = id;
        if (target < cum) break;
    }
    out_ids[row] = last;
}
