//! Seeded, deterministic data augmentation for training.
//!
//! Every random choice comes from [`SplitMix64`], a tiny generator of our
//! own (no extra crate), seeded per sample from the run seed, the epoch and
//! the sample's position in the epoch (see [`derive_seed`]). A sample's
//! augmentation is therefore the same whichever worker thread computes it,
//! and a resumed run sees exactly the samples an uninterrupted one would.
//!
//! [`augment`] turns a [`Sample`] (a patch or a window read from a scene,
//! already normalised) into a `crop x crop` training sample:
//!
//! 1. **random scale and crop**: a source square of side `crop / s`, with
//!    `s` uniform in `[scale_min, scale_max]`, is placed uniformly inside
//!    the sample (centred when it does not fit) and resampled to
//!    `crop x crop`, bilinearly for the image and by nearest neighbour for
//!    the label. With scaling off the crop is an exact integer-offset cut.
//!    Pixels that fall outside the sample get image 0 (the band mean after
//!    normalisation) and label 255 (ignored by the loss);
//! 2. **flips** (horizontal, vertical) and **rotations by 90°**: together
//!    they draw one of the 8 symmetries of the square (rotations alone: one
//!    of the 4 rotations; flips alone: one of the 4 flip combinations);
//! 3. **brightness / contrast jitter**: `v · c + b` per sample with
//!    `c ∈ [1 - contrast, 1 + contrast]`, `b ∈ [-brightness, brightness]`,
//!    in normalised units;
//! 4. **noise**: additive Gaussian, `noise_std` in normalised units.
//!
//! The geometric steps move the image and the label together: a label (and
//! any boundary mask, which sources fold into the label as 255) always
//! stays on the pixel it belonged to. Each step can be switched off.

use serde::{Deserialize, Serialize};

/// The label value that the loss and the metrics ignore.
pub const IGNORE: u8 = 255;

/// The crate's generator, [`crate::rng::SplitMix64`]: every augmentation
/// and sampling draw comes from it.
pub use crate::rng::SplitMix64;

/// A seed for one purpose, derived from a run seed and a path of indices
/// (e.g. `[epoch, position]`): distinct paths give unrelated streams.
pub fn derive_seed(seed: u64, path: &[u64]) -> u64 {
    let mut g = SplitMix64::new(seed ^ 0x5EED_5EED_5EED_5EED_u64);
    let mut s = g.next_u64();
    for &p in path {
        g = SplitMix64::new(s ^ p.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        s = g.next_u64();
    }
    s
}

/// One training sample: a normalised image and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Number of image bands.
    pub bands: usize,
    pub height: usize,
    pub width: usize,
    /// `(bands, height, width)`, row-major, normalised.
    pub image: Vec<f32>,
    /// `(height, width)` class channel indices; [`IGNORE`] = no label
    /// (eroded boundary, nodata, outside the scene).
    pub label: Vec<u8>,
}

impl Sample {
    /// Checks that the buffers have the sizes the header says.
    pub fn check(&self) -> Result<(), String> {
        let n = self.height * self.width;
        if self.image.len() != self.bands * n || self.label.len() != n {
            return Err(format!(
                "sample of {} bands, {}x{} px has {} image values and {} labels",
                self.bands,
                self.width,
                self.height,
                self.image.len(),
                self.label.len()
            ));
        }
        Ok(())
    }
}

