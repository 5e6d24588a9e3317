//! Shape arithmetic and tensor rearrangement: Shape, Size, Gather, Slice,
//! Concat, (Un)squeeze, Reshape, Flatten, Transpose, Expand, Tile, Range,
//! ConstantOfShape, Split, Pad.
//!
//! Shape values are small `i64` tensors on the CPU; the graph folds them
//! once per input shape (see `eval.rs`).

use super::attrs::{Attrs, Refusal};
use super::elementwise::broadcast_shape;
use super::ints;
use candle_core::{DType, Device, Result, Storage, Tensor};

/// An axis in `-rank..rank` as an index.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        candle_core::bail!("axis {a} is out of range for rank {rank}");
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

pub(crate) fn i64_tensor(v: Vec<i64>) -> Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
}

pub(crate) fn shape(x: &Tensor, start: i64, end: Option<i64>) -> Result<Tensor> {
    let d: Vec<i64> = x.dims().iter().map(|&v| v as i64).collect();
    let r = d.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    i64_tensor(if s < e { d[s..e].to_vec() } else { vec![] })
}

pub(crate) fn size(x: &Tensor) -> Result<Tensor> {
    Tensor::new(x.elem_count() as i64, &Device::Cpu)
}

fn index_tensor(idx: &[i64], dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, idx.len(), dev)
}

pub(crate) fn gather(x: &Tensor, indices: &Tensor, ax: i64) -> Result<Tensor> {
    let ax = axis(ax, x.rank())?;
    let n = x.dim(ax)? as i64;
    let idx = ints(indices)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                candle_core::bail!("Gather index {i} is out of range for a dimension of {n}");
            }
            Ok(j)
        })
        .collect::<Result<Vec<_>>>()?;
    let y = x
        .contiguous()?
        .index_select(&index_tensor(&idx, x.device())?, ax)?;
    let mut dims = x.dims()[..ax].to_vec();
    dims.extend_from_slice(indices.dims());
    dims.extend_from_slice(&x.dims()[ax + 1..]);
    y.reshape(dims)
}

/// Slice with ONNX's clamping rules, any step.
pub(crate) fn slice(
    x: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Tensor> {
    let mut y = x.clone();
    for i in 0..starts.len() {
        let ax = match axes {
            Some(a) => axis(a[i], x.rank())?,
            None => i,
        };
        let step = steps.map_or(1, |s| s[i]);
        if step == 0 {
            candle_core::bail!("Slice step 0");
        }
        let n = x.dim(ax)? as i64;
        let norm = |v: i64| if v < 0 { v + n } else { v };
        let (mut s, mut e) = (
            norm(starts[i]),
            norm(ends.get(i).copied().unwrap_or(i64::MAX)),
        );
        if ends[i] == i64::MAX {
            e = n;
        }
        if step > 0 {
            s = s.clamp(0, n);
            e = e.clamp(0, n);
            if step == 1 {
                y = y.narrow(ax, s as usize, (e - s).max(0) as usize)?;
                continue;
            }
        } else {
            s = s.clamp(0, n - 1);
            e = if ends[i] <= i64::MIN / 2 {
                -1
            } else {
                e.clamp(-1, n - 1)
            };
        }
        let mut idx = vec![];
        let mut j = s;
        while (step > 0 && j < e) || (step < 0 && j > e) {
            idx.push(j);
            j += step;
        }
        y = y
            .contiguous()?
            .index_select(&index_tensor(&idx, y.device())?, ax)?;
    }
    Ok(y)
}

pub(crate) fn concat(xs: &[Tensor], ax: i64) -> Result<Tensor> {
    let ax = axis(ax, xs[0].rank())?;
    let dev = xs
        .iter()
        .map(|t| t.device())
        .find(|d| !d.is_cpu())
        .unwrap_or(&Device::Cpu)
        .clone();
    let xs = xs
        .iter()
        .filter(|t| t.elem_count() > 0 || xs.len() == 1)
        .map(|t| t.to_device(&dev))
        .collect::<Result<Vec<_>>>()?;
    if xs.is_empty() {
        candle_core::bail!("Concat of empty tensors only");
    }
    let fits = xs.iter().all(|t| {
        t.rank() == xs[0].rank()
            && t.dtype() == DType::F32
            && t.dims()[..ax] == xs[0].dims()[..ax]
            && t.dims()[ax + 1..] == xs[0].dims()[ax + 1..]
    });
    if !(dev.is_cpu() && fits && xs.len() > 1) {
        return Tensor::cat(&xs, ax);
    }
    // rstile's copies, in parallel
    let xs = xs
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let outer: usize = xs[0].dims()[..ax].iter().product();
    let guards: Vec<_> = xs.iter().map(|t| t.storage_and_layout()).collect();
    let mut parts = vec![];
    for ((storage, layout), t) in guards.iter().zip(&xs) {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("Concat: a tensor left the CPU");
        };
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("Concat: not contiguous".into()))?;
        let v = &cpu.as_slice::<f32>()?[a..b];
        parts.push((v, t.elem_count() / outer.max(1)));
    }
    let mut dims = xs[0].dims().to_vec();
    dims[ax] = xs.iter().map(|t| t.dims()[ax]).sum();
    let y = crate::kernels::concat::concat(&parts, outer);
    drop(guards);
    Tensor::from_vec(y, dims, &Device::Cpu)
}

