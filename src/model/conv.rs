//! The network's convolutions: rstile's CPU kernels behind candle's API.
//!
//! [`Conv2d`] is a drop-in for `candle_nn::Conv2d`. On the CPU in `f32` it
//! runs [`crate::kernels`] as a candle custom op, whose backward pass is the
//! kernels' two gradient functions, so autograd and the optimisers work
//! unchanged; on any other device or dtype it calls candle's own
//! convolution (which is also the reference the tests compare with).
//!
//! [`ConvBn`] pairs a convolution with its batch norm. In training it is the
//! usual conv → BN (batch statistics) → optional residual → optional ReLU.
//! At inference the normalisation is an affine map per channel, so it is
//! folded into the kernel's epilogue together with the residual and the
//! ReLU: one pass over the activations instead of five. In training the
//! batch norm, residual and ReLU are one fused op too ([`super::norm`]). The fold is
//! recomputed from the running statistics on every call (a few hundred
//! floats per layer), so it can never go stale when training updates them.

use super::ledger::{self, Op};
use super::norm::BatchNorm2d;
use crate::kernels::{self, ConvShape, Epilogue};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Storage, Tensor};

/// A square 2-D convolution with torchvision's parameter layout
/// (`weight`: `c_out x c_in x k x k`, optional `bias`: `c_out`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Self {
            weight,
            bias,
            stride,
            padding,
            dilation: 1,
        }
    }

    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The geometry of this layer applied to `x`.
    pub fn shape_for(&self, x: &Tensor) -> Result<ConvShape> {
        let (batch, c_in, height, width) = x.dims4()?;
        let (c_out, wc_in, kh, kw) = self.weight.dims4()?;
        if wc_in != c_in || kh != kw {
            candle_core::bail!(
                "conv2d: input {:?} does not fit weights {:?}",
                x.dims(),
                self.weight.dims()
            );
        }
        let s = ConvShape {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: kh,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        };
        if !s.is_valid() {
            candle_core::bail!("conv2d: kernel larger than the padded input {:?}", x.dims());
        }
        Ok(s)
    }

    /// The geometry of this layer on a `batch x c_in x height x width` input.
    pub fn geometry(&self, batch: usize, height: usize, width: usize) -> ConvShape {
        let d = self.weight.dims();
        ConvShape {
            batch,
            c_in: d[1],
            height,
            width,
            c_out: d[0],
            kernel: d[2],
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    /// Forward FLOPs on a `batch x c_in x height x width` input, and the
    /// output's height and width.
    pub fn flops(&self, batch: usize, height: usize, width: usize) -> (u64, usize, usize) {
        let g = self.geometry(batch, height, width);
        (g.flops(), g.out_height(), g.out_width())
    }

    /// Whether `x` takes rstile's kernels.
    pub fn is_fast(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32
    }

    /// candle's own convolution plus bias: the path for other devices and
    /// dtypes, and the tests' reference.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(x.conv2d(&self.weight, self.padding, self.stride, self.dilation, 1)?)
    }

    /// `y` plus the bias per output channel (recorded for autograd).
    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    /// Inference in one pass: `relu?(conv(x)·scale + shift + bias·scale +
    /// residual)`, with no autograd record. Falls back to candle's ops off
    /// the fast path.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        affine: Option<(&[f32], &[f32])>,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if !self.is_fast(x) {
            let mut y = self.forward_candle(x)?;
            if let Some((scale, shift)) = affine {
                let dev = y.device();
                let c = scale.len();
                let sc = Tensor::from_slice(scale, (1, c, 1, 1), dev)?.to_dtype(y.dtype())?;
                let sh = Tensor::from_slice(shift, (1, c, 1, 1), dev)?.to_dtype(y.dtype())?;
                y = y.broadcast_mul(&sc)?.broadcast_add(&sh)?;
            }
            if let Some(r) = residual {
                y = (y + r)?;
            }
            return if relu { y.relu() } else { Ok(y) };
        }
        let s = self.shape_for(x)?;
        // the bias goes through the same affine map as the convolution
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        let shift: Option<Vec<f32>> = match (affine, &bias) {
            (Some((scale, shift)), Some(b)) => Some(
                shift
                    .iter()
                    .zip(scale)
                    .zip(b)
                    .map(|((t, s), b)| t + s * b)
                    .collect(),
            ),
            (Some((_, shift)), None) => Some(shift.to_vec()),
            (None, b) => b.clone(),
        };
        let x = x.contiguous()?;
        let w = self.weight.contiguous()?;
        let residual = match residual {
            Some(r) => {
                let expected = [s.batch, s.c_out, s.out_height(), s.out_width()];
                if r.dims() != expected {
                    candle_core::bail!("conv2d: residual {:?}, output {expected:?}", r.dims());
                }
                Some(r.to_dtype(DType::F32)?.contiguous()?)
            }
            None => None,
        };
        let y = with_f32(&x, |xs| {
            with_f32(&w, |ws| {
                let run = |rs: Option<&[f32]>| {
                    let ep = Epilogue {
                        scale: affine.map(|a| a.0),
                        shift: shift.as_deref(),
                        residual: rs,
                        relu,
                    };
                    Ok(ledger::timed(Op::ConvForward, || {
                        kernels::conv2d_forward(&s, xs, ws, &ep)
                    }))
                };
                match &residual {
                    Some(r) => with_f32(r, |rs| run(Some(rs))),
                    None => run(None),
                }
            })
        })?;
        Tensor::from_vec(
            y,
            (s.batch, s.c_out, s.out_height(), s.out_width()),
            x.device(),
        )
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.is_fast(x) {
            return self.forward_candle(x);
        }
        let s = self.shape_for(x)?;
        self.add_bias(x.contiguous()?.apply_op2(&self.weight, ConvOp(s))?)
    }
}