/// Which augmentations run, and how strong they are. Every switch is
/// independent; `AugmentConfig::none()` turns all of them off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random horizontal and vertical flips.
    pub flips: bool,
    /// Random rotations by multiples of 90°.
    pub rot90: bool,
    /// Random scale (zoom) before the crop.
    pub scale: bool,
    /// Smallest zoom factor (< 1 zooms out: the crop covers more ground).
    pub scale_min: f64,
    /// Largest zoom factor.
    pub scale_max: f64,
    /// Additive Gaussian noise.
    pub noise: bool,
    /// Its standard deviation, in normalised units.
    pub noise_std: f64,
    /// Brightness and contrast jitter.
    pub jitter: bool,
    /// Largest brightness offset, in normalised units.
    pub brightness: f64,
    /// Largest relative contrast change.
    pub contrast: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            flips: true,
            rot90: true,
            scale: true,
            scale_min: 0.75,
            scale_max: 1.25,
            noise: false,
            noise_std: 0.03,
            jitter: true,
            brightness: 0.1,
            contrast: 0.1,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: [`augment`] only crops.
    pub fn none() -> Self {
        AugmentConfig {
            flips: false,
            rot90: false,
            scale: false,
            noise: false,
            jitter: false,
            ..Default::default()
        }
    }

    /// Checks the parameters; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if self.scale && !(pos(self.scale_min) && self.scale_min <= self.scale_max) {
            return Err(format!(
                "augment: scale_min {} and scale_max {} must be positive with scale_min <= scale_max",
                self.scale_min, self.scale_max
            ));
        }
        if self.scale && !self.scale_max.is_finite() {
            return Err(format!(
                "augment: scale_max {} is not finite",
                self.scale_max
            ));
        }
        for (name, v) in [
            ("noise_std", self.noise_std),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("augment: {name} {v} must be a number >= 0"));
            }
        }
        if self.contrast >= 1.0 {
            return Err(format!(
                "augment: contrast {} must be below 1",
                self.contrast
            ));
        }
        Ok(())
    }

    /// Side of the source square [`augment`] may need for a `crop` output:
    /// what a scene reader should read so that every zoom fits.
    pub fn source_size(&self, crop: usize) -> usize {
        if self.scale {
            (crop as f64 / self.scale_min).ceil() as usize
        } else {
            crop
        }
    }
}

/// Per-axis resampling plan: for each output index, the two source indices,
/// the weight of the second, the nearest index, and whether it lies inside.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    t: Vec<f32>,
    near: Vec<usize>,
    inside: Vec<bool>,
}

fn axis(n_src: usize, n_out: usize, start: f64, extent: f64, exact: Option<usize>) -> Axis {
    let mut a = Axis {
        i0: Vec::with_capacity(n_out),
        i1: Vec::with_capacity(n_out),
        t: Vec::with_capacity(n_out),
        near: Vec::with_capacity(n_out),
        inside: Vec::with_capacity(n_out),
    };
    for i in 0..n_out {
        if let Some(off) = exact {
            // integer cut: no interpolation at all
            let s = off + i;
            let inside = s < n_src;
            let s = s.min(n_src - 1);
            a.i0.push(s);
            a.i1.push(s);
            a.t.push(0.0);
            a.near.push(s);
            a.inside.push(inside);
            continue;
        }
        // centre of output pixel i, in source index coordinates
        let s = start + (i as f64 + 0.5) * extent / n_out as f64 - 0.5;
        let inside = s >= -0.5 && s < n_src as f64 - 0.5;
        let c = s.clamp(0.0, (n_src - 1) as f64);
        let i0 = c.floor() as usize;
        let i1 = (i0 + 1).min(n_src - 1);
        a.i0.push(i0);
        a.i1.push(i1);
        a.t.push((c - i0 as f64) as f32);
        a.near.push(((c + 0.5).floor() as usize).min(n_src - 1));
        a.inside.push(inside);
    }
    a
}

