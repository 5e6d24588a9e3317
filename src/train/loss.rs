//! Pixel-wise cross-entropy that ignores unlabelled pixels.

use crate::augment::IGNORE;
use candle_core::{DType, Result, Tensor};

/// Mean cross-entropy of `logits` `(B, K, H, W)` against `labels`
/// (`B·H·W` class channel indices, row-major like the logits), as PyTorch's
/// `cross_entropy(logits, labels, weight=w, ignore_index=255)`:
///
/// ```text
/// loss = Σ_p w[y_p] · (−log softmax(z_p)[y_p]) / Σ_p w[y_p]
/// ```
///
/// over the pixels `p` whose label is not [`IGNORE`]; `w` is all ones when
/// `weights` is `None`. Labels `>= K` are ignored too. When no pixel
/// counts, the loss is 0 (with a zero gradient).
///
/// Computed as `log_softmax` and a `gather` of the true class along the
/// class axis, masked by the per-pixel weights: differentiable on every
/// backend, and no one-hot tensor of the logits' size is built.
pub fn cross_entropy(logits: &Tensor, labels: &[u8], weights: Option<&[f32]>) -> Result<Tensor> {
    let (b, k, h, w) = logits.dims4()?;
    if labels.len() != b * h * w {
        candle_core::bail!(
            "{} labels for logits of shape {:?}",
            labels.len(),
            logits.dims()
        );
    }
    if let Some(wt) = weights {
        if wt.len() != k {
            candle_core::bail!("{} class weights for {k} classes", wt.len());
        }
    }
    let mut idx = Vec::with_capacity(labels.len());
    let mut wpx = Vec::with_capacity(labels.len());
    let mut total = 0f64;
    for &l in labels {
        if l != IGNORE && (l as usize) < k {
            let wv = weights.map_or(1.0, |wt| wt[l as usize]);
            idx.push(l as u32);
            wpx.push(wv);
            total += wv as f64;
        } else {
            idx.push(0);
            wpx.push(0.0);
        }
    }
    let dev = logits.device();
    if total <= 0.0 {
        return logits.sum_all()?.affine(0.0, 0.0);
    }
    let idx = Tensor::from_vec(idx, (b, 1, h, w), dev)?;
    let wpx = Tensor::from_vec(wpx, (b, 1, h, w), dev)?.to_dtype(logits.dtype())?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = logp.gather(&idx, 1)?;
    let sum = (picked * wpx)?.sum_all()?;
    sum.affine(-1.0 / total, 0.0)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
