//! `identity`: no weights, no arithmetic: class score `c` is normalised
//! input band `c mod bands`.

use super::arch::{NetSpec, Network};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The registry's constructor.
pub(super) fn build(spec: &NetSpec, _vb: VarBuilder) -> Result<Box<dyn Network>> {
    Ok(Box::new(Identity::new(spec.bands, spec.classes)))
}

/// The zero-FLOP model: its logits are its normalised input, band `c mod
/// bands` as class `c`. It maps nothing worth having; it measures what the
/// pipeline costs around a model that costs nothing (issue "Feed the GPU":
/// pipeline throughput per core).
#[derive(Debug, Clone)]
pub(super) struct Identity {
    bands: usize,
    classes: usize,
}

impl Identity {
    pub(super) fn new(bands: usize, classes: usize) -> Self {
        Self { bands, classes }
    }

    /// The input band of each class: `c mod bands`.
    pub(super) fn band_of_class(bands: usize, classes: usize) -> Vec<u32> {
        (0..classes).map(|c| (c % bands) as u32).collect()
    }
}

impl Network for Identity {
    fn flops(&self, _b: usize, _h: usize, _w: usize) -> u64 {
        0
    }

    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let bands = x.dim(1)?;
        if bands != self.bands {
            candle_core::bail!(
                "identity: {bands} input bands, the model has {}",
                self.bands
            );
        }
        if self.classes == bands {
            return Ok(x.clone());
        }
        // whole copies of the input, then its first `classes mod bands`
        // bands: plane copies (an index_select gathers value by value)
        let mut parts = vec![x.clone(); self.classes / bands];
        if !self.classes.is_multiple_of(bands) {
            parts.push(x.narrow(1, 0, self.classes % bands)?);
        }
        Tensor::cat(&parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn class_c_is_band_c_mod_bands() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        let y = Identity::new(3, 5).forward_t(&x, false).unwrap();
        assert_eq!(y.dims(), &[2, 5, 2, 2]);
        for (c, band) in [0usize, 1, 2, 0, 1].into_iter().enumerate() {
            let got = y.narrow(1, c, 1).unwrap().flatten_all().unwrap();
            let want = x.narrow(1, band, 1).unwrap().flatten_all().unwrap();
            assert_eq!(
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap()
            );
        }
        let wrong = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(Identity::new(3, 5).forward_t(&wrong, false).is_err());
    }
}
