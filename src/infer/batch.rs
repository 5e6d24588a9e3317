//! Windows in, predictions out: one forward pass over a batch.
//!
//! The model stage collects up to `batch` windows in whatever order the
//! readers finish them; [`batch_input`] stacks their normalised inputs into
//! one `(B, bands, n, n)` tensor, the model turns it into class
//! probabilities, and [`WindowProbs::split`] cuts the flat result into one
//! `[classes][n][n]` prediction per window, in the same order. The model is
//! batch-invariant, so a window's prediction does not depend on the batch
//! it rode in.
//!
//! A model that is not a working model (NaN or infinite weights, a negative
//! batch-norm variance, or weights so large that a forward pass overflows)
//! would still give every pixel a class: the softmax of NaN logits is a
//! uniform 1/K on the CPU, class 0 everywhere. [`run_batch`] therefore
//! checks the logits of every window ([`first_non_finite`]) and returns
//! which window of the batch is not finite; [`non_finite_params`] checks
//! weights (at load, and in training before a checkpoint is written).

use super::profile::Profile;
use super::tta::Tta;
use crate::error::Result;
use crate::model::{softmax_channels, Model};
use candle_core::{DType, Device, Tensor};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Stacks `windows`, each `[bands][n][n]` f32, into one `(B, bands, n, n)`
/// tensor on `device`.
pub fn batch_input(windows: &[&[f32]], bands: usize, n: usize, device: &Device) -> Result<Tensor> {
    let b = windows.len();
    let mut input = Vec::with_capacity(b * bands * n * n);
    for w in windows {
        input.extend_from_slice(w);
    }
    Ok(Tensor::from_vec(input, (b, bands, n, n), &Device::Cpu)?.to_device(device)?)
}

/// One window's class scores `[classes][n][n]`: its part of the batch's
/// output, shared with the batch's other windows, not copied. The scores
/// are probabilities, or on the CPU the logits still in the model's output
/// tensor ([`WindowProbs::is_logits`]), whose softmax the stitcher takes
/// where it blends them.
#[derive(Debug, Clone)]
pub struct WindowProbs {
    batch: Batch,
    range: Range<usize>,
}

/// A batch's output: probabilities on the host, or logits in a contiguous
/// `f32` tensor on the CPU.
#[derive(Debug, Clone)]
enum Batch {
    Probs(Arc<Vec<f32>>),
    Logits(Tensor),
}

impl WindowProbs {
    /// Cuts the model's flat output for a batch of `b` windows into one
    /// prediction per window, in batch order.
    pub fn split(probs: Vec<f32>, b: usize) -> Vec<WindowProbs> {
        let len = probs.len();
        Self::cut(Batch::Probs(Arc::new(probs)), len, b)
    }

    /// One prediction per window of a batch's logits, a contiguous `f32`
    /// tensor on the CPU.
    fn split_logits(logits: Tensor, b: usize) -> Vec<WindowProbs> {
        let len = logits.elem_count();
        Self::cut(Batch::Logits(logits), len, b)
    }

    fn cut(batch: Batch, len: usize, b: usize) -> Vec<WindowProbs> {
        let per = (len / b.max(1)).max(1);
        (0..len.div_ceil(per))
            .map(|i| WindowProbs {
                batch: batch.clone(),
                range: i * per..((i + 1) * per).min(len),
            })
            .collect()
    }

    /// A prediction of its own.
    pub fn owned(probs: Vec<f32>) -> WindowProbs {
        WindowProbs {
            range: 0..probs.len(),
            batch: Batch::Probs(Arc::new(probs)),
        }
    }

    /// Whether the scores are logits rather than probabilities.
    pub fn is_logits(&self) -> bool {
        matches!(self.batch, Batch::Logits(_))
    }

    /// `f` of the window's scores.
    pub fn with<R>(&self, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        match &self.batch {
            Batch::Probs(v) => Ok(f(&v[self.range.clone()])),
            Batch::Logits(t) => {
                let (storage, layout) = t.storage_and_layout();
                let (candle_core::Storage::Cpu(cpu), Some((a, _))) =
                    (&*storage, layout.contiguous_offsets())
                else {
                    candle_core::bail!("a window's logits are not contiguous on the CPU")
                };
                let v = cpu.as_slice::<f32>()?;
                Ok(f(&v[a + self.range.start..a + self.range.end]))
            }
        }
    }
}

/// A window of a batch whose model output is not finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFiniteWindow {
    /// Position of the window in the batch.
    pub index: usize,
    /// The output channel (class) of the first non-finite value.
    pub channel: usize,
    /// The first non-finite value (NaN or ±Inf).
    pub value: f32,
    /// How many values of the window are not finite.
    pub count: usize,
}