/// Augments `s` into a `crop x crop` sample; see the module documentation.
/// The same `rng` state gives the same result.
pub fn augment(s: &Sample, crop: usize, cfg: &AugmentConfig, rng: &mut SplitMix64) -> Sample {
    assert!(
        crop > 0 && s.width > 0 && s.height > 0,
        "empty sample or crop"
    );
    debug_assert!(s.check().is_ok());
    let (w, h, nb) = (s.width, s.height, s.bands);

    // 1. scale and crop
    let (ax, ay) = if cfg.scale {
        let zoom = rng.range_or_lo(cfg.scale_min, cfg.scale_max);
        let extent = crop as f64 / zoom;
        let place = |rng: &mut SplitMix64, n: usize| {
            if n as f64 > extent {
                rng.uniform() * (n as f64 - extent)
            } else {
                (n as f64 - extent) / 2.0
            }
        };
        let x0 = place(rng, w);
        let y0 = place(rng, h);
        (
            axis(w, crop, x0, extent, None),
            axis(h, crop, y0, extent, None),
        )
    } else {
        // an exact cut; centred (with padding) when the sample is smaller
        let place = |rng: &mut SplitMix64, n: usize| -> (f64, Option<usize>) {
            if n >= crop {
                (0.0, Some(rng.below((n - crop + 1) as u64) as usize))
            } else {
                ((n as f64 - crop as f64) / 2.0, None)
            }
        };
        let (x0, ex) = place(rng, w);
        let (y0, ey) = place(rng, h);
        (
            axis(w, crop, x0, crop as f64, ex),
            axis(h, crop, y0, crop as f64, ey),
        )
    };
    let n = crop * crop;
    let mut image = vec![0f32; nb * n];
    let mut label = vec![IGNORE; n];
    for y in 0..crop {
        if !ay.inside[y] {
            continue;
        }
        let (r0, r1, ty, ry) = (ay.i0[y], ay.i1[y], ay.t[y], ay.near[y]);
        for x in 0..crop {
            if !ax.inside[x] {
                continue;
            }
            label[y * crop + x] = s.label[ry * w + ax.near[x]];
        }
        for b in 0..nb {
            let plane = &s.image[b * w * h..(b + 1) * w * h];
            let row0 = &plane[r0 * w..(r0 + 1) * w];
            let row1 = &plane[r1 * w..(r1 + 1) * w];
            let out = &mut image[b * n + y * crop..b * n + (y + 1) * crop];
            for (x, o) in out.iter_mut().enumerate() {
                if !ax.inside[x] {
                    continue;
                }
                let (c0, c1, tx) = (ax.i0[x], ax.i1[x], ax.t[x]);
                let top = row0[c0] + (row0[c1] - row0[c0]) * tx;
                let bot = row1[c0] + (row1[c1] - row1[c0]) * tx;
                *o = top + (bot - top) * ty;
            }
        }
    }

    // 2. one symmetry of the square: transpose, then flips
    let (t, fx, fy) = match (cfg.rot90, cfg.flips) {
        (true, true) => (rng.coin(), rng.coin(), rng.coin()),
        (false, true) => (false, rng.coin(), rng.coin()),
        (true, false) => match rng.below(4) {
            0 => (false, false, false),
            1 => (true, true, false), // 90°
            2 => (false, true, true), // 180°
            _ => (true, false, true), // 270°
        },
        (false, false) => (false, false, false),
    };
    if t || fx || fy {
        let src_of = |x: usize, y: usize| {
            let (mut sx, mut sy) = if t { (y, x) } else { (x, y) };
            if fx {
                sx = crop - 1 - sx;
            }
            if fy {
                sy = crop - 1 - sy;
            }
            sy * crop + sx
        };
        let map: Vec<usize> = (0..n).map(|i| src_of(i % crop, i / crop)).collect();
        label = map.iter().map(|&i| label[i]).collect();
        let mut moved = vec![0f32; nb * n];
        for b in 0..nb {
            let (src, dst) = (&image[b * n..(b + 1) * n], &mut moved[b * n..(b + 1) * n]);
            for (d, &i) in dst.iter_mut().zip(&map) {
                *d = src[i];
            }
        }
        image = moved;
    }

    // 3. brightness and contrast
    if cfg.jitter {
        let c = rng.range_or_lo(1.0 - cfg.contrast, 1.0 + cfg.contrast) as f32;
        let b = rng.range_or_lo(-cfg.brightness, cfg.brightness) as f32;
        for v in &mut image {
            *v = *v * c + b;
        }
    }
    // 4. noise
    if cfg.noise && cfg.noise_std > 0.0 {
        for v in &mut image {
            *v += (rng.normal() * cfg.noise_std) as f32;
        }
    }
    Sample {
        bands: nb,
        height: crop,
        width: crop,
        image,
        label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 (as in the reference C implementation).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut g = SplitMix64::new(7);
        let u: Vec<f64> = (0..1000).map(|_| g.uniform()).collect();
        assert!(u.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = u.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05);
        assert!((0..1000).all(|_| g.below(3) < 3));
    }

    #[test]
    fn none_is_an_exact_cut() {
        let s = Sample {
            bands: 1,
            height: 4,
            width: 4,
            image: (0..16).map(|v| v as f32).collect(),
            label: (0..16).collect(),
        };
        let mut g = SplitMix64::new(1);
        let a = augment(&s, 4, &AugmentConfig::none(), &mut g);
        assert_eq!(a, s);
        let a = augment(&s, 2, &AugmentConfig::none(), &mut g);
        let (x, y) = (a.label[0] % 4, a.label[0] / 4);
        assert_eq!(
            a.label,
            vec![y * 4 + x, y * 4 + x + 1, y * 4 + x + 4, y * 4 + x + 5]
        );
        assert_eq!(
            a.image,
            a.label.iter().map(|&v| v as f32).collect::<Vec<_>>()
        );
        // A sample smaller than the crop is padded with ignored labels.
        let a = augment(&s, 6, &AugmentConfig::none(), &mut g);
        assert_eq!(a.label.iter().filter(|&&v| v == IGNORE).count(), 36 - 16);
    }
}
