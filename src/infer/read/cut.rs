//! Cutting windows out of decoded pixels: the "window" step of the data
//! path, between the decoder (a [`WindowSource`](super::WindowSource)
//! backend) and the batch.
//!
//! A backend decodes rectangles of the raster into [`Pixels`] (every
//! selected band as f32, and which pixels its masks call valid); a window is
//! then cut from one or more of them: reflect-padded at the raster's edges,
//! normalised, its invalid pixels set to 0 and marked. The pipeline decodes
//! the raster once, in block-aligned [`Cells`](CellLattice), and cuts every
//! window from the cells it touches; a single window read
//! ([`WindowSource::read_window`](super::WindowSource::read_window)) decodes
//! just its own source rectangle. Both run [`cut`], so a window's data is the
//! same either way, to the bit.
//!
//! This module is pure: it knows neither GDAL nor candle.

use super::{Normalize, WindowData};
use crate::infer::window::{reflect, Rect, Window, WindowGrid};
use crate::scale::aoi::Aoi;
use crate::simd::multiversion;
use std::mem::MaybeUninit;
use std::ops::Range;

/// A decoded rectangle of the raster: its selected bands' values as f32
/// (`[band][height][width]`) and whether the masks call each pixel valid
/// (`[height][width]`, non-zero: valid in at least one band, as rasterio's
/// `dataset_mask`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub rect: Rect,
    pub values: Vec<f32>,
    pub mask: Vec<u8>,
}

impl Pixels {
    /// How many bands it holds.
    pub fn bands(&self) -> usize {
        self.values.len() / self.rect.area().max(1)
    }

    /// Bytes held for `area` pixels of `bands` bands.
    pub fn bytes_for(area: usize, bands: usize) -> usize {
        area * (4 * bands + 1)
    }
}

/// What a cut needs besides the pixels: the grid the windows come from, the
/// normalisation and the area of interest.
#[derive(Debug, Clone)]
pub struct CutSpec {
    pub grid: WindowGrid,
    pub norm: Normalize,
    pub aoi: Option<std::sync::Arc<Aoi>>,
}

