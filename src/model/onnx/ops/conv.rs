//! Conv and ConvTranspose (2-D).
//!
//! On the CPU in `f32`, a Conv with a square kernel and the same stride
//! and dilation on both axes runs on rstile's own kernels
//! ([`crate::model::conv::Conv2d::forward_fused`], or
//! [`crate::kernels::grouped`] for groups, depthwise included), with its
//! epilogue: the bias (a following BatchNormalization is folded into
//! weights and bias when the graph is loaded), a residual Add and a ReLU
//! that the graph fused into the node. Uneven padding is added to the input
//! first. A ConvTranspose runs on [`crate::kernels::conv2d_transpose`], one
//! group at a time. Anything else (other devices, other float types,
//! rectangular kernels) goes through candle's ops, with the same epilogue
//! as separate ops.

use super::attrs::{Attrs, Refusal};
use super::pool::{auto_pad, pad2, pads4, same_pads};
use crate::kernels::grouped::conv2d_grouped;
use crate::kernels::{conv2d_transpose, ConvShape, Epilogue};
use crate::model::conv::{with_f32, Conv2d};
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

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
        let on_kernels =
            kh == kw && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
        if on_kernels && self.group == 1 {
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
        if on_kernels {
            return self.eval_grouped(&x, w, b, residual, pad);
        }
        let y = x.conv2d(w, pad, self.stride, self.dilation, self.group)?;
        self.epilogue(y, b, residual)
    }

    /// A grouped Conv (depthwise included) on rstile's kernels, with the
    /// bias, residual and ReLU in its epilogue.
    fn eval_grouped(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        residual: Option<&Tensor>,
        pad: usize,
    ) -> Result<Tensor> {
        let (batch, c_in, height, width) = x.dims4()?;
        let (c_out, _, k, _) = w.dims4()?;
        let s = ConvShape {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: k,
            stride: self.stride,
            padding: pad,
            dilation: self.dilation,
        };
        if !s.is_valid() || c_out % self.group != 0 {
            candle_core::bail!(
                "Conv: input {:?} does not fit weights {:?} in {} groups",
                x.dims(),
                w.dims(),
                self.group
            );
        }
        let out = [batch, c_out, s.out_height(), s.out_width()];
        let residual = match residual {
            Some(r) if r.dims() == out => Some(r.contiguous()?),
            Some(r) => candle_core::bail!("Conv: residual {:?}, output {out:?}", r.dims()),
            None => None,
        };
        let bias = b
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let y = with_f32(&x, |xs| {
            with_f32(&w, |ws| {
                let run = |rs: Option<&[f32]>| {
                    let ep = Epilogue {
                        scale: None,
                        shift: bias.as_deref(),
                        residual: rs,
                        relu: self.relu,
                    };
                    Ok(conv2d_grouped(&s, self.group, xs, ws, &ep))
                };
                match &residual {
                    Some(r) => with_f32(r, |rs| run(Some(rs))),
                    None => run(None),
                }
            })
        })?;
        Tensor::from_vec(y, out.as_slice(), x.device())
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
        let (_, _, kh, kw) = w.dims4()?;
        if kh == kw && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            return self.eval_cpu(x, w, b);
        }
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

impl ConvTranspose {
    /// On rstile's kernels ([`conv2d_transpose`], each group alone): the
    /// full output, then the crop by the pads, `output_padding` and the
    /// bias in one pass.
    fn eval_cpu(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (batch, c_in, h, wd) = x.dims4()?;
        let (w_in, co_g, k, _) = w.dims4()?;
        let g = self.group;
        if w_in != c_in || c_in % g != 0 || h == 0 || wd == 0 {
            candle_core::bail!(
                "ConvTranspose: input {:?} does not fit weights {:?} in {g} groups",
                x.dims(),
                w.dims()
            );
        }
        let (s, d, ci_g) = (self.stride, self.dilation, c_in / g);
        let (fh, fw) = (
            (h - 1) * s + d * (k - 1) + 1,
            (wd - 1) * s + d * (k - 1) + 1,
        );
        let [pt, pl, pb, pr] = self.pads;
        let [oph, opw] = self.output_padding;
        if pt + pb >= fh + oph || pl + pr >= fw + opw {
            candle_core::bail!("ConvTranspose: pads {:?} larger than the output", self.pads);
        }
        let (oh, ow) = (fh + oph - pt - pb, fw + opw - pl - pr);
        let c_out = co_g * g;
        let layer = ConvShape {
            batch,
            c_in: co_g,
            height: fh,
            width: fw,
            c_out: ci_g,
            kernel: k,
            stride: s,
            padding: 0,
            dilation: d,
        };
        let bias = b
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let full: Vec<Vec<f32>> = with_f32(&x, |xs| {
            with_f32(&w, |ws| {
                Ok((0..g)
                    .map(|gi| {
                        let xg: Cow<[f32]> = if g == 1 {
                            Cow::Borrowed(xs)
                        } else {
                            (0..batch)
                                .flat_map(|b| {
                                    let at = (b * c_in + gi * ci_g) * h * wd;
                                    xs[at..at + ci_g * h * wd].iter().copied()
                                })
                                .collect()
                        };
                        let wg = &ws[gi * ci_g * co_g * k * k..][..ci_g * co_g * k * k];
                        conv2d_transpose(&layer, &xg, wg)
                    })
                    .collect())
            })
        })?;
        // crop, pad and add the bias: output plane (b, gi·co_g + c)
        let mut y = vec![0f32; batch * c_out * oh * ow];
        y.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, yp)| {
                let (bi, co) = (plane / c_out, plane % c_out);
                let (gi, c) = (co / co_g, co % co_g);
                let src = &full[gi][(bi * co_g + c) * fh * fw..][..fh * fw];
                let add = bias.as_ref().map_or(0.0, |b| b[co]);
                for (oy, row) in yp.chunks_exact_mut(ow).enumerate() {
                    let sy = oy + pt;
                    for (ox, v) in row.iter_mut().enumerate() {
                        let sx = ox + pl;
                        let f = if sy < fh && sx < fw {
                            src[sy * fw + sx]
                        } else {
                            0.0
                        };
                        *v = f + add;
                    }
                }
            });
        Tensor::from_vec(y, (batch, c_out, oh, ow), x.device())
    }
}
