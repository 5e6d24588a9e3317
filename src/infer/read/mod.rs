//! Reading windows for the network: the input-source seam.
//!
//! A [`WindowSource`] is one thread's handle on a scene: it describes the
//! scene ([`WindowSource::probe`]) and reads the windows of the grid it was
//! opened with, reflect-padded at the raster's edges, normalised, with the
//! validity of every pixel ([`WindowSource::read_window`]). Training's scene
//! source and evaluation read windows so; the pipeline's reader threads
//! decode the raster once, in block-aligned cells ([`WindowSource::decode`]),
//! and cut the overlapping windows from them in memory
//! ([`WindowSource::cut`], the pure code of [`cut`]). One folder per backend
//! holds its implementation, today [`gdal`] ([`GdalReader`]: any raster GDAL
//! opens).
//!
//! Validity follows the backend's masks. Invalid pixels enter the network
//! as the band mean (0 after normalisation) and leave the map as nodata.

pub mod compose;
pub mod cut;
pub mod gdal;

use crate::error::Result;
use crate::infer::window::{Rect, Window};

pub use self::cut::{CellLattice, CutSpec, Pixels};
pub use self::gdal::GdalReader;
pub use crate::raster::SceneInfo;

/// Per-band normalisation `(v - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// One window's data, ready for the network.
#[derive(Debug, Clone)]
pub struct WindowData {
    /// Normalised input, `[bands][size][size]`.
    pub input: Vec<f32>,
    /// Validity, `[size][size]`, 1 = valid.
    pub valid: Vec<u8>,
    /// Whether any pixel inside the raster is valid.
    pub any_valid: bool,
    /// The pixels that the scene's masks call valid but whose value is not
    /// a finite number once read as f32 and normalised (NaN, infinite, or
    /// of a magnitude beyond f32, like an f64 1e300), as a bit set (bit
    /// `j * size + i`, `size² / 64` words): they are invalid like nodata,
    /// and counted so that the run can say so. Empty (no words) when there
    /// are none, as for almost every window.
    pub non_finite: Vec<u64>,
}

/// One thread's handle on a scene, reading windows for the model.
///
/// A source is opened (by its backend) for a window grid, a band selection,
/// a normalisation and an optional area of interest; it is `Send` so that
/// each reader thread can own one, not `Sync`.
pub trait WindowSource: Send {
    /// What the scene is: size, bands and their types, georeferencing,
    /// block size, whether it has nodata.
    fn probe(&self) -> Result<SceneInfo>;

    /// Reads window `w`: its pixels outside the raster reflected from
    /// inside, normalised, invalid pixels (nodata, NaN, outside the area of
    /// interest, values that are not finite) set to 0 and marked in
    /// [`WindowData::valid`]; those not finite are listed in
    /// [`WindowData::non_finite`].
    fn read_window(&mut self, w: &Window) -> Result<WindowData>;

    /// Decodes `rect` (inside the raster), for windows to be cut from it
    /// with [`WindowSource::cut`]: the pipeline decodes each pixel once this
    /// way, in the cells of a [`CellLattice`].
    fn decode(&mut self, rect: &Rect) -> Result<Pixels>;

    /// Cuts window `w` from decoded `cells` that cover its source
    /// rectangle: the same data as [`WindowSource::read_window`], to the
    /// bit.
    fn cut(&self, w: &Window, cells: &[&Pixels]) -> WindowData;

    /// What identifies the scene's content, so that `--resume` never
    /// splices two scenes: the files behind it and a hash of sampled pixels.
    fn fingerprint(&mut self) -> Result<Fingerprint>;
}

/// One file behind a scene: its path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub path: String,
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

/// A scene's content fingerprint: the files it is read from (for a VRT,
/// the VRT and its sources) and a hash of pixels sampled over the whole
/// raster, all bands, which also covers sources that are no local files
/// (`/vsis3/`, `/vsicurl/`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub files: Vec<FileStamp>,
    /// FNV-1a of the sampled pixels, hex.
    pub pixels: String,
}

