//! The five input features and their statistics: NIR, R, G, nDSM, NDVI.
//!
//! Pure: no GDAL, no HDF5.

/// Minimum over the window `[i - r, i + r]` (clipped to the slice) of each
/// element, in O(n) whatever `r` (van Herk / Gil-Werman): the padded line is
/// cut into blocks of `k = 2r + 1`; within each block a prefix minimum `g`
/// and a suffix minimum `h` are taken, and every window of length `k` spans
/// at most two blocks, so its minimum is `min(h[s], g[s + k - 1])`.
/// Non-finite values are treated as `+inf` (never the minimum).
pub fn min_filter_1d(a: &[f32], r: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
    let n = a.len();
    assert_eq!(out.len(), n);
    if n == 0 {
        return;
    }
    if r == 0 {
        out.copy_from_slice(a);
        return;
    }
    let k = 2 * r + 1;
    let padded = (n + 2 * r).div_ceil(k) * k;
    scratch.clear();
    scratch.resize(3 * padded, f32::INFINITY);
    let (p, rest) = scratch.split_at_mut(padded);
    let (g, h) = rest.split_at_mut(padded);
    for (i, &v) in a.iter().enumerate() {
        p[r + i] = if v.is_finite() { v } else { f32::INFINITY };
    }
    for b in (0..padded).step_by(k) {
        g[b] = p[b];
        for j in b + 1..b + k {
            g[j] = g[j - 1].min(p[j]);
        }
        h[b + k - 1] = p[b + k - 1];
        for j in (b..b + k - 1).rev() {
            h[j] = h[j + 1].min(p[j]);
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = h[i].min(g[i + k - 1]);
    }
}

/// Square minimum filter of radius `r` (window `2r + 1`) on a `w x h`
/// row-major image, separable: rows, then columns (through a transpose, for
/// cache locality). O(1) work per pixel whatever `r`.
pub fn min_filter_2d(img: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    assert_eq!(img.len(), w * h);
    let mut scratch = Vec::new();
    let mut rows = vec![0f32; w * h];
    for y in 0..h {
        min_filter_1d(
            &img[y * w..(y + 1) * w],
            r,
            &mut rows[y * w..(y + 1) * w],
            &mut scratch,
        );
    }
    let t = transpose(&rows, w, h);
    let mut cols = vec![0f32; w * h];
    for x in 0..w {
        min_filter_1d(
            &t[x * h..(x + 1) * h],
            r,
            &mut cols[x * h..(x + 1) * h],
            &mut scratch,
        );
    }
    transpose(&cols, h, w)
}

/// Square maximum filter of radius `r`.
pub fn max_filter_2d(img: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let neg: Vec<f32> = img.iter().map(|v| -v).collect();
    let mut m = min_filter_2d(&neg, w, h, r);
    for v in &mut m {
        *v = -*v;
    }
    m
}

/// Transposes a `w x h` row-major image into `h x w`, in cache-sized blocks.
fn transpose(a: &[f32], w: usize, h: usize) -> Vec<f32> {
    const B: usize = 64;
    let mut t = vec![0f32; w * h];
    for y0 in (0..h).step_by(B) {
        for x0 in (0..w).step_by(B) {
            for y in y0..(y0 + B).min(h) {
                for x in x0..(x0 + B).min(w) {
                    t[x * h + y] = a[y * w + x];
                }
            }
        }
    }
    t
}

/// The normalised DSM: the DSM minus a ground estimate, the morphological
/// opening of the DSM (minimum filter, then maximum filter) with a square of
/// radius `radius` px. Objects narrower than `2 * radius + 1` px (buildings,
/// trees, cars) are removed by the opening, so they stand out as positive
/// heights; the ground stays near 0. The opening never exceeds the DSM, so
/// the result is `>= 0`. Non-finite DSM values give 0.
pub fn ndsm(dsm: &[f32], w: usize, h: usize, radius: usize) -> Vec<f32> {
    let eroded = min_filter_2d(dsm, w, h, radius);
    let opened = max_filter_2d(&eroded, w, h, radius);
    dsm.iter()
        .zip(&opened)
        .map(|(&d, &g)| {
            let v = d - g;
            if v.is_finite() {
                v.max(0.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// NDVI = (NIR - R) / (NIR + R); 0 where NIR + R is 0.
#[inline]
pub fn ndvi(nir: f32, r: f32) -> f32 {
    let d = nir + r;
    if d == 0.0 {
        0.0
    } else {
        (nir - r) / d
    }
}

/// Running per-channel sums for the mean and standard deviation.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub n: u64,
    pub sum: [f64; 5],
    pub sum_sq: [f64; 5],
}

impl Stats {
    /// Adds every pixel of a band-major 5-channel raster.
    pub fn add(&mut self, planes: &[f32], npix: usize) {
        for c in 0..5 {
            let (mut s, mut s2) = (0f64, 0f64);
            for &v in &planes[c * npix..(c + 1) * npix] {
                let v = v as f64;
                s += v;
                s2 += v * v;
            }
            self.sum[c] += s;
            self.sum_sq[c] += s2;
        }
        self.n += npix as u64;
    }

    /// Per-channel mean and standard deviation (std 1 where it would be 0).
    pub fn mean_std(&self) -> ([f32; 5], [f32; 5]) {
        let mut mean = [0f32; 5];
        let mut std = [1f32; 5];
        if self.n == 0 {
            return (mean, std);
        }
        let n = self.n as f64;
        for c in 0..5 {
            let m = self.sum[c] / n;
            let var = (self.sum_sq[c] / n - m * m).max(0.0);
            mean[c] = m as f32;
            let s = var.sqrt() as f32;
            std[c] = if s > 1e-12 { s } else { 1.0 };
        }
        (mean, std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_min(a: &[f32], r: usize) -> Vec<f32> {
        (0..a.len())
            .map(|i| {
                let lo = i.saturating_sub(r);
                let hi = (i + r).min(a.len() - 1);
                a[lo..=hi].iter().cloned().fold(f32::INFINITY, f32::min)
            })
            .collect()
    }

    #[test]
    fn min_filter_matches_naive() {
        let mut s = 12345u64;
        for n in [1usize, 2, 5, 17, 100] {
            let a: Vec<f32> = (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 40) as f32
                })
                .collect();
            for r in [0usize, 1, 2, 3, 7, 50, 200] {
                let mut out = vec![0.0; n];
                min_filter_1d(&a, r, &mut out, &mut Vec::new());
                assert_eq!(out, naive_min(&a, r), "n={n} r={r}");
            }
        }
    }

    #[test]
    fn min_filter_2d_is_separable_square() {
        let (w, h) = (7, 5);
        let img: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 11) as f32).collect();
        let m = min_filter_2d(&img, w, h, 1);
        for y in 0..h {
            for x in 0..w {
                let mut v = f32::INFINITY;
                for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                    for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                        v = v.min(img[yy * w + xx]);
                    }
                }
                assert_eq!(m[y * w + x], v);
            }
        }
    }

    #[test]
    fn ndsm_removes_ground_and_keeps_a_building() {
        // A sloped ground with a 10 m high 5x5 building; radius 4 (> half
        // the building width).
        let (w, h) = (30, 30);
        let mut dsm = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                dsm[y * w + x] = 100.0 + 0.1 * x as f32;
                if (10..15).contains(&x) && (10..15).contains(&y) {
                    dsm[y * w + x] += 10.0;
                }
            }
        }
        let n = ndsm(&dsm, w, h, 4);
        assert!(n[12 * w + 12] > 9.0, "{}", n[12 * w + 12]);
        assert!(n[2 * w + 25] < 0.5, "{}", n[2 * w + 25]);
        assert!(n.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn ndvi_is_safe() {
        assert_eq!(ndvi(0.0, 0.0), 0.0);
        assert_eq!(ndvi(3.0, 1.0), 0.5);
        assert_eq!(ndvi(0.0, 2.0), -1.0);
    }
}
