//! Host-side arithmetic on plain `f32` buffers: the fast `e^x` and the
//! channel softmax that [`super::Model::predict_probs`] and the training
//! loss run outside candle.

/// `e^x` for `x <= 0`, branch-free so that the softmax loop vectorises:
/// Cody-Waite reduction `x = k ln2 + r`, a degree-6 polynomial for `e^r`
/// on `|r| <= ln2 / 2`, and `2^k` built in the exponent bits. Relative
/// error below 1e-6 (tested against `f32::exp`); underflows to 0 below -87.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // round to nearest by the 1.5·2²³ trick (|x·log2 e| < 2²²): unlike
    // `f32::round`, a libm call below SSE4.1, it vectorises
    const MAGIC: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    f32::from_bits(((k as i32 + 127) as u32) << 23) * p
}

/// In-place softmax over the channel axis of `[b][k][n]` data, with the
/// usual max subtraction. Pixels are independent, so blocks of them run
/// on rayon's threads (each pixel's arithmetic, and so its result, is the
/// same whatever the split), with AVX2 where the CPU has it.
pub fn softmax_channels(v: &mut [f32], b: usize, k: usize, n: usize) {
    assert!(v.len() >= b * k * n, "softmax_channels: short buffer");
    softmax_blocks(v, None, b, k, n);
}

/// [`softmax_channels`] of `src` into `dst` (both `[b][k][n]`): each block
/// of pixels is copied and then normalised while it is in the cache, so
/// the copy out of a model's output tensor and the softmax are one
/// parallel pass instead of a serial copy and a second pass. The same
/// arithmetic, so the same bits, as copying first and calling
/// `softmax_channels`.
pub fn softmax_channels_from(src: &[f32], dst: &mut [f32], b: usize, k: usize, n: usize) {
    assert!(
        src.len() >= b * k * n && dst.len() >= b * k * n,
        "softmax_channels_from: short buffer"
    );
    softmax_blocks(dst, Some(src), b, k, n);
}

/// The channel softmax of `dst` in blocks of pixels on rayon's threads,
/// each block first copied from `src` when given.
fn softmax_blocks(dst: &mut [f32], src: Option<&[f32]>, b: usize, k: usize, n: usize) {
    use rayon::prelude::*;
    const BLOCK: usize = 1024;
    if k == 0 || n == 0 {
        return;
    }
    let blocks = n.div_ceil(BLOCK);
    let out = crate::kernels::Shared(dst.as_mut_ptr());
    (0..b * blocks).into_par_iter().for_each(|u| {
        let (i, j) = (u / blocks, u % blocks);
        let (p0, p1) = (j * BLOCK, ((j + 1) * BLOCK).min(n));
        let mut planes: Vec<&mut [f32]> = (0..k)
            .map(|c| {
                let r = i * k * n + c * n + p0..i * k * n + c * n + p1;
                // SAFETY: block (i, j) owns pixels p0..p1 of sample i in
                // every channel: disjoint from every other block's
                let plane = unsafe { out.slice(r.clone()) };
                if let Some(src) = src {
                    plane.copy_from_slice(&src[r]);
                }
                plane
            })
            .collect();
        softmax_block(&mut planes);
    });
}

/// Softmax across `planes` (one slice per channel, the same pixels).
fn softmax_block(planes: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2
            return unsafe { softmax_block_avx2(planes) };
        }
    }
    softmax_block_generic(planes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_block_avx2(planes: &mut [&mut [f32]]) {
    softmax_block_generic(planes)
}

/// The same operations in the same order whatever the instruction set (no
/// fused multiply-add: Rust never contracts), so AVX2 and SSE2 agree bit
/// for bit.
#[inline(always)]
fn softmax_block_generic(planes: &mut [&mut [f32]]) {
    let len = planes[0].len();
    let mut mx = [0f32; 1024];
    let mut sum = [0f32; 1024];
    let (mx, sum) = (&mut mx[..len], &mut sum[..len]);
    mx.copy_from_slice(planes[0]);
    for p in planes.iter().skip(1) {
        for (m, &x) in mx.iter_mut().zip(p.iter()) {
            *m = m.max(x);
        }
    }
    for p in planes.iter_mut() {
        for ((x, &m), acc) in p.iter_mut().zip(mx.iter()).zip(sum.iter_mut()) {
            *x = exp_neg(*x - m);
            *acc += *x;
        }
    }
    for p in planes.iter_mut() {
        for (x, &t) in p.iter_mut().zip(sum.iter()) {
            *x /= t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (a, b) = (exp_neg(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "exp({x}): {a} vs {b}");
            x -= 0.0137;
        }
        assert!(exp_neg(-1000.0) < 1e-37 && exp_neg(-1000.0) >= 0.0);
    }

    #[test]
    fn softmax_from_a_source_equals_copy_then_softmax() {
        let (b, k, n) = (3usize, 5usize, 2500usize);
        let src: Vec<f32> = (0..b * k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let mut want = src.clone();
        softmax_channels(&mut want, b, k, n);
        let mut got = vec![f32::NAN; b * k * n];
        softmax_channels_from(&src, &mut got, b, k, n);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&want), bits(&got));
    }
}
