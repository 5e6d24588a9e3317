//! The GDAL backend of [`WindowSource`]: windows from any raster GDAL
//! opens.
//!
//! A GDAL `Dataset` is `Send` but not `Sync`, so each reader thread owns a
//! [`GdalReader`] with its own handle and hands out owned buffers. Reads go
//! through GDAL's block cache (bounded by the configuration), so the
//! overlapping parts of neighbouring windows are decoded once.
//!
//! Validity follows GDAL's mask bands, which cover nodata values, alpha
//! bands and per-dataset masks alike. With per-band nodata values a pixel is
//! valid when any selected band is valid (rasterio's `dataset_mask`
//! convention); NaN is never valid.

use super::cut::{cut, CutSpec, Pixels};
use super::{FileStamp, Fingerprint, Normalize, WindowData, WindowSource};
use crate::error::{Error, Result};
use crate::infer::window::{Rect, Window, WindowGrid};
use crate::raster::{open_scene, SceneDataset, SceneInfo};
use gdal::errors::GdalError;
use gdal::Dataset;
use std::path::{Path, PathBuf};

enum MaskMode {
    AllValid,
    /// One mask shared by all bands (alpha or per-dataset mask).
    Shared,
    /// One mask per selected band (nodata values).
    PerBand,
}

/// A reader thread's own handle on a scene.
pub struct GdalReader {
    scene: SceneDataset,
    path: PathBuf,
    bands: Vec<usize>,
    spec: CutSpec,
    mask: MaskMode,
    mask_buf: Vec<u8>,
}

impl GdalReader {
    /// Opens its own handle on `path`, reading the 1-based `bands`.
    /// Pixels outside `aoi` are marked invalid (they still feed the network
    /// as context).
    pub fn open(
        path: &Path,
        bands: &[usize],
        norm: Normalize,
        grid: WindowGrid,
        aoi: Option<std::sync::Arc<crate::scale::aoi::Aoi>>,
    ) -> Result<GdalReader> {
        let scene = open_scene(path)?;
        let ds = &scene.ds;
        let mut per_dataset = false;
        let mut all_valid = true;
        for &b in bands {
            let band = ds
                .rasterband(b)
                .map_err(|e| Error::gdal_file(path, format!("no band {b}"), e))?;
            let f = band.mask_flags().map_err(Error::on(path))?;
            if !f.is_all_valid() {
                all_valid = false;
            }
            if f.is_per_dataset() || f.is_alpha() {
                per_dataset = true;
            }
        }
        let mask = if all_valid {
            MaskMode::AllValid
        } else if per_dataset {
            MaskMode::Shared
        } else {
            MaskMode::PerBand
        };
        Ok(GdalReader {
            scene,
            path: path.to_path_buf(),
            bands: bands.to_vec(),
            spec: CutSpec { grid, norm, aoi },
            mask,
            mask_buf: Vec::new(),
        })
    }

    /// Decodes `rect` (inside the raster): every selected band as f32 and
    /// the validity its masks give.
    fn decode_rect(&mut self, rect: &Rect) -> Result<Pixels> {
        let npx = rect.area();
        let mut mask = Vec::new();
        match self.mask {
            MaskMode::AllValid => mask.resize(npx, 1),
            MaskMode::Shared => {
                let b = self.bands[0];
                self.read_mask(b, rect)?;
                mask.extend(self.mask_buf.iter().map(|&m| (m != 0) as u8));
            }
            MaskMode::PerBand => {
                mask.resize(npx, 0);
                for bi in 0..self.bands.len() {
                    let b = self.bands[bi];
                    self.read_mask(b, rect)?;
                    for (a, &m) in mask.iter_mut().zip(&self.mask_buf) {
                        *a |= (m != 0) as u8;
                    }
                }
            }
        }
        let nb = self.bands.len();
        let mut values = vec![0f32; nb * npx];
        for bi in 0..nb {
            let b = self.bands[bi];
            self.read_band(b, rect, &mut values[bi * npx..(bi + 1) * npx])?;
        }
        Ok(Pixels {
            rect: *rect,
            values,
            mask,
        })
    }

    fn read_band(&mut self, b: usize, src: &Rect, out: &mut [f32]) -> Result<()> {
        let band = self.scene.ds.rasterband(b).map_err(Error::on(&self.path))?;
        let r = band.read_into_slice::<f32>(
            (src.x as isize, src.y as isize),
            (src.width, src.height),
            (src.width, src.height),
            out,
            None,
        );
        if let Err(e) = r {
            return Err(self.locate_bad_block(b, src, false, e));
        }
        Ok(())
    }

    fn read_mask(&mut self, b: usize, src: &Rect) -> Result<()> {
        self.mask_buf.resize(src.area(), 0);
        let band = self.scene.ds.rasterband(b).map_err(Error::on(&self.path))?;
        let mask = band
            .open_mask_band()
            .map_err(|e| Error::gdal_file(&self.path, format!("no mask for band {b}"), e))?;
        let r = mask.read_into_slice::<u8>(
            (src.x as isize, src.y as isize),
            (src.width, src.height),
            (src.width, src.height),
            &mut self.mask_buf,
            None,
        );
        if let Err(e) = r {
            return Err(self.locate_bad_block(b, src, true, e));
        }
        Ok(())
    }

