//! Stitching: blend overlapping window predictions into final class ids,
//! holding only a strip of the scene at a time.
//!
//! A [`ChunkStitcher`] owns the accumulator of one column chunk `[x0, x1)` of
//! the scene. Windows arrive in row-major grid order; once window row `r` is
//! complete, every raster row above window row `r + 1` can receive no more
//! contributions and is final. Final rows leave in bands of whole output tile
//! rows, so the writer only ever writes complete GeoTIFF tiles and GDAL never
//! reads a compressed tile back. The accumulator therefore holds at most
//! `window + tile_rows` rows of `x1 - x0` pixels, whatever the scene size.
//!
//! Determinism: each pixel's sum runs over the windows that touch it in global
//! row-major order, in f32, the same order whatever the chunk width, the batch
//! size or the thread count. The map is thus bit-identical across all of them.
//! Argmax ties go to the lowest channel.
//!
//! This module is pure: it knows neither GDAL nor candle. The softmax it
//! takes of logits is `model::ops`' plain `f32` arithmetic, shared with the
//! model stage so that both give the same bits.

use crate::infer::window::{Rect, Window, WindowGrid};
use crate::model::softmax_run;
use crate::simd::multiversion;

/// How overlapping predictions are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// sin² taper, strictly positive at every pixel.
    #[default]
    Hann,
    /// Gaussian taper with sigma = window / 8.
    Gaussian,
    /// Only the centre `stride x stride` region of each window counts.
    Crop,
}

impl Blend {
    /// Every blend, in the order the help lists them.
    pub const ALL: [Blend; 3] = [Blend::Hann, Blend::Gaussian, Blend::Crop];

    /// The name in flags, settings and model files.
    pub fn name(self) -> &'static str {
        match self {
            Blend::Hann => "hann",
            Blend::Gaussian => "gaussian",
            Blend::Crop => "crop",
        }
    }

    /// One line on what it does.
    pub fn help(self) -> &'static str {
        match self {
            Blend::Hann => "sin² taper, positive everywhere: seamless (the default)",
            Blend::Gaussian => "Gaussian taper, sigma = window / 8",
            Blend::Crop => "only each window's centre counts: no blending",
        }
    }
}

impl std::str::FromStr for Blend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Blend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Blend::ALL.iter().map(|b| b.name()).collect();
                format!("unknown blend '{s}' (one of {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for Blend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The 1-D taper of a window; the 2-D weight is `w[y] * w[x]`.
pub fn weights_1d(blend: Blend, grid: &WindowGrid) -> Vec<f32> {
    let n = grid.window_size();
    match blend {
        Blend::Hann => (0..n)
            .map(|i| {
                let s = (std::f64::consts::PI * (i as f64 + 0.5) / n as f64).sin();
                (s * s) as f32
            })
            .collect(),
        Blend::Gaussian => {
            let sigma = n as f64 / 8.0;
            let c = n as f64 / 2.0;
            (0..n)
                .map(|i| {
                    let d = (i as f64 + 0.5 - c) / sigma;
                    (-0.5 * d * d).exp().max(1e-6) as f32
                })
                .collect()
        }
        Blend::Crop => {
            let (lo, hi) = (grid.lead(), grid.lead() + grid.stride());
            (0..n)
                .map(|i| if (lo..hi).contains(&i) { 1.0 } else { 0.0 })
                .collect()
        }
    }
}

/// One window's prediction: class scores `[k][size][size]` and the input
/// validity `[size][size]` (non-zero = valid). The scores are
/// probabilities, or, with `logits`, logits whose channel softmax the
/// stitcher takes itself, one window row at a time where it blends them
/// ([`softmax_run`]: the same bits as the model stage's softmax, without
/// every window's probabilities written out and read back).
#[derive(Debug, Clone, Copy)]
pub struct Prediction<'a> {
    pub probs: &'a [f32],
    pub logits: bool,
    pub valid: &'a [u8],
}

