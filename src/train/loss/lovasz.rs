//! Lovász-softmax loss.

use super::{labelled, labelled_probs, one_hot, zero};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Lovász-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018) of
/// `logits` `(B, K, H, W)` against `labels`: the Lovász extension of the
/// Jaccard loss of each class, over the whole batch, averaged over the
/// classes present in the labels, as the authors' `lovasz_softmax(probas,
/// labels, classes="present", per_image=False, ignore=255)`:
///
/// ```text
/// e_c   = |y_c − s_c| over the labelled pixels, sorted decreasingly (π)
/// g_c   = the Jaccard loss's increments along π (lovasz_grad)
/// loss  = Σ_c w_c · [c present] · ⟨e_c[π], g_c⟩ / Σ_c w_c · [c present]
/// ```
///
/// The sort is computed on the host and held fixed, so the gradient flows
/// through the errors (the loss is piecewise linear in them). The result
/// is in the logits' dtype; 0 when no pixel is labelled or every present
/// class has weight 0.
pub fn lovasz_softmax(logits: &Tensor, labels: &[u8], weights: Option<&[f32]>) -> Result<Tensor> {
    let k = logits.dims4()?.1;
    let px = labelled(logits, labels, weights)?;
    let n = px.index.len();
    if n == 0 {
        return zero(logits);
    }
    let s = labelled_probs(logits, &px)?;
    let y = one_hot(&px, k, &s)?;
    let e = (&y - &s)?.abs()?;
    let host: Vec<f64> = e
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mut present = vec![false; k];
    for &c in &px.class {
        present[c as usize] = true;
    }
    // per class: the decreasing order of its errors, and the Jaccard
    // increments along it
    let rows: Vec<(Vec<u32>, Vec<f32>)> = (0..k)
        .into_par_iter()
        .map(|c| {
            let row = &host[c * n..(c + 1) * n];
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let inc = if present[c] {
                let gt: Vec<bool> = order
                    .iter()
                    .map(|&j| px.class[j as usize] == c as u32)
                    .collect();
                lovasz_grad(&gt)
            } else {
                vec![0.0; n]
            };
            (order, inc)
        })
        .collect();
    let mut coef = vec![0f64; k];
    for c in 0..k {
        if present[c] {
            coef[c] = weights.map_or(1.0, |w| w[c] as f64);
        }
    }
    let total: f64 = coef.iter().sum();
    if total <= 0.0 {
        return zero(logits);
    }
    let mut order = Vec::with_capacity(k * n);
    let mut inc = Vec::with_capacity(k * n);
    for (c, (o, g)) in rows.into_iter().enumerate() {
        order.extend(o);
        let f = (coef[c] / total) as f32;
        inc.extend(g.into_iter().map(|v| v * f));
    }
    let dev = logits.device();
    let order = Tensor::from_vec(order, (k, n), dev)?;
    let inc = Tensor::from_vec(inc, (k, n), dev)?.to_dtype(logits.dtype())?;
    (e.gather(&order, 1)? * inc)?.sum_all()
}

/// The gradient of the Lovász extension of the Jaccard loss with respect
/// to errors sorted decreasingly, whose pixels are of the class when `gt`
/// is set (Berman et al.'s `lovasz_grad`): the increments of
/// `1 − |gt ∩ top-i| / |gt ∪ top-i|` as `i` grows.
pub(crate) fn lovasz_grad(gt: &[bool]) -> Vec<f32> {
    let gts = gt.iter().filter(|&&g| g).count() as f64;
    let mut out = Vec::with_capacity(gt.len());
    let (mut hits, mut misses) = (0f64, 0f64);
    let mut prev = 0f64;
    for &g in gt {
        if g {
            hits += 1.0;
        } else {
            misses += 1.0;
        }
        let inter = gts - hits;
        let union = gts + misses;
        let jac = if union > 0.0 {
            1.0 - inter / union
        } else {
            0.0
        };
        out.push((jac - prev) as f32);
        prev = jac;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck;
    use super::*;
    use crate::train::augment::IGNORE;
    use candle_core::Device;

    fn value(p0: &[f64], labels: &[u8], w: Option<&[f32]>) -> f64 {
        // two classes: logits (ln p, ln (1 − p)) give softmax (p, 1 − p)
        let n = p0.len();
        let mut z: Vec<f64> = p0.iter().map(|p| p.ln()).collect();
        z.extend(p0.iter().map(|p| (1.0 - p).ln()));
        let t = Tensor::from_vec(z, (1, 2, 1, n), &Device::Cpu).unwrap();
        lovasz_softmax(&t, labels, w)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn matches_hand_computation() {
        // labels 0, 0, 1; class-0 probabilities 0.9, 0.4, 0.3.
        // class 0: errors 0.1, 0.6, 0.3 -> sorted 0.6 (gt), 0.3, 0.1 (gt);
        //   Jaccard losses 1/2, 2/3, 1 -> increments 1/2, 1/6, 1/3;
        //   0.6/2 + 0.3/6 + 0.1/3 = 23/60
        // class 1: errors 0.1, 0.6, 0.3 -> sorted 0.6, 0.3 (gt), 0.1;
        //   Jaccard losses 1/2, 1, 1 -> increments 1/2, 1/2, 0;
        //   0.6/2 + 0.3/2 = 27/60
        let got = value(&[0.9, 0.4, 0.3], &[0, 0, 1], None);
        assert!((got - 25.0 / 60.0).abs() < 1e-6, "{got}");
        let got = value(&[0.9, 0.4, 0.3], &[0, 0, 1], Some(&[1.0, 3.0]));
        assert!((got - (23.0 + 3.0 * 27.0) / 240.0).abs() < 1e-6, "{got}");
        // an ignored pixel and an absent class: only class 0 counts
        // class 0: errors 0.1, 0.6 -> sorted 0.6 (gt), 0.1 (gt);
        //   Jaccard losses 1/2, 1 -> 0.6/2 + 0.1/2 = 0.35
        let got = value(&[0.9, 0.4, 0.3], &[0, 0, IGNORE], None);
        assert!((got - 0.35).abs() < 1e-6, "{got}");
        assert_eq!(value(&[0.9, 0.4, 0.3], &[IGNORE; 3], None), 0.0);
    }

    #[test]
    fn grad_of_the_jaccard_extension() {
        let g = lovasz_grad(&[true, false, true]);
        let want = [0.5, 1.0 / 6.0, 1.0 / 3.0];
        for (a, b) in g.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{g:?}");
        }
        // the increments sum to the loss of predicting everything: 1
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let shape = (2, 4, 3, 5);
        let labels = gradcheck::labels(2 * 3 * 5, 4);
        gradcheck::check(shape, gradcheck::logits(2 * 4 * 3 * 5), |z| {
            lovasz_softmax(z, &labels, None).unwrap()
        });
        gradcheck::check(shape, gradcheck::logits(2 * 4 * 3 * 5), |z| {
            lovasz_softmax(z, &labels, Some(&[0.5, 2.0, 1.0, 0.0])).unwrap()
        });
    }
}
