//! `rstile eval`: full-tile evaluation of a model on Vaihingen areas, as
//! the ISPRS leaderboard scores it.
//!
//! For each area the five features (NIR, R, G, nDSM, NDVI; raw units, the
//! model's own mean/std normalise them) are written to a 5-band Float32
//! GeoTIFF, which the streaming `rstile infer` pipeline maps
//! ([`crate::infer::infer`], window and overlap from the model, Hann
//! blending). The map is scored against the eroded reference by default
//! (boundary pixels ignored, as the benchmark does) or the full reference.
//! A map pixel without a class (nodata) counts as wrong.

use super::{load, Layout};
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::{self, InferOptions, InferPlan, NoProgress};
use crate::metrics::{Confusion, Report};
use crate::model::Model;
use crate::raster::{open_raster, SceneInfo};
use gdal::raster::{Buffer, RasterCreationOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What `eval` does.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub areas: Vec<u16>,
    /// Score against the full reference instead of the eroded one.
    pub full_reference: bool,
    pub out: PathBuf,
    pub ground_radius: usize,
    pub batch: usize,
    /// Keep the 5-band feature rasters in `out`.
    pub keep_features: bool,
}

impl EvalOptions {
    pub fn new(
        model: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        EvalOptions {
            model: model.into(),
            data: data.into(),
            areas: super::COURSE_VAL.to_vec(),
            full_reference: false,
            out: out.into(),
            ground_radius: super::DEFAULT_GROUND_RADIUS,
            batch: 4,
            keep_features: false,
        }
    }
}

/// The scores of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalSummary {
    pub model: PathBuf,
    /// "eroded" or "full".
    pub reference: String,
    pub areas: BTreeMap<u16, Report>,
    pub overall: Report,
    pub maps: Vec<PathBuf>,
    pub markdown: PathBuf,
    pub json: PathBuf,
}

/// Writes band-major 5-feature planes of `w x h` as a tiled Float32 GeoTIFF,
/// georeferenced as `georef` when given.
pub(crate) fn write_features(
    path: &Path,
    (w, h): (usize, usize),
    features: &[f32],
    georef: Option<&Path>,
) -> Result<()> {
    let fail = Error::on(path);
    let mut opts = RasterCreationOptions::new();
    for (k, v) in [
        ("TILED", "YES"),
        ("BLOCKXSIZE", "512"),
        ("BLOCKYSIZE", "512"),
        ("BIGTIFF", "IF_SAFER"),
    ] {
        opts.add_name_value(k, v)?;
    }
    let mut ds = crate::raster::create::<f32>("GTiff", path, (w, h), 5, &opts)
        .map_err(|e| Error::gdal_file(path, "cannot create", e))?;
    if let Some(src) = georef {
        let top = open_raster(src)?;
        if let Ok(gt) = top.geo_transform() {
            ds.set_geo_transform(&gt).map_err(&fail)?;
        }
        if let Ok(srs) = top.spatial_ref() {
            ds.set_spatial_ref(&srs).map_err(&fail)?;
        }
    }
    let npix = w * h;
    for c in 0..5 {
        let mut band = ds.rasterband(c + 1).map_err(&fail)?;
        let mut buf = Buffer::new((w, h), features[c * npix..(c + 1) * npix].to_vec());
        band.write((0, 0), (w, h), &mut buf).map_err(&fail)?;
    }
    Ok(())
}

/// Refuses a model that cannot map Vaihingen: 5 input bands, the ISPRS
/// classes.
pub(crate) fn check_model(path: &Path, meta: &crate::model::ModelMeta) -> Result<()> {
    let ids: Vec<u8> = meta.classes.classes.iter().map(|c| c.id).collect();
    if ids != [0, 1, 2, 3, 4, 5] {
        return Err(Error::file(
            path,
            format!("eval needs the ISPRS classes (ids 0..=5 in order); the model has ids {ids:?}"),
        ));
    }
    if meta.bands != 5 {
        return Err(Error::file(
            path,
            format!(
                "the model takes {} band(s); Vaihingen evaluation feeds 5 (NIR, R, G, nDSM, NDVI)",
                meta.bands
            ),
        ));
    }
    Ok(())
}

