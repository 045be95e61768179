//! K-quant super-blocks (256 values), dequantised exactly as ggml's
//! `dequantize_row_q4_K` / `dequantize_row_q6_K` do.
//!
//! ```text
//! block_q4_K (144 bytes): d f16 | dmin f16 | scales[12] (8 six-bit scales + 8 six-bit mins) | qs[128]
//! block_q6_K (210 bytes): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] i8 | d f16
//! ```

use super::read_f16;

/// Scale and min of sub-block `j` (0..8) of a Q4_K block: ggml's
/// `get_scale_min_k4`. The first four pairs sit in the low six bits of bytes
/// 0..8; the last four are split between bytes 8..12 and the top two bits of
/// bytes 0..8.
#[inline(always)]
pub(crate) fn q4k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// One Q4_K block (`b.len() == 144`) into 256 values.
#[inline(always)]
pub(crate) fn dequantize_q4k_block(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b, 0);
    let dmin = read_f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    // Each 64-value chunk uses 32 bytes of qs: low nibbles are sub-block 2c,
    // high nibbles sub-block 2c+1.
    for (c, (o, q)) in out
        .chunks_exact_mut(64)
        .zip(qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = q4k_scale_min(2 * c, scales);
        let (sc2, m2) = q4k_scale_min(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = o.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// One Q6_K block (`b.len() == 210`) into 256 values.
#[inline(always)]
pub(crate) fn dequantize_q6k_block(b: &[u8], out: &mut [f32]) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let scales = &rest[..16];
    let d = read_f16(rest, 16);
    // Two halves of 128 values; within a half, value l + 32*s takes its low
    // nibble from ql (byte l or l+32, low or high nibble) and its top two bits
    // from qh[l] at bit 2s.
    for h in 0..2 {
        let ql = &ql[64 * h..64 * h + 64];
        let qh = &qh[32 * h..32 * h + 32];
        let sc = &scales[8 * h..8 * h + 8];
        let o = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// A Q4_K block written by hand: d = 0.5, dmin = 0.25, sub-block j has
    /// scale j+1 and min 2j (j >= 4 exercises the split high bits), and value
    /// i of sub-block j has quant (i + j) % 16.
    #[test]
    fn q4k_block_matches_hand_computed_values() {
        let (d, dmin) = (0.5f32, 0.25f32);
        let sc: Vec<u8> = (0..8).map(|j| j as u8 + 1).collect();
        let mn: Vec<u8> = (0..8).map(|j| 2 * j as u8 + 40).collect();
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
        }
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(dmin).to_le_bytes());
        block.extend_from_slice(&scales);
        let quant = |j: usize, i: usize| ((i + j) % 16) as u8;
        for c in 0..4 {
            for l in 0..32 {
                block.push(quant(2 * c, l) | (quant(2 * c + 1, l) << 4));
            }
        }
        assert_eq!(block.len(), 144);
        for j in 0..8 {
            assert_eq!(q4k_scale_min(j, &scales), (sc[j], mn[j]));
        }

        let mut out = vec![0.0; 256];
        dequantize_q4k_block(&block, &mut out);
        for j in 0..8 {
            for i in 0..32 {
                let want = d * sc[j] as f32 * quant(j, i) as f32 - dmin * mn[j] as f32;
                assert_eq!(out[32 * j + i], want, "sub-block {j} value {i}");
            }
        }
    }

    /// A Q6_K block written by hand: d = 0.125, scale s of 16-value group g is
    /// g - 8 (negative scales occur in real files), quant of value v is v % 64.
    #[test]
    fn q6k_block_matches_hand_computed_values() {
        let d = 0.125f32;
        let quant = |v: usize| (v % 64) as u8;
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for v in 0..256 {
            let (h, r) = (v / 128, v % 128);
            let (s, l) = (r / 32, r % 32);
            let q = quant(v);
            // s = 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high.
            let byte = 64 * h + l + if s % 2 == 1 { 32 } else { 0 };
            ql[byte] |= if s < 2 { q & 0x0f } else { (q & 0x0f) << 4 };
            qh[32 * h + l] |= (q >> 4) << (2 * s);
        }
        let scales: Vec<i8> = (0..16).map(|g| g as i8 - 8).collect();
        let mut block = Vec::new();
        block.extend_from_slice(&ql);
        block.extend_from_slice(&qh);
        block.extend(scales.iter().map(|&s| s as u8));
        block.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        assert_eq!(block.len(), 210);

        let mut out = vec![0.0; 256];
        dequantize_q6k_block(&block, &mut out);
        for (v, &got) in out.iter().enumerate() {
            let want = d * scales[v / 16] as f32 * (quant(v) as f32 - 32.0);
            assert_eq!(got, want, "value {v}");
        }
    }
}
