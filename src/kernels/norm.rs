//! Batch normalisation in training mode, fused with the residual add and
//! the ReLU that follow it in a ResNet, forward and backward.
//!
//! Composed from candle's element-wise ops, a training-mode batch norm is
//! about a dozen full passes over the activations forward and twice that
//! backward, each allocating its result; on a CPU that cost more than the
//! convolutions around it. Here the forward pass is two reads and one write
//! per value (statistics, then the normalised output) and the backward
//! pass two reads of each input and one write per gradient. Channels are
//! independent, so they are spread over the threads, and each channel's
//! sums are taken in a fixed order (in `f64`): results do not depend on the
//! thread count.
//!
//! Layout: NCHW, contiguous, `x[b][c][p]` with `plane = H·W`.

use super::Shared;
use rayon::prelude::*;

/// The dimensions of an NCHW activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    /// Height times width.
    pub plane: usize,
}

impl NormShape {
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// The `batch` blocks of channel `c`, as index ranges.
    fn blocks(&self, c: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.batch).map(move |b| {
            let at = (b * self.channels + c) * self.plane;
            at..at + self.plane
        })
    }
}

/// Statistics of one training-mode pass: per-channel batch mean and biased
/// variance (what normalised the batch; the running statistics take the
/// unbiased one).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Lanes of the partial sums: wide enough for the compiler to keep them in
/// vector registers, summed in a fixed order so results are reproducible.
const LANES: usize = 16;

/// `Σ (a_i - shift)` and `Σ (a_i - shift)²`, in f32 lanes, then f64.
fn centred_moments(a: &[f32], shift: f32) -> (f64, f64) {
    let (mut s, mut q) = ([0f32; LANES], [0f32; LANES]);
    let c = a.chunks_exact(LANES);
    let rest = c.remainder();
    for x in c {
        for l in 0..LANES {
            let v = x[l] - shift;
            s[l] += v;
            q[l] += v * v;
        }
    }
    let mut total = (0f64, 0f64);
    for l in 0..LANES {
        total.0 += s[l] as f64;
        total.1 += q[l] as f64;
    }
    for x in rest {
        let v = *x - shift;
        total.0 += v as f64;
        total.1 += (v * v) as f64;
    }
    total
}

/// `relu?((x - mean) / sqrt(var + eps) · gamma + beta + residual?)` with the
/// batch's own statistics, which are returned too.
pub fn batch_norm_train(
    s: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, BatchStats) {
    assert_eq!(x.len(), s.len(), "input length");
    assert!(gamma.len() == s.channels && beta.len() == s.channels);
    if let Some(r) = residual {
        assert_eq!(r.len(), s.len(), "residual length");
    }
    let n = s.count() as f64;
    let mut stats = Vec::new();
    // SAFETY: each channel writes all of its blocks
    let y = unsafe {
        super::filled(s.len(), |y| {
            let out = Shared(y);
            stats = (0..s.channels)
                .into_par_iter()
                .map(|c| {
                    // moments about the first value, then corrected: accurate in
                    // f32 lanes even when the mean is large against the spread
                    let pivot = x[(c * s.plane)..][0];
                    let (mut sum, mut sq) = (0f64, 0f64);
                    for r in s.blocks(c) {
                        let (a, b) = centred_moments(&x[r], pivot);
                        sum += a;
                        sq += b;
                    }
                    let d = sum / n;
                    let mean = pivot as f64 + d;
                    let var = (sq / n - d * d).max(0.0);
                    let scale = gamma[c] / (var as f32 + eps).sqrt();
                    let shift = beta[c] - mean as f32 * scale;
                    for r in s.blocks(c) {
                        // channel c owns its blocks of the output; one pass each
                        let dst = out.at(r.start);
                        let xs = &x[r.clone()];
                        match residual {
                            Some(res) => {
                                for (i, (&v, &rv)) in xs.iter().zip(&res[r]).enumerate() {
                                    let y = v * scale + shift + rv;
                                    // inside the channel's block (see the SAFETY note above)
                                    dst.add(i).write(if relu { y.max(0.0) } else { y });
                                }
                            }
                            None => {
                                for (i, &v) in xs.iter().enumerate() {
                                    let y = v * scale + shift;
                                    dst.add(i).write(if relu { y.max(0.0) } else { y });
                                }
                            }
                        }
                    }
                    (mean as f32, var as f32)
                })
                .collect();
        })
    };
    let (mean, var) = stats.into_iter().unzip();
    (y, BatchStats { mean, var })
}