/// Maps the feature raster `feat` into `map` through the streaming infer
/// pipeline (window and overlap from the model); `model` is the opened
/// model, taken if present, else opened again.
pub(crate) fn map_features(
    model_path: &Path,
    meta: &crate::model::ModelMeta,
    model: &mut Option<Model>,
    feat: &Path,
    map: &Path,
    batch: usize,
) -> Result<()> {
    let opts = InferOptions {
        batch: batch.max(1),
        overwrite: true,
        ..Default::default()
    };
    let plan = InferPlan::resolve(
        SceneInfo::probe(feat)?,
        map.to_path_buf(),
        model_path,
        meta,
        &opts,
    )?;
    let model = match model.take() {
        Some(m) => m,
        None => Model::open(model_path, &candle_core::Device::Cpu, &Default::default())?,
    };
    infer::infer(&plan, model, Arc::new(AtomicBool::new(false)), &NoProgress)?;
    Ok(())
}

/// Runs the evaluation; writes the maps, `eval.md` and `eval.json` to `out`.
pub fn evaluate(o: &EvalOptions) -> Result<EvalSummary> {
    // rstile's own model or an ONNX graph (its facts from its metadata)
    let opened = Model::open(&o.model, &candle_core::Device::Cpu, &Default::default())?;
    let meta = opened.meta.clone();
    let mut opened = Some(opened);
    check_model(&o.model, &meta)?;
    let isprs = ClassTable::isprs();
    if o.areas.is_empty() {
        return Err(Error::Config("no area to evaluate".into()));
    }
    let layout = Layout::detect(&o.data)?;
    std::fs::create_dir_all(&o.out)
        .map_err(|e| Error::file(&o.out, format!("cannot create the output directory: {e}")))?;
    let mut notes = Vec::new();
    let mut per_area = BTreeMap::new();
    let mut total = Confusion::new(6);
    let mut maps = Vec::new();
    for &n in &o.areas {
        let area = load(&layout, &o.data, n, o.ground_radius, &mut notes)?;
        let feat = o.out.join(format!("features_area{n}.tif"));
        let georef = match layout {
            Layout::Official => Some(super::source::official_paths(&o.data, n)[0].clone()),
            Layout::CourseHdf5 => None,
        };
        write_features(
            &feat,
            (area.width, area.height),
            &area.features,
            georef.as_deref(),
        )?;
        let map = o.out.join(format!("map_area{n}.tif"));
        map_features(&o.model, &meta, &mut opened, &feat, &map, o.batch)?;
        if !o.keep_features {
            let _ = std::fs::remove_file(&feat);
        }
        let (w, h, pred) = crate::raster::read_u8_band(&map)?;
        if (w, h) != (area.width, area.height) {
            return Err(Error::file(
                &map,
                format!(
                    "the map is {w}x{h}, its area {}x{}",
                    area.width, area.height
                ),
            ));
        }
        let truth: Vec<u8> = if o.full_reference {
            area.labels.clone()
        } else {
            area.labels
                .iter()
                .zip(&area.mask)
                .map(|(&l, &m)| if m == 1 { 255 } else { l })
                .collect()
        };
        let mut c = Confusion::new(6);
        c.add_slices(&truth, &pred);
        total.merge(&c);
        per_area.insert(n, Report::new(&c, &isprs));
        maps.push(map);
    }
    let overall = Report::new(&total, &isprs);
    let reference = if o.full_reference { "full" } else { "eroded" };
    let mut md = format!(
        "# Vaihingen evaluation\n\nModel: `{}`  \nAreas: {:?}  \nReference: {} \
         (eroded: class boundaries ignored, as the ISPRS benchmark scores)\n\n## All areas\n\n{}",
        o.model.display(),
        o.areas,
        reference,
        overall.to_markdown(&isprs)
    );
    for (n, r) in &per_area {
        md.push_str(&format!("\n## Area {n}\n\n{}", r.to_markdown(&isprs)));
    }
    for note in &notes {
        md.push_str(&format!("\nNote: {note}\n"));
    }
    let markdown = o.out.join("eval.md");
    std::fs::write(&markdown, &md).map_err(|e| Error::file(&markdown, e))?;
    let json = o.out.join("eval.json");
    let summary = EvalSummary {
        model: o.model.clone(),
        reference: reference.into(),
        areas: per_area,
        overall,
        maps,
        markdown,
        json: json.clone(),
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::file(&json, e))?;
    std::fs::write(&json, text).map_err(|e| Error::file(&json, e))?;
    Ok(summary)
}
