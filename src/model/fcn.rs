//! The ResNet FCNs (`resnet*-fcn`, `resnet*-fcn8s`): torchvision's FCN
//! head on the [`ResNet`] backbone, with FCN-8s skips on request, and the
//! bilinear upsampling that all networks end with.
//!
//! Upsampling is done here as two matrix products, `A_h · X · A_wᵀ`, with
//! interpolation matrices that reproduce PyTorch's
//! `interpolate(mode="bilinear", align_corners=False)`. candle's own
//! `upsample_bilinear2d` has no backward pass (and nearest upsampling has a
//! wrong one for our use), while matmul is differentiable on every backend.
//! The products are arranged so that the interpolation matrix is the
//! (broadcast) left operand: candle then runs one GEMM per (sample,
//! channel), which keeps the result for a sample independent of what else
//! is in the batch. Folding the batch into the rows of one large GEMM would
//! be marginally faster but leaves per-sample results at the mercy of the
//! GEMM's blocking.

use super::arch::{NetSpec, Network};
use super::conv::{Conv2d, ConvBn};
use super::resnet::{conv, conv_bn, Depth, Dilate, ResNet, WInit, DILATE_NONE, DILATE_OS8};
use crate::rng::{mix, GOLDEN};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Interpolation weights of PyTorch's bilinear resize (align_corners =
/// False, no antialiasing) along one axis: a row-major `n_out x n_in`
/// matrix whose row `i` holds the weights of output sample `i`.
pub(super) fn interp_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    // Same arithmetic (in f32) as ATen's `area_pixel_compute_source_index`.
    let scale = n_in as f32 / n_out as f32;
    for i in 0..n_out {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(n_in - 1);
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        let l0 = 1.0 - l1;
        m[i * n_in + i0] += l0;
        m[i * n_in + i1] += l1;
    }
    m
}

/// Bilinear resize of a `(B, C, H, W)` tensor to `(B, C, h, w)`, PyTorch
/// semantics (align_corners = False), differentiable.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, h_in, w_in) = x.dims4()?;
    if h == 0 || w == 0 || h_in == 0 || w_in == 0 {
        candle_core::bail!("cannot resize {:?} to {h}x{w}", x.dims());
    }
    let dev = x.device();
    let mut y = x.contiguous()?;
    if w != w_in {
        // (B, C, w, H_in) = A_w · Xᵀ, one GEMM per (sample, channel).
        let a = Tensor::from_vec(interp_matrix(w_in, w), (w, w_in), dev)?.to_dtype(x.dtype())?;
        let a = a.broadcast_as((b, c, w, w_in))?;
        y = a.matmul(&y.transpose(2, 3)?)?.transpose(2, 3)?;
    }
    if h != h_in {
        let a = Tensor::from_vec(interp_matrix(h_in, h), (h, h_in), dev)?.to_dtype(x.dtype())?;
        let a = a.broadcast_as((b, c, h, h_in))?;
        y = a.matmul(&y)?;
    }
    y.contiguous()
}

/// torchvision's `FCNHead`: conv3x3 → BN → ReLU → dropout(0.1) → conv1x1,
/// stored as `classifier.0`, `.1` and `.4` like `torchvision`'s `fcn_resnet*`.
#[derive(Debug, Clone)]
struct FcnHead {
    unit0: ConvBn,
    conv4: Conv2d,
    dropout_seed: Arc<AtomicU64>,
}

