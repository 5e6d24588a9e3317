//! `rstile eval --submission DIR`: the ISPRS benchmark's submission.
//!
//! Each test area (by default the 17 of [`super::ISPRS_TEST`]) is mapped
//! through the streaming infer pipeline from its image and DSM alone (the
//! test areas' reference is not needed), then written as the benchmark
//! expects it: `top_mosaic_09cm_areaN_class.tif`, an RGB TIFF in the ISPRS
//! colours ([`super::source::ISPRS_COLOURS`]), the size of the tile,
//! georeferenced as the tile. `submission.zip` holds them all.
//!
//! An area that cannot be mapped (a missing file, say) is named and
//! skipped, the others go on; the zip is then not written, since it would
//! look complete while lacking an area. Intermediate rasters live in a
//! hidden `.rstile-work` folder inside `DIR`, removed at the end.

use super::eval::{check_model, map_features, write_features};
use super::source::{encode_rgb, official_features, official_paths};
use super::{Layout, ISPRS_TEST};
use crate::error::{Error, Result};
use crate::model::Model;
use gdal::raster::Buffer;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What [`write_submission`] does.
#[derive(Debug, Clone)]
pub struct SubmissionOptions {
    pub model: PathBuf,
    /// The ISPRS archive (`top/`, `dsm/`).
    pub data: PathBuf,
    /// Output folder.
    pub dir: PathBuf,
    pub areas: Vec<u16>,
    pub ground_radius: usize,
    pub batch: usize,
}

impl SubmissionOptions {
    /// The benchmark's 17 test areas.
    pub fn new(
        model: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        dir: impl Into<PathBuf>,
    ) -> Self {
        SubmissionOptions {
            model: model.into(),
            data: data.into(),
            dir: dir.into(),
            areas: ISPRS_TEST.to_vec(),
            ground_radius: super::DEFAULT_GROUND_RADIUS,
            batch: 4,
        }
    }
}

/// What [`write_submission`] wrote.
#[derive(Debug)]
pub struct SubmissionSummary {
    /// The colour-coded maps written, by area.
    pub files: Vec<(u16, PathBuf)>,
    /// The areas that failed, with their error.
    pub failed: Vec<(u16, Error)>,
    /// `DIR/submission.zip`, written when no area failed.
    pub zip: Option<PathBuf>,
}

/// The benchmark's file name for area `n`'s map.
pub fn file_name(n: u16) -> String {
    format!("top_mosaic_09cm_area{n}_class.tif")
}

/// Writes the submission; see the module documentation. `on_area(n, result)`
/// is called after each area. Errors that concern every area (the model,
/// the archive's layout, an output folder that cannot be written) end the
/// run before any area is mapped.
pub fn write_submission(
    o: &SubmissionOptions,
    on_area: &dyn Fn(u16, std::result::Result<&Path, &Error>),
) -> Result<SubmissionSummary> {
    let opened = Model::open(&o.model, &candle_core::Device::Cpu, &Default::default())?;
    let meta = opened.meta.clone();
    check_model(&o.model, &meta)?;
    if o.areas.is_empty() {
        return Err(Error::Config("no area to map".into()));
    }
    if Layout::detect(&o.data)? != Layout::Official {
        return Err(Error::file(
            &o.data,
            "a submission maps the ISPRS archive's test areas (top/, dsm/); this folder holds the course's HDF5 files",
        ));
    }
    let work = o.dir.join(".rstile-work");
    std::fs::create_dir_all(&work)
        .map_err(|e| Error::file(&o.dir, format!("cannot create the submission folder: {e}")))?;
    let result = map_areas(o, &meta, Some(opened), &work, on_area);
    let _ = std::fs::remove_dir_all(&work);
    let (files, failed) = result?;
    let zip = o.dir.join("submission.zip");
    let zip = if failed.is_empty() {
        write_zip(&zip, &files)?;
        Some(zip)
    } else {
        // one from an earlier run would no longer match the folder
        let _ = std::fs::remove_file(&zip);
        None
    };
    Ok(SubmissionSummary { files, failed, zip })
}

type Mapped = (Vec<(u16, PathBuf)>, Vec<(u16, Error)>);

