//! Pixel-wise cross-entropy that ignores unlabelled pixels.

use crate::kernels::Shared;
use crate::model::conv::with_f32;
use crate::model::exp_neg;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Mean cross-entropy of `logits` `(B, K, H, W)` against `labels`
/// (`B·H·W` class channel indices, row-major like the logits), as PyTorch's
/// `cross_entropy(logits, labels, weight=w, ignore_index=255)`:
///
/// ```text
/// loss = Σ_p w[y_p] · (−log softmax(z_p)[y_p]) / Σ_p w[y_p]
/// ```
///
/// over the pixels `p` whose label is not [`IGNORE`](crate::train::augment::IGNORE); `w` is all ones when
/// `weights` is `None`. Labels `>= K` are ignored too. When no pixel
/// counts, the loss is 0 (with a zero gradient).
///
/// On the CPU in f32 this is one op with its own backward pass
/// ([`CrossEntropyOp`]): composed from candle's ops, the loss and its
/// gradient took about a dozen passes over the logits each way, 5 % of a
/// ResNet-50 training step. Elsewhere it is composed: `log_softmax` and a
/// `gather` of the true class along the class axis, masked by the
/// per-pixel weights, differentiable on every backend.
pub fn cross_entropy(logits: &Tensor, labels: &[u8], weights: Option<&[f32]>) -> Result<Tensor> {
    cross_entropy_t(logits, labels, weights)?.to_dtype(DType::F32)
}

/// [`cross_entropy`] in the logits' dtype (f64 for the gradient checks).
pub(super) fn cross_entropy_t(
    logits: &Tensor,
    labels: &[u8],
    weights: Option<&[f32]>,
) -> Result<Tensor> {
    let (b, _, h, w) = logits.dims4()?;
    let (idx, wpx, total) = super::pixel_weights(logits, labels, weights)?;
    let dev = logits.device();
    if total <= 0.0 {
        return logits.sum_all()?.affine(0.0, 0.0);
    }
    if dev.is_cpu() && logits.dtype() == DType::F32 {
        let op = CrossEntropyOp {
            classes: Arc::new(idx),
            weights: Arc::new(wpx),
            total,
        };
        return logits.contiguous()?.apply_op1(op);
    }
    let idx = Tensor::from_vec(idx, (b, 1, h, w), dev)?;
    let wpx = Tensor::from_vec(wpx, (b, 1, h, w), dev)?.to_dtype(logits.dtype())?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = logp.gather(&idx, 1)?;
    let sum = (picked * wpx)?.sum_all()?;
    sum.affine(-1.0 / total, 0.0)
}

/// The fused loss on `(B, K, H, W)` f32 logits: per pixel its class and
/// weight (0 for pixels that do not count), and the sum of the weights.
///
/// Forward: per pixel `w · (logsumexp(z) − z[class])`, summed in f64 per
/// chunk of pixels and the chunks in order, so the result does not depend
/// on the thread count. Backward: `g · w / total · (softmax(z) − onehot)`.
/// A pixel with a non-finite logit makes the loss NaN (and its gradient),
/// as the composed version would.
#[derive(Debug, Clone)]
struct CrossEntropyOp {
    classes: Arc<Vec<u32>>,
    weights: Arc<Vec<f32>>,
    total: f64,
}

/// Pixels per unit of work.
const CE_CHUNK: usize = 1024;

impl CrossEntropyOp {
    /// `(sample, first pixel, end pixel)` of each unit, in order.
    fn units(b: usize, n: usize) -> Vec<(usize, usize, usize)> {
        (0..b)
            .flat_map(|i| {
                (0..n.div_ceil(CE_CHUNK))
                    .map(move |c| (i, c * CE_CHUNK, ((c + 1) * CE_CHUNK).min(n)))
            })
            .collect()
    }

    /// Per pixel of `z` (one sample, `k` planes of `n`) in `p0..p1`: the
    /// max, `Σ exp(z − max)`, and whether a logit is not finite.
    fn softmax_parts(z: &[f32], k: usize, n: usize, p0: usize, p1: usize) -> ChunkParts {
        let len = p1 - p0;
        let mut mx = z[p0..p1].to_vec();
        let mut bad = vec![false; len];
        for c in 0..k {
            for ((m, b), &v) in mx
                .iter_mut()
                .zip(bad.iter_mut())
                .zip(&z[c * n + p0..c * n + p1])
            {
                *m = m.max(v);
                *b |= !v.is_finite();
            }
        }
        let mut sum = vec![0f32; len];
        for c in 0..k {
            for ((s, &m), &v) in sum.iter_mut().zip(&mx).zip(&z[c * n + p0..c * n + p1]) {
                *s += exp_neg(v - m);
            }
        }
        ChunkParts { mx, sum, bad }
    }
}

struct ChunkParts {
    mx: Vec<f32>,
    sum: Vec<f32>,
    bad: Vec<bool>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "rstile-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, k, h, w) = l.shape().dims4()?;
        let n = h * w;
        let z = match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, e))) => &v[a..e],
            _ => candle_core::bail!("cross-entropy: contiguous f32 logits expected"),
        };
        let parts: Vec<f64> = Self::units(b, n)
            .into_par_iter()
            .map(|(i, p0, p1)| {
                let zs = &z[i * k * n..(i + 1) * k * n];
                let cp = Self::softmax_parts(zs, k, n, p0, p1);
                let mut acc = 0f64;
                for j in 0..p1 - p0 {
                    let p = i * n + p0 + j;
                    let wv = self.weights[p];
                    if cp.bad[j] {
                        return f64::NAN;
                    }
                    if wv != 0.0 {
                        let c = self.classes[p] as usize;
                        let lse = cp.mx[j] + cp.sum[j].ln();
                        acc += wv as f64 * (lse - zs[c * n + p0 + j]) as f64;
                    }
                }
                acc
            })
            .collect();
        let loss = (parts.iter().sum::<f64>() / self.total) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, k, h, w) = logits.dims4()?;
        let n = h * w;
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.total;
        let mut dz = vec![0f32; logits.elem_count()];
        let out = Shared(dz.as_mut_ptr());
        with_f32(&logits.contiguous()?, |z| {
            self.softmax_grad(z, (b, k, n), g, out);
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dz, (b, k, h, w), logits.device())?))
    }
}

