//! Conv and ConvTranspose (2-D).
//!
//! On the CPU in `f32`, a Conv with one group, a square kernel and the same
//! stride and dilation on both axes runs on rstile's own kernels
//! ([`crate::model::conv::Conv2d::forward_fused`]), with its epilogue: the
//! bias (a following BatchNormalization is folded into weights and bias
//! when the graph is loaded), a residual Add and a ReLU that the graph
//! fused into the node. Uneven padding is added to the input first. Every
//! other Conv (groups, other devices) goes through candle's `conv2d`, with
//! the same epilogue as separate ops.

use super::attrs::{Attrs, Refusal};
use super::pool::{auto_pad, pad2, pads4, same_pads};
use crate::model::conv::Conv2d;
use candle_core::{DType, Result, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conv {
    pub stride: usize,
    pub dilation: usize,
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub same: Option<bool>,
    pub group: usize,
    /// Fused by the graph: ReLU after the (bias and) residual.
    pub relu: bool,
    /// Fused by the graph: input 3 is added to the output.
    pub residual: bool,
}

/// The one value of a per-axis attribute that must agree on both axes.
fn uniform(v: Option<Vec<i64>>, what: &str) -> std::result::Result<usize, Refusal> {
    match v {
        None => Ok(1),
        Some(v) if v.len() == 2 && v[0] == v[1] && v[0] > 0 => Ok(v[0] as usize),
        Some(v) => Err(format!(
            "{what} {v:?} are not supported (2-D, the same on both axes)"
        )),
    }
}

fn kernel_shape(a: &Attrs) -> std::result::Result<(), Refusal> {
    match a.ints("kernel_shape")? {
        Some(k) if k.len() != 2 => Err(format!("kernel_shape {k:?} is not supported (2-D only)")),
        _ => Ok(()),
    }
}

impl Conv {
    pub fn compile(a: &Attrs) -> std::result::Result<Conv, Refusal> {
        kernel_shape(a)?;
        let (same, valid) = auto_pad(a)?;
        let mut pads = pads4(a.ints("pads")?)?;
        if valid {
            pads = [0; 4];
        }
        let group = a.int("group", 1)?;
        if group < 1 {
            return Err(format!("group {group}"));
        }
        Ok(Conv {
            stride: uniform(a.ints("strides")?, "strides")?,
            dilation: uniform(a.ints("dilations")?, "dilations")?,
            pads,
            same,
            group: group as usize,
            relu: false,
            residual: false,
        })
    }

    pub fn eval(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (_, c_in, h, wd) = x.dims4()?;
        let (_, wc_in, kh, kw) = w.dims4()?;
        if wc_in * self.group != c_in {
            candle_core::bail!(
                "Conv: input {:?} does not fit weights {:?} in {} groups",
                x.dims(),
                w.dims(),
                self.group
            );
        }
        let mut p = self.pads;
        if let Some(upper) = self.same {
            (p[0], p[2]) = same_pads(h, kh, self.stride, self.dilation, upper);
            (p[1], p[3]) = same_pads(wd, kw, self.stride, self.dilation, upper);
        }
        let even = p.iter().all(|&v| v == p[0]);
        let (x, pad) = if even {
            (x.clone(), p[0])
        } else {
            (pad2(x, 0.0, p)?, 0)
        };
        let fast = self.group == 1
            && kh == kw
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32;
        if fast {
            let conv =
                Conv2d::new(w.clone(), b.cloned(), self.stride, pad).with_dilation(self.dilation);
            let s = conv.shape_for(&x)?;
            let fits = residual
                .is_some_and(|r| r.dims() == [s.batch, s.c_out, s.out_height(), s.out_width()]);
            if residual.is_none() || fits {
                return conv.forward_fused(&x, None, residual, self.relu);
            }
            let y = conv.forward_fused(&x, None, None, false)?;
            return self.epilogue(y, None, residual);
        }
        let y = x.conv2d(w, pad, self.stride, self.dilation, self.group)?;
        self.epilogue(y, b, residual)
    }

    fn epilogue(&self, mut y: Tensor, b: Option<&Tensor>, r: Option<&Tensor>) -> Result<Tensor> {
        if let Some(b) = b {
            y = y.broadcast_add(&b.to_device(y.device())?.reshape((1, (), 1, 1))?)?;
        }
        if let Some(r) = r {
            y = y.broadcast_add(r)?;
        }
        if self.relu {
            y = y.relu()?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConvTranspose {
    pub stride: usize,
    pub dilation: usize,
    pub pads: [usize; 4],
    pub output_padding: [usize; 2],
    pub group: usize,
}

impl ConvTranspose {
    pub fn compile(a: &Attrs) -> std::result::Result<ConvTranspose, Refusal> {
        kernel_shape(a)?;
        a.choice("auto_pad", &["NOTSET", "VALID"])?;
        if a.has("output_shape") {
            return Err("attribute 'output_shape' is not supported".into());
        }
        let op = match a.ints("output_padding")? {
            None => [0, 0],
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 0) => [v[0] as usize, v[1] as usize],
            Some(v) => return Err(format!("output_padding {v:?} is not supported")),
        };
        let group = a.int("group", 1)?;
        if group < 1 {
            return Err(format!("group {group}"));
        }
        Ok(ConvTranspose {
            stride: uniform(a.ints("strides")?, "strides")?,
            dilation: uniform(a.ints("dilations")?, "dilations")?,
            pads: pads4(a.ints("pads")?)?,
            output_padding: op,
            group: group as usize,
        })
    }

    /// Computed without padding (the full output), then cropped by the pads
    /// and grown by `output_padding` at the end.
    pub fn eval(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let g = self.group;
        let y = if g == 1 {
            x.contiguous()?
                .conv_transpose2d(&w.contiguous()?, 0, 0, self.stride, self.dilation)?
        } else {
            let xs = x.chunk(g, 1)?;
            let ws = w.chunk(g, 0)?;
            let ys = xs
                .iter()
                .zip(&ws)
                .map(|(x, w)| {
                    x.contiguous()?.conv_transpose2d(
                        &w.contiguous()?,
                        0,
                        0,
                        self.stride,
                        self.dilation,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&ys, 1)?
        };
        let y = y
            .pad_with_zeros(2, 0, self.output_padding[0])?
            .pad_with_zeros(3, 0, self.output_padding[1])?;
        let [pt, pl, pb, pr] = self.pads;
        let (h, w_) = (y.dim(2)?, y.dim(3)?);
        if pt + pb >= h || pl + pr >= w_ {
            candle_core::bail!("ConvTranspose: pads {:?} larger than the output", self.pads);
        }
        let mut y = y.narrow(2, pt, h - pt - pb)?.narrow(3, pl, w_ - pl - pr)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.to_device(y.device())?.reshape((1, (), 1, 1))?)?;
        }
        Ok(y)
    }
}
