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
                // interior outputs see a whole 3x3 window: no bounds, no
                // branches in the scan (NaN is folded in at the end)
                let full_rows = oy >= 1 && 2 * oy + 1 < h;
                let ox_end = if full_rows { w / 2 } else { 0 };
                for ox in 1..ox_end.max(1) {
                    let base = (2 * oy - 1) * w + 2 * ox - 1;
                    let (mut best, mut at, mut nan) = (f32::NEG_INFINITY, base, false);
                    for r in 0..3 {
                        let row = base + r * w;
                        for (i, &v) in xp[row..row + 3].iter().enumerate() {
                            let gt = v > best;
                            best = if gt { v } else { best };
                            at = if gt { row + i } else { at };
                            nan |= v.is_nan();
                        }
                    }
                    if nan {
                        (best, at) =
                            first_nan(xp, w, 2 * oy - 1..2 * oy + 2, 2 * ox - 1..2 * ox + 2);
                    }
                    yp[oy * ow + ox] = best;
                    ip[oy * ow + ox] = at as u32;
                }
                for ox in (0..ow).filter(|&ox| !(1..ox_end.max(1)).contains(&ox)) {
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

/// The value and plane index of the first NaN of a window.
fn first_nan(
    xp: &[f32],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> (f32, usize) {
    for iy in rows {
        for ix in cols.clone() {
            if xp[iy * w + ix].is_nan() {
                return (f32::NAN, iy * w + ix);
            }
        }
    }
    unreachable!("first_nan on a window without NaN")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ties go to the first maximum in scan order (the window's top-left
    /// cell when all are equal), and a NaN anywhere in a window makes its
    /// output NaN, on border and interior outputs alike.
    #[test]
    fn ties_go_to_the_first_maximum_and_nan_propagates() {
        let (h, w) = (9, 10);
        let x = vec![1.0f32; h * w];
        let (y, idx) = max_pool_3x3_s2(&x, 1, h, w);
        let (oh, ow) = (pooled(h), pooled(w));
        for oy in 0..oh {
            for ox in 0..ow {
                let want = (2 * oy).saturating_sub(1) * w + (2 * ox).saturating_sub(1);
                assert_eq!(idx[oy * ow + ox] as usize, want, "output ({oy}, {ox})");
                assert_eq!(y[oy * ow + ox], 1.0);
            }
        }
        let mut x = x;
        x[4 * w + 4] = f32::NAN; // inside the windows of outputs (2, 2), (2, 1), ...
        x[0] = f32::NAN; // the corner: output (0, 0) only
        let (y, idx) = max_pool_3x3_s2(&x, 1, h, w);
        for oy in 0..oh {
            for ox in 0..ow {
                let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
                let cols = (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w);
                let has_nan = rows
                    .clone()
                    .any(|r| cols.clone().any(|c| x[r * w + c].is_nan()));
                assert_eq!(y[oy * ow + ox].is_nan(), has_nan, "output ({oy}, {ox})");
                if has_nan {
                    assert!(x[idx[oy * ow + ox] as usize].is_nan());
                }
            }
        }
    }
}