impl CrossEntropyOp {
    /// Writes the gradient of the logits `z` through `out`, `g` being the
    /// incoming gradient over the total weight.
    fn softmax_grad(&self, z: &[f32], (b, k, n): (usize, usize, usize), g: f64, out: Shared) {
        Self::units(b, n).into_par_iter().for_each(|(i, p0, p1)| {
            let zs = &z[i * k * n..(i + 1) * k * n];
            let cp = Self::softmax_parts(zs, k, n, p0, p1);
            for c in 0..k {
                let at = i * k * n + c * n;
                // SAFETY: each unit writes its own pixels of each plane
                let d = unsafe { out.slice(at + p0..at + p1) };
                for (j, o) in d.iter_mut().enumerate() {
                    let p = i * n + p0 + j;
                    let scale = (g * self.weights[p] as f64) as f32;
                    let soft = if cp.bad[j] {
                        f32::NAN
                    } else {
                        exp_neg(zs[c * n + p0 + j] - cp.mx[j]) / cp.sum[j]
                    };
                    let hot = if self.classes[p] as usize == c {
                        1.0
                    } else {
                        0.0
                    };
                    *o = if scale == 0.0 && !cp.bad[j] {
                        0.0
                    } else {
                        scale * (soft - hot)
                    };
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::augment::IGNORE;
    use candle_core::Device;

    /// Two pixels of three classes, worked by hand.
    #[test]
    fn matches_hand_computation() {
        // logits (1, 3, 1, 3): pixel 0 = [1, 2, 3], pixel 1 = [0, 0, 0],
        // pixel 2 = [5, -1, 0] (ignored).
        let z = vec![1f32, 0.0, 5.0, 2.0, 0.0, -1.0, 3.0, 0.0, 0.0];
        let logits = Tensor::from_vec(z, (1, 3, 1, 3), &Device::Cpu).unwrap();
        let labels = [2u8, 0, IGNORE];
        // −log softmax([1,2,3])[2] = log(e + e² + e³) − 3
        let l0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
        let l1 = 3f64.ln(); // uniform over three classes
        let got = cross_entropy(&logits, &labels, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - (l0 + l1) / 2.0).abs() < 1e-6, "{got}");
        // Weighted: w = [0.5, 1, 2] → (2·l0 + 0.5·l1) / 2.5
        let got = cross_entropy(&logits, &labels, Some(&[0.5, 1.0, 2.0]))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - (2.0 * l0 + 0.5 * l1) / 2.5).abs() < 1e-6, "{got}");
        // All ignored: zero.
        let got = cross_entropy(&logits, &[IGNORE; 3], None).unwrap();
        assert_eq!(got.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// The fused CPU op (f32) against the composed candle ops (which f64
    /// logits take), value and gradient, with weights and ignored pixels.
    #[test]
    fn fused_op_matches_the_composed_ops() {
        let (b, k, h, w) = (2, 5, 7, 150);
        let n = b * k * h * w;
        let z: Vec<f64> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f64 / 100.0) - 5.0)
            .collect();
        let labels: Vec<u8> = (0..b * h * w)
            .map(|i| {
                if i % 11 == 0 {
                    IGNORE
                } else {
                    (i * 31 % k) as u8
                }
            })
            .collect();
        let wt = [0.5f32, 1.0, 2.0, 0.0, 1.5];
        let dev = Device::Cpu;
        let z64 = candle_core::Var::from_vec(z.clone(), (b, k, h, w), &dev).unwrap();
        let z32 = candle_core::Var::from_vec(
            z.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            (b, k, h, w),
            &dev,
        )
        .unwrap();
        let l64 = cross_entropy(z64.as_tensor(), &labels, Some(&wt)).unwrap();
        let l32 = cross_entropy(z32.as_tensor(), &labels, Some(&wt)).unwrap();
        let (a, c) = (
            l64.to_scalar::<f32>().unwrap(),
            l32.to_scalar::<f32>().unwrap(),
        );
        assert!((a - c).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {c}");
        let g64 = l64.backward().unwrap();
        let g32 = l32.backward().unwrap();
        let g64 = g64.get(z64.as_tensor()).unwrap().flatten_all().unwrap();
        let g64 = g64.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let g32 = g32.get(z32.as_tensor()).unwrap().flatten_all().unwrap();
        let g32 = g32.to_vec1::<f32>().unwrap();
        let worst = g64
            .iter()
            .zip(&g32)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = g64.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(
            worst < 1e-5 * scale,
            "gradient differs by {worst} (max {scale})"
        );
        // a non-finite logit makes the loss NaN, as the composed ops do
        let mut bad = z.iter().map(|v| *v as f32).collect::<Vec<_>>();
        bad[3] = f32::INFINITY;
        let bad = Tensor::from_vec(bad, (b, k, h, w), &dev).unwrap();
        let l = cross_entropy(&bad, &labels, Some(&wt)).unwrap();
        assert!(l.to_scalar::<f32>().unwrap().is_nan());
    }
}
