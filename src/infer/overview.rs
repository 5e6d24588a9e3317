//! The map's overviews, built from its bands as they are written, so that
//! finishing the map needs no second read of it.
//!
//! GDAL 3.6's `GDALBuildOverviews` with `NEAREST` on a GeoTIFF of
//! power-of-two factors computes each level from the one before it (the
//! first from the map): overview pixel `i` of a level `m` px wide whose
//! source is `n` px wide is source pixel `(int)(0.5 + i * n / m)`, in
//! double precision, and a level of factor `f` is `ceil(size / f)` px. So
//! every overview pixel is one map pixel, found through the levels' chained
//! index maps; [`OverviewBuilder`] keeps those maps, copies the pixels of
//! each band that arrives into the overview tiles they fall in, and hands
//! out a tile once all its pixels are there, so that each overview tile is
//! written whole and once (a partial tile would make GDAL read, decompress
//! and rewrite it). The test `tests/overviews.rs` checks the result pixel
//! for pixel against `gdaladdo -r nearest` on a copy of the map.
//!
//! Bands come in any order and shape (the writer's column chunks top to
//! bottom, a resume's copied rows, a merge's part rows); a tile that spans
//! two column chunks waits in memory for the second, which
//! [`OverviewBuilder::bytes_for`] bounds.

use crate::infer::window::{Rect, Size};
use std::collections::HashMap;

/// The overview tile size (the map's tile size).
const T: usize = crate::infer::write::TILE;

/// An overview tile being filled.
struct Tile {
    data: Vec<u8>,
    filled: usize,
}

/// One overview level.
struct Level {
    width: usize,
    height: usize,
    /// Overview column → map column (strictly increasing).
    xs: Vec<usize>,
    /// Overview row → map row (strictly increasing).
    ys: Vec<usize>,
    /// (tile column, tile row) → the tile, while partly filled.
    open: HashMap<(usize, usize), Tile>,
    /// Tiles handed out.
    done: usize,
}

impl Level {
    fn tiles(&self) -> usize {
        self.width.div_ceil(T) * self.height.div_ceil(T)
    }

    /// The extent of tile (`tc`, `tr`).
    fn tile_rect(&self, tc: usize, tr: usize) -> Rect {
        Rect {
            x: tc * T,
            y: tr * T,
            width: T.min(self.width - tc * T),
            height: T.min(self.height - tr * T),
        }
    }
}

/// GDAL's nearest pick from `n` source pixels onto `m`: for each
/// destination pixel, its source pixel.
fn gdal_nearest(n: usize, m: usize) -> Vec<usize> {
    let ratio = n as f64 / m as f64;
    (0..m)
        .map(|i| ((0.5 + i as f64 * ratio) as usize).min(n - 1))
        .collect()
}

/// Builds a map's overviews (GDAL's `NEAREST`, see the module
/// documentation) from its bands.
pub struct OverviewBuilder {
    levels: Vec<Level>,
    /// Bytes held by open tiles now, and at most so far.
    bytes: usize,
    peak: usize,
}

/// A finished overview tile: write `data` (row-major) at `rect` of overview
/// `level` (0: the first factor).
pub struct OverviewTile<'a> {
    pub level: usize,
    pub rect: Rect,
    pub data: &'a [u8],
}

impl OverviewBuilder {
    /// The overviews of a `size` map with `factors` (increasing powers of
    /// two, as [`crate::infer::write::overview_factors`] gives).
    pub fn new(size: Size, factors: &[i32]) -> OverviewBuilder {
        let mut levels: Vec<Level> = Vec::with_capacity(factors.len());
        for &f in factors {
            let f = f.max(1) as usize;
            let (width, height) = (size.width.div_ceil(f), size.height.div_ceil(f));
            let (xs, ys) = match levels.last() {
                None => (
                    gdal_nearest(size.width, width),
                    gdal_nearest(size.height, height),
                ),
                Some(prev) => (
                    gdal_nearest(prev.width, width)
                        .into_iter()
                        .map(|i| prev.xs[i])
                        .collect(),
                    gdal_nearest(prev.height, height)
                        .into_iter()
                        .map(|i| prev.ys[i])
                        .collect(),
                ),
            };
            levels.push(Level {
                width,
                height,
                xs,
                ys,
                open: HashMap::new(),
                done: 0,
            });
        }
        OverviewBuilder {
            levels,
            bytes: 0,
            peak: 0,
        }
    }

