//! Test-time augmentation: each window is also predicted under flips (and
//! rotations), each prediction is mapped back onto the window, and the
//! class probabilities are averaged before blending.
//!
//! Pure geometry on square `n x n` planes (rstile's windows are always
//! square, so every transform of the dihedral group applies; an ONNX graph
//! with a fixed input must be square to be taken at all). The transforms run
//! in a fixed order and their sum is taken in that order, per window, so the
//! map stays bit-identical under `--threads` and `--batch`.

use std::fmt;
use std::str::FromStr;

/// One element of the dihedral group of the square: a rotation by
/// `quarter_turns` x 90° counter-clockwise, after a left-right mirror when
/// `mirror` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct D4 {
    pub mirror: bool,
    pub quarter_turns: u8,
}

impl D4 {
    pub const IDENTITY: D4 = D4 {
        mirror: false,
        quarter_turns: 0,
    };

    /// The source pixel `(row, col)` of output pixel `(y, x)` in an `n x n`
    /// plane.
    #[inline]
    fn source(self, y: usize, x: usize, n: usize) -> (usize, usize) {
        let m = n - 1;
        // undo the rotation: rotating the output back clockwise
        let (mut r, mut c) = (y, x);
        for _ in 0..self.quarter_turns % 4 {
            // counter-clockwise by 90°: out[y][x] = in[x][m - y]
            (r, c) = (c, m - r);
        }
        if self.mirror {
            c = m - c;
        }
        (r, c)
    }

    /// Writes the transformed `src` plane (`n x n`, row-major) into `dst`.
    pub fn apply(self, src: &[f32], dst: &mut [f32], n: usize) {
        debug_assert_eq!(src.len(), n * n);
        for y in 0..n {
            for x in 0..n {
                let (r, c) = self.source(y, x, n);
                dst[y * n + x] = src[r * n + c];
            }
        }
    }

    /// The inverse transform.
    pub fn inverse(self) -> D4 {
        if self.mirror {
            // a mirror followed by a rotation is its own inverse
            self
        } else {
            D4 {
                mirror: false,
                quarter_turns: (4 - self.quarter_turns % 4) % 4,
            }
        }
    }
}

/// Which transforms `--tta` averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tta {
    /// The window as it is.
    #[default]
    None,
    /// Identity, left-right and up-down mirrors (3 passes).
    Flips,
    /// All 8 flips and rotations of the square.
    D4,
}

impl Tta {
    /// The transforms, identity first, in the order their predictions are
    /// summed.
    pub fn transforms(self) -> Vec<D4> {
        let d = |mirror, quarter_turns| D4 {
            mirror,
            quarter_turns,
        };
        match self {
            Tta::None => vec![D4::IDENTITY],
            // up-down = mirror then 180°
            Tta::Flips => vec![D4::IDENTITY, d(true, 0), d(true, 2)],
            Tta::D4 => (0..8).map(|i| d(i >= 4, (i % 4) as u8)).collect(),
        }
    }

    /// Forward passes per window.
    pub fn passes(self) -> usize {
        self.transforms().len()
    }
}

impl fmt::Display for Tta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tta::None => "none",
            Tta::Flips => "flips",
            Tta::D4 => "d4",
        })
    }
}

impl FromStr for Tta {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Tta::None),
            "flips" => Ok(Tta::Flips),
            "d4" => Ok(Tta::D4),
            _ => Err(format!("'{s}': expected none, flips or d4")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(n: usize) -> Vec<f32> {
        (0..n * n).map(|v| v as f32).collect()
    }

    #[test]
    fn transforms_are_the_eight_distinct_symmetries() {
        let n = 3;
        let src = plane(n);
        let mut seen = Vec::new();
        for t in Tta::D4.transforms() {
            let mut out = vec![0.0; n * n];
            t.apply(&src, &mut out, n);
            assert!(!seen.contains(&out), "{t:?} repeats");
            seen.push(out);
        }
        assert_eq!(seen.len(), 8);
        // counter-clockwise quarter turn of [[0,1,2],[3,4,5],[6,7,8]]
        let mut out = vec![0.0; 9];
        D4 {
            mirror: false,
            quarter_turns: 1,
        }
        .apply(&src, &mut out, 3);
        assert_eq!(out, vec![2.0, 5.0, 8.0, 1.0, 4.0, 7.0, 0.0, 3.0, 6.0]);
        // left-right mirror
        D4 {
            mirror: true,
            quarter_turns: 0,
        }
        .apply(&src, &mut out, 3);
        assert_eq!(out, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0]);
        // up-down mirror, as Flips uses it
        Tta::Flips.transforms()[2].apply(&src, &mut out, 3);
        assert_eq!(out, vec![6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn inverse_undoes_every_transform() {
        let n = 4;
        let src = plane(n);
        for t in Tta::D4.transforms() {
            let (mut a, mut b) = (vec![0.0; n * n], vec![0.0; n * n]);
            t.apply(&src, &mut a, n);
            t.inverse().apply(&a, &mut b, n);
            assert_eq!(b, src, "{t:?}");
        }
        assert_eq!("d4".parse::<Tta>(), Ok(Tta::D4));
        assert!("d8".parse::<Tta>().is_err());
        assert_eq!(Tta::Flips.passes(), 3);
    }
}
