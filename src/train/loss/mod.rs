//! The training losses, one per file, over `(B, K, H, W)` logits and one
//! class channel per pixel ([`IGNORE`] and ids `>= K` do not count):
//!
//! | `train.loss` | what                                                   |
//! |--------------|--------------------------------------------------------|
//! | `ce`         | cross-entropy ([`cross_entropy`], the default)         |
//! | `dice`       | soft Dice, as smp's `DiceLoss` ([`dice`])              |
//! | `focal`      | softmax focal loss, `train.focal_gamma` ([`focal`])    |
//! | `lovasz`     | Lovász-softmax, Berman et al. 2018 ([`lovasz_softmax`])|
//! | `dice+ce`    | the sum of the two                                     |
//!
//! Per-class weights (`train.class_weights`, a list or
//! `"median-frequency"`, see [`weights`]) weight every loss: the pixels'
//! terms in cross-entropy and focal, the classes' terms in Dice and
//! Lovász.
//!
//! Every loss is composed of candle's differentiable ops (cross-entropy
//! also has a fused CPU op), so it trains on every backend; the tests check
//! each gradient against finite differences in f64 and each value against
//! a case computed by hand.

mod ce;
mod dice;
mod focal;
mod lovasz;
pub mod weights;

pub use ce::cross_entropy;
pub use dice::dice;
pub use focal::focal;
pub use lovasz::lovasz_softmax;