/// The first window of a batch's output `[B][K][n²]` (logits or
/// probabilities) holding a value that is not finite, if any.
pub fn first_non_finite(out: &[f32], b: usize, k: usize) -> Option<NonFiniteWindow> {
    let per = out.len() / b.max(1);
    // one branch-free pass first (it vectorises), on rayon's threads; the
    // details only on failure
    use rayon::prelude::*;
    let any_bad = out
        .par_chunks(1 << 16)
        .any(|c| c.iter().fold(false, |acc, v| acc | !v.is_finite()));
    if !any_bad {
        return None;
    }
    out.chunks(per.max(1)).enumerate().find_map(|(index, w)| {
        let first = w.iter().position(|v| !v.is_finite())?;
        Some(NonFiniteWindow {
            index,
            channel: first / (per / k.max(1)).max(1),
            value: w[first],
            count: w.iter().filter(|v| !v.is_finite()).count(),
        })
    })
}

/// Class scores for each of `windows` (`[bands][n][n]` each), from one
/// forward pass of `model`: `[classes][n][n]` per window, in order; or the
/// first window whose output is not finite.
///
/// The same arithmetic as [`Model::predict_probs`] (on the CPU the logits,
/// checked here, then [`softmax_channels`]; elsewhere candle's softmax on
/// the device, whose result is checked), so the maps do not change. On the
/// CPU without `softmax` the checked logits are returned as they are, for
/// the stitcher to take their softmax ([`WindowProbs::is_logits`]).
pub fn run_batch(
    model: &Model,
    windows: &[&[f32]],
    bands: usize,
    n: usize,
    softmax: bool,
    clocks: &Profile,
) -> Result<std::result::Result<Vec<WindowProbs>, NonFiniteWindow>> {
    let t = Instant::now();
    let x = batch_input(windows, bands, n, model.device())?;
    let t = clocks.model_upload.lap(t);
    let b = windows.len();
    let probs = if model.device().is_cpu() {
        let logits = model.forward_t(&x, false)?.contiguous()?;
        let t = clocks.model_forward.lap(t);
        let (b, k, h, w) = logits.dims4()?;
        let (storage, layout) = logits.storage_and_layout();
        let (candle_core::Storage::Cpu(cpu), Some((a, z))) =
            (&*storage, layout.contiguous_offsets())
        else {
            return Err(candle_core::Error::Msg(
                "a CPU model's output is not contiguous on the CPU".into(),
            )
            .into());
        };
        let values = &cpu.as_slice::<f32>()?[a..z];
        if let Some(bad) = first_non_finite(values, b, k) {
            return Ok(Err(bad));
        }
        let t = clocks.model_download.lap(t);
        if !softmax {
            // the logits stay in the tensor: the stitcher takes their softmax
            drop(storage);
            return Ok(Ok(WindowProbs::split_logits(logits, b)));
        }
        let mut v = values.to_vec();
        softmax_channels(&mut v, b, k, h * w);
        clocks.model_softmax.lap(t);
        v
    } else {
        let p = model.forward_probs(&x)?;
        let k = p.dims4()?.1;
        // the device runs asynchronously: the download waits for the forward
        let v = p.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let t = clocks.model_forward.lap(t);
        if let Some(bad) = first_non_finite(&v, b, k) {
            return Ok(Err(bad));
        }
        clocks.model_softmax.lap(t);
        v
    };
    Ok(Ok(WindowProbs::split(probs, b)))
}

/// A batch's predictions left on the model's device, for the
/// [`DeviceStitcher`](crate::infer::stitch_device::DeviceStitcher).
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    /// Class probabilities `(B, K, n, n)` f32.
    pub probs: Tensor,
    /// Validity `(B, n, n)` f32: 1 valid, 0 not.
    pub valid: Tensor,
}

