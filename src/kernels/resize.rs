//! Separable resizing of NCHW planes: nearest (a gather per axis) and
//! linear (two taps per axis), for ONNX's Resize on the CPU.
//!
//! The caller computes the taps (which source rows and columns, with which
//! weights: that is where the coordinate modes live); the kernels only
//! apply them, one plane per task. Linear resizing runs the rows first,
//! then the columns, each output value being `a * w0 + b * w1` rounded as
//! two products and a sum, so it gives the same bits as the same two passes
//! made of tensor ops.
//!
//! ```
//! use rstile::kernels::resize::{resize_linear, resize_nearest};
//! // one 2x2 plane, doubled by repetition
//! let y = resize_nearest(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, &[0, 0, 1, 1], &[0, 0, 1, 1]);
//! assert_eq!(&y[..4], &[1.0, 1.0, 2.0, 2.0]);
//! // one 1x2 plane to 1x3: the middle column is halfway
//! let taps = [(0, 0, 0.0), (0, 1, 0.5), (1, 1, 0.0)];
//! let y = resize_linear(&[2.0, 4.0], 1, 1, 2, None, Some(&taps));
//! assert_eq!(y, vec![2.0, 3.0, 4.0]);
//! ```

use rayon::prelude::*;

/// `(i0, i1, w1)` of one output index: `y = x[i0] * (1 - w1) + x[i1] * w1`.
pub type Tap = (usize, usize, f32);

/// `planes` planes of `h x w` to `rows.len() x cols.len()`: output `(r, c)`
/// is input `(rows[r], cols[c])` of the same plane.
pub fn resize_nearest(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    rows: &[usize],
    cols: &[usize],
) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w);
    assert!(rows.iter().all(|&r| r < h) && cols.iter().all(|&c| c < w));
    let (oh, ow) = (rows.len(), cols.len());
    let mut y = vec![0f32; planes * oh * ow];
    if oh * ow == 0 {
        return y;
    }
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
        gather_plane(&x[p * h * w..(p + 1) * h * w], w, rows, cols, yp);
    });
    y
}

/// One plane of [`resize_nearest`]: `xp` has rows of `w` values, `yp`
/// receives `rows.len() x cols.len()`.
pub(crate) fn gather_plane(xp: &[f32], w: usize, rows: &[usize], cols: &[usize], yp: &mut [f32]) {
    let ow = cols.len();
    let mut last: Option<usize> = None;
    for (r, &sr) in rows.iter().enumerate() {
        let (done, todo) = yp.split_at_mut(r * ow);
        let out = &mut todo[..ow];
        if last == Some(sr) {
            // the same source row as the previous output row
            out.copy_from_slice(&done[(r - 1) * ow..]);
            continue;
        }
        let src = &xp[sr * w..(sr + 1) * w];
        for (o, &c) in out.iter_mut().zip(cols) {
            *o = src[c];
        }
        last = Some(sr);
    }
}

/// `planes` planes of `h x w`, resized linearly along the rows with
/// `rows` (or not at all: `None`), then along the columns with `cols`.
pub fn resize_linear(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    rows: Option<&[Tap]>,
    cols: Option<&[Tap]>,
) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w);
    let in_range = |t: &[Tap], n: usize| t.iter().all(|&(a, b, _)| a < n && b < n);
    assert!(rows.is_none_or(|t| in_range(t, h)) && cols.is_none_or(|t| in_range(t, w)));
    let oh = rows.map_or(h, <[Tap]>::len);
    let ow = cols.map_or(w, <[Tap]>::len);
    let mut y = vec![0f32; planes * oh * ow];
    if oh * ow == 0 {
        return y;
    }
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        // the row pass into `mid` (oh x w), unless the rows stay
        let mid_buf;
        let mid: &[f32] = match rows {
            Some(rows) => {
                let mut m = vec![0f32; oh * w];
                for (out, &(i0, i1, w1)) in m.chunks_exact_mut(w).zip(rows) {
                    let w0 = 1.0 - w1;
                    let (a, b) = (&xp[i0 * w..(i0 + 1) * w], &xp[i1 * w..(i1 + 1) * w]);
                    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                        *o = a * w0 + b * w1;
                    }
                }
                mid_buf = m;
                &mid_buf
            }
            None => xp,
        };
        match cols {
            Some(cols) => {
                let weights: Vec<(f32, f32)> = cols.iter().map(|t| (1.0 - t.2, t.2)).collect();
                for (out, src) in yp.chunks_exact_mut(ow).zip(mid.chunks_exact(w)) {
                    for ((o, &(i0, i1, _)), &(w0, w1)) in out.iter_mut().zip(cols).zip(&weights) {
                        *o = src[i0] * w0 + src[i1] * w1;
                    }
                }
            }
            None => yp.copy_from_slice(mid),
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two passes written out with one plain loop per output value.
    fn linear_ref(x: &[f32], h: usize, w: usize, rows: &[Tap], cols: &[Tap]) -> Vec<f32> {
        let mut mid = vec![0f32; rows.len() * w];
        for (r, &(i0, i1, w1)) in rows.iter().enumerate() {
            for c in 0..w {
                mid[r * w + c] = x[i0 * w + c] * (1.0 - w1) + x[i1 * w + c] * w1;
            }
        }
        let mut y = vec![];
        for r in 0..rows.len() {
            for &(i0, i1, w1) in cols {
                y.push(mid[r * w + i0] * (1.0 - w1) + mid[r * w + i1] * w1);
            }
        }
        assert_eq!(h * w, x.len());
        y
    }

    #[test]
    fn linear_matches_the_two_passes_written_out() {
        let (h, w) = (5, 7);
        let x: Vec<f32> = (0..2 * h * w)
            .map(|v| ((v * 37) % 11) as f32 * 0.3)
            .collect();
        let rows: Vec<Tap> = (0..9)
            .map(|i| (i * 4 / 9, (i * 4 / 9 + 1).min(4), 0.25 * (i % 4) as f32))
            .collect();
        let cols: Vec<Tap> = (0..3).map(|i| (i * 2, i * 2 + 1, 0.5)).collect();
        let y = resize_linear(&x, 2, h, w, Some(&rows), Some(&cols));
        for p in 0..2 {
            let want = linear_ref(&x[p * h * w..(p + 1) * h * w], h, w, &rows, &cols);
            assert_eq!(&y[p * 27..(p + 1) * 27], want.as_slice());
        }
    }

    #[test]
    fn an_axis_left_alone_is_copied() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_linear(&x, 2, 2, 3, None, None), x);
        let cols = [(0, 1, 0.5), (2, 2, 0.0)];
        assert_eq!(
            resize_linear(&x, 1, 4, 3, None, Some(&cols)),
            vec![0.5, 2.0, 3.5, 5.0, 6.5, 8.0, 9.5, 11.0]
        );
    }

    #[test]
    fn nearest_gathers_rows_and_columns() {
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 2x3
        let y = resize_nearest(&x, 1, 2, 3, &[1, 1, 0], &[2, 0]);
        assert_eq!(y, vec![5.0, 3.0, 5.0, 3.0, 2.0, 0.0]);
    }
}
