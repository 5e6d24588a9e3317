//! Resize (opset 10 on) and Upsample: nearest and linear over the last two
//! axes, separable, with every `coordinate_transformation_mode` that
//! PyTorch emits and every `nearest_mode`.
//!
//! Each axis is a gather (nearest) or two gathers and a weighted sum
//! (linear) along that axis, so the same code runs on every device. The
//! source coordinate of output index `i`, with `scale = out / in` (or the
//! given scale), computed in `f32` like onnxruntime:
//!
//! | mode | source coordinate |
//! | --- | --- |
//! | half_pixel | `(i + 0.5) / scale - 0.5` |
//! | pytorch_half_pixel | the same, but `0` when `out == 1` |
//! | half_pixel_symmetric | half_pixel shifted to keep the centre |
//! | align_corners | `i * (in - 1) / (out - 1)` (`0` when `out == 1`) |
//! | asymmetric | `i / scale` |
//! | tf_half_pixel_for_nn | `(i + 0.5) / scale` |
//!
//! Linear clamps the coordinate to `[0, in - 1]` and blends the two
//! neighbours; nearest rounds it (`round_prefer_floor`,
//! `round_prefer_ceil`, `floor`, `ceil`) and clamps the index.

use super::attrs::{Attrs, Refusal};
use super::{floats, ints};
use crate::kernels;
use crate::model::conv::with_f32;
use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    HalfPixelSymmetric,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// One axis that a Resize changes: `(axis, in, out, scale)`.
type Change = (usize, usize, usize, f32);

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resize {
    /// Linear, else nearest.
    pub linear: bool,
    pub coord: Coord,
    pub nearest: Nearest,
    /// Opset 18's `axes`.
    pub axes: Option<Vec<i64>>,
    /// Upsample (opset < 10), or Resize-10: inputs are `X, scales`.
    pub scales_only: bool,
}

impl Resize {
    pub fn compile(a: &Attrs, op: &str, opset: i64) -> std::result::Result<Resize, Refusal> {
        let mode = a.choice("mode", &["nearest", "linear", "bilinear"])?;
        let linear = mode != "nearest";
        if op == "Upsample" || opset < 11 {
            if op == "Upsample" && opset < 9 {
                return Err("Upsample before opset 9 (scales attribute) is not supported".into());
            }
            return Ok(Resize {
                linear,
                coord: Coord::Asymmetric,
                nearest: Nearest::Floor,
                axes: None,
                scales_only: true,
            });
        }
        let coord = match a
            .choice(
                "coordinate_transformation_mode",
                &[
                    "half_pixel",
                    "pytorch_half_pixel",
                    "half_pixel_symmetric",
                    "align_corners",
                    "asymmetric",
                    "tf_half_pixel_for_nn",
                ],
            )?
            .as_str()
        {
            "pytorch_half_pixel" => Coord::PytorchHalfPixel,
            "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
            "align_corners" => Coord::AlignCorners,
            "asymmetric" => Coord::Asymmetric,
            "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
            _ => Coord::HalfPixel,
        };
        let nearest = match a
            .choice(
                "nearest_mode",
                &["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"],
            )?
            .as_str()
        {
            "round_prefer_ceil" => Nearest::RoundPreferCeil,
            "floor" => Nearest::Floor,
            "ceil" => Nearest::Ceil,
            _ => Nearest::RoundPreferFloor,
        };
        a.ignore("cubic_coeff_a");
        a.ignore("extrapolation_value");
        a.require("exclude_outside", 0)?;
        a.require("antialias", 0)?;
        a.choice("keep_aspect_ratio_policy", &["stretch"])?;
        Ok(Resize {
            linear,
            coord,
            nearest,
            axes: a.ints("axes")?,
            scales_only: false,
        })
    }

    /// `inputs`: X, then (roi, scales, sizes) or, for `scales_only`, scales.
    pub fn eval(&self, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
        let changed = self.plan(x, inputs)?;
        self.apply(x, &changed)
    }

