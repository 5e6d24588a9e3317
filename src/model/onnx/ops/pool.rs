//! MaxPool and AveragePool (2-D, with pads, strides and `ceil_mode`),
//! GlobalAveragePool and GlobalMaxPool.
//!
//! Output size per axis, as onnxruntime and PyTorch compute it:
//! `out = floor_or_ceil((in + pad_begin + pad_end - k) / s) + 1`, and with
//! `ceil_mode` a last window that would start past the input and its
//! begin padding is dropped. The windows that `ceil_mode` adds run past
//! the end padding: those positions count neither for max nor for the
//! average's divisor.

use super::attrs::{Attrs, Refusal};
use super::shape::pad_axis;
use crate::kernels::pool::{max_pool_3x3_s2, pooled};
use crate::model::conv::with_f32;
use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pool {
    pub max: bool,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub ceil_mode: bool,
    pub count_include_pad: bool,
    /// `auto_pad` SAME_UPPER / SAME_LOWER: pads computed from the input.
    pub same: Option<bool>,
}

fn pair(
    v: Option<Vec<i64>>,
    default: usize,
    what: &str,
) -> std::result::Result<[usize; 2], Refusal> {
    match v {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 0) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(format!("{what} {v:?} is not supported (2-D only)")),
    }
}

/// `auto_pad`: `None` for NOTSET/VALID (explicit pads), `Some(upper)` for
/// SAME_UPPER/SAME_LOWER.
pub(crate) fn auto_pad(a: &Attrs) -> std::result::Result<(Option<bool>, bool), Refusal> {
    let v = a.choice("auto_pad", &["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"])?;
    Ok(match v.as_str() {
        "SAME_UPPER" => (Some(true), false),
        "SAME_LOWER" => (Some(false), false),
        "VALID" => (None, true),
        _ => (None, false),
    })
}

/// `[top, left, bottom, right]` from ONNX's `pads` (`[x1_begin, x2_begin,
/// x1_end, x2_end]`, which is the same order).
pub(crate) fn pads4(v: Option<Vec<i64>>) -> std::result::Result<[usize; 4], Refusal> {
    match v {
        None => Ok([0; 4]),
        Some(v) if v.len() == 4 && v.iter().all(|&x| x >= 0) => {
            Ok([v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize])
        }
        Some(v) => Err(format!("pads {v:?} are not supported (2-D, non-negative)")),
    }
}

/// SAME padding for one axis: `(begin, end)`.
pub(crate) fn same_pads(n: usize, k: usize, s: usize, d: usize, upper: bool) -> (usize, usize) {
    let out = n.div_ceil(s);
    let need = ((out - 1) * s + (k - 1) * d + 1).saturating_sub(n);
    let small = need / 2;
    if upper {
        (small, need - small)
    } else {
        (need - small, small)
    }
}

impl Pool {
    pub fn compile(a: &Attrs, max: bool) -> std::result::Result<Pool, Refusal> {
        let kernel = pair(a.ints("kernel_shape")?, 0, "kernel_shape")?;
        if kernel.contains(&0) {
            return Err("kernel_shape is missing".into());
        }
        let stride = pair(a.ints("strides")?, 1, "strides")?;
        let (same, valid) = auto_pad(a)?;
        let mut pads = pads4(a.ints("pads")?)?;
        if valid {
            pads = [0; 4];
        }
        if max {
            let d = pair(a.ints("dilations")?, 1, "dilations")?;
            if d != [1, 1] {
                return Err(format!("dilations {d:?} are not supported"));
            }
            a.require("storage_order", 0)?;
        }
        Ok(Pool {
            max,
            kernel,
            stride,
            pads,
            ceil_mode: a.int("ceil_mode", 0)? != 0,
            count_include_pad: !max && a.int("count_include_pad", 0)? != 0,
            same,
        })
    }

    /// Output length, and the padding actually added at the end (the end
    /// pad plus what `ceil_mode` needs) for one axis.
    fn axis(&self, n: usize, i: usize, pb: usize, pe: usize) -> Result<(usize, usize)> {
        let (k, s) = (self.kernel[i], self.stride[i]);
        let span = n + pb + pe;
        if span < k {
            candle_core::bail!("pool kernel {k} larger than the padded input {span}");
        }
        let mut out = if self.ceil_mode {
            (span - k).div_ceil(s) + 1
        } else {
            (span - k) / s + 1
        };
        if self.ceil_mode && (out - 1) * s >= n + pb {
            out -= 1;
        }
        let need = (out - 1) * s + k;
        Ok((out, need.saturating_sub(n + pb)))
    }

