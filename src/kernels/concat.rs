//! Concatenation of `f32` tensors along one axis, the copies spread over
//! the cores (ONNX's Concat: a U-Net joins its upsampled features and the
//! skip connection this way, some hundred megabytes per call).
//!
//! ```
//! use rstile::kernels::concat::concat;
//! // two 2 x (2 | 1) matrices side by side
//! let y = concat(&[(&[1.0, 2.0, 3.0, 4.0], 2), (&[5.0, 6.0], 1)], 2);
//! assert_eq!(y, vec![1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
//! ```

use super::Shared;
use rayon::prelude::*;

/// Elements per copy task: big enough that a task is worth spawning,
/// small enough that a few large inputs still keep every core busy.
const PIECE: usize = 1 << 18;

/// Joins `parts`, each `(values, block)`: the values are `outer` blocks of
/// `block` elements; the output is, for each outer index, each part's
/// block in turn.
pub fn concat(parts: &[(&[f32], usize)], outer: usize) -> Vec<f32> {
    let parts: Vec<Part> = parts.iter().map(|&(v, b)| Part::Copy(v, b)).collect();
    concat_parts(&parts, outer)
}

/// One input of [`concat_parts`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// `outer` blocks of this many values, copied.
    Copy(&'a [f32], usize),
    /// `outer` blocks of `planes` planes of `h x w`, each resized to
    /// `rows.len() x cols.len()` by nearest neighbour: output `(r, c)` is
    /// input `(rows[r], cols[c])`, as [`super::resize::resize_nearest`].
    Nearest {
        x: &'a [f32],
        planes: usize,
        h: usize,
        w: usize,
        rows: &'a [usize],
        cols: &'a [usize],
    },
}

impl Part<'_> {
    /// Output values per outer index.
    fn block(&self) -> usize {
        match *self {
            Part::Copy(_, b) => b,
            Part::Nearest {
                planes, rows, cols, ..
            } => planes * rows.len() * cols.len(),
        }
    }
}

/// A copy task: where in the output, and what.
enum Task<'a> {
    Copy(usize, &'a [f32]),
    /// One plane gathered: output offset, the source plane and its width.
    Gather(usize, &'a [f32], usize, &'a [usize], &'a [usize]),
}

/// [`concat`] with parts that may be resized on the way
/// ([`Part::Nearest`]: the U-Net decoder's upsampling, written straight
/// into the concatenation).
pub fn concat_parts(parts: &[Part], outer: usize) -> Vec<f32> {
    let mut tasks: Vec<Task> = vec![];
    let row: usize = parts.iter().map(Part::block).sum();
    for o in 0..outer {
        let mut at = o * row;
        for p in parts {
            match *p {
                Part::Copy(v, b) => {
                    assert_eq!(v.len(), outer * b, "a part is not {outer} blocks of {b}");
                    let src = &v[o * b..(o + 1) * b];
                    for (k, c) in src.chunks(PIECE).enumerate() {
                        tasks.push(Task::Copy(at + k * PIECE, c));
                    }
                }
                Part::Nearest {
                    x,
                    planes,
                    h,
                    w,
                    rows,
                    cols,
                } => {
                    assert_eq!(x.len(), outer * planes * h * w, "a resized part's length");
                    assert!(rows.iter().all(|&r| r < h) && cols.iter().all(|&c| c < w));
                    let plane_out = rows.len() * cols.len();
                    for q in 0..planes {
                        let src = &x[(o * planes + q) * h * w..][..h * w];
                        tasks.push(Task::Gather(at + q * plane_out, src, w, rows, cols));
                    }
                }
            }
            at += p.block();
        }
    }
    let mut y: Vec<f32> = Vec::with_capacity(outer * row);
    let out = Shared(y.as_mut_ptr());
    tasks.par_iter().for_each(|t| match *t {
        // SAFETY: the tasks cover the output exactly once, disjointly
        // (each outer index's row is the parts' blocks in turn)
        Task::Copy(at, src) => unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), out.at(at), src.len())
        },
        Task::Gather(at, src, w, rows, cols) => {
            let n = rows.len() * cols.len();
            // SAFETY: as above, this plane's own values, zeroed before
            // they are seen as a slice
            let dst = unsafe {
                std::ptr::write_bytes(out.at(at), 0, n);
                std::slice::from_raw_parts_mut(out.at(at), n)
            };
            super::resize::gather_plane(src, w, rows, cols, dst);
        }
    });
    // SAFETY: every element was written above
    unsafe { y.set_len(outer * row) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearest_part_is_the_resized_planes() {
        let x: Vec<f32> = (0..2 * 3 * 4 * 5).map(|v| v as f32).collect();
        let skip: Vec<f32> = (0..2 * 7).map(|v| -(v as f32)).collect();
        let (rows, cols) = ([0, 0, 1, 3, 3, 2], [4, 0, 1]);
        let y = concat_parts(
            &[
                Part::Nearest {
                    x: &x,
                    planes: 3,
                    h: 4,
                    w: 5,
                    rows: &rows,
                    cols: &cols,
                },
                Part::Copy(&skip, 7),
            ],
            2,
        );
        let up = crate::kernels::resize::resize_nearest(&x, 6, 4, 5, &rows, &cols);
        let mut want = vec![];
        for o in 0..2 {
            want.extend_from_slice(&up[o * 54..(o + 1) * 54]);
            want.extend_from_slice(&skip[o * 7..(o + 1) * 7]);
        }
        assert_eq!(y, want);
    }

    #[test]
    fn large_parts_are_joined_in_order() {
        let a: Vec<f32> = (0..3 * 300_000).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..3 * 7).map(|v| -(v as f32)).collect();
        let y = concat(&[(&a, 300_000), (&b, 7), (&[], 0)], 3);
        let mut want = vec![];
        for o in 0..3 {
            want.extend_from_slice(&a[o * 300_000..(o + 1) * 300_000]);
            want.extend_from_slice(&b[o * 7..(o + 1) * 7]);
        }
        assert_eq!(y, want);
    }
}
