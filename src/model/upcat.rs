//! The U-Net decoder's "nearest upsampling, then concatenation with the
//! skip" as one op.
//!
//! Composed from candle's ops this costs, per decoder block, an upsampled
//! copy of the input, a second copy of it and of the skip into the
//! concatenation (both single-threaded), and in the backward pass a
//! narrow-and-add per part of the concatenation plus, for the upsampling, a
//! depthwise convolution (candle's backward of `upsample_nearest2d`), one
//! small convolution per channel. Profiled at batch 4 of 256 x 256 windows
//! on two cores, that was a tenth of the forward pass and a fifth of the
//! backward pass of `unet-resnet18`.
//!
//! [`up_cat`] writes the upsampled input and the skip straight into the
//! concatenated buffer, and its backward pass reads the incoming gradient
//! once: the upsampled part is summed back onto the input's pixels (in a
//! fixed order per pixel, whatever the batch and thread count), the skip's
//! part is copied out. Both run over (sample, channel) planes on rayon.
//!
//! On the CPU in `f32` or `f64` it is a candle custom op (the `f64` path is
//! what the finite-difference test checks); on any other device or dtype
//! it is candle's own upsampling and concatenation, unchanged.

use super::conv::cpu_slice;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `cat([nearest(x, h, w), skip], 1)`, or `nearest(x, h, w)` without a
/// skip. `nearest` is PyTorch's (`mode="nearest"`): output pixel `i` takes
/// input pixel `floor(i * in / out)`.
pub(super) fn up_cat(x: &Tensor, skip: Option<&Tensor>, h: usize, w: usize) -> Result<Tensor> {
    let fast = |t: &Tensor| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64);
    let (_, _, h_in, w_in) = x.dims4()?;
    let (rows, cols) = source_indices(h_in, h, w_in, w);
    let op = UpCat {
        rows,
        cols,
        h_in,
        w_in,
    };
    match skip {
        Some(s) if fast(x) && s.dtype() == x.dtype() && s.device().same_device(x.device()) => {
            let (sb, _, sh, sw) = s.dims4()?;
            if sb != x.dim(0)? || (sh, sw) != (h, w) {
                candle_core::bail!(
                    "up_cat: skip {:?} for input {:?} to {h}x{w}",
                    s.dims(),
                    x.dims()
                );
            }
            x.contiguous()?.apply_op2(&s.contiguous()?, op)
        }
        None if fast(x) => x.contiguous()?.apply_op1(op),
        _ => {
            let up = nearest(x, h, w)?;
            match skip {
                Some(s) => Tensor::cat(&[&up, s], 1),
                None => Ok(up),
            }
        }
    }
}

/// For each output row and column, the input row and column it takes: a
/// uniform integer factor exactly (`i / f`, as candle's
/// `upsample_nearest2d`), anything else by `floor(i · in / out)` in `f64`
/// (as two `index_select`s did before this op).
fn source_indices(h_in: usize, h: usize, w_in: usize, w: usize) -> (Vec<usize>, Vec<usize>) {
    let uniform = h.is_multiple_of(h_in) && w.is_multiple_of(w_in) && h / h_in == w / w_in;
    let idx = |n_in: usize, n_out: usize| -> Vec<usize> {
        if uniform {
            let f = n_out / n_in;
            (0..n_out).map(|i| i / f).collect()
        } else {
            let scale = n_in as f64 / n_out as f64;
            (0..n_out)
                .map(|i| ((i as f64 * scale) as usize).min(n_in - 1))
                .collect()
        }
    };
    (idx(h_in, h), idx(w_in, w))
}

/// Nearest-neighbour resize to `h x w` with candle's ops (the path off the
/// CPU): a uniform integer factor through `upsample_nearest2d`, any other
/// size through two `index_select`s, whose backward pass candle has (its
/// upsampling's backward takes only uniform integer factors).
pub(super) fn nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, h_in, w_in) = x.dims4()?;
    if h.is_multiple_of(h_in) && w.is_multiple_of(w_in) && h / h_in == w / w_in {
        return x.upsample_nearest2d(h, w);
    }
    let (rows, cols) = source_indices(h_in, h, w_in, w);
    let t = |v: Vec<usize>| {
        let n = v.len();
        Tensor::from_vec(v.into_iter().map(|i| i as u32).collect(), n, x.device())
    };
    x.index_select(&t(rows)?, 2)?.index_select(&t(cols)?, 3)
}

/// The op: the input's geometry and the source row and column of every
/// output row and column.
#[derive(Debug, Clone)]
struct UpCat {
    rows: Vec<usize>,
    cols: Vec<usize>,
    h_in: usize,
    w_in: usize,
}

/// A pointer that rayon workers share, each writing its own planes.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: every user writes disjoint planes (see each one)
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// # Safety
    /// Plane `i` (`len` values) must lie inside the allocation and be
    /// written by no one else meanwhile.
    unsafe fn plane<'a>(&self, i: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(i * len), len)
    }
}

/// A vector of `planes · len` values, each plane written by `fill(i,
/// plane)` on rayon before anything reads it (no zeroing pass first).
fn planes<T: Copy + Send + Sync>(
    planes: usize,
    len: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(planes * len);
    crate::kernels::huge_pages(
        v.as_mut_ptr().cast(),
        planes * len * std::mem::size_of::<T>() / 4,
    );
    let out = Out(v.as_mut_ptr());
    (0..planes).into_par_iter().for_each(|i| {
        // SAFETY: plane i is inside the capacity and only this task's; fill
        // writes every value of it (each caller's contract)
        fill(i, unsafe { out.plane(i, len) })
    });
    // SAFETY: all planes were written above
    unsafe { v.set_len(planes * len) };
    v
}