    pub fn eval(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let [mut pt, mut pl, mut pb, mut pr] = self.pads;
        if let Some(upper) = self.same {
            (pt, pb) = same_pads(h, self.kernel[0], self.stride[0], 1, upper);
            (pl, pr) = same_pads(w, self.kernel[1], self.stride[1], 1, upper);
        }
        let (oh, end_h) = self.axis(h, 0, pt, pb)?;
        let (ow, end_w) = self.axis(w, 1, pl, pr)?;
        // ResNet's stem pool on rstile's kernel
        let resnet_stem = self.max
            && self.kernel == [3, 3]
            && self.stride == [2, 2]
            && [pt, pl, pb, pr] == [1; 4]
            && (oh, ow) == (pooled(h), pooled(w))
            && x.device().is_cpu()
            && x.dtype() == DType::F32;
        if resnet_stem {
            let x = x.contiguous()?;
            let (b, c) = (x.dim(0)?, x.dim(1)?);
            let y = with_f32(&x, |xs| Ok(max_pool_3x3_s2(xs, b * c, h, w).0))?;
            return Tensor::from_vec(y, (b, c, oh, ow), x.device());
        }
        let fill = if self.max { f64::NEG_INFINITY } else { 0.0 };
        let xp = pad2(x, fill, [pt, pl, end_h, end_w])?;
        let (k, s) = (
            (self.kernel[0], self.kernel[1]),
            (self.stride[0], self.stride[1]),
        );
        if self.max {
            let y = xp.max_pool2d_with_stride(k, s)?;
            return y.narrow(2, 0, oh)?.narrow(3, 0, ow);
        }
        let y = xp
            .avg_pool2d_with_stride(k, s)?
            .narrow(2, 0, oh)?
            .narrow(3, 0, ow)?;
        // avg_pool2d divides by k·k; rescale to ONNX's divisor per position
        let area = (self.kernel[0] * self.kernel[1]) as f32;
        let counts = |n: usize, i: usize, pb: usize, pe: usize, out: usize| -> Vec<f32> {
            let (lo, hi) = if self.count_include_pad {
                (-(pb as i64), (n + pe) as i64)
            } else {
                (0, n as i64)
            };
            (0..out)
                .map(|o| {
                    let a = (o * self.stride[i]) as i64 - pb as i64;
                    let b = a + self.kernel[i] as i64;
                    (b.min(hi) - a.max(lo)).max(0) as f32
                })
                .collect()
        };
        let ch = counts(h, 0, pt, pb, oh);
        let cw = counts(w, 1, pl, pr, ow);
        let mut f = Vec::with_capacity(oh * ow);
        for a in &ch {
            for b in &cw {
                f.push(area / (a * b).max(1.0));
            }
        }
        let f = Tensor::from_vec(f, (1, 1, oh, ow), &Device::Cpu)?
            .to_dtype(y.dtype())?
            .to_device(y.device())?;
        y.broadcast_mul(&f)
    }
}

/// Pads the last two axes with `value`: `[top, left, bottom, right]`.
pub(crate) fn pad2(x: &Tensor, value: f64, p: [usize; 4]) -> Result<Tensor> {
    if p == [0; 4] {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x
            .pad_with_zeros(2, p[0], p[2])?
            .pad_with_zeros(3, p[1], p[3]);
    }
    let mut y = x.clone();
    for (ax, lo, hi) in [(2, p[0], p[2]), (3, p[1], p[3])] {
        if lo == 0 && hi == 0 {
            continue;
        }
        y = pad_axis(&y, ax, lo, hi, value)?;
    }
    Ok(y)
}

pub(crate) fn global_pool(x: &Tensor, max: bool) -> Result<Tensor> {
    let mut y = x.clone();
    for a in (2..x.rank()).rev() {
        y = if max {
            y.max_keepdim(a)?
        } else {
            y.mean_keepdim(a)?
        };
    }
    Ok(y)
}
