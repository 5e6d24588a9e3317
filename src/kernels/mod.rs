//! CPU kernels for the parts of the network where candle's CPU backend is
//! the limit.
//!
//! candle 0.11 runs a 3x3 convolution as many small GEMMs behind a
//! single-threaded NCHW→NHWC copy of the whole input, and its backward pass
//! for the input gradient is a direct (loop) transposed convolution. Both
//! dominate the time of a ResNet on a CPU. The kernels here keep candle's
//! NCHW layout, so they slot in behind the same `Module` API, but cut the
//! work into independent units that each run one well-shaped GEMM from the
//! `gemm` crate (the one candle itself uses).
//!
//! Batch norm in training mode is the other hot spot: composed from
//! candle's element-wise ops it makes some thirty passes over each
//! activation per step; [`norm`] makes five. [`pool`] does the same for the
//! stem's max pool, which candle cannot differentiate with overlapping
//! windows.
//!
//! They know nothing of candle or GDAL: plain `f32` slices in, `Vec<f32>`
//! out, so that they can be tested and benchmarked alone. The candle side
//! (custom ops with a backward pass, batch-norm folding) lives in
//! `model::conv`.

pub mod concat;
pub mod conv;
mod direct;
pub mod grouped;
pub mod norm;
pub mod pool;
pub mod resize;

pub use conv::{
    conv2d_backward, conv2d_forward, conv2d_input_gradient, conv2d_transpose, ConvShape, Epilogue,
};
pub use norm::{
    batch_norm_train, batch_norm_train_backward, BatchNormGrads, BatchStats, NormShape,
};

/// A pointer into an output buffer that parallel workers share, each
/// writing its own disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: the users write disjoint regions (each says which) and read only
// what they wrote
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The address `offset` values in. A method, not a field read, so that
    /// closures capture the whole (`Sync`) wrapper rather than the bare
    /// pointer.
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// # Safety
    /// `r` must lie inside the allocation, which must outlive `'a`, its
    /// values must be initialised, and no two live slices may overlap.
    pub(crate) unsafe fn slice<'a>(&self, r: std::ops::Range<usize>) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.len())
    }
}

/// A vector of `len` values that `fill` writes, every one of them, through
/// the pointer it is given, before anything reads them. `vec![0.0; len]`
/// would zero them first: with the freed buffers of a training step kept in
/// the heap, that is a memset of every output, some 5 % of a ResNet step.
///
/// # Safety
/// `fill` must write all `len` values (and nothing past them).
pub(crate) unsafe fn filled(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    huge_pages(v.as_mut_ptr(), len);
    fill(v.as_mut_ptr());
    v.set_len(len);
    v
}

/// Asks for transparent huge pages on a fresh allocation (`len` values of
/// `f32`, or the same number of bytes) too large for the heap (glibc maps anything over 32 MiB on its own, and those pages are
/// faulted in one by one on first write: thousands of faults, each a
/// kernel entry and a zeroed 4 KiB page). With 2 MiB pages that is a few
/// dozen. Only a hint: without THP, or with THP set to `never`, nothing
/// changes.
pub(crate) fn huge_pages(ptr: *mut f32, len: usize) {
    const MIN: usize = 32 << 20;
    const HUGE: usize = 2 << 20;
    let bytes = len * std::mem::size_of::<f32>();
    if bytes < MIN {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // the 2 MiB-aligned interior of the allocation
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: an advice on memory this allocation owns; it changes
            // no contents
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, HUGE);
}

/// The convolution straight from its definition, in `f64`, for the tests:
/// `groups` groups (1 for an ordinary layer), `w` is `c_out x (c_in /
/// groups) x k x k`.
#[cfg(test)]
pub(crate) fn reference_conv(s: &ConvShape, groups: usize, x: &[f32], w: &[f32]) -> Vec<f64> {
    let (ci_g, co_g) = (s.c_in / groups, s.c_out / groups);
    let (oh, ow, k) = (s.out_height(), s.out_width(), s.kernel);
    let mut y = Vec::with_capacity(s.output_len());
    for b in 0..s.batch {
        for co in 0..s.c_out {
            let g = co / co_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f64;
                    for c in 0..ci_g {
                        let ci = g * ci_g + c;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy =
                                    (oy * s.stride + ky * s.dilation) as isize - s.padding as isize;
                                let ix =
                                    (ox * s.stride + kx * s.dilation) as isize - s.padding as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.height as isize
                                    || ix >= s.width as isize
                                {
                                    continue;
                                }
                                let xi = ((b * s.c_in + ci) * s.height + iy as usize) * s.width
                                    + ix as usize;
                                let wi = ((co * ci_g + c) * k + ky) * k + kx;
                                acc += x[xi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    y
}