/// [`run_batch`] for post-processing on the device: the same class
/// probabilities, left on the model's device with the windows' masks
/// (`[n][n]` each, non-zero = valid) uploaded beside them. On the CPU the
/// arithmetic is `run_batch`'s (the logits checked, then
/// [`softmax_channels`]), so the map equals the host stitcher's. Elsewhere
/// candle's softmax runs on the device as in `run_batch`, and the check
/// downloads one scalar per batch: the sum of the probabilities, finite
/// exactly when every value is (each lies in [0, 1]); only a batch that
/// fails it comes back whole, to name the window and class.
pub fn run_batch_device(
    model: &Model,
    windows: &[&[f32]],
    valid: &[&[u8]],
    bands: usize,
    n: usize,
    clocks: &Profile,
) -> Result<std::result::Result<DeviceBatch, NonFiniteWindow>> {
    let t = Instant::now();
    let device = model.device();
    let x = batch_input(windows, bands, n, device)?;
    let b = windows.len();
    let mut mask = Vec::with_capacity(b * n * n);
    for v in valid {
        mask.extend_from_slice(v);
    }
    let mask = Tensor::from_vec(mask, (b, n, n), &Device::Cpu)?
        .to_device(device)?
        .to_dtype(DType::F32)?;
    let t = clocks.model_upload.lap(t);
    let probs = if device.is_cpu() {
        let logits = model.forward_t(&x, false)?;
        let t = clocks.model_forward.lap(t);
        let (b, k, h, w) = logits.dims4()?;
        let mut v = logits.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = first_non_finite(&v, b, k) {
            return Ok(Err(bad));
        }
        softmax_channels(&mut v, b, k, h * w);
        clocks.model_softmax.lap(t);
        Tensor::from_vec(v, (b, k, h, w), device)?
    } else {
        let p = model.forward_probs(&x)?.to_dtype(DType::F32)?;
        // the device runs asynchronously: the scalar waits for the forward
        let sum = p.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        clocks.model_forward.lap(t);
        if !sum.is_finite() {
            let k = p.dims4()?.1;
            let v = p.flatten_all()?.to_vec1::<f32>()?;
            if let Some(bad) = first_non_finite(&v, b, k) {
                return Ok(Err(bad));
            }
        }
        p
    };
    Ok(Ok(DeviceBatch { probs, valid: mask }))
}

/// A tensor of a model's weights that no working model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTensor {
    pub name: String,
    /// Values that are NaN or infinite.
    pub non_finite: usize,
    /// Negative values of a batch-norm `running_var` (its square root is NaN).
    pub negative_variance: usize,
    pub len: usize,
}

impl std::fmt::Display for BadTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' holds ", self.name)?;
        if self.non_finite > 0 {
            write!(f, "{} NaN or infinite value(s)", self.non_finite)?;
            if self.negative_variance > 0 {
                write!(f, " and ")?;
            }
        }
        if self.negative_variance > 0 {
            write!(f, "{} negative variance(s)", self.negative_variance)?;
        }
        write!(f, " of {}", self.len)
    }
}

/// The tensors that make a model unusable: any value that is NaN or
/// infinite, and negative values in a batch-norm running variance (a tensor
/// whose name ends in `.running_var`). `tensors` are (name, values) pairs,
/// in any order; the result keeps their order. Empty for a sound model.
///
/// Pure, for [`Model::load`] (on each tensor as it is read) and for
/// training, which checks its model before writing a checkpoint
/// ([`model_non_finite`]).
pub fn non_finite_params<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [f32])>,
) -> Vec<BadTensor> {
    tensors
        .into_iter()
        .filter_map(|(name, values)| {
            let non_finite = values.iter().filter(|v| !v.is_finite()).count();
            let negative_variance = if name.ends_with(".running_var") {
                values.iter().filter(|&&v| v < 0.0).count()
            } else {
                0
            };
            (non_finite + negative_variance > 0).then(|| BadTensor {
                name: name.to_string(),
                non_finite,
                negative_variance,
                len: values.len(),
            })
        })
        .collect()
}

/// [`non_finite_params`] of all of `model`'s variables (weights and
/// batch-norm statistics), sorted by name.
pub fn model_non_finite(model: &Model) -> Result<Vec<BadTensor>> {
    let vars = model.varmap().data().lock().expect("varmap lock");
    let mut values: Vec<(String, Vec<f32>)> = Vec::with_capacity(vars.len());
    for (name, var) in vars.iter() {
        let t = var.as_tensor().to_dtype(DType::F32)?;
        values.push((name.clone(), t.flatten_all()?.to_vec1::<f32>()?));
    }
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(non_finite_params(
        values.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    ))
}

/// One line about `bad` (the first tensor, and how many more there are).
pub fn describe_bad(bad: &[BadTensor]) -> String {
    match bad {
        [] => "all weights are finite".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first}, and {} more tensor(s)", rest.len()),
    }
}