/// Gradients of [`batch_norm_train`].
#[derive(Debug, Clone)]
pub struct BatchNormGrads {
    pub input: Vec<f32>,
    /// The gradient that reaches the residual (and the pre-ReLU sum);
    /// present when asked for.
    pub residual: Option<Vec<f32>>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// Backward pass of [`batch_norm_train`]: `y` is its output, `dy` the
/// gradient arriving at it.
///
/// The ReLU's mask is where the output is positive. Without a residual it
/// is recomputed from `x` with the forward pass's own arithmetic (the same
/// `scale` and `shift`, hence the same bits), so `y` is not read; with one,
/// it is read from `y`, and the masked gradient is written once, to the
/// residual's gradient, which the second pass then reads back. That makes
/// five passes over memory per value without a residual and seven with
/// one.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_backward(
    s: &NormShape,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &BatchStats,
    eps: f32,
    relu: bool,
    want_residual: bool,
) -> BatchNormGrads {
    assert!(x.len() == s.len() && y.len() == s.len() && dy.len() == s.len());
    assert!(gamma.len() == s.channels && beta.len() == s.channels);
    // written in full below before they are read (no zeroing pass)
    let mut dx = Vec::<f32>::with_capacity(s.len());
    let mut dr = Vec::<f32>::with_capacity(if want_residual { s.len() } else { 0 });
    let (dxp, drp) = (Shared(dx.as_mut_ptr()), Shared(dr.as_mut_ptr()));
    let n = s.count() as f64;
    let sums: Vec<(f32, f32)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = stats.mean[c];
            let inv = 1.0 / (stats.var[c] + eps).sqrt();
            // as in the forward pass
            let scale = gamma[c] / (stats.var[c] + eps).sqrt();
            let shift = beta[c] - mean * scale;
            // the gradient below the ReLU, from the mask of the output
            let below = |d: f32, xv: f32| {
                if relu && xv * scale + shift <= 0.0 {
                    0.0
                } else {
                    d
                }
            };
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for r in s.blocks(c) {
                let (a, b) = if want_residual {
                    let g = drp.at(r.start);
                    for (i, (&d, &yv)) in dy[r.clone()].iter().zip(&y[r.clone()]).enumerate() {
                        // SAFETY: channel c owns its blocks of dr
                        unsafe { g.add(i).write(if relu && yv <= 0.0 { 0.0 } else { d }) };
                    }
                    // SAFETY: just written, by this channel only
                    let g = unsafe { drp.slice(r.clone()) };
                    masked_sums(g, &x[r], mean, |d, _| d)
                } else {
                    masked_sums(&dy[r.clone()], &x[r], mean, below)
                };
                sum_g += a;
                sum_gx += b * inv as f64;
            }
            let (mg, mgx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
            let k = gamma[c] * inv;
            for r in s.blocks(c) {
                let dst = dxp.at(r.start);
                let out = |g: f32, xv: f32| k * (g - mg - (xv - mean) * inv * mgx);
                if want_residual {
                    // SAFETY: written above, by this channel only
                    let g = unsafe { drp.slice(r.clone()) };
                    for (i, (&g, &xv)) in g.iter().zip(&x[r]).enumerate() {
                        // SAFETY: channel c owns its blocks of dx
                        unsafe { dst.add(i).write(out(g, xv)) };
                    }
                } else {
                    for (i, (&d, &xv)) in dy[r.clone()].iter().zip(&x[r]).enumerate() {
                        // SAFETY: as above
                        unsafe { dst.add(i).write(out(below(d, xv), xv)) };
                    }
                }
            }
            (sum_gx as f32, sum_g as f32)
        })
        .collect();
    // SAFETY: every channel wrote all of its blocks of dx (and of dr)
    unsafe {
        dx.set_len(s.len());
        if want_residual {
            dr.set_len(s.len());
        }
    }
    let (dgamma, dbeta) = sums.into_iter().unzip();
    BatchNormGrads {
        input: dx,
        residual: want_residual.then_some(dr),
        gamma: dgamma,
        beta: dbeta,
    }
}