pub(crate) fn unsqueeze(x: &Tensor, axes: &[i64]) -> Result<Tensor> {
    let r = x.rank() + axes.len();
    let mut ax = axes
        .iter()
        .map(|&a| axis(a, r))
        .collect::<Result<Vec<_>>>()?;
    ax.sort_unstable();
    let mut dims = x.dims().to_vec();
    for a in ax {
        dims.insert(a, 1);
    }
    x.reshape(dims)
}

pub(crate) fn squeeze(x: &Tensor, axes: Option<&[i64]>) -> Result<Tensor> {
    let dims = x.dims();
    let drop: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, dims.len()))
            .collect::<Result<_>>()?,
        None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
    };
    let keep: Vec<usize> = (0..dims.len())
        .filter(|i| !drop.contains(i))
        .map(|i| dims[i])
        .collect();
    x.reshape(keep)
}

pub(crate) fn reshape(x: &Tensor, shape: &[i64], allowzero: bool) -> Result<Tensor> {
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 if !allowzero => dims.push(x.dim(i)?),
            -1 => {
                infer = Some(i);
                dims.push(1);
            }
            s if s < 0 => candle_core::bail!("Reshape to {shape:?}"),
            s => dims.push(s as usize),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        if known == 0 || !x.elem_count().is_multiple_of(known) {
            candle_core::bail!("cannot reshape {:?} to {shape:?}", x.dims());
        }
        dims[i] = x.elem_count() / known;
    }
    x.reshape(dims)
}

pub(crate) fn flatten(x: &Tensor, ax: i64) -> Result<Tensor> {
    let r = x.rank();
    let ax = if ax == r as i64 { r } else { axis(ax, r)? };
    let a: usize = x.dims()[..ax].iter().product();
    let b: usize = x.dims()[ax..].iter().product();
    x.reshape((a, b))
}

pub(crate) fn transpose(x: &Tensor, perm: Option<&[i64]>) -> Result<Tensor> {
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&a| axis(a, x.rank()))
            .collect::<Result<_>>()?,
        None => (0..x.rank()).rev().collect(),
    };
    x.permute(perm)?.contiguous()
}

pub(crate) fn expand(x: &Tensor, shape: &[i64]) -> Result<Tensor> {
    let s: Vec<usize> = shape.iter().map(|&v| v.max(0) as usize).collect();
    let out = broadcast_shape(&[x.dims(), &s])?;
    if out == x.dims() {
        return Ok(x.clone());
    }
    x.broadcast_as(out)?.contiguous()
}

pub(crate) fn tile(x: &Tensor, repeats: &[i64]) -> Result<Tensor> {
    let r: Vec<usize> = repeats.iter().map(|&v| v as usize).collect();
    x.repeat(r)
}

pub(crate) fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let dt = start.dtype();
    let (s, l, d) = (
        super::floats(start)?[0],
        super::floats(limit)?[0],
        super::floats(delta)?[0],
    );
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    let v: Vec<f64> = (0..n).map(|i| s + i as f64 * d).collect();
    Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dt)
}

/// ConstantOfShape: `value` is a one-element tensor (f32 0 by default).
pub(crate) fn constant_of_shape(value: Option<&Tensor>, shape: &[i64]) -> Result<Tensor> {
    let dims: Vec<usize> = shape.iter().map(|&v| v as usize).collect();
    let v = match value {
        Some(v) => v.flatten_all()?.narrow(0, 0, 1)?.reshape(())?,
        None => Tensor::new(0f32, &Device::Cpu)?,
    };
    v.broadcast_as(dims)?.contiguous()
}

