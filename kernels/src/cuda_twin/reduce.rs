//! The kernels' reductions, replayed: `warp_sum` and `block_sum` of
//! `kernels/cuda/common.cuh`, with their order of additions.

use super::WARP;

/// `__shfl_xor_sync` butterfly over 32 lanes: at step `o` lane `l` adds lane
/// `l ^ o`'s value. Every lane ends with the same sum; lane 0's is returned.
pub(crate) fn warp_sum(lanes: &[f32; WARP]) -> f32 {
    let mut v = *lanes;
    for offset in [16, 8, 4, 2, 1] {
        let prev = v;
        for (l, x) in v.iter_mut().enumerate() {
            *x = prev[l] + prev[l ^ offset];
        }
    }
    v[0]
}

/// `block_sum`: each warp's butterfly, then warp 0's butterfly over the
/// per-warp sums (lanes past the last warp hold 0). `threads` holds one
/// partial per thread, a multiple of 32 of them.
pub(crate) fn block_sum(threads: &[f32]) -> f32 {
    let mut warp_sums = [0.0f32; WARP];
    for (w, lanes) in threads.chunks_exact(WARP).enumerate() {
        let mut l = [0.0f32; WARP];
        l.copy_from_slice(lanes);
        warp_sums[w] = warp_sum(&l);
    }
    warp_sum(&warp_sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn butterfly_sums_every_lane_once() {
        let lanes: [f32; WARP] = std::array::from_fn(|i| i as f32);
        assert_eq!(warp_sum(&lanes), (0..32).sum::<i32>() as f32);
        let threads: Vec<f32> = (0..256).map(|i| i as f32).collect();
        assert_eq!(block_sum(&threads), (0..256).sum::<i32>() as f32);
    }
}