/// The pieces of raster row `y`, columns `[x0, x0 + len)`, that `cells`
/// hold: `(offset in the run, the cell, index of the piece's first pixel in
/// the cell's planes)`.
fn row_pieces<'a>(
    cells: &'a [&'a Pixels],
    y: usize,
    x0: usize,
    len: usize,
) -> impl Iterator<Item = (Range<usize>, &'a Pixels, usize)> + 'a {
    cells.iter().filter_map(move |c| {
        let r = c.rect;
        if !(r.y..r.y + r.height).contains(&y) {
            return None;
        }
        let (a, b) = (r.x.max(x0), (r.x + r.width).min(x0 + len));
        (a < b).then(|| (a - x0..b - x0, *c, (y - r.y) * r.width + (a - r.x)))
    })
}

/// Cuts window `w` out of `cells`, which together cover its source
/// rectangle ([`WindowGrid::source_rect`]): reflects the rows and columns
/// beyond the raster, normalises, sets invalid pixels (masked, not finite
/// once normalised, outside the AOI) to 0 and marks them. Each window row
/// is read straight from the cells that hold it.
pub fn cut(spec: &CutSpec, w: &Window, cells: &[&Pixels]) -> WindowData {
    let nb = cells.first().map_or(0, |c| c.bands());
    let n = w.size;
    let size = spec.grid.raster();
    // raster columns and rows of the window's columns and rows
    let xs: Vec<usize> = (0..n)
        .map(|i| reflect(w.x + i as i64, size.width))
        .collect();
    let ys: Vec<usize> = (0..n)
        .map(|j| reflect(w.y + j as i64, size.height))
        .collect();
    let mut input: Vec<f32> = Vec::with_capacity(nb * n * n);
    let mut valid = vec![0u8; n * n];
    // pixels the masks call valid whose value is not finite (NaN, ±inf,
    // an f64 beyond f32's range, or one that overflows normalised)
    let mut bad = vec![0u8; n * n];
    // the window's columns are one run of the raster's (away from the
    // raster's left and right edges), or gathered through `xs`
    let run = xs.windows(2).all(|p| p[1] == p[0] + 1);
    let (mut tv, mut tm) = (vec![0f32; n], vec![0u8; n]);
    let out = &mut input.spare_capacity_mut()[..nb * n * n];
    for bi in 0..nb {
        let (mean, std) = (spec.norm.mean[bi], spec.norm.std[bi]);
        let plane = &mut out[bi * n * n..(bi + 1) * n * n];
        for (j, &y) in ys.iter().enumerate() {
            let r = j * n..(j + 1) * n;
            let (o, v, b) = (&mut plane[r.clone()], &mut valid[r.clone()], &mut bad[r]);
            if run {
                let mut covered = 0;
                for (at, c, s) in row_pieces(cells, y, xs[0], n) {
                    covered += at.len();
                    let sp = bi * c.rect.area() + s;
                    normalise_row(
                        &c.values[sp..sp + at.len()],
                        &c.mask[s..s + at.len()],
                        (mean, std),
                        bi == 0,
                        &mut o[at.clone()],
                        &mut v[at.clone()],
                        &mut b[at],
                    );
                }
                assert_eq!(covered, n, "the cells cover the window's source rectangle");
            } else {
                for (i, &x) in xs.iter().enumerate() {
                    let (_, c, s) = row_pieces(cells, y, x, 1)
                        .next()
                        .expect("the cells cover the window's source rectangle");
                    tv[i] = c.values[bi * c.rect.area() + s];
                    tm[i] = c.mask[s];
                }
                normalise_row(&tv, &tm, (mean, std), bi == 0, o, v, b);
            }
        }
    }
    // SAFETY: the loops above wrote every value of every band: each window
    // row of each band either through the pieces of a run, which cover the
    // row (the cells cover the source rectangle), or through `tv` whole
    unsafe { input.set_len(nb * n * n) };
    // a pixel invalid in one band (masked, or not finite) is invalid in
    // all, and enters the network as 0
    for bi in 0..nb {
        let plane = &mut input[bi * n * n..(bi + 1) * n * n];
        for (p, &v) in plane.iter_mut().zip(&valid) {
            if v == 0 {
                *p = 0.0;
            }
        }
    }
    if let Some(aoi) = &spec.aoi {
        for ((v, b), m) in valid
            .iter_mut()
            .zip(bad.iter_mut())
            .zip(aoi.mask(w.x, w.y, n, n))
        {
            *v &= m;
            *b &= m;
        }
    }
    let non_finite = if bad.contains(&1) {
        let mut bits = vec![0u64; (n * n).div_ceil(64)];
        for (k, _) in bad.iter().enumerate().filter(|(_, &b)| b != 0) {
            bits[k / 64] |= 1 << (k % 64);
        }
        bits
    } else {
        Vec::new()
    };
    let clip = spec.grid.clip(w);
    let mut any_valid = false;
    'outer: for y in clip.y..clip.y + clip.height {
        let j = (y as i64 - w.y) as usize;
        for x in clip.x..clip.x + clip.width {
            let i = (x as i64 - w.x) as usize;
            if valid[j * n + i] != 0 {
                any_valid = true;
                break 'outer;
            }
        }
    }
    WindowData {
        input,
        valid,
        any_valid,
        non_finite,
    }
}

multiversion! {
    /// Normalises one window row of one band (`s`, with the masks'
    /// validity `m`): writes the values to `out`, sets (first band) or
    /// narrows (the others) `valid` to the pixels valid so far, and marks in
    /// `bad` those the masks call valid whose value is not finite. A band
    /// masks a pixel out by its mask (shared by all bands) or by a value
    /// that is not finite; the caller zeroes the invalid pixels of every
    /// band afterwards.
    fn normalise_row(
        s: &[f32],
        m: &[u8],
        norm: (f32, f32),
        first: bool,
        out: &mut [MaybeUninit<f32>],
        valid: &mut [u8],
        bad: &mut [u8],
    ) {
        let n = out.len();
        let (mean, std) = norm;
        let (s, m, valid, bad) = (&s[..n], &m[..n], &mut valid[..n], &mut bad[..n]);
        for i in 0..n {
            let x = (s[i] - mean) / std;
            let finite = x.is_finite() as u8;
            let masked_in = (m[i] != 0) as u8;
            out[i].write(x);
            valid[i] = if first {
                masked_in & finite
            } else {
                valid[i] & finite
            };
            bad[i] |= masked_in & (finite ^ 1);
        }
    }
}