fn map_areas(
    o: &SubmissionOptions,
    meta: &crate::model::ModelMeta,
    opened: Option<Model>,
    work: &Path,
    on_area: &dyn Fn(u16, std::result::Result<&Path, &Error>),
) -> Result<Mapped> {
    let mut opened = opened;
    let (mut files, mut failed) = (Vec::new(), Vec::new());
    for &n in &o.areas {
        let out = o.dir.join(file_name(n));
        let r = (|| -> Result<()> {
            let (w, h, features) = official_features(&o.data, n, o.ground_radius)?;
            let top = official_paths(&o.data, n)[0].clone();
            let feat = work.join(format!("features_area{n}.tif"));
            write_features(&feat, (w, h), &features, Some(&top))?;
            drop(features);
            let map = work.join(format!("map_area{n}.tif"));
            map_features(&o.model, meta, &mut opened, &feat, &map, o.batch)?;
            let _ = std::fs::remove_file(&feat);
            let (mw, mh, ids) = crate::raster::read_u8_band(&map)?;
            if (mw, mh) != (w, h) {
                return Err(Error::file(
                    &map,
                    format!("the map is {mw}x{mh}, its tile {w}x{h}"),
                ));
            }
            write_colour(&out, (w, h), &ids, &top)
        })();
        match r {
            Ok(()) => {
                on_area(n, Ok(&out));
                files.push((n, out));
            }
            Err(e) => {
                on_area(n, Err(&e));
                failed.push((n, e));
            }
        }
    }
    Ok((files, failed))
}

/// Writes class ids as an RGB TIFF in the ISPRS colours (black for an id
/// without a colour), georeferenced as `georef`, through a hidden
/// `.partial` file renamed into place.
fn write_colour(path: &Path, (w, h): (usize, usize), ids: &[u8], georef: &Path) -> Result<()> {
    let tmp = crate::raster::sibling(path, ".", ".partial");
    let fail = |e: gdal::errors::GdalError| Error::gdal_file(path, "cannot write", e);
    let result = (|| -> Result<()> {
        let opts = gdal::cpl::CslStringList::new();
        let mut ds = crate::raster::create::<u8>("GTiff", &tmp, (w, h), 3, &opts).map_err(fail)?;
        let top = crate::raster::open_raster(georef)?;
        if let Ok(gt) = top.geo_transform() {
            ds.set_geo_transform(&gt).map_err(fail)?;
        }
        if let Ok(srs) = top.spatial_ref() {
            ds.set_spatial_ref(&srs).map_err(fail)?;
        }
        for (c, plane) in encode_rgb(ids, w, h, false).into_iter().enumerate() {
            let mut band = ds.rasterband(c + 1).map_err(fail)?;
            band.set_color_interpretation(match c {
                0 => gdal::raster::ColorInterpretation::RedBand,
                1 => gdal::raster::ColorInterpretation::GreenBand,
                _ => gdal::raster::ColorInterpretation::BlueBand,
            })
            .map_err(fail)?;
            band.write((0, 0), (w, h), &mut Buffer::new((w, h), plane))
                .map_err(fail)?;
        }
        ds.close().map_err(fail)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::file(path, format!("cannot move into place: {e}")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Zips `files` (deflated, at the archive's root) into `zip`.
fn write_zip(zip: &Path, files: &[(u16, PathBuf)]) -> Result<()> {
    let tmp = crate::raster::sibling(zip, ".", ".partial");
    let fail = |e: &dyn std::fmt::Display| Error::file(zip, format!("cannot write: {e}"));
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(|e| fail(&e))?;
        let mut z = zip::ZipWriter::new(std::io::BufWriter::new(f));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (_, p) in files {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            z.start_file(name, opts).map_err(|e| fail(&e))?;
            let bytes = std::fs::read(p).map_err(|e| Error::file(p, e))?;
            z.write_all(&bytes).map_err(|e| fail(&e))?;
        }
        let mut w = z.finish().map_err(|e| fail(&e))?;
        w.flush().map_err(|e| fail(&e))?;
        drop(w);
        std::fs::rename(&tmp, zip).map_err(|e| fail(&e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