/// A finished band of the map: whole rows of the chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub rect: Rect,
    /// Class ids, row-major, [`crate::classes::NODATA`] where no data.
    pub classes: Vec<u8>,
    /// Confidence 0..=100 (255 = nodata), when asked for.
    pub confidence: Option<Vec<u8>>,
    /// Class probabilities x 254 (255 = nodata), one plane of the band's
    /// pixels per model channel, when asked for; see [`quantise_probs`].
    pub probabilities: Option<Vec<u8>>,
}

/// Quantises one pixel's blended class probabilities `p` (summing to 1)
/// to `round(p * 254)` into `out`, such that the first largest of `out` is
/// channel `best`, the map's class (the first largest of `p`): rounding
/// keeps the order, so only a channel before `best` that rounds to the same
/// value is lowered by one step (1/254).
pub fn quantise_probs(p: impl Iterator<Item = f32>, best: usize, out: &mut [u8]) {
    for (o, v) in out.iter_mut().zip(p) {
        *o = (v.clamp(0.0, 1.0) * 254.0).round() as u8;
    }
    let top = out[best];
    for o in &mut out[..best] {
        if *o >= top {
            *o = top.saturating_sub(1);
        }
    }
}

/// The accumulator of one region: raster columns `[x0, x1)` and rows
/// `[y0, y1)`.
///
/// The strip is a ring of `cap` rows, one plane per class (`[k][cap][width]`),
/// so that a window's row adds to contiguous memory in every class, and an
/// emitted row is cleared rather than the strip shifted up.
pub struct ChunkStitcher {
    grid: WindowGrid,
    k: usize,
    wts: Vec<f32>,
    ids: Vec<u8>,
    confidence: bool,
    probabilities: bool,
    x0: usize,
    width: usize,
    y0: usize,
    y1: usize,
    tile_rows: usize,
    cap: usize,
    /// First raster row not yet emitted.
    top: usize,
    /// `[k][cap][width]`: ring row of raster row `y` is `(y - y0) % cap`.
    acc: Vec<f32>,
    wsum: Vec<f32>,
    valid: Vec<u8>,
    /// One window row's weights, `wts[j] * wts[i]` over the clipped columns.
    wrow: Vec<f32>,
    /// One window row's probabilities `[k][columns]`, from logits.
    probs_row: Vec<f32>,
}

/// A rectangle of raster columns and rows to stitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
}

/// Offset of raster row `y`'s first column in a `[cap][width]` ring of
/// rows whose row 0 held raster row `y0`.
fn ring(y: usize, y0: usize, cap: usize, width: usize) -> usize {
    ((y - y0) % cap) * width
}

/// A zeroed vector whose pages are first touched by a write. `vec![0; n]`
/// of a large `n` is a fresh zero mapping: the stitcher's first `+=` on
/// each page would read the shared zero page and then copy it on the
/// write, each copy a TLB shootdown across the run's threads.
fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, T::default());
    v
}

impl ChunkStitcher {
    /// A stitcher for `region`. `class_ids[c]` is the map value of model
    /// channel `c`; bands leave in `tile_rows` rows counted from `region.y0`.
    /// Only windows of [`WindowGrid::rows_touching`]`(y0, y1)` are needed.
    pub fn new(
        grid: WindowGrid,
        blend: Blend,
        class_ids: Vec<u8>,
        region: Region,
        tile_rows: usize,
        confidence: bool,
    ) -> Self {
        let Region { x0, x1, y0, y1 } = region;
        let size = grid.raster();
        assert!(x0 < x1 && x1 <= size.width && y0 < y1 && y1 <= size.height && tile_rows > 0);
        let k = class_ids.len();
        assert!((1..=256).contains(&k), "{k} classes: 1 to 256 fit a u8 id");
        let width = x1 - x0;
        let cap = grid.window_size() + tile_rows;
        ChunkStitcher {
            wts: weights_1d(blend, &grid),
            grid,
            k,
            ids: class_ids,
            confidence,
            probabilities: false,
            x0,
            width,
            y0,
            y1,
            tile_rows,
            cap,
            top: y0,
            acc: zeroed(cap * width * k),
            wsum: zeroed(cap * width),
            valid: zeroed(cap * width),
            wrow: Vec::with_capacity(grid.window_size()),
            probs_row: Vec::new(),
        }
    }

