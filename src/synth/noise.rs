//! Hashes, a small seeded generator and value noise.
//!
//! Every random quantity of a synthetic scene is a pure function of the seed
//! and integer coordinates, so any part of a scene can be generated on its own
//! and comes out bit-identical whatever the window it is generated in.

/// The golden-ratio increment of splitmix64.
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The splitmix64 finaliser: a bijective, well-mixing function of 64 bits.
#[inline]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

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

/// A splitmix64 stream: the generator of the features of one cell.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(state: u64) -> Self {
        Rng(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub(crate) fn f(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi) (or [hi, lo) when hi < lo).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f()
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }

    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// An index drawn with the given weights.
    pub(crate) fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut r = self.f() * total;
        for (k, w) in weights.iter().enumerate() {
            if r < *w {
                return k;
            }
            r -= w;
        }
        weights.len() - 1
    }
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
    fn rng_helpers_stay_in_range() {
        let mut r = Rng::new(5);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let v = r.range(2.0, 3.0);
            assert!((2.0..3.0).contains(&v));
            assert!(r.pick(&[1.0, 0.0, 2.0]) != 1);
        }
        for t in tri4(u64::MAX).iter().chain(tri4(0).iter()) {
            assert!((-1.0..=1.0).contains(t));
        }
    }
}