    /// Resizes `x` along the axes of a [`Resize::plan`].
    fn apply(&self, x: &Tensor, changed: &[Change]) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2 {
            return self.resize_cpu(x, changed);
        }
        self.resize_ops(x, changed)
    }

    /// The source row and column of each output pixel (nearest), for
    /// `h x w` planes.
    fn nearest_indices(&self, changed: &[Change], r: usize, h: usize, w: usize) -> [Vec<usize>; 2] {
        let index = |axis: usize, n: usize| -> Vec<usize> {
            match changed.iter().find(|c| c.0 == axis) {
                Some(&(_, n, out, scale)) => (0..out)
                    .map(|i| self.nearest_index(self.source(i, n, out, scale), n))
                    .collect(),
                None => (0..n).collect(),
            }
        };
        [index(r - 2, h), index(r - 1, w)]
    }

    /// The axes that change: `(axis, in, out, scale)` each.
    fn plan(&self, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Vec<Change>> {
        let r = x.rank();
        let (scales, sizes) = if self.scales_only {
            (inputs.first().copied().flatten(), None)
        } else {
            (
                inputs.get(1).copied().flatten(),
                inputs.get(2).copied().flatten(),
            )
        };
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a
                .iter()
                .map(|&v| super::shape::axis(v, r))
                .collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        // (out, scale) per axis of `axes`
        let per_axis: Vec<(usize, f32)> = match (sizes, scales) {
            (Some(s), _) if s.elem_count() > 0 => {
                let s = ints(s)?;
                axes.iter()
                    .zip(&s)
                    .map(|(&a, &o)| {
                        let n = x.dim(a).unwrap_or(1);
                        (o as usize, o as f32 / n as f32)
                    })
                    .collect()
            }
            (_, Some(s)) if s.elem_count() > 0 => {
                let s = floats(s)?;
                axes.iter()
                    .zip(&s)
                    .map(|(&a, &f)| {
                        let n = x.dim(a).unwrap_or(1);
                        ((n as f64 * f).floor() as usize, f as f32)
                    })
                    .collect()
            }
            _ => candle_core::bail!("Resize needs scales or sizes"),
        };
        if per_axis.len() != axes.len() {
            candle_core::bail!("Resize: {} scales or sizes for rank {r}", per_axis.len());
        }
        // (axis, in, out, scale) of the axes that change
        let mut changed = vec![];
        for (&a, &(out, scale)) in axes.iter().zip(&per_axis) {
            let n = x.dim(a)?;
            if out == n && (scale == 1.0 || sizes.is_some()) {
                continue;
            }
            if a + 2 < r {
                candle_core::bail!("Resize of axis {a} of rank {r} (only the last two)");
            }
            changed.push((a, n, out, scale));
        }
        Ok(changed)
    }

    /// The resizing as tensor ops, one axis after the other (any device).
    fn resize_ops(&self, x: &Tensor, changed: &[Change]) -> Result<Tensor> {
        let mut y = x.clone();
        for &(a, n, out, scale) in changed {
            y = self.resize_axis(&y, a, n, out, scale)?;
        }
        Ok(y)
    }

    /// The same resizing on rstile's CPU kernels, both axes in one pass
    /// over each plane (rows first, as the tensor path).
    fn resize_cpu(&self, x: &Tensor, changed: &[Change]) -> Result<Tensor> {
        let r = x.rank();
        let (h, w) = (x.dim(r - 2)?, x.dim(r - 1)?);
        let planes = x.elem_count() / (h * w).max(1);
        let on = |axis: usize| changed.iter().find(|c| c.0 == axis).copied();
        let (rows, cols) = (on(r - 2), on(r - 1));
        let (oh, ow) = (rows.map_or(h, |c| c.2), cols.map_or(w, |c| c.2));
        let x = x.contiguous()?;
        let y = with_f32(&x, |xs| {
            Ok(if self.linear {
                let taps = |c: Option<(usize, usize, usize, f32)>| {
                    c.map(|(_, n, out, scale)| self.linear_taps(n, out, scale))
                };
                let (tr, tc) = (taps(rows), taps(cols));
                kernels::resize::resize_linear(xs, planes, h, w, tr.as_deref(), tc.as_deref())
            } else {
                let [ri, ci] = self.nearest_indices(changed, r, h, w);
                kernels::resize::resize_nearest(xs, planes, h, w, &ri, &ci)
            })
        })?;
        let mut dims = x.dims().to_vec();
        dims[r - 2] = oh;
        dims[r - 1] = ow;
        Tensor::from_vec(y, dims, x.device())
    }

    /// The source coordinate of output index `i`.
    pub(crate) fn source(&self, i: usize, n: usize, out: usize, scale: f32) -> f32 {
        let i = i as f32;
        match self.coord {
            Coord::HalfPixel => (i + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel => {
                if out > 1 {
                    (i + 0.5) / scale - 0.5
                } else {
                    0.0
                }
            }
            Coord::HalfPixelSymmetric => {
                let adj = out as f32 / (scale * n as f32);
                let center = n as f32 / 2.0;
                let offset = center * (1.0 - adj);
                offset + (i + 0.5) / scale - 0.5
            }
            Coord::AlignCorners => {
                if out == 1 {
                    0.0
                } else {
                    i * (n as f32 - 1.0) / (out as f32 - 1.0)
                }
            }
            Coord::Asymmetric => i / scale,
            Coord::TfHalfPixelForNn => (i + 0.5) / scale,
        }
    }

    /// Nearest index of a source coordinate, clamped to the input.
    pub(crate) fn nearest_index(&self, x: f32, n: usize) -> usize {
        let v = match self.nearest {
            Nearest::Floor => x.floor(),
            Nearest::Ceil => x.ceil(),
            Nearest::RoundPreferFloor => {
                if x == x.floor() + 0.5 {
                    x.floor()
                } else {
                    x.round()
                }
            }
            Nearest::RoundPreferCeil => {
                if x == x.floor() + 0.5 {
                    x.ceil()
                } else {
                    x.round()
                }
            }
        };
        v.clamp(0.0, (n - 1) as f32) as usize
    }

    /// `(i0, i1, w1)` of each output index (linear): `y = x[i0] (1 - w1) +
    /// x[i1] w1`.
    pub(crate) fn linear_taps(&self, n: usize, out: usize, scale: f32) -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|i| {
                let x = self.source(i, n, out, scale).clamp(0.0, (n - 1) as f32);
                let i0 = x.floor() as usize;
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, x - i0 as f32)
            })
            .collect()
    }

    fn resize_axis(
        &self,
        x: &Tensor,
        a: usize,
        n: usize,
        out: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let x = &x.contiguous()?;
        let dev = x.device();
        let idx = |v: Vec<u32>| Tensor::from_vec(v, out, dev);
        if !self.linear {
            let v: Vec<u32> = (0..out)
                .map(|i| self.nearest_index(self.source(i, n, out, scale), n) as u32)
                .collect();
            return x.index_select(&idx(v)?, a);
        }
        let taps = self.linear_taps(n, out, scale);
        let i0 = idx(taps.iter().map(|t| t.0 as u32).collect())?;
        let i1 = idx(taps.iter().map(|t| t.1 as u32).collect())?;
        let mut wdims = vec![1usize; x.rank()];
        wdims[a] = out;
        let w1: Vec<f32> = taps.iter().map(|t| t.2).collect();
        let w0: Vec<f32> = w1.iter().map(|w| 1.0 - w).collect();
        let w = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::from_vec(v, wdims.as_slice(), &Device::Cpu)?
                .to_dtype(x.dtype())?
                .to_device(dev)
        };
        let x0 = x.index_select(&i0, a)?;
        let x1 = x.index_select(&i1, a)?;
        x0.broadcast_mul(&w(w0)?)?.add(&x1.broadcast_mul(&w(w1)?)?)
    }
}