    /// Also emit the class probabilities ([`Band::probabilities`]).
    pub fn with_probabilities(mut self, on: bool) -> Self {
        self.probabilities = on;
        self
    }

    /// Bytes held by the accumulator: `(window + tile_rows) * width * (4k + 5)`.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.grid.window_size(), self.tile_rows, self.width, self.k)
    }

    /// The accumulator size for a configuration, for the memory bound.
    pub fn bytes_for(window: usize, tile_rows: usize, width: usize, k: usize) -> usize {
        (window + tile_rows) * width * (4 * k + 4 + 1)
    }

    /// Adds a window. `pred` is `None` for a window skipped as all-nodata.
    /// Windows must come in row-major order.
    pub fn add(&mut self, w: &Window, pred: Option<Prediction<'_>>) {
        let Some(p) = pred else { return };
        let n = w.size;
        let k = self.k;
        debug_assert_eq!(p.probs.len(), k * n * n);
        let clip = self.grid.clip(w);
        let cx0 = clip.x.max(self.x0);
        let cx1 = (clip.x + clip.width).min(self.x0 + self.width);
        // rows above `top` are emitted (or belong to another region)
        let cy0 = clip.y.max(self.top);
        let cy1 = (clip.y + clip.height).min(self.y1);
        if cx0 >= cx1 || cy0 >= cy1 {
            return;
        }
        assert!(
            cy1 <= self.top + self.cap,
            "window beyond the strip: rows must come in order"
        );
        let plane = n * n;
        let len = cx1 - cx0;
        let i0 = (cx0 as i64 - w.x) as usize;
        let plane_len = self.cap * self.width;
        let mut wrow = std::mem::take(&mut self.wrow);
        let mut probs_row = std::mem::take(&mut self.probs_row);
        probs_row.resize(if p.logits { k * len } else { 0 }, 0.0);
        for y in cy0..cy1 {
            let j = (y as i64 - w.y) as usize;
            let wy = self.wts[j];
            wrow.clear();
            wrow.extend(self.wts[i0..i0 + len].iter().map(|&wx| wy * wx));
            let b = ring(y, self.y0, self.cap, self.width) + (cx0 - self.x0);
            let src = j * n + i0;
            add_row(
                &mut self.wsum[b..b + len],
                &mut self.valid[b..b + len],
                &wrow,
                &p.valid[src..src + len],
            );
            if p.logits {
                let from: Vec<&[f32]> = (0..k)
                    .map(|c| &p.probs[c * plane + src..c * plane + src + len])
                    .collect();
                let mut to: Vec<&mut [f32]> = probs_row.chunks_mut(len).collect();
                softmax_run(&from, &mut to);
            }
            for c in 0..k {
                let a = c * plane_len + b;
                let row = if p.logits {
                    &probs_row[c * len..(c + 1) * len]
                } else {
                    &p.probs[c * plane + src..c * plane + src + len]
                };
                add_class_row(&mut self.acc[a..a + len], &wrow, row);
            }
        }
        self.probs_row = probs_row;
        self.wrow = wrow;
    }

    /// Declares window row `row` complete and returns the bands that became
    /// final. Call [`finish`](Self::finish) after the last row.
    pub fn end_row(&mut self, row: usize) -> Vec<Band> {
        let h = self.y1;
        let final_to = if row + 1 >= self.grid.rows() {
            h
        } else {
            (self.grid.row_origin(row + 1).max(0) as usize).min(h)
        };
        let mut out = Vec::new();
        while final_to >= self.top + self.tile_rows {
            out.push(self.emit(self.tile_rows));
        }
        if final_to == h && self.top < h {
            out.push(self.emit(h - self.top));
        }
        out
    }

    /// Emits everything left (the region's last rows).
    pub fn finish(mut self) -> Vec<Band> {
        let h = self.y1;
        let mut out = Vec::new();
        while self.top < h {
            let n = (h - self.top).min(self.tile_rows);
            out.push(self.emit(n));
        }
        out
    }

    fn emit(&mut self, rows: usize) -> Band {
        let (k, width) = (self.k, self.width);
        let npx = rows * width;
        let plane_len = self.cap * width;
        let mut classes = vec![0u8; npx];
        let mut conf = self.confidence.then(|| vec![crate::classes::NODATA; npx]);
        let mut probs = self
            .probabilities
            .then(|| vec![crate::classes::NODATA; npx * k]);
        let mut q = vec![0u8; k];
        let (mut best, mut bv) = (vec![0u8; width], vec![0f32; width]);
        for r in 0..rows {
            let b = ring(self.top + r, self.y0, self.cap, width);
            let planes: Vec<&[f32]> = (0..k)
                .map(|c| &self.acc[c * plane_len + b..c * plane_len + b + width])
                .collect();
            argmax_row(&planes, &mut best, &mut bv);
            let o = r * width;
            let (ws, valid) = (&self.wsum[b..b + width], &self.valid[b..b + width]);
            classes_row(&mut classes[o..o + width], &best, &self.ids, ws, valid);
            if conf.is_some() || probs.is_some() {
                for x in 0..width {
                    if valid[x] == 0 || ws[x] <= 0.0 {
                        continue;
                    }
                    let c = best[x] as usize;
                    if let Some(cf) = conf.as_mut() {
                        cf[o + x] = ((bv[x] / ws[x]).clamp(0.0, 1.0) * 100.0).round() as u8;
                    }
                    if let Some(pr) = probs.as_mut() {
                        quantise_probs(planes.iter().map(|pl| pl[x] / ws[x]), c, &mut q);
                        for (ch, &v) in q.iter().enumerate() {
                            pr[ch * npx + o + x] = v;
                        }
                    }
                }
            }
            // the ring row is free for the row `cap` further down
            for c in 0..k {
                self.acc[c * plane_len + b..c * plane_len + b + width].fill(0.0);
            }
            self.wsum[b..b + width].fill(0.0);
            self.valid[b..b + width].fill(0);
        }
        let band = Band {
            rect: Rect {
                x: self.x0,
                y: self.top,
                width,
                height: rows,
            },
            classes,
            confidence: conf,
            probabilities: probs,
        };
        self.top += rows;
        band
    }
}