use crate::train::augment::IGNORE;
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss `rstile train` minimises (`train.loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LossKind {
    /// Cross-entropy.
    #[default]
    #[serde(rename = "ce")]
    Ce,
    /// Soft Dice.
    #[serde(rename = "dice")]
    Dice,
    /// Focal loss on the softmax.
    #[serde(rename = "focal")]
    Focal,
    /// Lovász-softmax.
    #[serde(rename = "lovasz")]
    Lovasz,
    /// Dice + cross-entropy.
    #[serde(rename = "dice+ce")]
    DiceCe,
}

impl LossKind {
    /// The name in configs.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Ce => "ce",
            LossKind::Dice => "dice",
            LossKind::Focal => "focal",
            LossKind::Lovasz => "lovasz",
            LossKind::DiceCe => "dice+ce",
        }
    }
}

/// A loss with its settings, ready to apply to batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    pub kind: LossKind,
    /// The focusing parameter γ of the focal loss (0: cross-entropy).
    pub gamma: f64,
    /// Per-class weights, in class-table order.
    pub weights: Option<Vec<f32>>,
}

impl Loss {
    /// The loss of `logits` against `labels`, as an f32 scalar.
    pub fn compute(&self, logits: &Tensor, labels: &[u8]) -> Result<Tensor> {
        let w = self.weights.as_deref();
        let l = match self.kind {
            LossKind::Ce => cross_entropy(logits, labels, w)?,
            LossKind::Dice => dice(logits, labels, w)?,
            LossKind::Focal => focal(logits, labels, self.gamma, w)?,
            LossKind::Lovasz => lovasz_softmax(logits, labels, w)?,
            LossKind::DiceCe => {
                (ce::cross_entropy_t(logits, labels, w)? + dice(logits, labels, w)?)?
            }
        };
        l.to_dtype(DType::F32)
    }
}

/// The labelled pixels of a batch: their flat index in `B·H·W` and class.
struct Labelled {
    index: Vec<u32>,
    class: Vec<u32>,
}

/// Checks `labels` and `weights` against `logits` `(B, K, H, W)`; returns
/// the logits' dimensions.
fn check(
    logits: &Tensor,
    labels: &[u8],
    weights: Option<&[f32]>,
) -> Result<(usize, usize, usize, usize)> {
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
    Ok((b, k, h, w))
}

/// Per pixel of `B·H·W`: its class channel and weight (0 and 0 for pixels
/// that do not count), and the sum of the weights.
fn pixel_weights(
    logits: &Tensor,
    labels: &[u8],
    weights: Option<&[f32]>,
) -> Result<(Vec<u32>, Vec<f32>, f64)> {
    let k = check(logits, labels, weights)?.1;
    let mut class = Vec::with_capacity(labels.len());
    let mut wpx = Vec::with_capacity(labels.len());
    let mut total = 0f64;
    for &l in labels {
        if l != IGNORE && (l as usize) < k {
            let wv = weights.map_or(1.0, |wt| wt[l as usize]);
            class.push(l as u32);
            wpx.push(wv);
            total += wv as f64;
        } else {
            class.push(0);
            wpx.push(0.0);
        }
    }
    Ok((class, wpx, total))
}

/// Checks `labels` and `weights` against `logits` `(B, K, H, W)` and
/// collects the pixels that count.
fn labelled(logits: &Tensor, labels: &[u8], weights: Option<&[f32]>) -> Result<Labelled> {
    let k = check(logits, labels, weights)?.1;
    let mut out = Labelled {
        index: Vec::new(),
        class: Vec::new(),
    };
    for (i, &l) in labels.iter().enumerate() {
        if l != IGNORE && (l as usize) < k {
            out.index.push(i as u32);
            out.class.push(l as u32);
        }
    }
    Ok(out)
}

/// The softmax probabilities of the labelled pixels, `(K, N)`.
fn labelled_probs(logits: &Tensor, px: &Labelled) -> Result<Tensor> {
    let (b, k, h, w) = logits.dims4()?;
    let p = candle_nn::ops::softmax(logits, 1)?;
    let p = p.transpose(0, 1)?.contiguous()?.reshape((k, b * h * w))?;
    let idx = Tensor::new(px.index.as_slice(), logits.device())?;
    p.index_select(&idx, 1)
}

/// The one-hot matrix `(K, N)` of the labelled pixels' classes.
fn one_hot(px: &Labelled, k: usize, like: &Tensor) -> Result<Tensor> {
    let n = px.class.len();
    let mut m = vec![0f32; k * n];
    for (j, &c) in px.class.iter().enumerate() {
        m[c as usize * n + j] = 1.0;
    }
    Tensor::from_vec(m, (k, n), like.device())?.to_dtype(like.dtype())
}

/// A zero loss that still depends on `logits` (zero gradient).
fn zero(logits: &Tensor) -> Result<Tensor> {
    logits.sum_all()?.affine(0.0, 0.0)
}

#[cfg(test)]
pub(crate) mod gradcheck {
    //! Finite-difference check of a loss's gradient, in f64.
    use candle_core::{Device, Tensor, Var};

    /// Compares the autograd gradient of `f` at `z` `(shape)` with central
    /// differences; panics with the worst element when they disagree.
    pub fn check(shape: (usize, usize, usize, usize), z: Vec<f64>, f: impl Fn(&Tensor) -> Tensor) {
        let x = Var::from_vec(z.clone(), shape, &Device::Cpu).unwrap();
        let loss = f(x.as_tensor());
        let g = loss.backward().unwrap();
        let got: Vec<f64> = g
            .get(x.as_tensor())
            .expect("a gradient for the logits")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eval = |z: Vec<f64>| -> f64 {
            let t = Tensor::from_vec(z, shape, &Device::Cpu).unwrap();
            f(&t).to_scalar::<f64>().unwrap()
        };
        let h = 1e-6;
        let mut worst = (0.0f64, 0usize, 0.0, 0.0);
        for i in 0..z.len() {
            let mut a = z.clone();
            a[i] += h;
            let mut b = z.clone();
            b[i] -= h;
            let fd = (eval(a) - eval(b)) / (2.0 * h);
            let err = (fd - got[i]).abs() / (1e-3 + fd.abs().max(got[i].abs()));
            if err > worst.0 {
                worst = (err, i, fd, got[i]);
            }
        }
        assert!(
            worst.0 < 1e-5,
            "gradient {} at {}: finite differences {} (rel. error {:.2e})",
            worst.3,
            worst.1,
            worst.2,
            worst.0
        );
        assert!(
            got.iter().any(|v| v.abs() > 1e-6),
            "the gradient is all zero"
        );
    }

    /// Pseudo-random logits in [−3, 3). Independent draws matter: logits
    /// that differ by a constant have the same softmax, and ties of the
    /// errors are the kinks of Lovász's piecewise-linear loss.
    pub fn logits(n: usize) -> Vec<f64> {
        let mut rng = crate::rng::SplitMix64::new(7);
        (0..n).map(|_| rng.range(-3.0, 3.0)).collect()
    }

    /// Labels with some ignored pixels and one id beyond the classes.
    pub fn labels(n: usize, k: usize) -> Vec<u8> {
        (0..n)
            .map(|i| match i % 7 {
                3 => crate::train::augment::IGNORE,
                5 if i % 2 == 1 => k as u8,
                _ => ((i * 5 + i / 3) % k) as u8,
            })
            .collect()
    }
}