/// The lattice of cells the pipeline decodes a region in: rows in bands of
/// whole raster blocks (at least [`CellLattice::MIN_ROWS`] rows), columns
/// in runs of whole blocks (at least [`CellLattice::MIN_COLS`]), clipped to
/// the rectangle the region's windows read. A raster whose blocks are
/// larger than [`CellLattice::MAX_ROWS`] rows or [`CellLattice::MAX_COLS`]
/// columns (one strip per file, or striped TIFFs of very wide rasters) gets
/// cells of that size, unaligned: GDAL's block cache then holds the block
/// between the cells that share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellLattice {
    /// Rows per cell.
    pub rows: usize,
    /// Columns per cell.
    pub cols: usize,
    /// The rectangle the cells are clipped to.
    pub bounds: Rect,
}

impl CellLattice {
    pub const MIN_ROWS: usize = 128;
    pub const MAX_ROWS: usize = 512;
    pub const MIN_COLS: usize = 1024;
    pub const MAX_COLS: usize = 2048;

    /// The lattice for a raster with blocks of `block` (width, height),
    /// clipped to `bounds`.
    pub fn new(block: (usize, usize), bounds: Rect) -> CellLattice {
        let fit = |b: usize, min: usize, max: usize| {
            if b == 0 || b > max {
                min
            } else {
                b * min.div_ceil(b)
            }
        };
        CellLattice {
            rows: fit(block.1, Self::MIN_ROWS, Self::MAX_ROWS),
            cols: fit(block.0, Self::MIN_COLS, Self::MAX_COLS),
            bounds,
        }
    }

    /// The cells `(row, col)` that `rect` touches (`rect` inside the
    /// bounds), row-major.
    pub fn cells_of(&self, rect: &Rect) -> impl Iterator<Item = (usize, usize)> {
        let (r0, r1) = (rect.y / self.rows, (rect.y + rect.height - 1) / self.rows);
        let (c0, c1) = (rect.x / self.cols, (rect.x + rect.width - 1) / self.cols);
        (r0..=r1).flat_map(move |r| (c0..=c1).map(move |c| (r, c)))
    }

