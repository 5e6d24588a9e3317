//! `linear`: one 1x1 convolution.

use super::arch::{NetSpec, Network};
use super::conv::Conv2d;
use super::fcn::score;
use super::resnet::{conv, WInit};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The registry's constructor.
pub(super) fn build(spec: &NetSpec, vb: VarBuilder) -> Result<Box<dyn Network>> {
    Ok(Box::new(Linear::new(spec.bands, spec.classes, vb)?))
}

/// One 1x1 convolution: the cheapest possible per-pixel classifier, for
/// measuring everything in the pipeline except the network.
#[derive(Debug, Clone)]
pub(super) struct Linear {
    cls: Conv2d,
}

impl Linear {
    pub(super) fn new(bands: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cls: conv(
                vb.pp("cls"),
                bands,
                classes,
                1,
                1,
                0,
                true,
                WInit::TorchDefault,
            )?,
        })
    }
}

impl Network for Linear {
    fn flops(&self, b: usize, h: usize, w: usize) -> u64 {
        self.cls.flops(b, h, w).0
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        score(&self.cls, x, train)
    }
}
