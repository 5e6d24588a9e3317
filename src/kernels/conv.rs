//! 2-D convolution as im2col + GEMM, forward and both gradients, NCHW.
//!
//! The work is cut into *units*: one sample and one fixed range of output
//! pixels (a tile). Each unit gathers its patch matrix (im2col) into a small
//! per-thread buffer that stays in cache and runs one single-threaded GEMM;
//! rayon spreads the units over the cores. The tile width depends only on
//! the layer's shape, never on the batch size or the thread count, and a
//! unit's arithmetic depends only on its own sample, so every output value
//! is computed by the same sequence of operations however the batch is
//! composed and however many threads run. That is what keeps `rstile infer`
//! bit-identical under any `--batch` and `--threads`.
//!
//! Pointwise convolutions (1x1, stride 1, no padding) skip im2col: the
//! sample's `C x H·W` plane already is the patch matrix.
//!
//! The forward pass takes an [`Epilogue`] applied while a tile is still in
//! cache: a per-channel affine map (batch norm folded in at inference, or a
//! bias), a residual and a ReLU. That removes the separate passes over the
//! activations that candle would make for each.
//!
//! ```
//! use rstile::kernels::{conv2d_forward, ConvShape, Epilogue};
//! // a 3x3 box filter over a 4x4 plane of ones, zero padding 1
//! let s = ConvShape { batch: 1, c_in: 1, height: 4, width: 4, c_out: 1,
//!                     kernel: 3, stride: 1, padding: 1, dilation: 1 };
//! let y = conv2d_forward(&s, &[1.0; 16], &[1.0; 9], &Epilogue::default());
//! assert_eq!(&y[..4], &[4.0, 6.0, 6.0, 4.0]);
//! assert_eq!(y[5], 9.0);
//! ```

use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::cell::RefCell;

use super::Shared;

/// The geometry of one convolution: NCHW input, `c_out x c_in x k x k`
/// weights, square kernel, the same stride, padding and dilation on both
/// axes (all that the ResNet family uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

/// What happens to each output value after the GEMM, in this order:
/// `y = acc * scale[c] + shift[c] + residual`, then `max(y, 0)` if `relu`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Per output channel; batch norm's `gamma / sqrt(var + eps)`.
    pub scale: Option<&'a [f32]>,
    /// Per output channel; a bias, or batch norm's folded shift.
    pub shift: Option<&'a [f32]>,
    /// Same shape as the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// Target size of one unit's patch matrix: half of this machine's 1 MiB
/// per-core L2, leaving room for the GEMM's own packed blocks.
const COL_BYTES: usize = 512 * 1024;

impl ConvShape {
    /// Whether the kernel fits inside the padded input at least once.
    pub fn is_valid(&self) -> bool {
        self.batch > 0
            && self.c_in > 0
            && self.c_out > 0
            && self.kernel > 0
            && self.stride > 0
            && self.dilation > 0
            && self.height + 2 * self.padding > self.dilation * (self.kernel - 1)
            && self.width + 2 * self.padding > self.dilation * (self.kernel - 1)
    }

    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }

    /// Rows of the patch matrix: `c_in · k · k`, the GEMM's inner dimension.
    pub fn patch_len(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.height * self.width
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch_len()
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.out_pixels()
    }

    /// Multiply-adds times two, the usual FLOP count of a forward pass.
    pub fn flops(&self) -> u64 {
        2 * (self.batch * self.c_out * self.out_pixels()) as u64 * self.patch_len() as u64
    }

    /// The stride-1 convolution whose output is this layer's input
    /// gradient (or transposed convolution): channels swapped, over this
    /// layer's output, padded by the kernel's reach minus the padding
    /// (with the flipped, transposed kernel, see `flip_transpose`).
    fn transposed(&self) -> ConvShape {
        let reach = self.dilation * (self.kernel - 1);
        debug_assert!(self.stride == 1 && self.padding <= reach);
        ConvShape {
            batch: self.batch,
            c_in: self.c_out,
            height: self.out_height(),
            width: self.out_width(),
            c_out: self.c_in,
            kernel: self.kernel,
            stride: 1,
            padding: reach - self.padding,
            dilation: self.dilation,
        }
    }

    fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }

    fn pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output pixels per unit. A function of the layer alone (see the
    /// module docs): the multiple of 64 nearest to [`COL_BYTES`]' worth of
    /// patch columns, and at least 64. 64 pixels are the height of the
    /// `gemm` crate's AVX-512 microkernel (it computes the output
    /// transposed, pixels by channels), so every unit runs full-height
    /// microkernels only; with the former multiples of 16 (112 pixels
    /// for 128 input channels, 224 for 64), a third to a half of some
    /// layers' work ran in the slower 16- to 48-row remainder kernels.
    fn tile(&self) -> usize {
        let t = (COL_BYTES / 4 / self.patch_len()).max(64);
        let t = (t + 32) / 64 * 64;
        t.min(self.out_pixels())
    }

    /// `(sample, first pixel, end pixel)` of every unit, in order.
    fn units(&self) -> Vec<(usize, usize, usize)> {
        let (p, t) = (self.out_pixels(), self.tile());
        (0..self.batch)
            .flat_map(|b| (0..p.div_ceil(t)).map(move |i| (b, i * t, (i * t + t).min(p))))
            .collect()
    }

    fn check(&self, x: &[f32], w: &[f32]) {
        assert!(self.is_valid(), "invalid convolution {self:?}");
        assert_eq!(x.len(), self.input_len(), "input length");
        assert_eq!(w.len(), self.weight_len(), "weight length");
    }
}