multiversion! {
    /// `wsum += wrow` and `valid |= mask != 0` over one window row.
    fn add_row(wsum: &mut [f32], valid: &mut [u8], wrow: &[f32], mask: &[u8]) {
        for (s, &w) in wsum.iter_mut().zip(wrow) {
            *s += w;
        }
        for (v, &m) in valid.iter_mut().zip(mask) {
            *v |= (m != 0) as u8;
        }
    }
}

multiversion! {
    /// `acc += wrow * p` over one window row of one class: per pixel the
    /// same product and sum as one pixel at a time, so the same bits.
    fn add_class_row(acc: &mut [f32], wrow: &[f32], p: &[f32]) {
        for ((a, &w), &v) in acc.iter_mut().zip(wrow).zip(p) {
            *a += w * v;
        }
    }
}

multiversion! {
    /// The first largest class of each pixel of one strip row (`planes[c]`:
    /// class c's row) into `best`, its value into `bv`. NaN never wins, as
    /// in a scalar `v > best` scan.
    fn argmax_row(planes: &[&[f32]], best: &mut [u8], bv: &mut [f32]) {
        bv.copy_from_slice(planes[0]);
        best.fill(0);
        for (c, row) in planes.iter().enumerate().skip(1) {
            for ((m, i), &v) in bv.iter_mut().zip(best.iter_mut()).zip(row.iter()) {
                let gt = v > *m;
                *m = if gt { v } else { *m };
                *i = if gt { c as u8 } else { *i };
            }
        }
    }
}

