//! Normalisations (BatchNormalization at inference, InstanceNormalization,
//! GroupNormalization), Softmax and the reductions.

use super::attrs::{Attrs, Refusal};
use super::shape::axis;
use super::{floats, ints};
use candle_core::{DType, Result, Tensor, D};

/// `(scale, shift)` per channel of an inference batch norm:
/// `y = x * scale + shift`.
pub(crate) fn bn_affine(
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (g, b, m, v) = (floats(gamma)?, floats(beta)?, floats(mean)?, floats(var)?);
    let mut scale = Vec::with_capacity(g.len());
    let mut shift = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        // in f32, as onnxruntime and PyTorch compute it
        let s = g[i] as f32 / (v[i] as f32 + eps).sqrt();
        scale.push(s);
        shift.push(b[i] as f32 - m[i] as f32 * s);
    }
    Ok((scale, shift))
}

/// `x * scale[c] + shift[c]` over the channel axis 1.
pub(crate) fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32]) -> Result<Tensor> {
    let mut dims = vec![1usize; x.rank()];
    dims[1] = scale.len();
    let dev = x.device();
    let s = Tensor::from_slice(scale, dims.as_slice(), dev)?.to_dtype(x.dtype())?;
    let t = Tensor::from_slice(shift, dims.as_slice(), dev)?.to_dtype(x.dtype())?;
    x.broadcast_mul(&s)?.broadcast_add(&t)
}

pub(crate) fn batch_norm(x: &Tensor, p: [&Tensor; 4], eps: f32) -> Result<Tensor> {
    let (scale, shift) = bn_affine(p[0], p[1], p[2], p[3], eps)?;
    channel_affine(x, &scale, &shift)
}

/// Normalises each `(n, group)` slice over the rest: `x` is reshaped to
/// `(N, G, -1)`.
fn normalize_groups(x: &Tensor, groups: usize, eps: f32) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?.reshape((dims[0], groups, ()))?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps as f64)?.sqrt()?)?;
    y.reshape(dims)?.to_dtype(dt)
}

fn per_channel(x: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1usize; x.rank()];
    dims[1] = x.dim(1)?;
    let s = scale.to_device(x.device())?.reshape(dims.as_slice())?;
    let b = bias.to_device(x.device())?.reshape(dims.as_slice())?;
    x.broadcast_mul(&s)?.broadcast_add(&b)
}

pub(crate) fn instance_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.dim(1)?;
    let y = normalize_groups(&x.reshape((x.dim(0)? * c, 1, ()))?, 1, eps)?;
    per_channel(&y.reshape(x.dims())?, scale, bias)
}

/// GroupNormalization: opset 18 has a scale and bias per group, opset 21
/// per channel; told apart by their length.
pub(crate) fn group_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f32,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("GroupNormalization: {c} channels in {groups} groups");
    }
    let y = normalize_groups(x, groups, eps)?;
    let (scale, bias) = if scale.elem_count() == c {
        (scale.clone(), bias.clone())
    } else {
        let rep = |t: &Tensor| -> Result<Tensor> {
            t.reshape((groups, 1))?
                .broadcast_as((groups, c / groups))?
                .reshape(c)
        };
        (rep(scale)?, rep(bias)?)
    };
    per_channel(&y, &scale, &bias)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Softmax {
    pub axis: i64,
    pub log: bool,
    /// Opset < 13: the input is seen as 2-D, `[..axis]` by `[axis..]`.
    pub coerce_2d: bool,
}

impl Softmax {
    pub fn compile(a: &Attrs, opset: i64, log: bool) -> std::result::Result<Softmax, Refusal> {
        let coerce_2d = opset < 13;
        Ok(Softmax {
            axis: a.int("axis", if coerce_2d { 1 } else { -1 })?,
            log,
            coerce_2d,
        })
    }

    pub fn eval(&self, x: &Tensor) -> Result<Tensor> {
        let ax = axis(self.axis, x.rank())?;
        if self.coerce_2d && ax + 1 != x.rank() {
            let a: usize = x.dims()[..ax].iter().product();
            let y = Softmax {
                axis: 1,
                coerce_2d: false,
                log: self.log,
            }
            .eval(&x.reshape((a, ()))?)?;
            return y.reshape(x.dims());
        }
        let max = x.max_keepdim(ax)?;
        let d = x.broadcast_sub(&max)?;
        let e = d.exp()?;
        let s = e.sum_keepdim(ax)?;
        if self.log {
            d.broadcast_sub(&s.log()?)
        } else {
            e.broadcast_div(&s)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ReduceKind {
    Mean,
    Sum,
    Max,
    Min,
    L2,
}

#[derive(Debug, Clone)]
pub(crate) struct Reduce {
    pub kind: ReduceKind,
    /// From the attribute (older opsets); else from the second input.
    pub axes: Option<Vec<i64>>,
    pub keepdims: bool,
    pub noop_with_empty_axes: bool,
}

impl Reduce {
    pub fn compile(op: &str, a: &Attrs) -> std::result::Result<Reduce, Refusal> {
        let kind = match op {
            "ReduceMean" => ReduceKind::Mean,
            "ReduceSum" => ReduceKind::Sum,
            "ReduceMax" => ReduceKind::Max,
            "ReduceMin" => ReduceKind::Min,
            "ReduceL2" => ReduceKind::L2,
            _ => unreachable!(),
        };
        Ok(Reduce {
            kind,
            axes: a.ints("axes")?,
            keepdims: a.int("keepdims", 1)? != 0,
            noop_with_empty_axes: a.int("noop_with_empty_axes", 0)? != 0,
        })
    }

    pub fn eval(&self, x: &Tensor, axes_in: Option<&Tensor>) -> Result<Tensor> {
        let axes = match (&self.axes, axes_in) {
            (Some(a), _) => a.clone(),
            (None, Some(t)) => ints(t)?,
            (None, None) => vec![],
        };
        if axes.is_empty() && self.noop_with_empty_axes {
            return Ok(x.clone());
        }
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..x.rank()).collect()
        } else {
            axes.iter()
                .map(|&a| axis(a, x.rank()))
                .collect::<Result<_>>()?
        };
        ax.sort_unstable();
        ax.dedup();
        let mut y = if self.kind == ReduceKind::L2 {
            x.sqr()?
        } else {
            x.clone()
        };
        for &a in ax.iter().rev() {
            y = match self.kind {
                ReduceKind::Mean => y.mean_keepdim(a)?,
                ReduceKind::Sum | ReduceKind::L2 => y.sum_keepdim(a)?,
                ReduceKind::Max => y.max_keepdim(a)?,
                ReduceKind::Min => y.min_keepdim(a)?,
            };
        }
        if self.kind == ReduceKind::L2 {
            y = y.sqrt()?;
        }
        if !self.keepdims {
            for &a in ax.iter().rev() {
                y = y.squeeze(a)?;
            }
        }
        Ok(y)
    }
}

pub(crate) fn argmax(x: &Tensor, ax: i64, keepdims: bool) -> Result<Tensor> {
    let a = axis(ax, x.rank())?;
    let y = x.argmax_keepdim(a)?.to_dtype(DType::I64)?;
    if keepdims {
        Ok(y)
    } else {
        y.squeeze(a)
    }
}
