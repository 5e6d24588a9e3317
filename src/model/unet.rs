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
use super::upcat::up_cat;
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
        let x = up_cat(x, skip, target.0, target.1)?;
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

#[cfg(test)]
mod tests {
    use super::super::upcat::{nearest, up_cat};
    use candle_core::{DType, Device, Tensor, Var};

    fn ramp(shape: &[usize], k: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * k).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Central finite differences of `f` at every element of `x` (f64).
    fn numeric(x: &Tensor, f: &dyn Fn(&Tensor) -> f64) -> Vec<f64> {
        let x0 = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-4;
        (0..x0.len())
            .map(|i| {
                let at = |d: f64| {
                    let mut v = x0.clone();
                    v[i] += d;
                    f(&Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap())
                };
                (at(h) - at(-h)) / (2.0 * h)
            })
            .collect()
    }

    /// The decoder's two operations, nearest upsampling (to twice the
    /// size, and to sizes that are no multiple) and the skip
    /// concatenation, have the gradients of finite differences: fused into
    /// one op ([`up_cat`], with and without a skip: its own backward pass)
    /// and composed from candle's ops (the path off the CPU). The
    /// encoder's are those of the ResNet-FCN, checked in `resnet.rs` and
    /// `kernels/conv.rs`.
    #[test]
    fn decoder_ops_have_the_gradients_of_finite_differences() {
        type Op = dyn Fn(&Tensor, &Tensor, usize, usize) -> Tensor;
        let fused: &Op = &|x, s, h, w| up_cat(x, Some(s), h, w).unwrap();
        let composed: &Op = &|x, s, h, w| Tensor::cat(&[&nearest(x, h, w).unwrap(), s], 1).unwrap();
        // no skip: the skip is added after the op, so that it still has a
        // gradient to check (that of a plain sum)
        let alone: &Op = &|x, s, h, w| {
            let up = up_cat(x, None, h, w).unwrap();
            let s = s.narrow(1, 0, 1).unwrap();
            Tensor::cat(&[&up, &s], 1).unwrap()
        };
        for (name, op) in [("fused", fused), ("composed", composed), ("no skip", alone)] {
            for (h, w) in [(10, 6), (9, 7), (5, 3), (15, 9)] {
                let x = Var::from_tensor(&ramp(&[2, 3, 5, 3], 0.7)).unwrap();
                let skip = Var::from_tensor(&ramp(&[2, 2, h, w], 0.3)).unwrap();
                let c = op(x.as_tensor(), skip.as_tensor(), h, w).dim(1).unwrap();
                let r = ramp(&[2, c, h, w], 1.3);
                let f = |x: &Tensor, skip: &Tensor| -> Tensor {
                    let c = op(x, skip, h, w);
                    // a smooth non-linearity, so the check is not of a linear map only
                    (c.sqr().unwrap() * &r).unwrap().sum_all().unwrap()
                };
                let grads = f(x.as_tensor(), skip.as_tensor()).backward().unwrap();
                let scalar = |t: Tensor| t.to_scalar::<f64>().unwrap();
                let gx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
                let gs = grads.get(skip.as_tensor()).unwrap().flatten_all().unwrap();
                let nx = numeric(x.as_tensor(), &|t| scalar(f(t, skip.as_tensor())));
                let ns = numeric(skip.as_tensor(), &|t| scalar(f(x.as_tensor(), t)));
                for (a, n) in gx.to_vec1::<f64>().unwrap().iter().zip(&nx) {
                    assert!(
                        (a - n).abs() < 1e-6,
                        "{name} {h}x{w}: upsampled input {a} vs {n}"
                    );
                }
                for (a, n) in gs.to_vec1::<f64>().unwrap().iter().zip(&ns) {
                    assert!((a - n).abs() < 1e-6, "{name} {h}x{w}: skip {a} vs {n}");
                }
                assert_eq!(x.dtype(), DType::F64);
            }
        }
    }

    /// In `f32` (the network's dtype), the fused op gives exactly the
    /// composed ops' output, and their gradients to rounding (the sums
    /// onto each input pixel run in another order).
    #[test]
    fn fused_up_cat_equals_candle_s_ops_in_f32() {
        let f32t = |shape: &[usize], k: f64| ramp(shape, k).to_dtype(DType::F32).unwrap();
        for (h, w) in [(16, 12), (11, 7)] {
            let x = Var::from_tensor(&f32t(&[3, 4, 8, 6], 0.7)).unwrap();
            let skip = Var::from_tensor(&f32t(&[3, 5, h, w], 0.3)).unwrap();
            let r = f32t(&[3, 9, h, w], 1.3);
            let run = |fused: bool| {
                let (xt, st) = (x.as_tensor(), skip.as_tensor());
                let y = if fused {
                    up_cat(xt, Some(st), h, w).unwrap()
                } else {
                    Tensor::cat(&[&nearest(xt, h, w).unwrap(), st], 1).unwrap()
                };
                let g = (y.sqr().unwrap() * &r).unwrap().sum_all().unwrap();
                let g = g.backward().unwrap();
                let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (v(&y), v(g.get(xt).unwrap()), v(g.get(st).unwrap()))
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a.0, b.0, "{h}x{w}: outputs");
            assert_eq!(a.2, b.2, "{h}x{w}: skip gradients");
            for (p, q) in a.1.iter().zip(&b.1) {
                assert!(
                    (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                    "{h}x{w}: {p} vs {q}"
                );
            }
        }
    }

    /// The two paths of [`nearest`] pick the same pixels as PyTorch's
    /// `floor(i * in / out)`.
    #[test]
    fn nearest_takes_pytorch_s_pixels() {
        let x = ramp(&[1, 1, 3, 2], 1.0);
        let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (h, w) in [(6, 4), (5, 3), (3, 2)] {
            let y = nearest(&x, h, w).unwrap().flatten_all().unwrap();
            let y = y.to_vec1::<f64>().unwrap();
            for i in 0..h {
                for j in 0..w {
                    let (si, sj) = (i * 3 / h, j * 2 / w);
                    assert_eq!(y[i * w + j], v[si * 2 + sj], "{h}x{w} at {i},{j}");
                }
            }
        }
    }
}