impl Fingerprint {
    /// How `now` differs from `self`, in words; `None` when they agree.
    pub fn differs(&self, now: &Fingerprint) -> Option<String> {
        for old in &self.files {
            match now.files.iter().find(|f| f.path == old.path) {
                None => return Some(format!("{} is no longer part of it", old.path)),
                Some(f) if f.size != old.size => {
                    return Some(format!(
                        "{} changed size ({} bytes, now {})",
                        old.path, old.size, f.size
                    ))
                }
                Some(f) if f.mtime_ns != old.mtime_ns => {
                    return Some(format!("{} was modified since", old.path))
                }
                Some(_) => {}
            }
        }
        if let Some(f) = now
            .files
            .iter()
            .find(|f| !self.files.iter().any(|o| o.path == f.path))
        {
            return Some(format!("{} was added to it", f.path));
        }
        (self.pixels != now.pixels).then(|| "its pixels differ".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::window::Rect;
    use crate::infer::window::{reflect, Size, WindowGrid};
    use ::gdal::cpl::CslStringList;

    /// Writes an f32 GeoTIFF of `bands` bands with nodata -1 whose band `b`
    /// (1-based) holds `value(b, i)` at pixel `i` (row-major).
    fn f32_scene(
        path: &std::path::Path,
        (w, h): (usize, usize),
        bands: usize,
        opts: &CslStringList,
        value: impl Fn(usize, usize) -> f32,
    ) {
        let ds = crate::raster::create::<f32>("GTiff", path, (w, h), bands, opts).unwrap();
        for b in 1..=bands {
            let mut band = ds.rasterband(b).unwrap();
            band.set_no_data_value(Some(-1.0)).unwrap();
            let data = (0..w * h).map(|i| value(b, i)).collect();
            let mut buf = ::gdal::raster::Buffer::new((w, h), data);
            band.write((0, 0), (w, h), &mut buf).unwrap();
        }
    }

    /// A 2-band f32 scene with per-band nodata -1 at (3, 2) and a NaN in
    /// band 2 at (5, 5), read through the trait at the top-left corner.
    #[test]
    fn gdal_source_probes_reflects_normalises_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tif");
        let (w, h) = (20usize, 12usize);
        let v = |x: usize, y: usize| (x + 100 * y) as f32;
        {
            f32_scene(&path, (w, h), 2, &CslStringList::new(), |b, i| {
                if i == 2 * w + 3 {
                    -1.0
                } else if b == 2 && i == 5 * w + 5 {
                    f32::NAN
                } else if b == 1 {
                    v(i % w, i / w)
                } else {
                    1.0
                }
            });
        }
        let size = Size {
            width: w,
            height: h,
        };
        let grid = WindowGrid::new(size, 8, 0.25).unwrap();
        let norm = Normalize {
            mean: vec![10.0, 0.0],
            std: vec![2.0, 1.0],
        };
        let mut src: Box<dyn WindowSource> =
            Box::new(GdalReader::open(&path, &[1, 2], norm, grid, None).unwrap());
        let info = src.probe().unwrap();
        assert_eq!(
            (info.size.width, info.size.height, info.band_count),
            (w, h, 2)
        );
        assert!(info.has_nodata);
        let win = Window {
            col: 0,
            row: 0,
            x: -2,
            y: -2,
            size: 8,
        };
        let d = src.read_window(&win).unwrap();
        assert!(d.any_valid);
        for j in 0..8 {
            for i in 0..8 {
                let (x, y) = (reflect(i as i64 - 2, w), reflect(j as i64 - 2, h));
                let k = j * 8 + i;
                let bad = (x, y) == (3, 2) || (x, y) == (5, 5);
                assert_eq!(d.valid[k], !bad as u8, "valid at ({x}, {y})");
                let want = if bad { 0.0 } else { (v(x, y) - 10.0) / 2.0 };
                assert_eq!(d.input[k], want, "band 1 at ({x}, {y})");
                let want2 = if bad { 0.0 } else { 1.0 };
                assert_eq!(d.input[64 + k], want2, "band 2 at ({x}, {y})");
            }
        }
    }

    /// Through GDAL: every window cut from decoded lattice cells equals
    /// the window read on its own, on a tiled scene with nodata and NaN.
    #[test]
    fn windows_cut_from_decoded_cells_equal_windows_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tif");
        let (w, h) = (150usize, 90usize);
        {
            let mut opts = CslStringList::new();
            opts.set_name_value("TILED", "YES").unwrap();
            opts.set_name_value("BLOCKXSIZE", "32").unwrap();
            opts.set_name_value("BLOCKYSIZE", "16").unwrap();
            f32_scene(&path, (w, h), 3, &opts, |b, i| {
                match (i * 13 + b * 7) % 101 {
                    0 => -1.0,
                    1 if b == 2 => f32::NAN,
                    v => (v * b) as f32,
                }
            });
        }
        let size = Size {
            width: w,
            height: h,
        };
        let all = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        for (win, ov) in [(32usize, 0.25f64), (64, 0.5), (200, 0.25)] {
            let grid = WindowGrid::new(size, win, ov).unwrap();
            let norm = Normalize {
                mean: vec![5.0, 0.0, 1.0],
                std: vec![2.0, 1.0, 3.0],
            };
            let mut src = GdalReader::open(&path, &[3, 1, 2], norm, grid, None).unwrap();
            let lattice = CellLattice {
                rows: 32,
                cols: 64,
                ..CellLattice::new((32, 16), all)
            };
            let cells: std::collections::BTreeMap<_, _> = (0..h.div_ceil(32))
                .flat_map(|r| (0..w.div_ceil(64)).map(move |c| (r, c)))
                .map(|k| (k, src.decode(&lattice.rect(k)).unwrap()))
                .collect();
            for r in 0..grid.rows() {
                for c in 0..grid.cols() {
                    let wdw = grid.window(c, r);
                    let alone = src.read_window(&wdw).unwrap();
                    let covering: Vec<&Pixels> = lattice
                        .cells_of(&grid.source_rect(&wdw))
                        .map(|k| &cells[&k])
                        .collect();
                    let cut = src.cut(&wdw, &covering);
                    let bits =
                        |d: &WindowData| d.input.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&alone), bits(&cut), "window ({c}, {r}) of {win}");
                    assert_eq!(alone.valid, cut.valid);
                    assert_eq!(alone.non_finite, cut.non_finite);
                    assert_eq!(alone.any_valid, cut.any_valid);
                    assert!(!cut.non_finite.is_empty() || win == 32);
                }
            }
        }
    }
}