/// Runs `f` on the `f32` CPU slice of a contiguous tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => candle_core::bail!("rstile kernels run on the CPU only"),
    }
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    cpu_slice(s, l)
}

/// The values of a contiguous CPU storage of element type `T`.
pub(super) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("rstile kernels need contiguous tensors"),
    }
}

/// `conv(x, w)` as a custom op with a backward pass.
#[derive(Debug, Clone, Copy)]
struct ConvOp(ConvShape);

impl ConvOp {
    /// The shape of this op with the batch of the tensor at hand, so that
    /// the op stays correct if candle hands it a differently sized batch.
    fn with_batch(&self, batch: usize) -> ConvShape {
        ConvShape { batch, ..self.0 }
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "rstile-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.with_batch(l1.dims()[0]);
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let y = ledger::timed(Op::ConvForward, || {
            kernels::conv2d_forward(&s, x, w, &Epilogue::default())
        });
        Ok((
            CpuStorage::F32(y),
            Shape::from((s.batch, s.c_out, s.out_height(), s.out_width())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = self.with_batch(x.dim(0)?);
        let grad = grad.contiguous()?;
        // the network's input needs no gradient: skip half the work there
        let want_input = x.track_op();
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(&grad, |gs| {
                with_f32(&w.contiguous()?, |ws| {
                    Ok(ledger::timed(Op::ConvBackward, || {
                        kernels::conv2d_backward(&s, xs, gs, ws, want_input)
                    }))
                })
            })
        })?;
        let dev = x.device();
        let dx = match dx {
            Some(dx) => Some(Tensor::from_vec(dx, x.shape(), dev)?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), dev)?)))
    }
}

/// A convolution and its batch norm, stored under their own names (e.g.
/// `conv1` and `bn1`), applied as one unit.
#[derive(Debug, Clone)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    /// `relu?(bn(conv(x)) + residual?)`.
    pub fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if !train && self.conv.is_fast(x) {
            let (scale, shift) = self.bn.affine()?;
            return self
                .conv
                .forward_fused(x, Some((&scale, &shift)), residual, relu);
        }
        self.bn
            .forward_fused(&self.conv.forward(x)?, train, residual, relu)
    }
}
