//! Hashes and value noise, built on the crate's splitmix64
//! ([`crate::rng`]), which is also the generator of each cell's features.
//!
//! Every random quantity of a synthetic scene is a pure function of the seed
//! and integer coordinates, so any part of a scene can be generated on its own
//! and comes out bit-identical whatever the window it is generated in.

use crate::rng::{mix, GOLDEN};

const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The key of the random stream `tag` of scene `seed`.
pub(crate) fn key(seed: u64, tag: u64) -> u64 {
    mix(mix(seed ^ GOLDEN).wrapping_add(tag.wrapping_mul(GOLDEN)))
}

/// A well-mixed hash of two integers under `key` (structure: lines, cells).
#[inline]
pub(crate) fn h2(key: u64, a: i64, b: i64) -> u64 {
    mix(key
        ^ mix((a as u64)
            .wrapping_mul(GOLDEN)
            .wrapping_add((b as u64).wrapping_mul(K2))))
}

/// A cheaper hash of a pixel position under `key` (texture noise).
#[inline]
pub(crate) fn hp(key: u64, x: i64, y: i64) -> u64 {
    mix(key ^ (x as u64).wrapping_mul(GOLDEN) ^ (y as u64).wrapping_mul(K2))
}

/// The top 24 bits of `h` as a float in [0, 1).
#[inline]
pub(crate) fn unit(h: u64) -> f32 {
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Four triangular noise values in (-1, 1) from the 64 bits of `h`.
#[inline]
pub(crate) fn tri4(h: u64) -> [f32; 4] {
    let t = |k: u32| {
        let a = (h >> (16 * k)) & 0xff;
        let b = (h >> (16 * k + 8)) & 0xff;
        (a + b) as f32 * (1.0 / 255.0) - 1.0
    };
    [t(0), t(1), t(2), t(3)]
}

#[inline]
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

#[inline]
fn lattice(key: u64, ix: i64, iy: i64) -> f32 {
    unit(h2(key, ix, iy))
}

/// Interpolation weight of pixel `x` inside its lattice cell (spacing `1 << shift`).
#[inline]
fn weight(x: i64, shift: u32) -> (i64, f32) {
    let i = x >> shift;
    let s = (1i64 << shift) as f32;
    (i, smooth(((x - (i << shift)) as f32 + 0.5) / s))
}

#[inline]
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Smooth value noise in [0, 1) with a lattice of `1 << shift` pixels, at pixel (x, y).
#[inline]
pub(crate) fn vnoise(key: u64, shift: u32, x: i64, y: i64) -> f32 {
    let (ix, fx) = weight(x, shift);
    let (iy, fy) = weight(y, shift);
    // Along y first, then x: the order [`vnoise_window`] uses.
    let l = lerp(lattice(key, ix, iy), lattice(key, ix, iy + 1), fy);
    let r = lerp(lattice(key, ix + 1, iy), lattice(key, ix + 1, iy + 1), fy);
    lerp(l, r, fx)
}

/// [`vnoise`] over the window `w` x `h` at (x0, y0), row-major, bit-identical to
/// calling [`vnoise`] per pixel but hashing each lattice point once per
/// lattice row and interpolating along y once per lattice column and row.
pub(crate) fn vnoise_window(
    key: u64,
    shift: u32,
    x0: i64,
    y0: i64,
    w: usize,
    h: usize,
) -> Vec<f32> {
    let ix0 = weight(x0, shift).0;
    let cols: Vec<(usize, f32)> = (0..w as i64)
        .map(|c| {
            let (ix, fx) = weight(x0 + c, shift);
            ((ix - ix0) as usize, fx)
        })
        .collect();
    let nl = cols.last().map_or(0, |c| c.0) + 2;
    let mut top = vec![0f32; nl];
    let mut bot = vec![0f32; nl];
    let mut at_y = vec![0f32; nl];
    let mut out = vec![0f32; w * h];
    let mut cached = None;
    for (r, row) in out.chunks_exact_mut(w.max(1)).enumerate().take(h) {
        let (iy, fy) = weight(y0 + r as i64, shift);
        if cached != Some(iy) {
            for (k, (t, b)) in top.iter_mut().zip(bot.iter_mut()).enumerate() {
                *t = lattice(key, ix0 + k as i64, iy);
                *b = lattice(key, ix0 + k as i64, iy + 1);
            }
            cached = Some(iy);
        }
        for ((v, t), b) in at_y.iter_mut().zip(&top).zip(&bot) {
            *v = lerp(*t, *b, fy);
        }
        for (o, &(k, fx)) in row.iter_mut().zip(&cols) {
            *o = lerp(at_y[k], at_y[k + 1], fx);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_noise_equals_pointwise_noise() {
        for &(x0, y0, w, h, shift) in &[
            (-37i64, 5i64, 70usize, 9usize, 4u32),
            (1000, -2000, 33, 40, 6),
            (3, 3, 1, 1, 10),
        ] {
            let win = vnoise_window(77, shift, x0, y0, w, h);
            for r in 0..h {
                for c in 0..w {
                    let v = vnoise(77, shift, x0 + c as i64, y0 + r as i64);
                    assert_eq!(v.to_bits(), win[r * w + c].to_bits());
                    assert!((0.0..1.0).contains(&v));
                }
            }
        }
    }

    #[test]
    fn tri4_stays_in_range() {
        for t in tri4(u64::MAX).iter().chain(tri4(0).iter()) {
            assert!((-1.0..=1.0).contains(t));
        }
    }
}
