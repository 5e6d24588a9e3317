//! Generated areas in the layout of the ISPRS Vaihingen archive, at the
//! official tile sizes ([`crate::vaihingen::OFFICIAL_SIZES`]):
//! `rstile synth --isprs DIR`.
//!
//! For area `N` (seed `seed + N`):
//!
//! * `top/top_mosaic_09cm_areaN.tif`: IR-R-G, Byte;
//! * `dsm/dsm_09cm_matching_areaN.tif`: Float32 heights;
//! * `gts_for_participants/top_mosaic_09cm_areaN.tif`: the reference,
//!   RGB-coded in the ISPRS colours;
//! * `gts_eroded_for_participants/top_mosaic_09cm_areaN_noBoundary.tif`:
//!   the same, black where a pixel's 4-neighbourhood holds another class
//!   (the benchmark erodes with a wider disc; the role is the same).
//!
//! The references of all areas are written, the 17 test areas included: the
//! layout is then that of the participants' archive with the benchmark's
//! complete reference unzipped into the same two folders, which is what
//! `--split isprs` and `rstile eval` on the test areas read.

use super::{synth, SynthConfig};
use crate::error::{Error, Result};
use crate::vaihingen::source::{encode_rgb, official_paths};
use crate::vaihingen::{official_size, OFFICIAL_SIZES};
use gdal::raster::Buffer;
use std::path::{Path, PathBuf};

/// One area written by [`isprs_layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsprsArea {
    pub area: u16,
    pub width: usize,
    pub height: usize,
}

/// Every official area number.
pub fn all_areas() -> Vec<u16> {
    OFFICIAL_SIZES.iter().map(|s| s.0).collect()
}

/// Writes `areas` (official numbers) under `dir` in the archive's layout;
/// see the module documentation. Existing files are replaced only with
/// `overwrite`. `progress(done, total)` is called after each area.
pub fn isprs_layout(
    dir: &Path,
    areas: &[u16],
    seed: u64,
    overwrite: bool,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<IsprsArea>> {
    let mut sizes = Vec::with_capacity(areas.len());
    for &n in areas {
        let (w, h) = official_size(n).ok_or_else(|| {
            Error::Config(format!(
                "area {n} is not a Vaihingen area; the areas are {:?}",
                all_areas()
            ))
        })?;
        sizes.push(IsprsArea {
            area: n,
            width: w,
            height: h,
        });
    }
    create_folders(dir)?;
    for a in &sizes {
        for p in official_paths(dir, a.area) {
            crate::output::check(&p, overwrite, &crate::output::Inputs::new())?;
        }
    }
    for (i, a) in sizes.iter().enumerate() {
        write_area(dir, a, seed)?;
        progress(i + 1, sizes.len());
    }
    Ok(sizes)
}

fn create_folders(dir: &Path) -> Result<()> {
    for d in [
        "top",
        "dsm",
        "gts_for_participants",
        "gts_eroded_for_participants",
    ] {
        let d = dir.join(d);
        std::fs::create_dir_all(&d)
            .map_err(|e| Error::file(&d, format!("cannot create the directory: {e}")))?;
    }
    Ok(())
}

/// Writes one area of any size in the layout (replacing its files); the
/// areas of [`isprs_layout`] are these at their official sizes.
pub fn write_area(dir: &Path, a: &IsprsArea, seed: u64) -> Result<()> {
    create_folders(dir)?;
    let n = a.area;
    let tmp = dir.join(format!(".synth_area{n}.partial"));
    let cfg = SynthConfig {
        width: a.width,
        height: a.height,
        seed: seed.wrapping_add(n as u64),
        // the areas side by side, 400 m apart, in UTM 32N
        origin_x: 496_000.0 + 400.0 * n as f64,
        ..Default::default()
    };
    let result = (|| -> Result<()> {
        let out = synth(&cfg, &tmp, true, &|_, _| {})?;
        let [top, dsm, gt, eroded] = official_paths(dir, n);
        let (w, h, ids) = crate::raster::read_u8_band(&out.gt)?;
        write_reference(&gt, &cfg, w, h, &ids, false)?;
        write_reference(&eroded, &cfg, w, h, &ids, true)?;
        rename(&out.image, &top)?;
        rename(&out.dsm, &dsm)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::file(to, format!("cannot move into place: {e}")))
}

fn write_reference(
    path: &Path,
    cfg: &SynthConfig,
    w: usize,
    h: usize,
    ids: &[u8],
    eroded: bool,
) -> Result<()> {
    let tmp: PathBuf = crate::raster::sibling(path, ".", ".partial");
    let fail = |e: gdal::errors::GdalError| Error::gdal_file(path, "cannot write", e);
    let result = (|| -> Result<()> {
        let mut opts = gdal::cpl::CslStringList::new();
        for (k, v) in [("TILED", "YES"), ("COMPRESS", "DEFLATE")] {
            opts.set_name_value(k, v)?;
        }
        let mut ds = crate::raster::create::<u8>("GTiff", &tmp, (w, h), 3, &opts).map_err(fail)?;
        ds.set_geo_transform(&cfg.geo_transform()).map_err(fail)?;
        let srs = gdal::spatial_ref::SpatialRef::from_epsg(cfg.epsg).map_err(fail)?;
        ds.set_spatial_ref(&srs).map_err(fail)?;
        for (b, plane) in encode_rgb(ids, w, h, eroded).into_iter().enumerate() {
            let mut band = ds.rasterband(b + 1).map_err(fail)?;
            let mut buf = Buffer::new((w, h), plane);
            band.write((0, 0), (w, h), &mut buf).map_err(fail)?;
        }
        ds.close().map_err(fail)?;
        rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_area_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let e = isprs_layout(dir.path(), &[1, 9], 0, false, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("area 9 is not a Vaihingen area"), "{e}");
        assert!(!dir.path().join("top").exists());
    }
}
