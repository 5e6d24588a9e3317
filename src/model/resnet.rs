//! The ResNet backbone, laid out exactly like torchvision's.
//!
//! Parameter names and shapes follow torchvision's `state_dict` keys
//! (`conv1.weight`, `layer1.0.downsample.0.weight`, ...) so that ImageNet
//! weights can later be imported by adding the `backbone.` prefix, the way
//! torchvision's own segmentation models store them. Only `conv1` differs in
//! shape, because it takes however many bands the imagery has.
//!
//! The max pool is written by hand for two reasons: candle's max pool has no
//! padding, and its backward pass refuses overlapping windows (3x3, stride
//! 2), which would make the backbone untrainable. Since it follows a ReLU,
//! zero padding is equivalent to torchvision's `-inf` padding.

use super::conv::{Conv2d, ConvBn};
use super::ledger::{self, Op};
use super::norm::{batch_norm2d, BatchNorm2d};
use crate::kernels::pool;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// How a convolution's weights are drawn at random initialisation.
#[derive(Debug, Clone, Copy)]
pub(super) enum WInit {
    /// Kaiming normal, fan-out, ReLU gain: what torchvision's ResNet applies
    /// to every convolution of the backbone.
    KaimingFanOut,
    /// PyTorch's `Conv2d` default (uniform in ±1/sqrt(fan_in)), which is what
    /// torchvision's segmentation heads are left with.
    TorchDefault,
}

/// A square convolution whose parameters are `<vb>.weight` (and `<vb>.bias`).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    init: WInit,
) -> Result<Conv2d> {
    let w_init = match init {
        WInit::KaimingFanOut => Init::Kaiming {
            dist: candle_nn::init::NormalOrUniform::Normal,
            fan: candle_nn::init::FanInOut::FanOut,
            non_linearity: candle_nn::init::NonLinearity::ReLU,
        },
        WInit::TorchDefault => {
            let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
            Init::Uniform {
                lo: -bound,
                up: bound,
            }
        }
    };
    let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", w_init)?;
    let bias = if bias {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        Some(vb.get_with_hints(
            c_out,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(Conv2d::new(weight, bias, stride, padding))
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1); in
/// training it uses batch statistics and updates the running ones (which
/// are the `VarMap`'s own variables).
pub(super) fn bn(vb: VarBuilder, c: usize) -> Result<BatchNorm2d> {
    batch_norm2d(vb, c)
}

/// `<conv_vb>` convolution (no bias, Kaiming) followed by `<bn_vb>` batch norm.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_bn(
    conv_vb: VarBuilder,
    bn_vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    init: WInit,
) -> Result<ConvBn> {
    Ok(ConvBn {
        conv: conv(conv_vb, c_in, c_out, k, stride, padding, false, init)?,
        bn: bn(bn_vb, c_out)?,
    })
}

/// The supported depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    R18,
    R34,
    R50,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R34 | Depth::R50 => [3, 4, 6, 3],
        }
    }

    fn expansion(self) -> usize {
        match self {
            Depth::R18 | Depth::R34 => 1,
            Depth::R50 => 4,
        }
    }

    /// Output channels of layer1..layer4.
    pub(super) fn channels(self) -> [usize; 4] {
        let e = self.expansion();
        [64 * e, 128 * e, 256 * e, 512 * e]
    }
}

