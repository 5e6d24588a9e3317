//! Window geometry: where the network looks, and which windows own a pixel.
//!
//! Windows sit on one global grid with stride `window - overlap`. The grid
//! starts half an overlap *before* the raster, so every pixel, the ones on the
//! scene border included, lies in the centre region of exactly one window and
//! inside the tapered margin of its neighbours. That is what lets `--blend
//! crop` partition the scene exactly, and lets Hann/Gaussian blending give
//! border pixels a well-defined weight. Parts of a window that fall outside
//! the raster are filled by reflection ([`reflect`]), never dropped.
//!
//! Because the grid is global, any sub-region of the scene (a column chunk of
//! the stitcher, a part of a Slurm array) sees exactly the windows, and so
//! exactly the sums, that a whole-scene run sees.
//!
//! This module is pure: it knows neither GDAL nor candle.
//!
//! ```
//! use rstile::infer::window::{Size, WindowGrid};
//! let grid = WindowGrid::new(Size { width: 1000, height: 700 }, 256, 0.25).unwrap();
//! assert_eq!(grid.overlap_px(), 64);
//! assert_eq!(grid.stride(), 192);
//! // every column is inside some window
//! assert!(grid.cols_touching(999, 1000).len() >= 1);
//! ```

use std::ops::Range;

/// A raster size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

/// A window on the grid. `x`, `y` may be negative or reach past the raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub col: usize,
    pub row: usize,
    /// Left edge in raster pixel coordinates.
    pub x: i64,
    /// Top edge in raster pixel coordinates.
    pub y: i64,
    /// Side length.
    pub size: usize,
}

/// An axis-aligned pixel rectangle inside a raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Rect {
    /// Number of pixels.
    pub fn area(&self) -> usize {
        self.width * self.height
    }
}

/// The invalid grid settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    #[error("the raster is empty ({0}x{1} px)")]
    EmptyRaster(usize, usize),
    #[error("window size {0} is too small (at least 8 px)")]
    WindowTooSmall(usize),
    #[error("overlap {0} is outside [0, {MAX_OVERLAP}]")]
    BadOverlap(String),
}

/// The largest overlap, as a fraction of the window: at 0.9 a pixel is
/// already computed in 100 windows.
pub const MAX_OVERLAP: f64 = 0.9;

/// The one rule for a window size and overlap, wherever they are set (the
/// command line, a model file, a training config): at least 8 px, overlap
/// in `[0, MAX_OVERLAP]`.
pub fn check_geometry(window: usize, overlap: f64) -> Result<(), GridError> {
    if window < 8 {
        return Err(GridError::WindowTooSmall(window));
    }
    if !(overlap.is_finite() && (0.0..=MAX_OVERLAP).contains(&overlap)) {
        return Err(GridError::BadOverlap(format!("{overlap}")));
    }
    Ok(())
}

/// The global window grid of a raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGrid {
    raster: Size,
    window: usize,
    stride: usize,
    lead: usize,
    cols: usize,
    rows: usize,
}

impl WindowGrid {
    /// A grid of `window`-px windows overlapping by the fraction `overlap`
    /// (rounded to whole pixels) over a raster of `raster` px.
    pub fn new(raster: Size, window: usize, overlap: f64) -> Result<Self, GridError> {
        if raster.width == 0 || raster.height == 0 {
            return Err(GridError::EmptyRaster(raster.width, raster.height));
        }
        check_geometry(window, overlap)?;
        let overlap_px = ((window as f64 * overlap).round() as usize).min(window - 1);
        let stride = window - overlap_px;
        Ok(WindowGrid {
            raster,
            window,
            stride,
            lead: overlap_px / 2,
            cols: raster.width.div_ceil(stride),
            rows: raster.height.div_ceil(stride),
        })
    }

