//! Focal loss on the softmax.

use super::{pixel_weights, zero};
use candle_core::{Result, Tensor};

/// Focal loss (Lin et al. 2017) of `logits` `(B, K, H, W)` against
/// `labels`, on the softmax `s`, normalised like the weighted
/// cross-entropy:
///
/// ```text
/// loss = Σ_p w[y_p] · (1 − s_p[y_p])^γ · (−log s_p[y_p]) / Σ_p w[y_p]
/// ```
///
/// over the labelled pixels `p` (`w` all ones when `weights` is `None`).
/// With `gamma` 0 it is [`super::cross_entropy`]; larger `gamma` lowers the
/// weight of pixels that are already right. The per-class weights play
/// the role of the paper's α. The result is in the logits' dtype; 0 when no
/// pixel is labelled.
pub fn focal(
    logits: &Tensor,
    labels: &[u8],
    gamma: f64,
    weights: Option<&[f32]>,
) -> Result<Tensor> {
    if !(gamma.is_finite() && gamma >= 0.0) {
        candle_core::bail!("focal loss: gamma {gamma} must be a finite number >= 0");
    }
    let (b, _, h, w) = logits.dims4()?;
    let (class, wpx, total) = pixel_weights(logits, labels, weights)?;
    if total <= 0.0 {
        return zero(logits);
    }
    let dev = logits.device();
    let class = Tensor::from_vec(class, (b, 1, h, w), dev)?;
    let wpx = Tensor::from_vec(wpx, (b, 1, h, w), dev)?.to_dtype(logits.dtype())?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?.gather(&class, 1)?;
    let mut term = (logp.clone() * wpx)?;
    if gamma > 0.0 {
        // (1 − p)^γ, kept off 0 so that γ < 1 has a finite gradient
        let m = logp.exp()?.affine(-1.0, 1.0)?.maximum(1e-30)?.powf(gamma)?;
        term = (term * m)?;
    }
    term.sum_all()?.affine(-1.0 / total, 0.0)
}

#[cfg(test)]
mod tests {
    use super::super::{ce::cross_entropy_t, gradcheck};
    use super::*;
    use crate::train::augment::IGNORE;
    use candle_core::Device;

    #[test]
    fn matches_hand_computation() {
        // pixel 0: softmax (0.75, 0.25), label 0; pixel 1: (0.5, 0.5),
        // label 1; pixel 2 ignored
        let z = vec![3f64.ln(), 0.0, 0.0, 0.0, 0.0, 0.0];
        let t = Tensor::from_vec(z, (1, 2, 1, 3), &Device::Cpu).unwrap();
        let labels = [0u8, 1, IGNORE];
        let a = 0.25f64.powi(2) * -(0.75f64.ln());
        let b = 0.5f64.powi(2) * -(0.5f64.ln());
        let got = focal(&t, &labels, 2.0, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - (a + b) / 2.0).abs() < 1e-12, "{got}");
        let got = focal(&t, &labels, 2.0, Some(&[4.0, 1.0]))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - (4.0 * a + b) / 5.0).abs() < 1e-12, "{got}");
        assert!(focal(&t, &labels, -1.0, None).is_err());
    }

    #[test]
    fn gamma_zero_is_cross_entropy() {
        let shape = (2, 4, 3, 5);
        let z = gradcheck::logits(2 * 4 * 3 * 5);
        let t = Tensor::from_vec(z, shape, &Device::Cpu).unwrap();
        let labels = gradcheck::labels(2 * 3 * 5, 4);
        let w = [0.5, 2.0, 1.0, 3.0];
        let f = focal(&t, &labels, 0.0, Some(&w))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let c = cross_entropy_t(&t, &labels, Some(&w))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((f - c).abs() < 1e-12, "{f} vs {c}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let shape = (2, 4, 3, 5);
        let labels = gradcheck::labels(2 * 3 * 5, 4);
        for gamma in [2.0, 0.5] {
            gradcheck::check(shape, gradcheck::logits(2 * 4 * 3 * 5), |z| {
                focal(z, &labels, gamma, Some(&[0.5, 2.0, 1.0, 0.0])).unwrap()
            });
        }
    }
}