/// Split along an axis into given sizes or `n` near-equal parts (the last
/// smaller, as opset 18's `num_outputs`).
pub(crate) fn split(x: &Tensor, ax: i64, sizes: Option<&[i64]>, n: usize) -> Result<Vec<Tensor>> {
    let ax = axis(ax, x.rank())?;
    let d = x.dim(ax)?;
    let sizes: Vec<usize> = match sizes {
        Some(s) => s.iter().map(|&v| v as usize).collect(),
        None => {
            let part = d.div_ceil(n);
            (0..n)
                .map(|i| part.min(d.saturating_sub(i * part)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != d {
        candle_core::bail!("Split sizes {sizes:?} do not add up to {d}");
    }
    let mut out = vec![];
    let mut at = 0;
    for s in sizes {
        out.push(x.narrow(ax, at, s)?);
        at += s;
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum PadMode {
    Constant,
    Reflect,
    Edge,
}

#[derive(Debug, Clone)]
pub(crate) struct Pad {
    pub mode: PadMode,
    /// Opset < 11: pads and value are attributes.
    pub pads: Option<Vec<i64>>,
    pub value: f32,
}

impl Pad {
    pub fn compile(a: &Attrs, opset: i64) -> std::result::Result<Pad, Refusal> {
        let mode = match a.choice("mode", &["constant", "reflect", "edge"])?.as_str() {
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            _ => PadMode::Constant,
        };
        let (pads, value) = if opset < 11 {
            (a.ints("pads")?, a.float("value", 0.0)?)
        } else {
            (None, 0.0)
        };
        Ok(Pad { mode, pads, value })
    }

    pub fn eval(
        &self,
        x: &Tensor,
        pads: Option<&Tensor>,
        value: Option<&Tensor>,
        axes: Option<&Tensor>,
    ) -> Result<Tensor> {
        let pads = match (pads, &self.pads) {
            (Some(p), _) => ints(p)?,
            (None, Some(p)) => p.clone(),
            (None, None) => candle_core::bail!("Pad without pads"),
        };
        let value = match value {
            Some(v) if v.elem_count() > 0 => super::floats(v)?[0],
            _ => self.value as f64,
        };
        let r = x.rank();
        let axes: Vec<usize> = match axes {
            Some(a) => ints(a)?
                .into_iter()
                .map(|v| axis(v, r))
                .collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        let k = axes.len();
        if pads.len() != 2 * k {
            candle_core::bail!("Pad: {} pads for {k} axes", pads.len());
        }
        let mut y = x.clone();
        for (i, &ax) in axes.iter().enumerate() {
            let (mut lo, mut hi) = (pads[i], pads[i + k]);
            // negative pads crop
            if lo < 0 {
                let n = y.dim(ax)?;
                y = y.narrow(ax, (-lo) as usize, n - (-lo) as usize)?;
                lo = 0;
            }
            if hi < 0 {
                let n = y.dim(ax)?;
                y = y.narrow(ax, 0, n - (-hi) as usize)?;
                hi = 0;
            }
            let (lo, hi) = (lo as usize, hi as usize);
            if lo == 0 && hi == 0 {
                continue;
            }
            y = match self.mode {
                PadMode::Constant if value == 0.0 => y.pad_with_zeros(ax, lo, hi)?,
                PadMode::Constant => pad_axis(&y, ax, lo, hi, value)?,
                PadMode::Edge => y.pad_with_same(ax, lo, hi)?,
                PadMode::Reflect => {
                    let n = y.dim(ax)? as i64;
                    if lo as i64 >= n || hi as i64 >= n {
                        candle_core::bail!("reflect padding larger than the input");
                    }
                    let idx: Vec<i64> = (-(lo as i64)..n + hi as i64)
                        .map(|j| {
                            if j < 0 {
                                -j
                            } else if j >= n {
                                2 * (n - 1) - j
                            } else {
                                j
                            }
                        })
                        .collect();
                    y.contiguous()?
                        .index_select(&index_tensor(&idx, y.device())?, ax)?
                }
            };
        }
        Ok(y)
    }
}

/// Pads axis `ax` with `lo` values before and `hi` after, all `value`.
pub(crate) fn pad_axis(y: &Tensor, ax: usize, lo: usize, hi: usize, value: f64) -> Result<Tensor> {
    let mut parts = vec![];
    let mut dims = y.dims().to_vec();
    if lo > 0 {
        dims[ax] = lo;
        parts.push(full(value, &dims, y.dtype(), y.device())?);
    }
    parts.push(y.clone());
    if hi > 0 {
        dims[ax] = hi;
        parts.push(full(value, &dims, y.dtype(), y.device())?);
    }
    Tensor::cat(&parts, ax)
}

pub(crate) fn full(value: f64, dims: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::new(value, dev)?
        .to_dtype(dtype)?
        .broadcast_as(dims)?
        .contiguous()
}