impl FcnHead {
    fn new(
        vb: VarBuilder,
        c_in: usize,
        classes: usize,
        dropout_seed: Arc<AtomicU64>,
    ) -> Result<Self> {
        let inter = c_in / 4;
        Ok(Self {
            dropout_seed,
            unit0: conv_bn(
                vb.pp("0"),
                vb.pp("1"),
                c_in,
                inter,
                3,
                1,
                1,
                WInit::TorchDefault,
            )?,
            conv4: conv(
                vb.pp("4"),
                inter,
                classes,
                1,
                1,
                0,
                true,
                WInit::TorchDefault,
            )?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.unit0.forward_t(x, train, None, true)?;
        if train {
            let seed = self.dropout_seed.fetch_add(1, Ordering::Relaxed);
            self.conv4.forward(&seeded_dropout(&y, 0.1, seed)?)
        } else {
            self.conv4.forward_fused(&y, None, None, false)
        }
    }
}

/// Dropout with a mask drawn from `seed` (the splitmix64 finaliser per
/// element), so that training is reproducible; candle's own dropout uses an
/// unseeded generator.
pub(super) fn seeded_dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let n = x.elem_count();
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..n as u64)
        .map(|i| {
            let z = mix(seed.wrapping_mul(GOLDEN) ^ i.wrapping_add(0x632b_e59b_d9b4_e019));
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            if u < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    let m = Tensor::from_vec(mask, x.shape(), x.device())?;
    x.mul(&m)
}

/// The 1x1 score layers of FCN-8s on layer3 (stride 16) and layer2 (8).
#[derive(Debug, Clone)]
struct Skips {
    score16: Conv2d,
    score8: Conv2d,
}

/// The registry's constructor of the ResNet FCNs of depth `depth`, with the
/// FCN-8s skips when `fcn8s` is set.
pub(super) fn build(
    depth: Depth,
    fcn8s: bool,
    spec: &NetSpec,
    vb: VarBuilder,
) -> Result<Box<dyn Network>> {
    Ok(Box::new(Fcn::new(
        depth,
        fcn8s,
        DILATE_NONE,
        spec.bands,
        spec.classes,
        vb,
        spec.dropout_seed.clone(),
    )?))
}

/// The registry's constructor of `resnet50-fcn-os8`: torchvision's
/// `fcn_resnet50` (layer3 and layer4 dilated, output stride 8, the FCN head
/// on layer4), without its auxiliary classifier.
pub(super) fn build_os8(spec: &NetSpec, vb: VarBuilder) -> Result<Box<dyn Network>> {
    Ok(Box::new(Fcn::new(
        Depth::R50,
        false,
        DILATE_OS8,
        spec.bands,
        spec.classes,
        vb,
        spec.dropout_seed.clone(),
    )?))
}

/// A ResNet with an FCN-32s head, or an FCN-8s head when `skips` is set;
/// with a dilated backbone, the head sits on layer4 at stride 8.
#[derive(Debug, Clone)]
pub(super) struct Fcn {
    backbone: ResNet,
    head: FcnHead,
    skips: Option<Skips>,
}

impl Fcn {
    pub(super) fn new(
        depth: Depth,
        fcn8s: bool,
        dilate: Dilate,
        bands: usize,
        classes: usize,
        vb: VarBuilder,
        dropout_seed: Arc<AtomicU64>,
    ) -> Result<Self> {
        let ch = depth.channels();
        let backbone = ResNet::dilated(depth, bands, dilate, vb.pp("backbone"))?;
        let head = FcnHead::new(vb.pp("classifier"), ch[3], classes, dropout_seed)?;
        let skips = if fcn8s {
            Some(Skips {
                score16: conv(
                    vb.pp("score16"),
                    ch[2],
                    classes,
                    1,
                    1,
                    0,
                    true,
                    WInit::TorchDefault,
                )?,
                score8: conv(
                    vb.pp("score8"),
                    ch[1],
                    classes,
                    1,
                    1,
                    0,
                    true,
                    WInit::TorchDefault,
                )?,
            })
        } else {
            None
        };
        Ok(Self {
            backbone,
            head,
            skips,
        })
    }
}

impl Network for Fcn {
    /// Convolution FLOPs of a forward pass on `b` windows of `h x w`.
    fn flops(&self, b: usize, h: usize, w: usize) -> u64 {
        let (mut total, sizes) = self.backbone.flops(b, h, w);
        let (h32, w32) = sizes[3];
        let (f0, h0, w0) = self.head.unit0.conv.flops(b, h32, w32);
        total += f0 + self.head.conv4.flops(b, h0, w0).0;
        if let Some(s) = &self.skips {
            total += s.score16.flops(b, sizes[2].0, sizes[2].1).0;
            total += s.score8.flops(b, sizes[1].0, sizes[1].1).0;
        }
        total
    }

    fn encoder(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backbone.forward_t(x, false)?.s32))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let f = self.backbone.forward_t(x, train)?;
        let mut y = self.head.forward_t(&f.s32, train)?;
        if let Some(s) = &self.skips {
            // Each step upsamples to the exact size of the skip tensor, so
            // sizes that are not multiples of 32 work too.
            let s16 = score(&s.score16, &f.s16, train)?;
            let (_, _, h16, w16) = s16.dims4()?;
            y = (resize_bilinear(&y, h16, w16)? + s16)?;
            let s8 = score(&s.score8, &f.s8, train)?;
            let (_, _, h8, w8) = s8.dims4()?;
            y = (resize_bilinear(&y, h8, w8)? + s8)?;
        }
        resize_bilinear(&y, h, w)
    }
}

