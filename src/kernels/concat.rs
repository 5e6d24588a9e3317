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
    for (v, b) in parts {
        assert_eq!(v.len(), outer * b, "a part is not {outer} blocks of {b}");
    }
    let row: usize = parts.iter().map(|p| p.1).sum();
    // (output offset, source) pieces
    let mut pieces: Vec<(usize, &[f32])> = vec![];
    for o in 0..outer {
        let mut at = o * row;
        for (v, b) in parts {
            let src = &v[o * b..(o + 1) * b];
            for (k, c) in src.chunks(PIECE).enumerate() {
                pieces.push((at + k * PIECE, c));
            }
            at += b;
        }
    }
    let mut y: Vec<f32> = Vec::with_capacity(outer * row);
    let out = Shared(y.as_mut_ptr());
    pieces.par_iter().for_each(|&(at, src)| {
        // SAFETY: the pieces cover the output exactly once, disjointly
        // (each outer index's row is the parts' blocks in turn)
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.at(at), src.len()) };
    });
    // SAFETY: every element was written above
    unsafe { y.set_len(outer * row) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

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
