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
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    f32::from_bits(((k as i32 + 127) as u32) << 23) * p
}

/// In-place softmax over the channel axis of `[b][k][n]` data, with the
/// usual max subtraction.
pub fn softmax_channels(v: &mut [f32], b: usize, k: usize, n: usize) {
    let mut mx = vec![0f32; n];
    let mut sum = vec![0f32; n];
    for s in v.chunks_mut(k * n).take(b) {
        mx.copy_from_slice(&s[..n]);
        for c in 1..k {
            for (m, &x) in mx.iter_mut().zip(&s[c * n..(c + 1) * n]) {
                *m = m.max(x);
            }
        }
        sum.fill(0.0);
        for c in 0..k {
            for ((x, &m), acc) in s[c * n..(c + 1) * n]
                .iter_mut()
                .zip(&mx)
                .zip(sum.iter_mut())
            {
                *x = exp_neg(*x - m);
                *acc += *x;
            }
        }
        for c in 0..k {
            for (x, &t) in s[c * n..(c + 1) * n].iter_mut().zip(&sum) {
                *x /= t;
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
}