/// `(Σ g_i, Σ g_i·(x_i - mean))` with `g_i = mask(d_i, x_i)`, in f32 lanes,
/// then f64.
fn masked_sums(d: &[f32], x: &[f32], mean: f32, mask: impl Fn(f32, f32) -> f32) -> (f64, f64) {
    let (mut s, mut p) = ([0f32; LANES], [0f32; LANES]);
    let (cd, cx) = (d.chunks_exact(LANES), x.chunks_exact(LANES));
    let (rd, rx) = (cd.remainder(), cx.remainder());
    for (a, b) in cd.zip(cx) {
        for l in 0..LANES {
            let g = mask(a[l], b[l]);
            s[l] += g;
            p[l] += g * (b[l] - mean);
        }
    }
    let mut total = (0f64, 0f64);
    for l in 0..LANES {
        total.0 += s[l] as f64;
        total.1 += p[l] as f64;
    }
    for (a, b) in rd.iter().zip(rx) {
        let g = mask(*a, *b);
        total.0 += g as f64;
        total.1 += (g * (*b - mean)) as f64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_channel_over_batch_and_plane() {
        let s = NormShape {
            batch: 2,
            channels: 2,
            plane: 2,
        };
        // channel 0: 1, 3, 5, 7; channel 1: constant 4
        let x = [1.0, 3.0, 4.0, 4.0, 5.0, 7.0, 4.0, 4.0];
        let (y, st) = batch_norm_train(&s, &x, &[1.0, 2.0], &[0.0, 1.0], 0.0, None, false);
        assert_eq!(st.mean, vec![4.0, 4.0]);
        assert_eq!(
            st.var,
            vec![5.0, 0.0]
                .into_iter()
                .map(|v| v as f32)
                .collect::<Vec<_>>()
        );
        let k = 1.0 / 5f32.sqrt();
        let want = [-3.0 * k, -k, 1.0, 1.0, k, 3.0 * k, 1.0, 1.0];
        for (a, b) in y.iter().zip(want) {
            // channel 1 has zero variance and eps 0: 0/0 would be NaN, so
            // only channel 0 is compared exactly
            if b != 1.0 {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
    }

    /// Finite differences of `<relu?(bn(x) + r?), g>` against the analytic
    /// gradients, in f64 arithmetic on small values, with and without the
    /// residual and the ReLU (the mask comes from `y` with a residual and
    /// from `x` without).
    #[test]
    fn backward_matches_finite_differences() {
        let s = NormShape {
            batch: 2,
            channels: 3,
            plane: 5,
        };
        let v = |n: usize, k: u64| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u64 * 2654435761 + k) % 1000) as f32 / 500.0) - 1.0)
                .collect()
        };
        let (x, r, g) = (v(s.len(), 1), v(s.len(), 2), v(s.len(), 3));
        let (gamma, beta) = (vec![0.5, 1.5, -1.0], vec![0.1, -0.2, 0.3]);
        let eps = 1e-3;
        for (with_res, relu) in [(true, true), (false, true), (false, false), (true, false)] {
            let f = |x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
                let r = with_res.then_some(r);
                let (y, _) = batch_norm_train(&s, x, gamma, beta, eps, r, relu);
                y.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let res = with_res.then_some(&r[..]);
            let (y, st) = batch_norm_train(&s, &x, &gamma, &beta, eps, res, relu);
            let gr =
                batch_norm_train_backward(&s, &x, &y, &g, &gamma, &beta, &st, eps, relu, with_res);
            assert_eq!(gr.residual.is_some(), with_res);
            let h = 1e-2f32;
            let check = |analytic: f32, plus: f64, minus: f64, what: &str| {
                let num = (plus - minus) / (2.0 * h as f64);
                assert!(
                    (num - analytic as f64).abs() < 2e-2 * (1.0 + num.abs()),
                    "{what} (residual {with_res}, relu {relu}): numeric {num}, analytic {analytic}"
                );
            };
            for i in [0, 7, 13, 29] {
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += h;
                b[i] -= h;
                check(
                    gr.input[i],
                    f(&a, &r, &gamma, &beta),
                    f(&b, &r, &gamma, &beta),
                    "x",
                );
                if let Some(dr) = &gr.residual {
                    let (mut a, mut b) = (r.clone(), r.clone());
                    a[i] += h;
                    b[i] -= h;
                    check(
                        dr[i],
                        f(&x, &a, &gamma, &beta),
                        f(&x, &b, &gamma, &beta),
                        "r",
                    );
                }
            }
            for c in 0..3 {
                let (mut a, mut b) = (gamma.clone(), gamma.clone());
                a[c] += h;
                b[c] -= h;
                check(
                    gr.gamma[c],
                    f(&x, &r, &a, &beta),
                    f(&x, &r, &b, &beta),
                    "gamma",
                );
                let (mut a, mut b) = (beta.clone(), beta.clone());
                a[c] += h;
                b[c] -= h;
                check(
                    gr.beta[c],
                    f(&x, &r, &gamma, &a),
                    f(&x, &r, &gamma, &b),
                    "beta",
                );
            }
        }
    }
}