/// A nearest Resize whose output only feeds a Concat, fused with it by the
/// graph (the U-Net decoder's "upsample, then join the skip"): on the CPU
/// the upsampled features are gathered straight into the concatenation,
/// never stored apart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpConcat {
    pub resize: Resize,
    pub axis: i64,
    /// Which of the Concat's inputs is the Resize's input.
    pub part: usize,
    /// The Concat's inputs; the Resize's other inputs follow them.
    pub parts: usize,
}

impl UpConcat {
    pub fn eval(&self, ins: &[Option<&Tensor>]) -> Result<Tensor> {
        let (xs, extra) = ins.split_at(self.parts.min(ins.len()));
        let xs: Vec<&Tensor> = xs
            .iter()
            .map(|t| t.ok_or_else(|| candle_core::Error::Msg("Concat: a missing input".into())))
            .collect::<Result<_>>()?;
        let x = xs[self.part];
        let changed = self.resize.plan(x, extra)?;
        let r = x.rank();
        let ax = super::shape::axis(self.axis, r)?;
        let (h, w) = if r == 4 {
            (x.dim(2)?, x.dim(3)?)
        } else {
            (1, 1)
        };
        let [rows, cols] = if r == 4 {
            self.resize.nearest_indices(&changed, r, h, w)
        } else {
            [vec![], vec![]]
        };
        let fast = !self.resize.linear
            && r == 4
            && ax == 1
            && xs.iter().all(|t| {
                t.device().is_cpu()
                    && t.dtype() == DType::F32
                    && t.rank() == 4
                    && t.elem_count() > 0
                    && t.dim(0).ok() == x.dim(0).ok()
            })
            && xs
                .iter()
                .enumerate()
                .all(|(i, t)| i == self.part || t.dims()[2..] == [rows.len(), cols.len()]);
        if !fast {
            let up = self.resize.apply(x, &changed)?;
            let mut all: Vec<Tensor> = xs.iter().map(|t| (*t).clone()).collect();
            all[self.part] = up;
            return super::shape::concat(&all, self.axis);
        }
        let xs: Vec<Tensor> = xs.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        let guards: Vec<_> = xs.iter().map(|t| t.storage_and_layout()).collect();
        let batch = x.dim(0)?;
        let (oh, ow) = (rows.len(), cols.len());
        let mut parts = vec![];
        for (i, ((storage, layout), t)) in guards.iter().zip(&xs).enumerate() {
            let v = crate::model::conv::f32_slice(
                match &**storage {
                    candle_core::Storage::Cpu(c) => c,
                    _ => candle_core::bail!("Concat: a tensor left the CPU"),
                },
                layout,
            )?;
            parts.push(if i == self.part {
                kernels::concat::Part::Nearest {
                    x: v,
                    planes: t.dim(1)?,
                    h,
                    w,
                    rows: &rows,
                    cols: &cols,
                }
            } else {
                kernels::concat::Part::Copy(v, t.elem_count() / batch)
            });
        }
        let y = kernels::concat::concat_parts(&parts, batch);
        drop(guards);
        let c = xs.iter().map(|t| t.dim(1)).sum::<Result<usize>>()?;
        Tensor::from_vec(y, (batch, c, oh, ow), &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_kernels_give_the_tensor_ops_bits() {
        let x: Vec<f32> = (0..2 * 3 * 5 * 7)
            .map(|v| ((v * 7919) % 101) as f32 / 13.0 - 3.0)
            .collect();
        let x = Tensor::from_vec(x, (2, 3, 5, 7), &Device::Cpu).unwrap();
        let coords = [
            Coord::HalfPixel,
            Coord::PytorchHalfPixel,
            Coord::HalfPixelSymmetric,
            Coord::AlignCorners,
            Coord::Asymmetric,
            Coord::TfHalfPixelForNn,
        ];
        let nearests = [
            Nearest::RoundPreferFloor,
            Nearest::RoundPreferCeil,
            Nearest::Floor,
            Nearest::Ceil,
        ];
        // both axes, rows only, columns only; up and down
        let shapes = [
            vec![(2, 5, 11, 2.2), (3, 7, 3, 3.0 / 7.0)],
            vec![(2, 5, 10, 2.0)],
            vec![(3, 7, 16, 16.0 / 7.0)],
        ];
        for linear in [true, false] {
            for coord in coords {
                for nearest in nearests {
                    let r = Resize {
                        linear,
                        coord,
                        nearest,
                        axes: None,
                        scales_only: false,
                    };
                    for changed in &shapes {
                        let a = r.resize_cpu(&x, changed).unwrap();
                        let b = r.resize_ops(&x, changed).unwrap();
                        assert_eq!(a.dims(), b.dims());
                        let (a, b) = (
                            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        );
                        let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "{linear} {coord:?} {nearest:?} {changed:?}");
                    }
                }
            }
        }
    }
}