multiversion! {
    /// Class ids of one strip row: `ids[best]` where the pixel is valid and
    /// weighed, nodata elsewhere.
    fn classes_row(out: &mut [u8], best: &[u8], ids: &[u8], ws: &[f32], valid: &[u8]) {
        for (((o, &c), &w), &v) in out.iter_mut().zip(best).zip(ws).zip(valid) {
            let id = ids[c as usize];
            *o = if v != 0 && w > 0.0 { id } else { crate::classes::NODATA };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::window::Size;
    use proptest::prelude::*;

    /// A deterministic fake prediction that depends on the window position,
    /// so that overlapping windows disagree.
    fn fake_probs(w: &Window, k: usize) -> Vec<f32> {
        let n = w.size;
        let mut p = vec![0.0f32; k * n * n];
        for j in 0..n {
            for i in 0..n {
                let gx = w.x + i as i64;
                let gy = w.y + j as i64;
                let mut tot = 0.0;
                for c in 0..k {
                    let h =
                        ((gx * 31 + gy * 17 + c as i64 * 7 + w.col as i64 * 13 + w.row as i64 * 5)
                            .rem_euclid(97)) as f32
                            + 1.0;
                    p[c * n * n + j * n + i] = h;
                    tot += h;
                }
                for c in 0..k {
                    p[c * n * n + j * n + i] /= tot;
                }
            }
        }
        p
    }

    /// Stitches a whole raster with the given chunk width and tile rows.
    #[allow(clippy::too_many_arguments)]
    fn stitch_all(
        size: Size,
        win: usize,
        ov: f64,
        blend: Blend,
        chunk: usize,
        tile_rows: usize,
        k: usize,
        probs: &dyn Fn(&Window) -> Vec<f32>,
    ) -> Vec<u8> {
        let g = WindowGrid::new(size, win, ov).unwrap();
        let mut map = vec![0u8; size.width * size.height];
        let ids: Vec<u8> = (0..k as u8).collect();
        let mut x0 = 0;
        while x0 < size.width {
            let x1 = (x0 + chunk).min(size.width);
            let region = Region {
                x0,
                x1,
                y0: 0,
                y1: size.height,
            };
            let mut st = ChunkStitcher::new(g, blend, ids.clone(), region, tile_rows, false);
            let mut bands = Vec::new();
            for r in 0..g.rows() {
                for c in g.cols_touching(x0, x1) {
                    let w = g.window(c, r);
                    let p = probs(&w);
                    let v = vec![1u8; win * win];
                    st.add(
                        &w,
                        Some(Prediction {
                            probs: &p,
                            logits: false,
                            valid: &v,
                        }),
                    );
                }
                bands.extend(st.end_row(r));
            }
            bands.extend(st.finish());
            let mut covered = 0;
            for b in bands {
                assert!(b.rect.height <= tile_rows);
                assert!(b.rect.y % tile_rows == 0, "band not tile aligned");
                for y in 0..b.rect.height {
                    for x in 0..b.rect.width {
                        map[(b.rect.y + y) * size.width + b.rect.x + x] =
                            b.classes[y * b.rect.width + x];
                    }
                }
                covered += b.rect.height;
            }
            assert_eq!(covered, size.height);
            x0 = x1;
        }
        map
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The map does not depend on the chunk width or the band height.
        #[test]
        fn invariant_to_tiling(w in 1usize..90, h in 1usize..90, win in 8usize..40, ov in 0.0f64..0.8,
                               chunk in 1usize..100, tile in 1usize..40, blend_i in 0usize..3) {
            let blend = [Blend::Hann, Blend::Gaussian, Blend::Crop][blend_i];
            let size = Size { width: w, height: h };
            let f = |wd: &Window| fake_probs(wd, 4);
            let a = stitch_all(size, win, ov, blend, usize::MAX / 2, h.max(1), 4, &f);
            let b = stitch_all(size, win, ov, blend, chunk, tile, 4, &f);
            prop_assert_eq!(a, b);
        }

        /// Stitching row bands `[y0, y1)` separately, with only the window rows
        /// that touch each band, gives exactly the rows of a whole-scene run.
        #[test]
        fn row_bands_equal_the_whole(w in 1usize..70, h in 2usize..90, win in 8usize..40, ov in 0.0f64..0.8, cut in 1usize..89) {
            let size = Size { width: w, height: h };
            let f = |wd: &Window| fake_probs(wd, 3);
            let whole = stitch_all(size, win, ov, Blend::Hann, 1000, 7, 3, &f);
            let g = WindowGrid::new(size, win, ov).unwrap();
            let cut = cut.min(h - 1);
            let mut rows = Vec::new();
            for (y0, y1) in [(0, cut), (cut, h)] {
                let mut st = ChunkStitcher::new(g, Blend::Hann, vec![0, 1, 2], Region { x0: 0, x1: w, y0, y1 }, 5, false);
                let mut bands = Vec::new();
                for r in g.rows_touching(y0, y1) {
                    for c in 0..g.cols() {
                        let wd = g.window(c, r);
                        let p = f(&wd);
                        let v = vec![1u8; win * win];
                        st.add(&wd, Some(Prediction { probs: &p, logits: false, valid: &v }));
                    }
                    bands.extend(st.end_row(r));
                }
                bands.extend(st.finish());
                let mut next = y0;
                for b in bands {
                    prop_assert_eq!(b.rect.y, next);
                    next += b.rect.height;
                    rows.extend(b.classes);
                }
                prop_assert_eq!(next, y1);
            }
            prop_assert_eq!(rows, whole);
        }

        /// A constant prediction stitches to that constant, everywhere.
        #[test]
        fn constant_stays_constant(w in 1usize..80, h in 1usize..80, win in 8usize..40, ov in 0.0f64..0.8, cls in 0usize..5, blend_i in 0usize..3) {
            let blend = [Blend::Hann, Blend::Gaussian, Blend::Crop][blend_i];
            let k = 5;
            let f = |wd: &Window| {
                let n = wd.size * wd.size;
                let mut p = vec![0.1f32; k * n];
                p[cls * n..(cls + 1) * n].fill(0.6);
                p
            };
            let m = stitch_all(Size { width: w, height: h }, win, ov, blend, 37, 16, k, &f);
            prop_assert!(m.iter().all(|&v| v as usize == cls));
        }
    }

    /// Logits stitched as logits (the softmax taken row by row in the
    /// stitcher) give the bands, to the bit, of their softmax stitched as
    /// probabilities.
    #[test]
    fn logits_stitch_as_their_softmax() {
        let size = Size {
            width: 70,
            height: 45,
        };
        let (win, k) = (24usize, 4usize);
        let g = WindowGrid::new(size, win, 0.3).unwrap();
        let logits = |w: &Window| -> Vec<f32> {
            fake_probs(w, k)
                .iter()
                .map(|p| (p * 40.0).ln() * 3.0 - 2.0)
                .collect()
        };
        let run = |as_logits: bool| {
            let region = Region {
                x0: 5,
                x1: 61,
                y0: 0,
                y1: 45,
            };
            let mut st = ChunkStitcher::new(g, Blend::Hann, vec![3, 1, 4, 0], region, 16, true)
                .with_probabilities(true);
            let mut bands = Vec::new();
            let v = vec![1u8; win * win];
            for r in 0..g.rows() {
                for c in g.cols_touching(5, 61) {
                    let w = g.window(c, r);
                    let mut p = logits(&w);
                    if !as_logits {
                        crate::model::softmax_channels(&mut p, 1, k, win * win);
                    }
                    st.add(
                        &w,
                        Some(Prediction {
                            probs: &p,
                            logits: as_logits,
                            valid: &v,
                        }),
                    );
                }
                bands.extend(st.end_row(r));
            }
            bands.extend(st.finish());
            bands
        };
        let (a, b) = (run(true), run(false));
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn crop_takes_the_centre_window() {
        // With crop, each pixel equals the argmax of the one window whose
        // centre holds it.
        let size = Size {
            width: 50,
            height: 30,
        };
        let g = WindowGrid::new(size, 16, 0.5).unwrap();
        let f = |wd: &Window| fake_probs(wd, 3);
        let m = stitch_all(size, 16, 0.5, Blend::Crop, 1000, 30, 3, &f);
        for y in 0..30 {
            for x in 0..50 {
                let c = (x + g.lead()) / g.stride();
                let r = (y + g.lead()) / g.stride();
                // centre of window c is [c*s, c*s+s)
                let c = if x >= c * g.stride() { c } else { c - 1 };
                let r = if y >= r * g.stride() { r } else { r - 1 };
                let w = g.window(c.min(g.cols() - 1), r.min(g.rows() - 1));
                let p = f(&w);
                let n = w.size;
                let (i, j) = ((x as i64 - w.x) as usize, (y as i64 - w.y) as usize);
                let best = (0..3)
                    .max_by(|&a, &b| {
                        p[a * n * n + j * n + i]
                            .partial_cmp(&p[b * n * n + j * n + i])
                            .unwrap()
                            .then(b.cmp(&a))
                    })
                    .unwrap();
                assert_eq!(m[y * 50 + x] as usize, best, "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn invalid_and_skipped_pixels_are_nodata() {
        let size = Size {
            width: 20,
            height: 20,
        };
        let g = WindowGrid::new(size, 16, 0.25).unwrap();
        let region = Region {
            x0: 0,
            x1: 20,
            y0: 0,
            y1: 20,
        };
        let mut st = ChunkStitcher::new(g, Blend::Hann, vec![7, 9], region, 64, true);
        let mut bands = Vec::new();
        for r in 0..g.rows() {
            for c in 0..g.cols() {
                let w = g.window(c, r);
                if c == 1 && r == 1 {
                    st.add(&w, None);
                    continue;
                }
                let p = vec![0.5f32; 2 * 256];
                let mut v = vec![1u8; 256];
                // mark raster pixel (3,3) invalid in every window holding it
                let (i, j) = (3 - w.x, 3 - w.y);
                if (0..16).contains(&i) && (0..16).contains(&j) {
                    v[(j * 16 + i) as usize] = 0;
                }
                st.add(
                    &w,
                    Some(Prediction {
                        probs: &p,
                        logits: false,
                        valid: &v,
                    }),
                );
            }
            bands.extend(st.end_row(r));
        }
        bands.extend(st.finish());
        assert_eq!(bands.len(), 1);
        let b = &bands[0];
        assert_eq!(b.classes[3 * 20 + 3], 255);
        assert_eq!(b.classes[0], 7, "ties go to the first channel");
        assert_eq!(b.confidence.as_ref().unwrap()[0], 50);
        // the bottom-right corner is only in the skipped window
        assert_eq!(b.classes[19 * 20 + 19], 255);
    }

    #[test]
    fn quantised_probabilities_keep_the_map_s_argmax() {
        let mut q = [0u8; 3];
        // 0.4012 and 0.4009 both round to 102: the map's class (0) stays first
        quantise_probs([0.4012f32, 0.4009, 0.1979].into_iter(), 0, &mut q);
        assert_eq!(q, [102, 102, 50]);
        // the map's class is channel 1: channel 0's tie is lowered a step
        quantise_probs([0.4009f32, 0.4012, 0.1979].into_iter(), 1, &mut q);
        assert_eq!(q, [101, 102, 50]);
        quantise_probs([0.0f32, 1.0, 0.0].into_iter(), 1, &mut q);
        assert_eq!(q, [0, 254, 0]);
    }

    proptest! {
        #[test]
        fn first_argmax_of_quantised_is_the_map_s(raw in proptest::collection::vec(0.0f32..1.0, 2..9)) {
            let sum: f32 = raw.iter().sum::<f32>().max(1e-6);
            let p: Vec<f32> = raw.iter().map(|v| v / sum).collect();
            let mut best = 0;
            for c in 1..p.len() {
                if p[c] > p[best] {
                    best = c;
                }
            }
            let mut q = vec![0u8; p.len()];
            quantise_probs(p.iter().copied(), best, &mut q);
            let mut qbest = 0;
            for c in 1..q.len() {
                if q[c] > q[qbest] {
                    qbest = c;
                }
            }
            prop_assert_eq!(qbest, best);
            for (a, b) in q.iter().zip(&p) {
                prop_assert!((*a as f32 - b * 254.0).abs() <= 1.5);
            }
        }
    }
}