/// [`run_batch`] under test-time augmentation: the batch is predicted once
/// per transform of `tta` (each window transformed, its prediction mapped
/// back), and each window's class probabilities are the mean over the
/// transforms, summed in their fixed order. [`Tta::None`] is `run_batch`.
pub fn run_batch_tta(
    model: &Model,
    windows: &[&[f32]],
    bands: usize,
    n: usize,
    tta: Tta,
    clocks: &Profile,
) -> Result<std::result::Result<Vec<WindowProbs>, NonFiniteWindow>> {
    if tta == Tta::None {
        return run_batch(model, windows, bands, n, false, clocks);
    }
    let plane = n * n;
    let transforms = tta.transforms();
    let mut sum: Vec<Vec<f32>> = Vec::new();
    for (i, t) in transforms.iter().enumerate() {
        let t0 = Instant::now();
        let moved: Vec<Vec<f32>> = windows
            .iter()
            .map(|w| {
                let mut out = vec![0f32; w.len()];
                for (src, dst) in w.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
                    t.apply(src, dst, n);
                }
                out
            })
            .collect();
        let refs: Vec<&[f32]> = moved.iter().map(Vec::as_slice).collect();
        clocks.model_tta.lap(t0);
        let outs = match run_batch(model, &refs, bands, n, true, clocks)? {
            Ok(o) => o,
            Err(bad) => return Ok(Err(bad)),
        };
        let t0 = Instant::now();
        drop(moved);
        let back = t.inverse();
        let mut tmp = vec![0f32; plane];
        for (w, probs) in outs.into_iter().enumerate() {
            if i == 0 {
                // the identity comes first
                sum.push(probs.with(<[f32]>::to_vec)?);
                continue;
            }
            probs.with(|probs| {
                for (c, src) in probs.chunks_exact(plane).enumerate() {
                    back.apply(src, &mut tmp, n);
                    let acc = &mut sum[w][c * plane..(c + 1) * plane];
                    for (a, v) in acc.iter_mut().zip(&tmp) {
                        *a += v;
                    }
                }
            })?;
        }
        clocks.model_tta.lap(t0);
    }
    let scale = 1.0 / transforms.len() as f32;
    for w in &mut sum {
        for v in w.iter_mut() {
            *v *= scale;
        }
    }
    Ok(Ok(sum.into_iter().map(WindowProbs::owned).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_stacks_and_split_cuts_in_order() {
        let a = [1.0f32; 8];
        let b = [2.0f32; 8];
        let x = batch_input(&[&a, &b], 2, 2, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 2, 2, 2]);
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let parts = WindowProbs::split(flat, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].with(<[f32]>::to_vec).unwrap(), a.to_vec());
        assert_eq!(parts[1].with(<[f32]>::to_vec).unwrap(), b.to_vec());
        // logits stay in their tensor, one view per window
        let parts = WindowProbs::split_logits(x, 2);
        assert!(parts[1].is_logits());
        assert_eq!(parts[1].with(<[f32]>::to_vec).unwrap(), b.to_vec());
    }

    #[test]
    fn first_non_finite_names_the_window_and_the_class() {
        // 3 windows, 2 classes, 4 px each
        let mut out = vec![0.5f32; 3 * 2 * 4];
        assert_eq!(first_non_finite(&out, 3, 2), None);
        out[8 + 4 + 1] = f32::NAN; // window 1, class 1
        out[8 + 4 + 2] = f32::INFINITY;
        out[16] = f32::NEG_INFINITY; // window 2
        let bad = first_non_finite(&out, 3, 2).unwrap();
        assert_eq!((bad.index, bad.channel, bad.count), (1, 1, 2));
        assert!(bad.value.is_nan());
        // large but finite values are fine
        let big = vec![f32::MAX; 8];
        assert_eq!(first_non_finite(&big, 2, 2), None);
    }

    #[test]
    fn non_finite_params_flags_nan_inf_and_negative_variances() {
        let ok = [1.0f32, -2.0, 0.0];
        let nan = [1.0f32, f32::NAN, f32::INFINITY];
        let var = [1.0f32, -0.5, 2.0];
        let bad = non_finite_params([
            ("a.weight", &ok[..]),
            ("b.weight", &nan[..]),
            ("c.running_var", &var[..]),
            // a negative mean or weight is fine
            ("c.running_mean", &var[..]),
        ]);
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[0].to_string(),
            "'b.weight' holds 2 NaN or infinite value(s) of 3"
        );
        assert_eq!(
            bad[1].to_string(),
            "'c.running_var' holds 1 negative variance(s) of 3"
        );
        assert!(non_finite_params([("x", &ok[..])]).is_empty());
        assert_eq!(
            describe_bad(&bad),
            "'b.weight' holds 2 NaN or infinite value(s) of 3, and 1 more tensor(s)"
        );
    }
}