    /// After a failed read, finds the first block of `src` that fails, so
    /// the error names it.
    fn locate_bad_block(&self, b: usize, src: &Rect, mask: bool, first: GdalError) -> Error {
        locate_bad_block(&self.scene.ds, &self.path, b, src, mask, first)
    }
}

/// After a failed read of `src` in band `b` (or its mask), finds the first
/// block of `src` that fails, so the error names it.
fn locate_bad_block(
    ds: &Dataset,
    path: &Path,
    b: usize,
    src: &Rect,
    mask: bool,
    first: GdalError,
) -> Error {
    let what = if mask { "mask of band" } else { "band" };
    let Ok(band) = ds.rasterband(b) else {
        return Error::gdal_file(path, format!("cannot read {what} {b}"), first);
    };
    let (bw, bh) = band.block_size();
    let (width, height) = ds.raster_size();
    let mut scratch = Vec::new();
    for by in src.y / bh..=(src.y + src.height - 1) / bh {
        for bx in src.x / bw..=(src.x + src.width - 1) / bw {
            let x = bx * bw;
            let y = by * bh;
            let w = bw.min(width - x);
            let h = bh.min(height - y);
            scratch.resize(w * h, 0f32);
            if let Err(e) = band.read_into_slice::<f32>(
                (x as isize, y as isize),
                (w, h),
                (w, h),
                &mut scratch,
                None,
            ) {
                return Error::gdal_file(
                    path,
                    format!(
                        "corrupt or unreadable data in {what} {b}, block (col {bx}, row {by}) at pixel ({x}, {y})"
                    ),
                    e,
                );
            }
        }
    }
    Error::gdal_file(
        path,
        format!(
            "cannot read {what} {b} in pixels ({}, {}) to ({}, {})",
            src.x,
            src.y,
            src.x + src.width,
            src.y + src.height,
        ),
        first,
    )
}

impl WindowSource for GdalReader {
    fn probe(&self) -> Result<SceneInfo> {
        let mut info = SceneInfo::of(&self.scene.ds, &self.path)?;
        info.palette = self.scene.palette;
        Ok(info)
    }

    fn read_window(&mut self, w: &Window) -> Result<WindowData> {
        let px = self.decode_rect(&self.spec.grid.source_rect(w))?;
        Ok(cut(&self.spec, w, &[&px]))
    }

    fn decode(&mut self, rect: &Rect) -> Result<Pixels> {
        self.decode_rect(rect)
    }

    fn cut(&self, w: &Window, cells: &[&Pixels]) -> WindowData {
        cut(&self.spec, w, cells)
    }

    fn fingerprint(&mut self) -> Result<Fingerprint> {
        fingerprint(&self.scene, &self.path)
    }
}

/// Sample regions per side for [`fingerprint`]: 4 x 4 regions of at most
/// 64 x 64 pixels, spread evenly over the raster.
const SAMPLES: usize = 4;
const SAMPLE_PX: usize = 64;

/// The files GDAL reads `ds` from (GDALGetFileList: for a VRT, the VRT and
/// its sources) with their sizes and times, and an FNV-1a hash of 16
/// regions of every band read as f64.
pub fn fingerprint(scene: &SceneDataset, path: &Path) -> Result<Fingerprint> {
    let ds = &scene.ds;
    let mut files = Vec::new();
    for name in crate::raster::file_list(scene.source()) {
        // names GDAL resolves itself (/vsis3/...) have no local stamp
        if let Ok(m) = std::fs::metadata(&name) {
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            files.push(FileStamp {
                path: name.display().to_string(),
                size: m.len(),
                mtime_ns,
            });
        }
    }
    let (w, h) = ds.raster_size();
    let (sw, sh) = (SAMPLE_PX.min(w), SAMPLE_PX.min(h));
    let at = |k: usize, n: usize, s: usize| {
        if SAMPLES > 1 {
            k * (n - s) / (SAMPLES - 1)
        } else {
            0
        }
    };
    let mut hash = crate::hash::Fnv1a::new();
    let mut buf = vec![0f64; sw * sh];
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).map_err(Error::on(path))?;
        for j in 0..SAMPLES {
            for i in 0..SAMPLES {
                let (x, y) = (at(i, w, sw), at(j, h, sh));
                band.read_into_slice::<f64>(
                    (x as isize, y as isize),
                    (sw, sh),
                    (sw, sh),
                    &mut buf,
                    None,
                )
                .map_err(|e| {
                    let rect = Rect {
                        x,
                        y,
                        width: sw,
                        height: sh,
                    };
                    locate_bad_block(ds, path, b, &rect, false, e)
                })?;
                for v in &buf {
                    hash.update(&v.to_bits().to_le_bytes());
                }
            }
        }
    }
    Ok(Fingerprint {
        files,
        pixels: format!("{:016x}", hash.finish()),
    })
}