/// `downsample.0` (1x1 conv) + `downsample.1` (BN) on the identity path.
fn downsample(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<ConvBn> {
    conv_bn(
        vb.pp("0"),
        vb.pp("1"),
        c_in,
        c_out,
        1,
        stride,
        0,
        WInit::KaimingFanOut,
    )
}

/// torchvision's `BasicBlock` (ResNet-18/34).
#[derive(Debug, Clone)]
struct BasicBlock {
    unit1: ConvBn,
    unit2: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn flops(&self, b: usize, h: usize, w: usize) -> (u64, usize, usize) {
        let (f1, h1, w1) = self.unit1.conv.flops(b, h, w);
        let (f2, h2, w2) = self.unit2.conv.flops(b, h1, w1);
        let fd = self
            .downsample
            .as_ref()
            .map_or(0, |d| d.conv.flops(b, h, w).0);
        (f1 + f2 + fd, h2, w2)
    }

    fn new(vb: VarBuilder, c_in: usize, planes: usize, stride: usize) -> Result<Self> {
        let downsample = if stride != 1 || c_in != planes {
            Some(downsample(vb.pp("downsample"), c_in, planes, stride)?)
        } else {
            None
        };
        let k = WInit::KaimingFanOut;
        Ok(Self {
            unit1: conv_bn(vb.pp("conv1"), vb.pp("bn1"), c_in, planes, 3, stride, 1, k)?,
            unit2: conv_bn(vb.pp("conv2"), vb.pp("bn2"), planes, planes, 3, 1, 1, k)?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.unit1.forward_t(x, train, None, true)?;
        let identity = match &self.downsample {
            Some(d) => d.forward_t(x, train, None, false)?,
            None => x.clone(),
        };
        self.unit2.forward_t(&y, train, Some(&identity), true)
    }
}

/// torchvision's `Bottleneck` (ResNet-50), "v1.5": the stride sits on the
/// 3x3 convolution.
#[derive(Debug, Clone)]
struct Bottleneck {
    unit1: ConvBn,
    unit2: ConvBn,
    unit3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn flops(&self, b: usize, h: usize, w: usize) -> (u64, usize, usize) {
        let (f1, h1, w1) = self.unit1.conv.flops(b, h, w);
        let (f2, h2, w2) = self.unit2.conv.flops(b, h1, w1);
        let (f3, h3, w3) = self.unit3.conv.flops(b, h2, w2);
        let fd = self
            .downsample
            .as_ref()
            .map_or(0, |d| d.conv.flops(b, h, w).0);
        (f1 + f2 + f3 + fd, h3, w3)
    }

    /// `dilation` is the 3x3 convolution's (and its padding's): 1 except in
    /// torchvision's dilated layers.
    fn new(
        vb: VarBuilder,
        c_in: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        let width = planes;
        let c_out = planes * 4;
        let downsample = if stride != 1 || c_in != c_out {
            Some(downsample(vb.pp("downsample"), c_in, c_out, stride)?)
        } else {
            None
        };
        let k = WInit::KaimingFanOut;
        Ok(Self {
            unit1: conv_bn(vb.pp("conv1"), vb.pp("bn1"), c_in, width, 1, 1, 0, k)?,
            unit2: dilated(
                conv_bn(
                    vb.pp("conv2"),
                    vb.pp("bn2"),
                    width,
                    width,
                    3,
                    stride,
                    dilation,
                    k,
                )?,
                dilation,
            ),
            unit3: conv_bn(vb.pp("conv3"), vb.pp("bn3"), width, c_out, 1, 1, 0, k)?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.unit1.forward_t(x, train, None, true)?;
        let y = self.unit2.forward_t(&y, train, None, true)?;
        let identity = match &self.downsample {
            Some(d) => d.forward_t(x, train, None, false)?,
            None => x.clone(),
        };
        self.unit3.forward_t(&y, train, Some(&identity), true)
    }
}

/// `unit` with its convolution dilated by `dilation` (a no-op for 1).
fn dilated(unit: ConvBn, dilation: usize) -> ConvBn {
    ConvBn {
        conv: unit.conv.with_dilation(dilation),
        bn: unit.bn,
    }
}

/// torchvision's `replace_stride_with_dilation` for layer2..layer4: a
/// dilated layer keeps the resolution (its stride becomes 1) and multiplies
/// the dilation by the stride it gave up. What `fcn_resnet50` uses is
/// [`DILATE_OS8`] (output stride 8).
pub(super) type Dilate = [bool; 3];

/// No dilation: output stride 32.
pub(super) const DILATE_NONE: Dilate = [false; 3];

/// torchvision's segmentation backbones (`fcn_resnet50`,
/// `deeplabv3_resnet50`): layer3 and layer4 dilated, output stride 8.
pub(super) const DILATE_OS8: Dilate = [false, true, true];

/// The stride and 3x3 dilation of each layer's blocks under `dilate`, as
/// torchvision's `_make_layer` sets them: `(stride of block 0, dilation of
/// block 0, dilation of the other blocks)` for layer1..layer4. Block 0 of a
/// dilated layer keeps the previous layer's dilation.
pub(super) fn layer_plan(dilate: Dilate) -> [(usize, usize, usize); 4] {
    let mut plan = [(1, 1, 1); 4];
    let mut dilation = 1;
    for (l, p) in plan.iter_mut().enumerate() {
        let mut stride = if l == 0 { 1 } else { 2 };
        let previous = dilation;
        if l > 0 && dilate[l - 1] {
            dilation *= stride;
            stride = 1;
        }
        *p = (stride, previous, dilation);
    }
    plan
}

#[derive(Debug, Clone)]
enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn flops(&self, b: usize, h: usize, w: usize) -> (u64, usize, usize) {
        match self {
            Block::Basic(x) => x.flops(b, h, w),
            Block::Bottleneck(x) => x.flops(b, h, w),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Block::Basic(b) => b.forward_t(x, train),
            Block::Bottleneck(b) => b.forward_t(x, train),
        }
    }
}

/// The outputs of layer1..layer4, at strides 4, 8, 16 and 32 (rounded up
/// for sizes that are not multiples of the stride); in a dilated backbone
/// ([`DILATE_OS8`]) `s16` and `s32` are at stride 8 too.
#[derive(Debug, Clone)]
pub(super) struct Features {
    /// The stem's output (after its ReLU, before max pooling), stride 2.
    pub s2: Tensor,
    pub s4: Tensor,
    pub s8: Tensor,
    pub s16: Tensor,
    pub s32: Tensor,
}

/// A torchvision ResNet without its pooling and fully-connected layers.
#[derive(Debug, Clone)]
pub(super) struct ResNet {
    stem: ConvBn,
    layers: [Vec<Block>; 4],
}

impl ResNet {
    /// `vb` is the backbone's root (its paths are prefixed `backbone.` by
    /// the caller).
    pub(super) fn new(depth: Depth, bands: usize, vb: VarBuilder) -> Result<Self> {
        Self::dilated(depth, bands, DILATE_NONE, vb)
    }

    /// A backbone with torchvision's `replace_stride_with_dilation`
    /// (Bottleneck ResNets only, as in torchvision).
    pub(super) fn dilated(
        depth: Depth,
        bands: usize,
        dilate: Dilate,
        vb: VarBuilder,
    ) -> Result<Self> {
        if depth != Depth::R50 && dilate != DILATE_NONE {
            candle_core::bail!("dilated layers need Bottleneck blocks (ResNet-50)");
        }
        let plan = layer_plan(dilate);
        let stem = conv_bn(
            vb.pp("conv1"),
            vb.pp("bn1"),
            bands,
            64,
            7,
            2,
            3,
            WInit::KaimingFanOut,
        )?;
        let mut c_in = 64;
        let planes = [64, 128, 256, 512];
        let mut layers: [Vec<Block>; 4] = Default::default();
        for (l, layer) in layers.iter_mut().enumerate() {
            let vbl = vb.pp(format!("layer{}", l + 1));
            let (first_stride, first_dilation, dilation) = plan[l];
            for i in 0..depth.blocks()[l] {
                let (stride, d) = if i == 0 {
                    (first_stride, first_dilation)
                } else {
                    (1, dilation)
                };
                let block = match depth {
                    Depth::R18 | Depth::R34 => {
                        Block::Basic(BasicBlock::new(vbl.pp(i), c_in, planes[l], stride)?)
                    }
                    Depth::R50 => {
                        Block::Bottleneck(Bottleneck::new(vbl.pp(i), c_in, planes[l], stride, d)?)
                    }
                };
                layer.push(block);
                c_in = planes[l] * depth.expansion();
            }
        }
        Ok(Self { stem, layers })
    }

    /// Convolution FLOPs of a forward pass, and the `(height, width)` of
    /// layer1..layer4's outputs.
    pub(super) fn flops(&self, b: usize, h: usize, w: usize) -> (u64, [(usize, usize); 4]) {
        let (mut total, h, w) = self.stem.conv.flops(b, h, w);
        // the 3x3 / 2 max pool with padding 1
        let (mut h, mut w) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let mut sizes = [(0, 0); 4];
        for (l, layer) in self.layers.iter().enumerate() {
            for block in layer {
                let (f, h2, w2) = block.flops(b, h, w);
                total += f;
                (h, w) = (h2, w2);
            }
            sizes[l] = (h, w);
        }
        (total, sizes)
    }

    pub(super) fn forward_t(&self, x: &Tensor, train: bool) -> Result<Features> {
        let s2 = self.stem.forward_t(x, train, None, true)?;
        let mut x = max_pool(&s2, train)?;
        let mut outs = Vec::with_capacity(4);
        for layer in &self.layers {
            for block in layer {
                x = block.forward_t(&x, train)?;
            }
            outs.push(x.clone());
        }
        let mut it = outs.into_iter();
        let mut next = || it.next().expect("four layers");
        Ok(Features {
            s2,
            s4: next(),
            s8: next(),
            s16: next(),
            s32: next(),
        })
    }
}

/// torchvision's `MaxPool2d(3, 2, padding=1)`: rstile's kernel, with its
/// backward pass, on the CPU in f32; candle's ops elsewhere.
pub(super) fn max_pool(x: &Tensor, train: bool) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(MaxPoolOp::default());
    }
    if train {
        max_pool_3x3_s2_differentiable(x)
    } else {
        max_pool_3x3_s2(x)
    }
}

/// The pool as a candle op; the forward pass leaves each output's source
/// index for the backward pass.
#[derive(Default)]
struct MaxPoolOp {
    indices: std::sync::Mutex<Vec<u32>>,
}

impl candle_core::CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "rstile-max-pool-3x3-s2"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = super::conv::f32_slice(s, l)?;
        let (y, idx) = ledger::timed(Op::PoolForward, || pool::max_pool_3x3_s2(x, b * c, h, w));
        *self.indices.lock().expect("pool lock") = idx;
        Ok((
            candle_core::CpuStorage::F32(y),
            (b, c, pool::pooled(h), pool::pooled(w)).into(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let dy = dy.contiguous()?;
        let idx = self.indices.lock().expect("pool lock");
        let dx = super::conv::with_f32(&dy, |g| {
            Ok(ledger::timed(Op::PoolBackward, || {
                pool::max_pool_3x3_s2_backward(g, &idx, b * c, h, w)
            }))
        })?;
        Ok(Some(Tensor::from_vec(dx, (b, c, h, w), x.device())?))
    }
}

/// torchvision's `MaxPool2d(3, 2, padding=1)` for non-negative input, with
/// candle's pooling kernel. Forward only.
pub(super) fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    x.max_pool2d_with_stride(3, 2)
}

/// Same result as [`max_pool_3x3_s2`], built from strided picks and
/// element-wise maxima, all of which have a backward pass in candle.
pub(super) fn max_pool_3x3_s2_differentiable(x: &Tensor) -> Result<Tensor> {
    // Separable: the max over a 3x3 window is the max over 3 columns of the
    // max over 3 rows. Zero padding on the left/top is torchvision's
    // padding=1; the extra zero on the right/bottom only lets the strided
    // picks below be written as "narrow then take every other element".
    let x = x.pad_with_zeros(2, 1, 2)?.pad_with_zeros(3, 1, 2)?;
    let (_, _, hp, wp) = x.dims4()?;
    let (ho, wo) = ((hp - 3 - 1) / 2 + 1, (wp - 3 - 1) / 2 + 1);
    let rows = max3(
        &every_other(&x, 2, 0, ho)?,
        &every_other(&x, 2, 1, ho)?,
        &every_other(&x, 2, 2, ho)?,
    )?;
    max3(
        &every_other(&rows, 3, 0, wo)?,
        &every_other(&rows, 3, 1, wo)?,
        &every_other(&rows, 3, 2, wo)?,
    )
}

fn max3(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    a.maximum(b)?.maximum(c)
}

/// Elements `start, start + 2, ..., start + 2 (count - 1)` along `dim`.
fn every_other(x: &Tensor, dim: usize, start: usize, count: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let y = x.narrow(dim, start, 2 * count)?.contiguous()?;
    dims[dim] = count;
    dims.insert(dim + 1, 2);
    y.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn layer_plans_follow_torchvision() {
        assert_eq!(
            layer_plan(DILATE_NONE),
            [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]
        );
        // fcn_resnet50: layer3 block 0 at dilation 1, then 2; layer4 block 0
        // at 2, then 4
        assert_eq!(
            layer_plan(DILATE_OS8),
            [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
        );
        assert_eq!(
            layer_plan([true, true, true]),
            [(1, 1, 1), (1, 1, 2), (1, 2, 4), (1, 4, 8)]
        );
    }

    #[test]
    fn max_pools_agree_with_each_other_and_with_torch_sizes() {
        let dev = Device::Cpu;
        for (h, w) in [(8, 8), (7, 9), (1, 2), (33, 16)] {
            let x = Tensor::rand(0f32, 1f32, (2, 3, h, w), &dev).unwrap();
            let a = max_pool_3x3_s2(&x).unwrap();
            let b = max_pool_3x3_s2_differentiable(&x).unwrap();
            // torch: floor((h + 2 - 3) / 2) + 1
            assert_eq!(a.dims(), &[2, 3, (h - 1) / 2 + 1, (w - 1) / 2 + 1]);
            assert_eq!(a.dims(), b.dims());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    /// rstile's pool op against candle's composition: the same values and,
    /// on tie-free input, the same gradient.
    #[test]
    fn pool_op_matches_the_candle_composition() {
        for (h, w) in [(8, 8), (7, 9), (1, 2), (33, 16)] {
            let n = 2 * 3 * h * w;
            // distinct positive values: no ties
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 + 0.5).collect();
            let x = candle_core::Var::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap();
            let a = max_pool(x.as_tensor(), true).unwrap();
            let b = max_pool_3x3_s2_differentiable(x.as_tensor()).unwrap();
            assert_eq!(a.dims(), b.dims());
            let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            let g = Tensor::rand(0f32, 1f32, a.dims(), &Device::Cpu).unwrap();
            let ga = (a * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            let d = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "{h}x{w}");
        }
    }

    #[test]
    fn differentiable_max_pool_has_a_gradient() {
        let v = candle_core::Var::rand(0f32, 1f32, (1, 2, 6, 6), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_differentiable(v.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap();
        // Each output routes its unit gradient to its window's maximum.
        let total = g.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((total - 18.0).abs() < 1e-5, "{total}");
        assert_eq!(g.dtype(), DType::F32);
    }
}
