//! `unet-resnet18`, `unet-resnet34`, `unet-resnet50`:
//! segmentation_models_pytorch's `Unet` on a torchvision ResNet encoder,
//! under smp's module names, so that an smp checkpoint loads as it is:
//!
//! * `encoder.*`: torchvision's ResNet (`encoder.conv1`, `encoder.bn1`,
//!   `encoder.layer1.0.conv1`, ...);
//! * `decoder.blocks.N.conv1.0` / `.1` (conv without bias, batch norm, then
//!   ReLU) and `decoder.blocks.N.conv2.0` / `.1`, decoder channels
//!   (256, 128, 64, 32, 16);
//! * `segmentation_head.0`: a 3x3 convolution with bias to the classes.
//!
//! smp's decoder (`UnetDecoder`, no attention, no centre block): the
//! deepest features (stride 32) are upsampled x2 by nearest neighbour,
//! concatenated with the encoder's features of the next stride (layer3,
//! layer2, layer1, then the stem's output before max pooling), and pass two
//! conv-BN-ReLU units; the fifth block has no skip and comes back to the
//! input's size. The upsampling goes to the skip's exact size, so windows
//! that are not multiples of 32 work too (smp itself requires multiples of
//! 32, where the two agree).

use super::arch::{NetSpec, Network};
use super::conv::{Conv2d, ConvBn};
use super::resnet::{conv, conv_bn, Depth, ResNet, WInit};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// smp's default decoder channels.
pub const DECODER_CHANNELS: [usize; 5] = [256, 128, 64, 32, 16];

/// The registry's constructor of the U-Net on a ResNet of depth `depth`.
pub(super) fn build(depth: Depth, spec: &NetSpec, vb: VarBuilder) -> Result<Box<dyn Network>> {
    Ok(Box::new(Unet::new(depth, spec.bands, spec.classes, vb)?))
}

/// One of smp's `DecoderBlock`s: upsample, concatenate the skip, two
/// conv-BN-ReLU units.
#[derive(Debug, Clone)]
struct DecoderBlock {
    conv1: ConvBn,
    conv2: ConvBn,
}

impl DecoderBlock {
    fn new(vb: VarBuilder, c_in: usize, c_skip: usize, c_out: usize) -> Result<Self> {
        let unit = |name: &str, c_in: usize| {
            let v = vb.pp(name);
            conv_bn(
                v.pp("0"),
                v.pp("1"),
                c_in,
                c_out,
                3,
                1,
                1,
                WInit::KaimingFanOut,
            )
        };
        Ok(Self {
            conv1: unit("conv1", c_in + c_skip)?,
            conv2: unit("conv2", c_out)?,
        })
    }

    /// `target`: the skip's size, or twice the input's for the last block.
    fn forward_t(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        target: (usize, usize),
        train: bool,
    ) -> Result<Tensor> {
        let x = x.upsample_nearest2d(target.0, target.1)?;
        let x = match skip {
            Some(s) => Tensor::cat(&[&x, s], 1)?,
            None => x,
        };
        let y = self.conv1.forward_t(&x, train, None, true)?;
        self.conv2.forward_t(&y, train, None, true)
    }

    fn flops(&self, b: usize, h: usize, w: usize) -> u64 {
        self.conv1.conv.flops(b, h, w).0 + self.conv2.conv.flops(b, h, w).0
    }
}

/// smp's `Unet` on a ResNet encoder; see the module documentation.
#[derive(Debug, Clone)]
pub(super) struct Unet {
    encoder: ResNet,
    blocks: Vec<DecoderBlock>,
    head: Conv2d,
}

impl Unet {
    pub(super) fn new(depth: Depth, bands: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        let encoder = ResNet::new(depth, bands, vb.pp("encoder"))?;
        let ch = depth.channels();
        // the deepest features come in; skips: layer3, layer2, layer1, stem
        let skips = [ch[2], ch[1], ch[0], 64, 0];
        let mut c_in = ch[3];
        let mut blocks = Vec::with_capacity(5);
        let d = vb.pp("decoder").pp("blocks");
        for (i, (&c_out, &c_skip)) in DECODER_CHANNELS.iter().zip(&skips).enumerate() {
            blocks.push(DecoderBlock::new(d.pp(i), c_in, c_skip, c_out)?);
            c_in = c_out;
        }
        let head = conv(
            vb.pp("segmentation_head").pp("0"),
            DECODER_CHANNELS[4],
            classes,
            3,
            1,
            1,
            true,
            WInit::TorchDefault,
        )?;
        Ok(Self {
            encoder,
            blocks,
            head,
        })
    }
}

impl Network for Unet {
    fn flops(&self, b: usize, h: usize, w: usize) -> u64 {
        let (mut total, sizes) = self.encoder.flops(b, h, w);
        let stem = (h.div_ceil(2), w.div_ceil(2));
        // decoder block i works at the size of its skip (the last at h x w)
        let at = [sizes[2], sizes[1], sizes[0], stem, (h, w)];
        for (blk, &(bh, bw)) in self.blocks.iter().zip(&at) {
            total += blk.flops(b, bh, bw);
        }
        total + self.head.flops(b, h, w).0
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let f = self.encoder.forward_t(x, train)?;
        let skips = [&f.s16, &f.s8, &f.s4, &f.s2];
        let mut y = f.s32.clone();
        for (i, blk) in self.blocks.iter().enumerate() {
            let (skip, target) = match skips.get(i) {
                Some(s) => {
                    let (_, _, sh, sw) = s.dims4()?;
                    (Some(*s), (sh, sw))
                }
                None => (None, (h, w)),
            };
            y = blk.forward_t(&y, skip, target, train)?;
        }
        super::fcn::score(&self.head, &y, train)
    }

    fn encoder(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.encoder.forward_t(x, false)?.s32))
    }
}