thread_local! {
    /// Each rayon worker's patch-matrix buffer, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Range of output columns `[lo, hi)` for which input column
/// `ox·stride + offset` falls inside `0..width`.
fn valid_range(offset: isize, stride: usize, width: usize, out: usize) -> (usize, usize) {
    let s = stride as isize;
    // smallest ox with ox·s + offset >= 0
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    // largest ox with ox·s + offset <= width - 1
    let last = width as isize - 1 - offset;
    let hi = if last < 0 { 0 } else { last / s + 1 };
    let lo = (lo as usize).min(out);
    (lo, (hi as usize).clamp(lo, out))
}

/// Gathers the patch matrix of output pixels `p0..p1` of one sample `xb`
/// (`c_in x H x W`) into `col` (`patch_len x (p1 - p0)`, row-major; row
/// `(ci·k + ky)·k + kx` matches the weights' memory order).
fn im2col(s: &ConvShape, xb: &[f32], p0: usize, p1: usize, col: &mut [f32]) {
    let n = p1 - p0;
    assert!(col.len() >= s.patch_len() * n);
    // SAFETY: rows of length n at stride n, inside `col` (checked above).
    unsafe { im2col_strided(s, xb, p0, p1, Shared(col.as_mut_ptr()), n) }
}

/// [`im2col`] into rows `ld` apart, starting at `base`.
///
/// # Safety
/// `base + r·ld .. + (p1 - p0)` must be valid for writes, for every row `r`,
/// and written by no one else meanwhile.
unsafe fn im2col_strided(s: &ConvShape, xb: &[f32], p0: usize, p1: usize, base: Shared, ld: usize) {
    let (h, w, k) = (s.height, s.width, s.kernel);
    let (ow, n) = (s.out_width(), p1 - p0);
    for ci in 0..s.c_in {
        let plane = &xb[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = std::slice::from_raw_parts_mut(base.at(((ci * k + ky) * k + kx) * ld), n);
                let off_x = (kx * s.dilation) as isize - s.padding as isize;
                let (lo, hi) = valid_range(off_x, s.stride, w, ow);
                let mut p = p0;
                while p < p1 {
                    let (oy, ox0) = (p / ow, p % ow);
                    let ox1 = ow.min(ox0 + (p1 - p));
                    let dst = &mut row[p - p0..p - p0 + (ox1 - ox0)];
                    let iy = (oy * s.stride + ky * s.dilation) as isize - s.padding as isize;
                    if iy < 0 || iy >= h as isize {
                        dst.fill(0.0);
                    } else {
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
                        dst[..a - ox0].fill(0.0);
                        dst[b - ox0..].fill(0.0);
                        // a tap that misses the row entirely (a dilation
                        // as large as the map) copies nothing
                        let first = (a as isize * s.stride as isize + off_x).max(0) as usize;
                        if b == a {
                        } else if s.stride == 1 {
                            copy_row(&mut dst[a - ox0..b - ox0], &src[first..first + (b - a)]);
                        } else {
                            for (d, ix) in dst[a - ox0..b - ox0]
                                .iter_mut()
                                .zip((first..).step_by(s.stride))
                            {
                                *d = src[ix];
                            }
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, without a call to `memcpy` for the short
/// rows of the deep layers' small maps (8 to 32 values), where the call
/// costs more than the copy.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    if dst.len() > 64 {
        dst.copy_from_slice(src);
        return;
    }
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d8, s8) in d.by_ref().zip(s.by_ref()) {
        let s8: &[f32; 8] = s8.try_into().expect("chunk of 8");
        let d8: &mut [f32; 8] = d8.try_into().expect("chunk of 8");
        *d8 = *s8;
    }
    for (d1, s1) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d1 = *s1;
    }
}

/// The adjoint of [`im2col`] for input channel `ci` of one sample: adds
/// each entry of its patch-matrix rows (`K x P`, all output pixels) back
/// onto the position of `plane` (`H x W`) it was gathered from.
fn col2im_add(s: &ConvShape, col: &[f32], ci: usize, plane: &mut [f32]) {
    let (h, w, k) = (s.height, s.width, s.kernel);
    let (oh, ow) = (s.out_height(), s.out_width());
    for ky in 0..k {
        for kx in 0..k {
            let row = &col[((ci * k + ky) * k + kx) * oh * ow..][..oh * ow];
            let off_x = (kx * s.dilation) as isize - s.padding as isize;
            let (lo, hi) = valid_range(off_x, s.stride, w, ow);
            let first = (lo as isize * s.stride as isize + off_x) as usize;
            for oy in 0..oh {
                let iy = (oy * s.stride + ky * s.dilation) as isize - s.padding as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                let src = &row[oy * ow + lo..oy * ow + hi];
                for (v, ix) in src.iter().zip((first..).step_by(s.stride)) {
                    dst[ix] += *v;
                }
            }
        }
    }
}

/// `y = conv(x, w)` followed by the epilogue. `x` is `batch x c_in x H x W`,
/// `w` is `c_out x c_in x k x k`, both contiguous; returns
/// `batch x c_out x H' x W'`.
pub fn conv2d_forward(s: &ConvShape, x: &[f32], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    s.check(x, w);
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), s.output_len(), "residual length");
    }
    if super::direct::eligible(s) {
        return super::direct::forward(s, x, w, ep);
    }
    conv2d_forward_gemm(s, x, w, ep)
}

