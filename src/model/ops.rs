//! Host-side arithmetic on plain `f32` buffers: the fast `e^x` and the
//! channel softmax that [`super::Model::predict_probs`] and the training
//! loss run outside candle. The same operations in the same order whatever
//! the instruction set (no fused multiply-add: Rust never contracts), so
//! AVX-512, AVX2 and SSE2 agree bit for bit.

use crate::simd::multiversion;
use std::mem::MaybeUninit;

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
        softmax_block(&mut planes);
    });
}

/// [`softmax_channels`] of `src` (`[b][k][n]`) into a new vector, and
/// whether every value of `src` was finite: each block of pixels is read,
/// checked and normalised into the vector while it is in the cache, so the
/// copy out of a model's output tensor, the check of the logits and the
/// softmax are one parallel pass, and the vector is never zeroed first. The
/// same arithmetic, so the same bits, as copying first and calling
/// `softmax_channels`.
pub fn softmax_channels_from(src: &[f32], b: usize, k: usize, n: usize) -> (Vec<f32>, bool) {
    let len = b * k * n;
    assert!(src.len() >= len, "softmax_channels_from: short buffer");
    let mut v = Vec::<f32>::with_capacity(len);
    if k == 0 || n == 0 {
        return (v, true);
    }
    let finite = std::sync::atomic::AtomicBool::new(true);
    let out = SharedUninit(v.spare_capacity_mut().as_mut_ptr());
    for_blocks(b, n, |i, p| {
        let at = |c: usize| i * k * n + c * n + p.start..i * k * n + c * n + p.end;
        let from: Vec<&[f32]> = (0..k).map(|c| &src[at(c)]).collect();
        let mut to: Vec<&mut [MaybeUninit<f32>]> = (0..k)
            // SAFETY: the block owns pixels p of sample i in every channel,
            // disjoint from every other block's, inside the capacity
            .map(|c| unsafe { out.slice(at(c)) })
            .collect();
        if !softmax_block_from(&from, &mut to) {
            finite.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // SAFETY: the blocks cover every pixel of every sample in every channel,
    // and `softmax_block_from` writes each value of its block
    unsafe { v.set_len(len) };
    (v, finite.into_inner())
}

/// A pointer into a vector's spare capacity that blocks on several threads
/// write disjoint parts of.
struct SharedUninit(*mut MaybeUninit<f32>);
// SAFETY: the users write disjoint ranges
unsafe impl Send for SharedUninit {}
unsafe impl Sync for SharedUninit {}

impl SharedUninit {
    /// # Safety
    /// `r` must lie inside the allocation, and no two live slices overlap.
    unsafe fn slice<'a>(&self, r: std::ops::Range<usize>) -> &'a mut [MaybeUninit<f32>] {
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.len())
    }
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

multiversion! {
    /// Softmax across `planes` (one slice per channel, the same pixels), in
    /// place.
    fn softmax_block(planes: &mut [&mut [f32]]) {
        let len = planes[0].len();
        let mut mx = [0f32; BLOCK];
        let mut sum = [0f32; BLOCK];
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
        // one division per pixel, not per class
        for t in sum.iter_mut() {
            *t = 1.0 / *t;
        }
        for p in planes.iter_mut() {
            for (x, &t) in p.iter_mut().zip(sum.iter()) {
                *x *= t;
            }
        }
    }
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
    /// [`softmax_block`] of `src` into `dst`, both initialised.
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

multiversion! {
    /// [`softmax_block`] of `src` into `dst`, with the same operations in
    /// the same order; and whether every value of `src` is finite.
    fn softmax_block_from(src: &[&[f32]], dst: &mut [&mut [MaybeUninit<f32>]]) -> bool {
        let len = src[0].len();
        let mut mx = [0f32; BLOCK];
        let mut sum = [0f32; BLOCK];
        let (mx, sum) = (&mut mx[..len], &mut sum[..len]);
        let bad = src
            .iter()
            .fold(false, |bad, p| p.iter().fold(bad, |bad, v| bad | !v.is_finite()));
        mx.copy_from_slice(src[0]);
        for p in src.iter().skip(1) {
            for (m, &x) in mx.iter_mut().zip(p.iter()) {
                *m = m.max(x);
            }
        }
        for (p, d) in src.iter().zip(dst.iter_mut()) {
            for (((d, &x), &m), acc) in d.iter_mut().zip(p.iter()).zip(mx.iter()).zip(sum.iter_mut()) {
                let e = exp_neg(x - m);
                d.write(e);
                *acc += e;
            }
        }
        for t in sum.iter_mut() {
            *t = 1.0 / *t;
        }
        for d in dst.iter_mut() {
            for (d, &t) in d.iter_mut().zip(sum.iter()) {
                // SAFETY: written in the loop above
                let v = unsafe { d.assume_init() } * t;
                d.write(v);
            }
        }
        !bad
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

    #[test]
    fn softmax_from_a_source_equals_copy_then_softmax() {
        let (b, k, n) = (3usize, 5usize, 2500usize);
        let src: Vec<f32> = (0..b * k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let mut want = src.clone();
        softmax_channels(&mut want, b, k, n);
        let (got, finite) = softmax_channels_from(&src, b, k, n);
        assert!(finite);
        // a value that is not finite, in any block, clears the flag
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut src = src.clone();
            src[b * k * n - 7] = bad;
            assert!(!softmax_channels_from(&src, b, k, n).1, "{bad}");
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&want), bits(&got));
    }
}
