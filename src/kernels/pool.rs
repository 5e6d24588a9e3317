//! torchvision's ResNet max pool (3x3, stride 2, padding 1) with its
//! backward pass.
//!
//! candle's max pool has no padding and no backward pass for overlapping
//! windows; composed from candle's element-wise maxima it made some twenty
//! passes over the stem's activations (the largest of the network) per
//! training step. Here the forward pass records each output's source index
//! and the backward pass routes each gradient there, to the first maximum in
//! scan order, as PyTorch does. Padding is `-inf`, as in PyTorch.
//!
//! ```
//! use rstile::kernels::pool::{max_pool_3x3_s2, max_pool_3x3_s2_backward};
//! // one 4x4 plane: outputs are 2x2
//! let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
//! let (y, idx) = max_pool_3x3_s2(&x, 1, 4, 4);
//! assert_eq!(y, vec![5.0, 7.0, 13.0, 15.0]);
//! let dx = max_pool_3x3_s2_backward(&[1.0; 4], &idx, 1, 4, 4);
//! assert_eq!(dx[5] + dx[7] + dx[13] + dx[15], 4.0);
//! ```

use rayon::prelude::*;

/// Output size along an axis of length `n`.
pub fn pooled(n: usize) -> usize {
    (n - 1) / 2 + 1
}

/// `planes` planes of `h x w` (NCHW with N·C planes) → the pooled planes and,
/// per output, the index of its maximum within its plane.
pub fn max_pool_3x3_s2(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u32>) {
    assert_eq!(x.len(), planes * h * w);
    let (oh, ow) = (pooled(h), pooled(w));
    let mut y = vec![0f32; planes * oh * ow];
    let mut idx = vec![0u32; planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(p, (yp, ip))| {
            let xp = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                let (y0, y1) = ((2 * oy).saturating_sub(1), (2 * oy + 2).min(h));
                for ox in 0..ow {
                    let (x0, x1) = ((2 * ox).saturating_sub(1), (2 * ox + 2).min(w));
                    let (mut best, mut at) = (f32::NEG_INFINITY, y0 * w + x0);
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let v = xp[iy * w + ix];
                            // NaN propagates, as in PyTorch
                            if v > best || v.is_nan() {
                                best = v;
                                at = iy * w + ix;
                                if v.is_nan() {
                                    break;
                                }
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ip[oy * ow + ox] = at as u32;
                }
            }
        });
    (y, idx)
}

/// The gradient of the input: each output's gradient added at its maximum.
pub fn max_pool_3x3_s2_backward(
    dy: &[f32],
    idx: &[u32],
    planes: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let per = pooled(h) * pooled(w);
    assert!(dy.len() == planes * per && idx.len() == dy.len());
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, dxp)| {
        for (g, &i) in dy[p * per..(p + 1) * per]
            .iter()
            .zip(&idx[p * per..(p + 1) * per])
        {
            dxp[i as usize] += *g;
        }
    });
    dx
}
