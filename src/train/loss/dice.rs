//! Soft Dice loss.

use super::{labelled, labelled_probs, one_hot, zero};
use candle_core::{Result, Tensor};

/// Keeps the Dice ratio finite when a class has no probability mass and
/// no pixel (smp's default `eps`).
const EPS: f64 = 1e-7;

/// Soft Dice loss of `logits` `(B, K, H, W)` against `labels`, as
/// segmentation_models_pytorch's `DiceLoss(mode="multiclass",
/// from_logits=True, ignore_index=255)` (smooth 0, eps 1e-7), over the
/// whole batch:
///
/// ```text
/// dice_c = 2 Σ_p s_pc y_pc / max(Σ_p s_pc + Σ_p y_pc, eps)
/// loss   = Σ_c w_c · [c in the labels] · (1 − dice_c) / Σ_c w_c
/// ```
///
/// with `s` the softmax and `y` the one-hot labels over the labelled pixels
/// `p`, and `w` all ones when `weights` is `None` (then this is smp's value
/// exactly: classes absent from the batch's labels count as 0 and are still
/// in the mean). The result is in the logits' dtype; 0 when no pixel is
/// labelled.
pub fn dice(logits: &Tensor, labels: &[u8], weights: Option<&[f32]>) -> Result<Tensor> {
    let k = logits.dims4()?.1;
    let px = labelled(logits, labels, weights)?;
    if px.index.is_empty() {
        return zero(logits);
    }
    let s = labelled_probs(logits, &px)?;
    let y = one_hot(&px, k, &s)?;
    let inter = (&s * &y)?.sum(1)?;
    let card = (s.sum(1)? + y.sum(1)?)?.maximum(EPS)?;
    let score = (inter.affine(2.0, 0.0)? / card)?;
    let mut count = vec![0usize; k];
    for &c in &px.class {
        count[c as usize] += 1;
    }
    let wsum: f64 = (0..k).map(|c| weights.map_or(1.0, |w| w[c] as f64)).sum();
    let coef: Vec<f32> = (0..k)
        .map(|c| {
            let wc = weights.map_or(1.0, |w| w[c] as f64);
            if count[c] > 0 {
                (wc / wsum) as f32
            } else {
                0.0
            }
        })
        .collect();
    let coef = Tensor::new(coef.as_slice(), logits.device())?.to_dtype(logits.dtype())?;
    // Σ coef_c (1 − dice_c)
    let present = coef.sum_all()?;
    present - (score * coef)?.sum_all()?
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck;
    use super::*;
    use crate::train::augment::IGNORE;
    use candle_core::Device;

    fn value(
        z: Vec<f32>,
        shape: (usize, usize, usize, usize),
        labels: &[u8],
        w: Option<&[f32]>,
    ) -> f64 {
        let t = Tensor::from_vec(z, shape, &Device::Cpu).unwrap();
        dice(&t, labels, w).unwrap().to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn matches_hand_computation() {
        // three pixels, two classes; (K, N) layout in one image of 1 x 3:
        // softmax (0.5, 0.5), (0.5, 0.5), (0.75, 0.25); labels 0, 1, 0
        let l3 = 3f32.ln();
        let z = vec![0.0, 0.0, l3, 0.0, 0.0, 0.0];
        // class 0: I = 0.5 + 0.75, Σs = 1.75, Σy = 2 -> 2.5 / 3.75 = 2/3
        // class 1: I = 0.5, Σs = 1.25, Σy = 1 -> 1 / 2.25 = 4/9
        let got = value(z.clone(), (1, 2, 1, 3), &[0, 1, 0], None);
        assert!(
            (got - (1.0 - (2.0 / 3.0 + 4.0 / 9.0) / 2.0)).abs() < 1e-6,
            "{got}"
        );
        // weights 3 : 1 -> (3 · 1/3 + 1 · 5/9) / 4
        let got = value(z.clone(), (1, 2, 1, 3), &[0, 1, 0], Some(&[3.0, 1.0]));
        assert!((got - (1.0 + 5.0 / 9.0) / 4.0).abs() < 1e-6, "{got}");
        // pixels 2 and 3 ignored, class 1 absent: only class 0 counts, and
        // the mean is still over both classes (smp)
        // class 0: I = 0.5, Σs = 0.5, Σy = 1 -> 2/3
        let got = value(z.clone(), (1, 2, 1, 3), &[0, IGNORE, IGNORE], None);
        assert!((got - (1.0 - 2.0 / 3.0) / 2.0).abs() < 1e-6, "{got}");
        assert_eq!(value(z, (1, 2, 1, 3), &[IGNORE; 3], None), 0.0);
    }

    #[test]
    fn a_perfect_prediction_scores_zero() {
        let z = vec![30.0, -30.0, -30.0, 30.0];
        let got = value(z, (1, 2, 1, 2), &[0, 1], None);
        assert!(got.abs() < 1e-6, "{got}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let shape = (2, 4, 3, 5);
        let labels = gradcheck::labels(2 * 3 * 5, 4);
        gradcheck::check(shape, gradcheck::logits(2 * 4 * 3 * 5), |z| {
            dice(z, &labels, None).unwrap()
        });
        gradcheck::check(shape, gradcheck::logits(2 * 4 * 3 * 5), |z| {
            dice(z, &labels, Some(&[0.5, 2.0, 1.0, 0.0])).unwrap()
        });
    }
}