    /// The raster size.
    pub fn raster(&self) -> Size {
        self.raster
    }
    /// Window side length.
    pub fn window_size(&self) -> usize {
        self.window
    }
    /// Distance between window origins.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Overlap between neighbours, in pixels.
    pub fn overlap_px(&self) -> usize {
        self.window - self.stride
    }
    /// How far the first window starts before the raster: the start of the
    /// centre region inside a window.
    pub fn lead(&self) -> usize {
        self.lead
    }
    /// Number of window columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of window rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Total number of windows.
    pub fn len(&self) -> usize {
        self.cols * self.rows
    }
    /// Always false: a grid has at least one window.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn origin(&self, i: usize) -> i64 {
        (i * self.stride) as i64 - self.lead as i64
    }

    /// The window at grid position (`col`, `row`).
    pub fn window(&self, col: usize, row: usize) -> Window {
        Window {
            col,
            row,
            x: self.origin(col),
            y: self.origin(row),
            size: self.window,
        }
    }

    /// Top row (raster coordinates, may be negative) of window row `row`.
    pub fn row_origin(&self, row: usize) -> i64 {
        self.origin(row)
    }

    fn touching(&self, a: usize, b: usize, n: usize) -> Range<usize> {
        // window i spans [i*s - lead, i*s - lead + w); it touches [a, b) when
        // i*s - lead < b and i*s - lead + w > a.
        let s = self.stride as i64;
        let lead = self.lead as i64;
        let w = self.window as i64;
        let hi = (b as i64 + lead + s - 1).div_euclid(s); // first i with i*s - lead >= b
        let lo = (a as i64 + lead - w).div_euclid(s) + 1; // first i with i*s - lead + w > a
        let lo = lo.clamp(0, n as i64) as usize;
        let hi = hi.clamp(0, n as i64) as usize;
        lo..hi.max(lo)
    }

    /// Window columns whose extent touches raster columns `[x0, x1)`.
    pub fn cols_touching(&self, x0: usize, x1: usize) -> Range<usize> {
        self.touching(x0, x1, self.cols)
    }

    /// Window rows whose extent touches raster rows `[y0, y1)`.
    pub fn rows_touching(&self, y0: usize, y1: usize) -> Range<usize> {
        self.touching(y0, y1, self.rows)
    }

    /// The part of a window that lies inside the raster.
    pub fn clip(&self, w: &Window) -> Rect {
        let x0 = w.x.max(0) as usize;
        let y0 = w.y.max(0) as usize;
        let x1 = ((w.x + w.size as i64).max(0) as usize).min(self.raster.width);
        let y1 = ((w.y + w.size as i64).max(0) as usize).min(self.raster.height);
        Rect {
            x: x0,
            y: y0,
            width: x1.saturating_sub(x0),
            height: y1.saturating_sub(y0),
        }
    }

    /// The part of the raster in `w`'s centre region (from `x + lead`,
    /// `stride` px on each axis). The centres of the grid's windows
    /// partition the raster, so counting a per-pixel property over each
    /// window's centre counts every pixel once.
    pub fn centre(&self, w: &Window) -> Rect {
        let (lead, s) = (self.lead as i64, self.stride as i64);
        let span = |start: i64, n: usize| {
            let lo = (start + lead).clamp(0, n as i64) as usize;
            let hi = (start + lead + s).clamp(0, n as i64) as usize;
            (lo, hi.max(lo))
        };
        let (x0, x1) = span(w.x, self.raster.width);
        let (y0, y1) = span(w.y, self.raster.height);
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// The raster rectangle a reader must fetch to fill `w` by reflection:
    /// the bounding box of the reflected source pixels.
    pub fn source_rect(&self, w: &Window) -> Rect {
        let span = |start: i64, n: usize| {
            let (mut lo, mut hi) = (usize::MAX, 0usize);
            for i in 0..self.window as i64 {
                let r = reflect(start + i, n);
                lo = lo.min(r);
                hi = hi.max(r);
            }
            (lo, hi + 1)
        };
        let (x0, x1) = span(w.x, self.raster.width);
        let (y0, y1) = span(w.y, self.raster.height);
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// Reflects an index into `[0, n)` without repeating the edge pixel
/// (numpy's `reflect` mode), periodically, so that any index maps inside
/// even when the padding is wider than the raster.
///
/// ```
/// use rstile::infer::window::reflect;
/// assert_eq!(reflect(-1, 5), 1);
/// assert_eq!(reflect(5, 5), 3);
/// assert_eq!(reflect(-7, 1), 0);
/// ```
pub fn reflect(i: i64, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    if m < n as i64 {
        m as usize
    } else {
        (period - m) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid(w: usize, h: usize, win: usize, ov: f64) -> WindowGrid {
        WindowGrid::new(
            Size {
                width: w,
                height: h,
            },
            win,
            ov,
        )
        .unwrap()
    }

    proptest! {
        /// Every pixel lies in the centre region of exactly one window, and
        /// inside at least one window's extent; no window lies wholly outside.
        #[test]
        fn windows_cover_every_pixel(w in 1usize..700, win in 8usize..300, ov in 0.0f64..0.9) {
            let g = grid(w, 1, win, ov);
            let mut centre_count = vec![0u32; w];
            for c in 0..g.cols() {
                let win = g.window(c, 0);
                let clip = g.clip(&win);
                prop_assert!(clip.width > 0, "window {c} lies outside");
                let c0 = win.x + g.lead() as i64;
                for x in c0..c0 + g.stride() as i64 {
                    if (0..w as i64).contains(&x) { centre_count[x as usize] += 1; }
                }
            }
            prop_assert!(centre_count.iter().all(|&n| n == 1));
        }

        /// `cols_touching` is exactly the set of windows whose extent meets the range.
        #[test]
        fn touching_is_exact(w in 1usize..600, win in 8usize..200, ov in 0.0f64..0.9, a in 0usize..600, len in 1usize..300) {
            let g = grid(w, 1, win, ov);
            let a = a.min(w - 1);
            let b = (a + len).min(w);
            let r = g.cols_touching(a, b);
            for c in 0..g.cols() {
                let win = g.window(c, 0);
                let meets = win.x < b as i64 && win.x + win.size as i64 > a as i64;
                prop_assert_eq!(meets, r.contains(&c), "col {}", c);
            }
        }

        /// `centre` partitions the raster: every pixel is in exactly one
        /// window's centre rectangle, which lies inside the window.
        #[test]
        fn centres_partition_the_raster(w in 1usize..300, h in 1usize..300, win in 8usize..120, ov in 0.0f64..0.9) {
            let g = grid(w, h, win, ov);
            let mut count = vec![0u32; w * h];
            for r in 0..g.rows() { for c in 0..g.cols() {
                let wd = g.window(c, r);
                let k = g.centre(&wd);
                let clip = g.clip(&wd);
                prop_assert!(k.width == 0 || (k.x >= clip.x && k.x + k.width <= clip.x + clip.width));
                prop_assert!(k.height == 0 || (k.y >= clip.y && k.y + k.height <= clip.y + clip.height));
                for y in k.y..k.y + k.height { for x in k.x..k.x + k.width { count[y * w + x] += 1; } }
            }}
            prop_assert!(count.iter().all(|&n| n == 1));
        }

        #[test]
        fn reflect_stays_inside(i in -10_000i64..10_000, n in 1usize..50) {
            let r = reflect(i, n);
            prop_assert!(r < n);
            if (0..n as i64).contains(&i) { prop_assert_eq!(r, i as usize); }
        }

        #[test]
        fn source_rect_inside_raster(w in 1usize..400, h in 1usize..400, win in 8usize..128, ov in 0.0f64..0.9) {
            let g = grid(w, h, win, ov);
            for r in 0..g.rows() { for c in 0..g.cols() {
                let s = g.source_rect(&g.window(c, r));
                prop_assert!(s.x + s.width <= w && s.y + s.height <= h && s.area() > 0);
            }}
        }
    }

    #[test]
    fn small_raster_gets_one_window() {
        let g = grid(10, 7, 256, 0.25);
        assert_eq!((g.cols(), g.rows()), (1, 1));
        assert_eq!(
            g.clip(&g.window(0, 0)),
            Rect {
                x: 0,
                y: 0,
                width: 10,
                height: 7
            }
        );
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(WindowGrid::new(
            Size {
                width: 0,
                height: 5
            },
            64,
            0.1
        )
        .is_err());
        assert!(WindowGrid::new(
            Size {
                width: 5,
                height: 5
            },
            4,
            0.1
        )
        .is_err());
        assert!(WindowGrid::new(
            Size {
                width: 5,
                height: 5
            },
            64,
            0.95
        )
        .is_err());
        assert!(WindowGrid::new(
            Size {
                width: 5,
                height: 5
            },
            64,
            f64::NAN
        )
        .is_err());
    }
}
