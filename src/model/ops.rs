//! Host-side arithmetic on plain `f32` buffers: the fast `e^x` and the
//! channel softmax that [`super::Model::predict_probs`] and the training
//! loss run outside candle. The same operations in the same order whatever
//! the instruction set (no fused multiply-add: Rust never contracts), so
//! AVX-512, AVX2 and SSE2 agree bit for bit.

use crate::simd::multiversion;

/// `e^x` for `x <= 0`, branch-free so that the softmax loop vectorises:
/// Cody-Waite reduction `x = k ln2 + r`, a degree-6 polynomial for `e^r`
/// on `|r| <= ln2 / 2`, and `2^k` built in the exponent bits. Relative
/// error below 1e-6 (tested against `f32::exp`); underflows to 0 below -87.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // round to nearest by the 1.5·2²³ trick (|x·log2 e| < 2²²): `t`'s low
    // mantissa bits then hold the integer k itself, so neither `f32::round`
    // (a libm call below SSE4.1) nor a saturating `as i32` (scalar code,
    // lane by lane) stands in the way of vectorising
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // k in [-126, 0]: a normal power of two
    f32::from_bits((ki.wrapping_add(127) as u32) << 23) * p
}

/// In-place softmax over the channel axis of `[b][k][n]` data, with the
/// usual max subtraction. Pixels are independent, so blocks of them run
/// on rayon's threads (each pixel's arithmetic, and so its result, is the
/// same whatever the split), with AVX-512 or AVX2 where the CPU has it.
pub fn softmax_channels(v: &mut [f32], b: usize, k: usize, n: usize) {
    assert!(v.len() >= b * k * n, "softmax_channels: short buffer");
    if k == 0 || n == 0 {
        return;
    }
    let out = crate::kernels::Shared(v.as_mut_ptr());
    for_blocks(b, n, |i, p| {
        let mut planes: Vec<&mut [f32]> = (0..k)
            // SAFETY: the block owns pixels p of sample i in every channel,
            // disjoint from every other block's
            .map(|c| unsafe { out.slice(i * k * n + c * n + p.start..i * k * n + c * n + p.end) })
            .collect();
        // the block's logits, copied (in the cache) so that the kernel reads
        // one buffer and writes the other
        let logits: Vec<f32> = planes.iter().flat_map(|p| p.iter().copied()).collect();
        let from: Vec<&[f32]> = logits.chunks(p.len()).collect();
        softmax_block_to(&from, &mut planes);
    });
}

/// Pixels of softmax work per block: all channels of a block fit L1.
const BLOCK: usize = 1024;

/// Runs `f(sample, pixels)` for blocks of at most [`BLOCK`] pixels of each
/// of `b` samples of `n` pixels, on rayon's threads.
fn for_blocks(b: usize, n: usize, f: impl Fn(usize, std::ops::Range<usize>) + Sync) {
    use rayon::prelude::*;
    let blocks = n.div_ceil(BLOCK);
    (0..b * blocks).into_par_iter().for_each(|u| {
        let (i, j) = (u / blocks, u % blocks);
        f(i, j * BLOCK..((j + 1) * BLOCK).min(n))
    });
}

/// The channel softmax of one run of pixels: `src[c]` holds class `c`'s
/// logits, `dst[c]` gets its probabilities (all the same length). The same
/// operations per pixel as [`softmax_channels`], so the same bits: the
/// stitcher takes a window row's softmax with it where it blends, instead
/// of the model stage writing every window's probabilities out first.
pub fn softmax_run(src: &[&[f32]], dst: &mut [&mut [f32]]) {
    assert_eq!(src.len(), dst.len(), "softmax_run: one output per class");
    let len = src.first().map_or(0, |p| p.len());
    assert!(
        src.iter().all(|p| p.len() == len) && dst.iter().all(|p| p.len() == len),
        "softmax_run: runs of different lengths"
    );
    let mut at = 0;
    while at < len {
        let end = (at + BLOCK).min(len);
        let from: Vec<&[f32]> = src.iter().map(|p| &p[at..end]).collect();
        let mut to: Vec<&mut [f32]> = dst.iter_mut().map(|p| &mut p[at..end]).collect();
        softmax_block_to(&from, &mut to);
        at = end;
    }
}

multiversion! {
    /// The channel softmax of `src` (one slice per class, the same pixels,
    /// at most [`BLOCK`]) into `dst`: the max subtracted, `e^x`, one
    /// reciprocal of the sum per pixel.
    fn softmax_block_to(src: &[&[f32]], dst: &mut [&mut [f32]]) {
        let len = src[0].len();
        let mut mx = [0f32; BLOCK];
        let mut sum = [0f32; BLOCK];
        let (mx, sum) = (&mut mx[..len], &mut sum[..len]);
        mx.copy_from_slice(src[0]);
        for p in src.iter().skip(1) {
            for (m, &x) in mx.iter_mut().zip(p.iter()) {
                *m = m.max(x);
            }
        }
        for (p, d) in src.iter().zip(dst.iter_mut()) {
            for (((d, &x), &m), acc) in d.iter_mut().zip(p.iter()).zip(mx.iter()).zip(sum.iter_mut()) {
                *d = exp_neg(x - m);
                *acc += *d;
            }
        }
        // one division per pixel, not per class
        for t in sum.iter_mut() {
            *t = 1.0 / *t;
        }
        for d in dst.iter_mut() {
            for (d, &t) in d.iter_mut().zip(sum.iter()) {
                *d *= t;
            }
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
    fn softmax_of_runs_equals_softmax_channels() {
        let (k, n) = (4usize, 2500usize);
        let src: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let mut want = src.clone();
        softmax_channels(&mut want, 1, k, n);
        // runs of any length and offset: pixels 3..2403 (more than a block)
        let (a, b) = (3usize, 2403usize);
        let from: Vec<&[f32]> = (0..k).map(|c| &src[c * n + a..c * n + b]).collect();
        let mut got = vec![f32::NAN; k * (b - a)];
        let mut to: Vec<&mut [f32]> = got.chunks_mut(b - a).collect();
        softmax_run(&from, &mut to);
        for c in 0..k {
            let w: Vec<u32> = want[c * n + a..c * n + b]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let g: Vec<u32> = got[c * (b - a)..(c + 1) * (b - a)]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(w, g, "class {c}");
        }
    }
}