    /// The raster rectangle of cell `(row, col)`.
    pub fn rect(&self, (row, col): (usize, usize)) -> Rect {
        let b = self.bounds;
        let x0 = (col * self.cols).max(b.x);
        let x1 = ((col + 1) * self.cols).min(b.x + b.width);
        let y0 = (row * self.rows).max(b.y);
        let y1 = ((row + 1) * self.rows).min(b.y + b.height);
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// Bytes of the cells that can be alive at once for a region `width`
    /// columns wide, with `rows` raster rows between the top of the oldest
    /// window still to be cut and the bottom of the newest: whole cells
    /// around them, `bands` bands.
    pub fn bytes_for(&self, rows: usize, width: usize, bands: usize) -> usize {
        let r = rows.div_ceil(self.rows) + 1;
        let c = width.div_ceil(self.cols) + 1;
        Pixels::bytes_for(r * self.rows * c * self.cols, bands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::window::Size;

    fn pixels(rect: Rect, bands: usize, f: impl Fn(usize, usize, usize) -> f32) -> Pixels {
        let mut values = Vec::new();
        for b in 0..bands {
            for y in rect.y..rect.y + rect.height {
                for x in rect.x..rect.x + rect.width {
                    values.push(f(b, x, y));
                }
            }
        }
        let mask = (0..rect.area())
            .map(|i| ((i * 7) % 11 != 0) as u8)
            .collect();
        Pixels { rect, values, mask }
    }

    /// A window cut from the cells of a lattice equals the window cut from
    /// its own source rectangle, for windows inside, at the edges and
    /// wider than the raster.
    #[test]
    fn cut_from_cells_equals_cut_from_the_window_rectangle() {
        let (w, h) = (300usize, 200usize);
        let f = |b: usize, x: usize, y: usize| {
            if (x * 31 + y * 17 + b).is_multiple_of(97) {
                f32::NAN
            } else {
                (b * 1000 + x * 3 + y * 5) as f32
            }
        };
        let all = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        let whole = pixels(all, 2, f);
        for (win, ov) in [(64usize, 0.25f64), (128, 0.5), (512, 0.25)] {
            let grid = WindowGrid::new(
                Size {
                    width: w,
                    height: h,
                },
                win,
                ov,
            )
            .unwrap();
            let spec = CutSpec {
                grid,
                norm: Normalize {
                    mean: vec![10.0, 20.0],
                    std: vec![3.0, 7.0],
                },
                aoi: None,
            };
            for block in [(256usize, 16usize), (300, 200), (7, 3)] {
                let lat = CellLattice {
                    rows: 48,
                    cols: 80,
                    ..CellLattice::new(block, all)
                };
                for r in 0..grid.rows() {
                    for c in 0..grid.cols() {
                        let wdw = grid.window(c, r);
                        let src = grid.source_rect(&wdw);
                        let own = pixels(src, 2, f);
                        let own = Pixels {
                            mask: whole_mask(&whole, src),
                            ..own
                        };
                        let cells: Vec<Pixels> = lat
                            .cells_of(&src)
                            .map(|k| {
                                let rect = lat.rect(k);
                                Pixels {
                                    mask: whole_mask(&whole, rect),
                                    ..pixels(rect, 2, f)
                                }
                            })
                            .collect();
                        let refs: Vec<&Pixels> = cells.iter().collect();
                        let a = cut(&spec, &wdw, &[&own]);
                        let b = cut(&spec, &wdw, &refs);
                        assert_eq!(
                            a.input.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            b.input.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                        );
                        assert_eq!(a.valid, b.valid);
                        assert_eq!(a.non_finite, b.non_finite);
                        assert_eq!(a.any_valid, b.any_valid);
                    }
                }
            }
        }
    }

    fn whole_mask(whole: &Pixels, r: Rect) -> Vec<u8> {
        let mut m = Vec::new();
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                m.push(whole.mask[y * whole.rect.width + x]);
            }
        }
        m
    }

    #[test]
    fn lattice_aligns_to_blocks_within_limits() {
        let b = Rect {
            x: 0,
            y: 0,
            width: 10000,
            height: 10000,
        };
        let l = CellLattice::new((256, 256), b);
        assert_eq!((l.rows, l.cols), (256, 1024));
        let l = CellLattice::new((512, 512), b);
        assert_eq!((l.rows, l.cols), (512, 1024));
        // strips of one row, and one strip per file
        let l = CellLattice::new((10000, 1), b);
        assert_eq!((l.rows, l.cols), (128, 1024));
        let l = CellLattice::new((10000, 10000), b);
        assert_eq!((l.rows, l.cols), (128, 1024));
        let l = CellLattice::new((100, 30), b);
        assert_eq!((l.rows, l.cols), (150, 1100));
        // clipped to the bounds
        let l = CellLattice::new(
            (256, 256),
            Rect {
                x: 100,
                y: 300,
                width: 1000,
                height: 50,
            },
        );
        assert_eq!(
            l.rect((1, 0)),
            Rect {
                x: 100,
                y: 300,
                width: 924,
                height: 50
            }
        );
        let cells: Vec<_> = l
            .cells_of(&Rect {
                x: 1000,
                y: 300,
                width: 100,
                height: 10,
            })
            .collect();
        assert_eq!(cells, vec![(1, 0), (1, 1)]);
    }
}