impl UpCat {
    fn out_len(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// Writes the upsampled plane `src` (`h_in x w_in`) into `dst`.
    fn upsample<T: Copy>(&self, src: &[T], dst: &mut [T]) {
        let w = self.cols.len();
        for (oy, &iy) in self.rows.iter().enumerate() {
            if oy > 0 && self.rows[oy - 1] == iy {
                dst.copy_within((oy - 1) * w..oy * w, oy * w);
                continue;
            }
            let s = &src[iy * self.w_in..(iy + 1) * self.w_in];
            for (d, &ix) in dst[oy * w..(oy + 1) * w].iter_mut().zip(&self.cols) {
                *d = s[ix];
            }
        }
    }

    /// The forward pass: `b x (cx + cs) x h x w` from `x` (`b x cx x h_in x
    /// w_in`) and `skip` (`b x cs x h x w`, `cs = 0` without).
    fn forward<T: Copy + Send + Sync>(&self, x: &[T], skip: &[T], b: usize, cx: usize) -> Vec<T> {
        let (n, n_in) = (self.out_len(), self.h_in * self.w_in);
        let cs = skip.len() / (b * n).max(1);
        let ct = cx + cs;
        planes(b * ct, n, |i, dst| {
            let (s, c) = (i / ct, i % ct);
            if c < cx {
                self.upsample(&x[(s * cx + c) * n_in..][..n_in], dst);
            } else {
                dst.copy_from_slice(&skip[(s * cs + c - cx) * n..][..n]);
            }
        })
    }

    /// The backward pass: from the gradient `g` of the output, the input's
    /// (each input pixel the sum of its output pixels' gradients, row by
    /// row, left to right) and the skip's (its channels of `g`).
    fn backward<T>(&self, g: &[T], b: usize, cx: usize, cs: usize) -> (Vec<T>, Vec<T>)
    where
        T: Copy + Send + Sync + Default + std::ops::AddAssign,
    {
        let (n, n_in, w) = (self.out_len(), self.h_in * self.w_in, self.cols.len());
        let ct = cx + cs;
        let dx = planes(b * cx, n_in, |i, dst| {
            let (s, c) = (i / cx, i % cx);
            let gp = &g[(s * ct + c) * n..][..n];
            dst.fill(T::default());
            for (oy, &iy) in self.rows.iter().enumerate() {
                let d = &mut dst[iy * self.w_in..(iy + 1) * self.w_in];
                for (v, &ix) in gp[oy * w..(oy + 1) * w].iter().zip(&self.cols) {
                    d[ix] += *v;
                }
            }
        });
        let ds = planes(b * cs, n, |i, dst| {
            let (s, c) = (i / cs, i % cs);
            dst.copy_from_slice(&g[(s * ct + cx + c) * n..][..n]);
        });
        (dx, ds)
    }

    fn out_shape(&self, b: usize, c: usize) -> Shape {
        Shape::from((b, c, self.rows.len(), self.cols.len()))
    }

    /// Both gradients from the incoming `grad` as tensors.
    fn grads(&self, x: &Tensor, cs: usize, grad: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (b, cx, _, _) = x.dims4()?;
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let Some((lo, hi)) = layout.contiguous_offsets() else {
            candle_core::bail!("up_cat: gradient not contiguous");
        };
        let (dx, ds) = match &*storage {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => {
                let (dx, ds) = self.backward(&v[lo..hi], b, cx, cs);
                (CpuStorage::F32(dx), CpuStorage::F32(ds))
            }
            candle_core::Storage::Cpu(CpuStorage::F64(v)) => {
                let (dx, ds) = self.backward(&v[lo..hi], b, cx, cs);
                (CpuStorage::F64(dx), CpuStorage::F64(ds))
            }
            _ => candle_core::bail!("up_cat: f32 or f64 on the CPU only"),
        };
        let dx = cpu_tensor(dx, x.shape())?;
        let ds = if cs > 0 {
            Some(cpu_tensor(ds, &self.out_shape(b, cs))?)
        } else {
            None
        };
        Ok((dx, ds))
    }
}

/// A tensor on the CPU from an `f32` or `f64` buffer.
fn cpu_tensor(s: CpuStorage, shape: &Shape) -> Result<Tensor> {
    let dev = candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, &dev),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, &dev),
        _ => candle_core::bail!("up_cat: f32 or f64 only"),
    }
}

impl CustomOp2 for UpCat {
    fn name(&self) -> &'static str {
        "rstile-upsample-cat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cx, _, _) = l1.shape().dims4()?;
        let cs = l2.shape().dims4()?.1;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.forward(cpu_slice::<f32>(s1, l1)?, cpu_slice(s2, l2)?, b, cx))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(self.forward(cpu_slice::<f64>(s1, l1)?, cpu_slice(s2, l2)?, b, cx))
            }
            _ => candle_core::bail!("up_cat: f32 or f64 inputs of one dtype only"),
        };
        Ok((y, self.out_shape(b, cx + cs)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        skip: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, ds) = self.grads(x, skip.dim(1)?, grad)?;
        Ok((Some(dx), ds))
    }
}

impl CustomOp1 for UpCat {
    fn name(&self) -> &'static str {
        "rstile-upsample"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, cx, _, _) = l.shape().dims4()?;
        let y = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward(cpu_slice::<f32>(s, l)?, &[], b, cx))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward(cpu_slice::<f64>(s, l)?, &[], b, cx))
            }
            _ => candle_core::bail!("up_cat: f32 or f64 only"),
        };
        Ok((y, self.out_shape(b, cx)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grads(x, 0, grad)?.0))
    }
}