/// A 1x1 scoring convolution with its bias: recorded for autograd in
/// training, one fused pass at inference.
pub(super) fn score(conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
    if train {
        conv.forward(x)
    } else {
        conv.forward_fused(x, None, None, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// PyTorch's bilinear resize of one plane, written pixel by pixel.
    fn reference(x: &[f32], h_in: usize, w_in: usize, h: usize, w: usize) -> Vec<f32> {
        let src = |i: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
            let scale = n_in as f32 / n_out as f32;
            let s = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, s - i0 as f32)
        };
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            let (y0, y1, ly) = src(y, h_in, h);
            for xx in 0..w {
                let (x0, x1, lx) = src(xx, w_in, w);
                let p = |r: usize, c: usize| x[r * w_in + c];
                out[y * w + xx] = (1.0 - ly) * ((1.0 - lx) * p(y0, x0) + lx * p(y0, x1))
                    + ly * ((1.0 - lx) * p(y1, x0) + lx * p(y1, x1));
            }
        }
        out
    }

    #[test]
    fn bilinear_matches_pytorch_known_values() {
        // torch.nn.functional.interpolate(torch.arange(4.).view(1, 1, 1, 4),
        //     size=(1, 8), mode="bilinear", align_corners=False)
        let x = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y = resize_bilinear(&x, 1, 8).unwrap().flatten_all().unwrap();
        let want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        assert_eq!(y.to_vec1::<f32>().unwrap(), want);
        // Downsampling 4 -> 2 samples at 0.5 and 2.5 (no antialiasing).
        let y = resize_bilinear(&x, 1, 2).unwrap().flatten_all().unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.5, 2.5]);
    }

    #[test]
    fn bilinear_matches_scalar_reference() {
        let dev = Device::Cpu;
        let cases = [
            (5, 7, 11, 4),
            (8, 8, 256, 256),
            (3, 2, 67, 45),
            (9, 13, 9, 29),
            (1, 1, 5, 3),
            (16, 9, 16, 9),
            (40, 33, 7, 5),
        ];
        for (h_in, w_in, h, w) in cases {
            let x = Tensor::randn(0f32, 1f32, (2, 3, h_in, w_in), &dev).unwrap();
            let y = resize_bilinear(&x, h, w).unwrap();
            assert_eq!(y.dims(), &[2, 3, h, w]);
            for b in 0..2 {
                for c in 0..3 {
                    let plane = x.get(b).unwrap().get(c).unwrap();
                    let plane = plane.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let want = reference(&plane, h_in, w_in, h, w);
                    let got = y.get(b).unwrap().get(c).unwrap();
                    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for (g, r) in got.iter().zip(&want) {
                        assert!(
                            (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                            "{h_in}x{w_in}->{h}x{w}: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interp_rows_sum_to_one() {
        for (n_in, n_out) in [(1, 4), (4, 1), (7, 3), (8, 256), (33, 67)] {
            let m = interp_matrix(n_in, n_out);
            for row in m.chunks(n_in) {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn bilinear_has_the_adjoint_gradient() {
        // d(sum(w ⊙ resize(x)))/dx = resize's adjoint applied to w.
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1f32, (1, 2, 3, 5), &dev).unwrap();
        let wgt = Tensor::randn(0f32, 1f32, (1, 2, 7, 4), &dev).unwrap();
        let y = resize_bilinear(x.as_tensor(), 7, 4).unwrap();
        let loss = (y * &wgt).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let ah = Tensor::from_vec(interp_matrix(3, 7), (7, 3), &dev).unwrap();
        let aw = Tensor::from_vec(interp_matrix(5, 4), (4, 5), &dev).unwrap();
        // Aₕᵀ · W · A_w, per channel.
        let want = ah
            .t()
            .unwrap()
            .broadcast_matmul(&wgt)
            .unwrap()
            .broadcast_matmul(&aw)
            .unwrap();
        let d = (g - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