    /// Takes the map pixels `data` (row-major) of `rect` (map coordinates),
    /// calling `emit` with every overview tile that they complete.
    pub fn add<E>(
        &mut self,
        rect: Rect,
        data: &[u8],
        mut emit: impl FnMut(OverviewTile) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert_eq!(data.len(), rect.width * rect.height);
        let (x1, y1) = (rect.x + rect.width, rect.y + rect.height);
        for (li, level) in self.levels.iter_mut().enumerate() {
            let ox =
                level.xs.partition_point(|&x| x < rect.x)..level.xs.partition_point(|&x| x < x1);
            let oy =
                level.ys.partition_point(|&y| y < rect.y)..level.ys.partition_point(|&y| y < y1);
            if ox.is_empty() || oy.is_empty() {
                continue;
            }
            for tr in oy.start / T..=(oy.end - 1) / T {
                for tc in ox.start / T..=(ox.end - 1) / T {
                    let tile = level.tile_rect(tc, tr);
                    let (cx0, cx1) = (ox.start.max(tile.x), ox.end.min(tile.x + tile.width));
                    let (cy0, cy1) = (oy.start.max(tile.y), oy.end.min(tile.y + tile.height));
                    let area = tile.width * tile.height;
                    let t = level.open.entry((tc, tr)).or_insert_with(|| {
                        self.bytes += area;
                        self.peak = self.peak.max(self.bytes);
                        Tile {
                            data: vec![0; area],
                            filled: 0,
                        }
                    });
                    let cols = &level.xs[cx0..cx1];
                    for oyy in cy0..cy1 {
                        let src = &data[(level.ys[oyy] - rect.y) * rect.width..][..rect.width];
                        let dst = &mut t.data[(oyy - tile.y) * tile.width..][..tile.width];
                        for (d, &sx) in dst[cx0 - tile.x..cx1 - tile.x].iter_mut().zip(cols) {
                            *d = src[sx - rect.x];
                        }
                    }
                    t.filled += (cx1 - cx0) * (cy1 - cy0);
                    if t.filled >= area {
                        let t = level.open.remove(&(tc, tr)).expect("the open tile");
                        self.bytes -= area;
                        level.done += 1;
                        emit(OverviewTile {
                            level: li,
                            rect: tile,
                            data: &t.data,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether every tile of every level was handed out.
    pub fn complete(&self) -> bool {
        self.levels
            .iter()
            .all(|l| l.open.is_empty() && l.done == l.tiles())
    }

    /// The most bytes the open tiles held at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak
    }

    /// An upper bound of [`peak_bytes`](Self::peak_bytes) for a `size` map
    /// written in column chunks of `chunk` px, each top to bottom in bands
    /// of at most [`T`] rows (a run's bands, or a resume's copies). Per
    /// level of factor `f`: the tile row being filled across the chunk
    /// (`chunk / f` columns, and a tile at each end), and the tiles that
    /// span the chunk's borders, waiting for the next chunk (a column of
    /// tiles at each border, the whole level's height).
    pub fn bytes_for(size: Size, chunk: usize, factors: &[i32]) -> u64 {
        let chunk = chunk.min(size.width).max(1);
        factors
            .iter()
            .map(|&f| {
                let f = f.max(1) as usize;
                let h = size.height.div_ceil(f).next_multiple_of(T);
                let row = (chunk.div_ceil(f) + 2 * T) * T;
                (row + 2 * T * h) as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overviews built the slow way: each level from the one before,
    /// GDAL's pick on the whole level.
    fn reference(map: &[u8], size: Size, factors: &[i32]) -> Vec<(usize, usize, Vec<u8>)> {
        let mut out: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        let (mut w, mut h, mut prev) = (size.width, size.height, map.to_vec());
        for &f in factors {
            let (ow, oh) = (
                size.width.div_ceil(f as usize),
                size.height.div_ceil(f as usize),
            );
            let (xs, ys) = (gdal_nearest(w, ow), gdal_nearest(h, oh));
            let mut lvl = Vec::with_capacity(ow * oh);
            for &y in &ys {
                for &x in &xs {
                    lvl.push(prev[y * w + x]);
                }
            }
            out.push((ow, oh, lvl.clone()));
            (w, h, prev) = (ow, oh, lvl);
        }
        out
    }

    fn build(map: &[u8], size: Size, factors: &[i32], chunk: usize, band: usize) -> Vec<Vec<u8>> {
        let mut b = OverviewBuilder::new(size, factors);
        let mut levels: Vec<Vec<u8>> = b
            .levels
            .iter()
            .map(|l| vec![0; l.width * l.height])
            .collect();
        let widths: Vec<usize> = b.levels.iter().map(|l| l.width).collect();
        let mut written = vec![0usize; factors.len()];
        let mut x0 = 0;
        while x0 < size.width {
            let x1 = (x0 + chunk).min(size.width);
            let mut y0 = 0;
            while y0 < size.height {
                let y1 = (y0 + band).min(size.height);
                let rect = Rect {
                    x: x0,
                    y: y0,
                    width: x1 - x0,
                    height: y1 - y0,
                };
                let mut data = Vec::new();
                for y in y0..y1 {
                    data.extend_from_slice(&map[y * size.width + x0..y * size.width + x1]);
                }
                b.add(rect, &data, |t| -> Result<(), ()> {
                    let w = widths[t.level];
                    for r in 0..t.rect.height {
                        let row = &t.data[r * t.rect.width..][..t.rect.width];
                        levels[t.level][(t.rect.y + r) * w + t.rect.x..][..t.rect.width]
                            .copy_from_slice(row);
                    }
                    written[t.level] += t.rect.width * t.rect.height;
                    Ok(())
                })
                .unwrap();
                y0 = y1;
            }
            x0 = x1;
        }
        assert!(b.complete());
        assert!(b.peak_bytes() as u64 <= OverviewBuilder::bytes_for(size, chunk, factors));
        for (l, n) in written.iter().enumerate() {
            assert_eq!(*n, levels[l].len(), "every pixel of level {l} once");
        }
        levels
    }

    #[test]
    fn chunked_bands_give_the_whole_map_overviews() {
        for (w, h, chunk, band) in [
            (1001, 777, 512, 512),
            (2500, 1100, 1024, 512),
            (1537, 2049, 4096, 300),
            (3, 5, 512, 2),
            (4099, 1301, 1536, 512),
        ] {
            let size = Size {
                width: w,
                height: h,
            };
            let map: Vec<u8> = (0..w * h)
                .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                .collect();
            let factors = crate::infer::write::overview_factors(size);
            let got = build(&map, size, &factors, chunk, band);
            for (l, (ow, oh, want)) in reference(&map, size, &factors).into_iter().enumerate() {
                assert_eq!(got[l].len(), ow * oh);
                assert!(got[l] == want, "{w}x{h} chunk {chunk}: level {l} differs");
            }
        }
    }
}