/// [`conv2d_forward`] by im2col + GEMM, whatever the layer.
pub(super) fn conv2d_forward_gemm(s: &ConvShape, x: &[f32], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    let in_len = s.c_in * s.height * s.width;
    // SAFETY: the units cover every (sample, channel, pixel) of the output;
    // each writes its own through the GEMM before the epilogue reads it
    unsafe {
        super::filled(s.output_len(), |out| {
            forward_units(s, x, w, ep, in_len, Shared(out))
        })
    }
}

fn forward_units(s: &ConvShape, x: &[f32], w: &[f32], ep: &Epilogue, in_len: usize, dst: Shared) {
    let (p_out, k_len, c_out) = (s.out_pixels(), s.patch_len(), s.c_out);
    s.units().into_par_iter().for_each(|(b, p0, p1)| {
        let n = p1 - p0;
        let xb = &x[b * in_len..(b + 1) * in_len];
        // unit (b, p0..p1) writes only columns p0..p1 of sample b
        let ob = dst.at(b * c_out * p_out);
        let run = |rhs: *const f32, rhs_rs: usize| unsafe {
            gemm(
                c_out,
                n,
                k_len,
                ob.add(p0),
                1,
                p_out as isize,
                false,
                w.as_ptr(),
                1,
                k_len as isize,
                rhs,
                1,
                rhs_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        };
        if s.pointwise() {
            run(xb[p0..].as_ptr(), p_out);
        } else {
            with_scratch(k_len * n, |col| {
                im2col(s, xb, p0, p1, col);
                run(col.as_ptr(), n);
            });
        }
        for c in 0..c_out {
            let at = b * c_out * p_out + c * p_out + p0;
            // SAFETY: as above, this unit's own slice of the output.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(at), n) };
            apply_epilogue(row, ep, c, at);
        }
    });
}

pub(super) fn apply_epilogue(row: &mut [f32], ep: &Epilogue, c: usize, at: usize) {
    let scale = ep.scale.map_or(1.0, |s| s[c]);
    let shift = ep.shift.map_or(0.0, |s| s[c]);
    if ep.scale.is_some() || ep.shift.is_some() {
        for v in row.iter_mut() {
            *v = *v * scale + shift;
        }
    }
    if let Some(r) = ep.residual {
        let n = row.len();
        for (v, r) in row.iter_mut().zip(&r[at..at + n]) {
            *v += *r;
        }
    }
    if ep.relu {
        for v in row.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

/// Both gradients of [`conv2d_forward`] (without epilogue): the input's,
/// `batch x c_in x H x W` (only if `want_input`), and the weights',
/// `c_out x c_in x k x k`.
///
/// * Weights: `dw = dy · colᵀ`, summed over pixels; see
///   [`weight_gradient`] for how the pixels are streamed.
/// * Input: by one of three routes (a transposed pointwise product, a
///   convolution with the flipped kernel, or `dcol = wᵀ · dy` and col2im);
///   see [`input_gradient`].
///
/// On large maps the transient buffers are per-thread chunks; on small ones
/// (under [`SMALL_MAP`] pixels a sample) they hold the batch's patches,
/// `K x (batch·P)` values (18 MiB for ResNet-50's FCN head at batch 4,
/// 256 x 256). Results are reproducible for a given batch and thread count;
/// training needs no more.
pub fn conv2d_backward(
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    want_input: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    s.check(x, w);
    assert_eq!(dy.len(), s.output_len(), "gradient length");
    let dw = weight_gradient(s, x, dy);
    let dx = want_input.then(|| input_gradient(s, dy, w));
    (dx, dw)
}

/// The input gradient of [`conv2d_forward`] alone (as [`conv2d_backward`]
/// computes it), `batch x c_in x H x W`: for benchmarks, which time the two
/// gradients apart.
pub fn conv2d_input_gradient(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(s.is_valid(), "invalid convolution {s:?}");
    assert_eq!(w.len(), s.weight_len(), "weight length");
    assert_eq!(dy.len(), s.output_len(), "gradient length");
    input_gradient(s, dy, w)
}

/// Pixels per weight-gradient GEMM on large maps: the GEMM's inner
/// dimension. The `gemm` crate keeps its speed on these "both operands
/// pixel-contiguous" products only while the inner dimension is short:
/// single-threaded on ResNet-50's shapes, 103–114 GFLOP/s at 128, 87–113 at
/// 256, under half of that at 1024 (`cargo bench --bench gemm_shapes`; the
/// sweep is in `benches/RESULTS.md`).
const DW_PIXELS: usize = 128;

/// At most this many output channels, the weight gradient's GEMM has as
/// few rows (16 or 32 in the U-Net decoder's last blocks, 6 in its head),
/// and each call does little work for the patch matrix it packs: longer
/// chunks of [`NARROW_DW_PIXELS`] pixels run these layers up to 25 % faster
/// (single-threaded, `NET=unet cargo bench --bench layers`; the sweep is in
/// `benches/RESULTS.md`).
const NARROW_DW: usize = 32;

/// Pixels per weight-gradient GEMM for layers of at most [`NARROW_DW`]
/// output channels.
const NARROW_DW_PIXELS: usize = 512;

/// Below this many pixels a sample, the weight gradient is one batched
/// GEMM per thread (see [`weight_gradient`]).
const SMALL_MAP: usize = 256;

/// Inner dimension of the batched GEMMs (their rows run to thousands,
/// where the crate is fast at this length).
const BATCHED_PIXELS: usize = 512;

/// `acc += dy_u · x_uᵀ` for `n` pixels: `dy_u` is `c_out` rows `dy_rs`
/// apart, `x_u` is `K` rows `x_rs` apart, each row `n` contiguous pixels.
/// The GEMM's rows are the output channels if `by_channel` (`acc` is then
/// `K x c_out` row-major, the transposed result), else the patch rows
/// (`acc` is `c_out x K` row-major). The `gemm` crate is fast on this
/// product with its rows on the smaller side, or on a long side of
/// thousands. With `first`, `acc` is overwritten rather than added to (it
/// is then not read, so a freshly mapped buffer is not first faulted in as
/// the shared zero page and then copied on write).
///
/// # Safety
/// `dy_u`, `x_u` and `acc` must be valid for the extents above, and `acc`
/// written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn dw_accumulate(
    s: &ConvShape,
    by_channel: bool,
    acc: *mut f32,
    dy_u: *const f32,
    dy_rs: usize,
    x_u: *const f32,
    x_rs: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    first: bool,
) {
    let (k_len, c_out) = (s.patch_len(), s.c_out);
    let m = rows.end - rows.start;
    // acc(r, c) at r + c·ld, lhs(r, j) row-major, rhs(j, c) column-major:
    // by channel, r = co and c = kk (lhs = dy_u, rhs = x_u); else swapped
    let (lhs, lhs_rs, rhs, rhs_cs, cols, ld) = if by_channel {
        (dy_u.add(rows.start * dy_rs), dy_rs, x_u, x_rs, k_len, c_out)
    } else {
        (x_u.add(rows.start * x_rs), x_rs, dy_u, dy_rs, c_out, k_len)
    };
    gemm(
        m,
        cols,
        n,
        acc.add(rows.start),
        ld as isize,
        1,
        !first,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        1,
        1.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// `dw = Σ_pixels dy · patchesᵀ`, `c_out x K`.
///
/// * Large maps (at least [`SMALL_MAP`] pixels a sample): the pixels are
///   streamed in chunks. Each chunk's patch matrix is gathered into a
///   per-thread buffer that stays in cache (pointwise layers read the input
///   in place), and `dy` is read in place; each thread sums into its own
///   accumulator, and the accumulators are added at the end. They hold
///   `K x c_out` values each, whatever the batch (for ResNet-50 at 256 x 256
///   windows at most 590 thousand, in layer3).
/// * Small maps (the deep layers, where the weights outnumber the pixels):
///   the whole batch's patches, `K x (batch·P)`, in one GEMM per thread
///   over a block of patch rows, written straight into `dw`.
fn weight_gradient(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, k_len, c_out, b) = (s.out_pixels(), s.patch_len(), s.c_out, s.batch);
    let threads = rayon::current_num_threads().max(1);
    if p < SMALL_MAP {
        let bp = b * p;
        let col = batch_patches(s, x);
        let dy_b = batch_major(dy, b, c_out, p);
        let block = k_len.div_ceil(threads).div_ceil(16) * 16;
        // SAFETY: the row blocks cover all K rows, and each block's first
        // chunk overwrites its rows for every output channel
        let fill = |dw: *mut f32| {
            let out = Shared(dw);
            (0..k_len.div_ceil(block)).into_par_iter().for_each(|i| {
                let rows = i * block..((i + 1) * block).min(k_len);
                for j0 in (0..bp).step_by(BATCHED_PIXELS) {
                    let n = BATCHED_PIXELS.min(bp - j0);
                    // SAFETY: block i writes only its own rows of the result
                    unsafe {
                        dw_accumulate(
                            s,
                            false,
                            out.at(0),
                            dy_b[j0..].as_ptr(),
                            bp,
                            col[j0..].as_ptr(),
                            bp,
                            n,
                            rows.clone(),
                            j0 == 0,
                        )
                    }
                }
            });
        };
        return unsafe { super::filled(k_len * c_out, fill) };
    }
    let dw_pixels = if c_out <= NARROW_DW {
        NARROW_DW_PIXELS
    } else {
        DW_PIXELS
    };
    let chunks = p.div_ceil(dw_pixels);
    let units: Vec<(usize, usize, usize)> = (0..b)
        .flat_map(|i| (0..chunks).map(move |c| (i, c * dw_pixels, ((c + 1) * dw_pixels).min(p))))
        .collect();
    let groups = threads.min(units.len());
    let in_len = s.c_in * s.height * s.width;
    // rows on the output channels where they are the smaller side, except
    // for gathered patches barely longer than that (the stem: 64 channels,
    // 147 patch rows, 1.4x faster with the patch rows as the GEMM's rows;
    // pointwise layers, which read the input in place, are 2x slower so)
    let by_channel = c_out < k_len && (s.pointwise() || 4 * c_out <= k_len);
    let m = if by_channel { c_out } else { k_len };
    // one accumulator per group of consecutive units: the sums depend on
    // the thread count, not on scheduling
    let accs: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![0f32; k_len * c_out];
            let mine = &units[g * units.len() / groups..(g + 1) * units.len() / groups];
            for (u, &(i, p0, p1)) in mine.iter().enumerate() {
                let n = p1 - p0;
                let dy_u = dy[(i * c_out) * p + p0..].as_ptr();
                let xb = &x[i * in_len..(i + 1) * in_len];
                // the chunk's patch rows, `x_rs` apart
                let mut run = |x_u: *const f32, x_rs: usize| {
                    // SAFETY: extents as documented on dw_accumulate; acc is ours
                    unsafe {
                        dw_accumulate(
                            s,
                            by_channel,
                            acc.as_mut_ptr(),
                            dy_u,
                            p,
                            x_u,
                            x_rs,
                            n,
                            0..m,
                            u == 0,
                        )
                    }
                };
                if s.pointwise() {
                    run(xb[p0..].as_ptr(), p);
                } else {
                    with_scratch(k_len * n, |col| {
                        im2col(s, xb, p0, p1, col);
                        run(col.as_ptr(), n);
                    });
                }
            }
            acc
        })
        .collect();
    let parts: Vec<&[f32]> = accs.iter().map(|a| a.as_slice()).collect();
    let mut dw = vec![0f32; k_len * c_out];
    if by_channel {
        transpose_into(&parts, &mut dw, k_len, c_out);
    } else {
        dw.par_chunks_mut(k_len).enumerate().for_each(|(co, row)| {
            for part in &parts {
                for (v, a) in row.iter_mut().zip(&part[co * k_len..(co + 1) * k_len]) {
                    *v += *a;
                }
            }
        });
    }
    dw
}

/// `out (c_out x K, row-major) = Σ parts`, each part `K x c_out` row-major.
fn transpose_into(parts: &[&[f32]], out: &mut [f32], k_len: usize, c_out: usize) {
    out.par_chunks_mut(k_len).enumerate().for_each(|(co, row)| {
        for (kk, v) in row.iter_mut().enumerate() {
            *v = parts.iter().map(|part| part[kk * c_out + co]).sum();
        }
    });
}

/// The weights of the transposed convolution: `c_in x c_out x k x k`, each
/// kernel rotated by 180°.
fn flip_transpose(s: &ConvShape, w: &[f32]) -> Vec<f32> {
    let kk = s.kernel * s.kernel;
    let mut wf = vec![0f32; w.len()];
    wf.par_chunks_mut(s.c_out * kk)
        .enumerate()
        .for_each(|(ci, dst)| {
            for (co, taps) in dst.chunks_exact_mut(kk).enumerate() {
                let src = &w[(co * s.c_in + ci) * kk..][..kk];
                for (d, v) in taps.iter_mut().zip(src.iter().rev()) {
                    *d = *v;
                }
            }
        });
    wf
}

/// The input gradient, by whichever of three routes is fastest for the
/// layer (measured on each ResNet-50 shape with `cargo bench --bench
/// layers`):
///
/// * stride 1, pointwise: `dx = wᵀ · dy`; on large maps through the
///   per-sample units of [`conv2d_forward`] with the weights transposed
///   (few, in these layers), on small ones as one batched GEMM that reads
///   the weights transposed in place (there they outnumber the pixels and
///   per-sample units would pack them once per sample);
/// * stride 1, larger kernels, maps of at least 256 pixels: the gradient of
///   a stride-1 convolution is itself a stride-1 convolution of `dy` with
///   the flipped, transposed kernel and padding `d·(k−1) − p`, so it runs
///   through [`conv2d_forward`];
/// * otherwise (strides above 1, and the deep layers' small maps, where
///   flipping millions of weights costs more than it saves): per sample,
///   `dcol = wᵀ · dy_b` and col2im.
fn input_gradient(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let k = s.kernel;
    let reach = s.dilation * (k - 1);
    if s.stride == 1 && s.padding <= reach && (k == 1 || s.out_pixels() >= 256) {
        // dx = conv(dy, flip(w)ᵀ), padding reach − p, same dilation
        let t = s.transposed();
        debug_assert_eq!(t.out_height(), s.height);
        return if k == 1 && t.out_pixels() < 1024 {
            pointwise_batched_transposed(&t, dy, w)
        } else {
            conv2d_forward(&t, dy, &flip_transpose(s, w), &Epilogue::default())
        };
    }
    gemm_col2im(s, dy, w)
}

/// The transposed convolution of the layer `s` (ONNX's and PyTorch's
/// ConvTranspose with `s`'s stride, padding and dilation): `x` is `batch x
/// c_out x H' x W'` (the layer's output shape), `w` is `c_out x c_in x k x
/// k` (ConvTranspose's own weight layout: input channels first), and the
/// result is `batch x c_in x H x W`. It is the input gradient of
/// [`conv2d_forward`], computed for each sample alone, so that every value
/// is the same under any batch and thread count.
///
/// ```
/// use rstile::kernels::{conv2d_transpose, ConvShape};
/// // a 2x2 kernel of ones, stride 2: each input pixel becomes a 2x2 block
/// let s = ConvShape { batch: 1, c_in: 1, height: 4, width: 4, c_out: 1,
///                     kernel: 2, stride: 2, padding: 0, dilation: 1 };
/// let y = conv2d_transpose(&s, &[1.0, 2.0, 3.0, 4.0], &[1.0; 4]);
/// assert_eq!(&y[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
/// ```
pub fn conv2d_transpose(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(s.is_valid(), "invalid convolution {s:?}");
    assert_eq!(w.len(), s.weight_len(), "weight length");
    assert_eq!(x.len(), s.output_len(), "input length");
    let reach = s.dilation * (s.kernel - 1);
    if s.stride == 1 && s.padding <= reach {
        let t = s.transposed();
        return conv2d_forward(&t, x, &flip_transpose(s, w), &Epilogue::default());
    }
    gemm_col2im(s, x, w)
}

/// `dx` by `dcol = wᵀ · dy` and col2im, one sample per task.
fn gemm_col2im(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (p, k_len, c_out) = (s.out_pixels(), s.patch_len(), s.c_out);
    let in_len = s.c_in * s.height * s.width;
    let plane = s.height * s.width;
    let mut dx = vec![0f32; s.input_len()];
    dx.par_chunks_mut(in_len).enumerate().for_each(|(b, dxb)| {
        let dyb = &dy[b * c_out * p..(b + 1) * c_out * p];
        let mut dcol = vec![0f32; k_len * p];
        // dcol (K x P) = wᵀ (K x c_out) · dy_b (c_out x P)
        unsafe {
            gemm(
                k_len,
                p,
                c_out,
                dcol.as_mut_ptr(),
                1,
                p as isize,
                false,
                w.as_ptr(),
                k_len as isize,
                1,
                dyb.as_ptr(),
                1,
                p as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        };
        for (ci, dst) in dxb.chunks_mut(plane).enumerate() {
            col2im_add(s, &dcol, ci, dst);
        }
    });
    dx
}

/// A pointwise convolution (no epilogue) with the whole batch in one
/// `c_in x (batch·P)` matrix and one GEMM per thread over a block of output
/// channels: each block packs its slice of the weights once, where
/// [`conv2d_forward`]'s per-sample units pack them once per unit, which
/// dominates in the deep layers (a few dozen pixels a sample, millions of
/// weights). `w` is stored `c_in x c_out`, the transpose of the usual
/// layout: the input gradient's use, which reads a layer's own weights.
/// Its sums depend on the batch, so it serves training only.
fn pointwise_batched_transposed(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (p, k_len, c_out, b) = (s.out_pixels(), s.patch_len(), s.c_out, s.batch);
    let bp = b * p;
    let col = batch_patches(s, x);
    // y_t (c_out x bp) = w (c_out x K) · col (K x bp), in blocks of rows
    let threads = rayon::current_num_threads().max(1);
    let block = c_out.div_ceil(threads).div_ceil(16) * 16;
    // SAFETY: the row blocks cover all c_out rows of y_t
    let y_t = unsafe {
        super::filled(c_out * bp, |y_t| {
            let y_t = Shared(y_t);
            (0..c_out.div_ceil(block)).into_par_iter().for_each(|i| {
                let rows = block.min(c_out - i * block);
                gemm(
                    rows,
                    bp,
                    k_len,
                    y_t.at(i * block * bp),
                    1,
                    bp as isize,
                    false,
                    // rows i·block.. of w(row, col), stored at col·c_out + row
                    w[i * block..].as_ptr(),
                    c_out as isize,
                    1,
                    col.as_ptr(),
                    1,
                    bp as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            })
        })
    };
    // back to [batch][c_out][P]
    // SAFETY: every (sample, channel) row of p values is copied
    unsafe {
        super::filled(c_out * bp, |y| {
            let y = Shared(y);
            (0..b).into_par_iter().for_each(|sample| {
                for c in 0..c_out {
                    let src = &y_t[c * bp + sample * p..][..p];
                    let at = (sample * c_out + c) * p;
                    std::ptr::copy_nonoverlapping(src.as_ptr(), y.at(at), p);
                }
            })
        })
    }
}

/// The patch matrix of the whole batch, `K x (batch·P)`: sample `i` in
/// columns `i·P..(i+1)·P`. Pointwise layers need no gathering, only the
/// batch-major layout.
fn batch_patches(s: &ConvShape, x: &[f32]) -> Vec<f32> {
    let (p, k_len, b) = (s.out_pixels(), s.patch_len(), s.batch);
    if s.pointwise() {
        return batch_major(x, b, s.c_in, p);
    }
    let (bp, in_len) = (b * p, s.c_in * s.height * s.width);
    let mut col = vec![0f32; k_len * bp];
    let base = Shared(col.as_mut_ptr());
    (0..b).into_par_iter().for_each(|i| {
        // SAFETY: sample i writes columns i·P..(i+1)·P of each row.
        unsafe {
            im2col_strided(
                s,
                &x[i * in_len..(i + 1) * in_len],
                0,
                p,
                Shared(base.at(i * p)),
                bp,
            )
        }
    });
    col
}

/// `[batch][rows][p]` → `[rows][batch·p]`.
fn batch_major(v: &[f32], batch: usize, rows: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(batch * p)
        .enumerate()
        .for_each(|(r, dst)| {
            for b in 0..batch {
                dst[b * p..(b + 1) * p]
                    .copy_from_slice(&v[(b * rows + r) * p..(b * rows + r + 1) * p]);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn shapes() -> Vec<ConvShape> {
        let mut v = Vec::new();
        for (k, stride, padding, dilation) in [
            (1, 1, 0, 1),
            (1, 2, 0, 1),
            (3, 1, 1, 1),
            (3, 2, 1, 1),
            (3, 1, 2, 2),
            (7, 2, 3, 1),
            (2, 3, 0, 1),
        ] {
            // 40 x 30: past the 1024-pixel switch of the input gradient
            for (h, w) in [(5, 7), (8, 8), (1, 3), (13, 4), (40, 30)] {
                let s = ConvShape {
                    batch: 2,
                    c_in: 3,
                    height: h,
                    width: w,
                    c_out: 4,
                    kernel: k,
                    stride,
                    padding,
                    dilation,
                };
                if s.is_valid() {
                    v.push(s);
                }
            }
        }
        v
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let x = pseudo(s.input_len(), 1);
            let w = pseudo(s.weight_len(), 2);
            let y = conv2d_forward(&s, &x, &w, &Epilogue::default());
            for (a, b) in y.iter().zip(super::super::reference_conv(&s, 1, &x, &w)) {
                assert!((*a as f64 - b).abs() < 1e-5, "{s:?}: {a} vs {b}");
            }
        }
    }

    /// <conv(x, w), g> = <x, dx> = <w, dw>: both gradients against the
    /// forward pass, through the adjoint identities.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        for s in shapes() {
            let x = pseudo(s.input_len(), 3);
            let w = pseudo(s.weight_len(), 4);
            let g = pseudo(s.output_len(), 5);
            let y = conv2d_forward(&s, &x, &w, &Epilogue::default());
            let lhs: f64 = y.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum();
            let (dx, dw) = conv2d_backward(&s, &x, &g, &w, true);
            let dx = dx.unwrap();
            let via_x: f64 = dx.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let via_w: f64 = dw.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((lhs - via_x).abs() < 1e-4, "{s:?}: {lhs} vs {via_x}");
            assert!((lhs - via_w).abs() < 1e-4, "{s:?}: {lhs} vs {via_w}");
        }
    }

    /// The weight gradient's other routes on large maps: more than
    /// [`NARROW_DW`] output channels (chunks of [`DW_PIXELS`]), with the
    /// GEMM's rows on the output channels (3 x 3) or, for patches of fewer
    /// than four times as many rows (a stem-like 5 x 5), on the patch rows;
    /// checked against the definition in f64.
    #[test]
    fn wide_weight_gradients_match_the_definition() {
        for (c_in, c_out, k, stride, padding) in [(20, 40, 3, 1, 1), (3, 40, 5, 2, 2)] {
            let s = ConvShape {
                batch: 2,
                c_in,
                height: 40,
                width: 36,
                c_out,
                kernel: k,
                stride,
                padding,
                dilation: 1,
            };
            assert!(s.out_pixels() >= SMALL_MAP && c_out > NARROW_DW);
            let x = pseudo(s.input_len(), 6);
            let g = pseudo(s.output_len(), 7);
            let w = pseudo(s.weight_len(), 8);
            let (_, dw) = conv2d_backward(&s, &x, &g, &w, false);
            // dw[co][r] = Σ g[co] · (y with w = e_r)[co], via the forward
            // pass of unit weights, one patch row at a time
            let k_len = s.patch_len();
            for r in (0..k_len).step_by(7) {
                let mut e = vec![0f32; s.weight_len()];
                for co in 0..c_out {
                    e[co * k_len + r] = 1.0;
                }
                let y = super::super::reference_conv(&s, 1, &x, &e);
                let p = s.out_pixels();
                for co in 0..c_out {
                    let want: f64 = (0..s.batch)
                        .flat_map(|b| (0..p).map(move |j| (b * c_out + co) * p + j))
                        .map(|i| y[i] * g[i] as f64)
                        .sum();
                    let got = dw[co * k_len + r] as f64;
                    assert!(
                        (got - want).abs() < 1e-3,
                        "{s:?} co {co} r {r}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn epilogue_applies_scale_shift_residual_and_relu() {
        let s = ConvShape {
            batch: 1,
            c_in: 1,
            height: 2,
            width: 2,
            c_out: 2,
            kernel: 1,
            stride: 1,
            padding: 0,
            dilation: 1,
        };
        let x = [1.0, -1.0, 2.0, 0.5];
        let w = [1.0, 2.0];
        let res = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let y = conv2d_forward(
            &s,
            &x,
            &w,
            &Epilogue {
                scale: Some(&[2.0, -1.0]),
                shift: Some(&[0.5, 0.0]),
                residual: Some(&res),
                relu: true,
            },
        );
        assert_eq!(y, vec![2.5, 0.0, 4.5, 2.5, 0.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn a_sample_does_not_depend_on_its_batch() {
        let one = ConvShape {
            batch: 1,
            c_in: 16,
            height: 37,
            width: 29,
            c_out: 8,
            kernel: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
        };
        let four = ConvShape { batch: 4, ..one };
        let x = pseudo(four.input_len(), 9);
        let w = pseudo(four.weight_len(), 10);
        let all = conv2d_forward(&four, &x, &w, &Epilogue::default());
        for b in 0..4 {
            let xb = &x[b * one.input_len()..(b + 1) * one.input_len()];
            let yb = conv2d_forward(&one, xb, &w, &Epilogue::default());
            assert_eq!(
                &all[b * one.output_len()..(b + 1) * one.output_len()],
                &yb[..]
            );
        }
    }
}
