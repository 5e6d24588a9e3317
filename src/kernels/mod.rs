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

pub mod conv;
pub mod norm;
pub mod pool;

pub use conv::{conv2d_backward, conv2d_forward, ConvShape, Epilogue};
pub use norm::{
    batch_norm_train, batch_norm_train_backward, BatchNormGrads, BatchStats, NormShape,
};

/// A vector of `len` values that `fill` writes, every one of them, through
/// the pointer it is given, before anything reads them. `vec![0.0; len]`
/// would zero them first: with the freed buffers of a training step kept in
/// the heap, that is a memset of every output, some 5 % of a ResNet step.
///
/// # Safety
/// `fill` must write all `len` values (and nothing past them).
pub(crate) unsafe fn filled(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    fill(v.as_mut_ptr());
    v.set_len(len);
    v
}
