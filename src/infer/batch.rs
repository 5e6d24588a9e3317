//! Windows in, predictions out: one forward pass over a batch.
//!
//! The model stage collects up to `batch` windows in whatever order the
//! readers finish them; [`batch_input`] stacks their normalised inputs into
//! one `(B, bands, n, n)` tensor, the model turns it into class
//! probabilities, and [`split_output`] cuts the flat result back into one
//! `[classes][n][n]` prediction per window, in the same order. The model is
//! batch-invariant, so a window's prediction does not depend on the batch
//! it rode in.

use crate::error::Result;
use crate::model::Model;
use candle_core::{Device, Tensor};

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

/// Cuts the model's flat output for a batch of `b` windows into one
/// prediction per window, in batch order.
pub fn split_output(probs: &[f32], b: usize) -> Vec<Vec<f32>> {
    let per = probs.len() / b.max(1);
    probs.chunks(per.max(1)).map(|c| c.to_vec()).collect()
}

/// Class probabilities for each of `windows` (`[bands][n][n]` each), from
/// one forward pass of `model`: `[classes][n][n]` per window, in order.
pub fn run_batch(
    model: &Model,
    windows: &[&[f32]],
    bands: usize,
    n: usize,
) -> Result<Vec<Vec<f32>>> {
    let x = batch_input(windows, bands, n, model.device())?;
    let probs = model.predict_probs(&x)?;
    Ok(split_output(&probs, windows.len()))
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
        let parts = split_output(&flat, 2);
        assert_eq!(parts, vec![a.to_vec(), b.to_vec()]);
    }
}
