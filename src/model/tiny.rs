//! `tiny`: a few convolutions at quarter resolution.

use super::arch::{NetSpec, Network};
use super::conv::{Conv2d, ConvBn};
use super::fcn::{resize_bilinear, score};
use super::resnet::{conv, conv_bn, WInit};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The registry's constructor.
pub(super) fn build(spec: &NetSpec, vb: VarBuilder) -> Result<Box<dyn Network>> {
    Ok(Box::new(Tiny::new(spec.bands, spec.classes, vb)?))
}

/// A conv3x3 → BN → ReLU unit of [`Tiny`], stored as `<name>.conv`, `<name>.bn`.
fn conv_bn_relu(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<ConvBn> {
    conv_bn(
        vb.pp("conv"),
        vb.pp("bn"),
        c_in,
        c_out,
        3,
        stride,
        1,
        WInit::KaimingFanOut,
    )
}

/// Strides of `enc.0`, `enc.1`, `enc.2` of [`Tiny`]; they do not change any
/// parameter shape.
pub(super) const TINY_STRIDES: [usize; 3] = [2, 2, 1];

/// A few convolutions at quarter resolution: fast enough on a CPU for tests
/// and demos, with the same structure (encoder, 1x1 classifier, bilinear
/// upsampling) as the real models. The encoder runs at stride 4 rather than
/// 2 because candle's CPU convolutions are slow on wide, full-size maps: at
/// stride 2 a 256x256 window took about three times as long, for a smaller
/// receptive field (9 px instead of 15 px).
#[derive(Debug, Clone)]
pub(super) struct Tiny {
    enc: [ConvBn; 3],
    cls: Conv2d,
}

impl Tiny {
    pub(super) fn new(bands: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let e = vb.pp("enc");
        Ok(Self {
            enc: [
                conv_bn_relu(e.pp(0), bands, 16, TINY_STRIDES[0])?,
                conv_bn_relu(e.pp(1), 16, 32, TINY_STRIDES[1])?,
                conv_bn_relu(e.pp(2), 32, 32, TINY_STRIDES[2])?,
            ],
            cls: conv(
                vb.pp("cls"),
                32,
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

impl Network for Tiny {
    fn flops(&self, b: usize, h: usize, w: usize) -> u64 {
        let (mut total, mut h, mut w) = (0, h, w);
        for e in &self.enc {
            let (f, h2, w2) = e.conv.flops(b, h, w);
            (total, h, w) = (total + f, h2, w2);
        }
        total + self.cls.flops(b, h, w).0
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut y = x.clone();
        for e in &self.enc {
            y = e.forward_t(&y, train, None, true)?;
        }
        resize_bilinear(&score(&self.cls, &y, train)?, h, w)
    }
}
