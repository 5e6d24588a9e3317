//! `rstile demo`: the whole Vaihingen benchmark on a built-in dataset, end to
//! end through the library, in about two minutes on two CPU cores.
//!
//! 1. **synth**: [`crate::synth::synth`] generates one Vaihingen-like scene
//!    per area, written in the **official ISPRS archive layout**
//!    ([`write_official_area`]): `top/top_mosaic_09cm_areaN.tif` (IR-R-G),
//!    `dsm/dsm_09cm_matching_areaN.tif`, the RGB-coded reference
//!    `gts_for_participants/top_mosaic_09cm_areaN.tif` and the eroded one,
//!    `gts_eroded_for_participants/top_mosaic_09cm_areaN_noBoundary.tif`,
//!    black (0,0,0) within [`ERODE_RADIUS`] px of another class (ISPRS
//!    erodes the class boundaries with a circular disc of radius 3 px).
//!    Training areas 1, 3, 5, 7; validation areas 30 and 32 (the course's).
//! 2. **prepare**: [`crate::vaihingen::prepare`] with the course's settings
//!    (256 px patches, `overlap = 0.6`, NIR, R, G, nDSM, NDVI, statistics
//!    of the training areas), plus the memory-mappable `.bin` copy that
//!    training reads.
//! 3. **train**: [`crate::train::train`] fits the `tiny` FCN on the patches
//!    (128 px crops, flips, rotations, scale, jitter; AdamW, cosine
//!    schedule; loss on the eroded reference), time-bounded: after each
//!    epoch the number of epochs is re-estimated from the mean epoch time so
//!    that the schedule ends with the budget, and training stops after the
//!    epoch in which the budget runs out. The run directory is a normal
//!    `rstile train` run (`config.toml`, `best.safetensors`, metrics, plots).
//! 4. **eval**: [`crate::vaihingen::eval::evaluate`] maps the validation
//!    areas with the streaming infer pipeline and scores the best model
//!    against the eroded reference: the leaderboard table
//!    `| imp surf | building | low_veg | tree | car | Overall |`, `eval.md`,
//!    `eval.json`.
//! 5. **infer**: [`crate::infer::infer`] maps one validation area into a
//!    GeoTIFF with its QGIS style (`.qml`), a confidence raster and a PNG
//!    preview, beside a preview of the reference. The input is the 5-band
//!    feature raster (NIR, R, G, nDSM, NDVI; EPSG:32632, 9 cm) that eval
//!    writes: the benchmark's model takes those five bands, so the IR-R-G
//!    image alone could only be mapped by a second, 3-band model trained
//!    on weaker inputs.

use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::{self, InferOptions, InferPlan, NoProgress};
use crate::model::{read_meta, Model};
use crate::raster::{open_raster, SceneInfo};
use crate::synth::{synth, SynthConfig};
use crate::train::{EpochMetrics, RunOptions, TrainConfig, TrainProgress};
use crate::vaihingen::eval::{evaluate, EvalOptions, EvalSummary};
use crate::vaihingen::source::{official_paths, ISPRS_COLOURS};
use crate::vaihingen::{prepare, PrepareOptions, PrepareSummary, Split};
use gdal::raster::{Buffer, RasterCreationOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Radius (px) of the disc that erodes the class boundaries of the eroded
/// reference, as ISPRS did.
pub const ERODE_RADIUS: usize = 3;

/// A file in the output folder that marks it as the demo's, so a second run
/// may replace it.
pub const MARKER: &str = ".rstile-demo";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Training budget in seconds (training stops after the epoch in which
    /// it runs out).
    pub seconds: f64,
    /// Size of every area, width x height px.
    pub width: usize,
    pub height: usize,
    pub train_areas: Vec<u16>,
    pub val_areas: Vec<u16>,
    /// The area mapped in step 5 (one of `val_areas`).
    pub infer_area: u16,
    /// Seed of the scenes and of training.
    pub seed: u64,
    /// Replace an output folder that is not empty and not a previous demo.
    pub overwrite: bool,
}

impl DemoOptions {
    /// The demo's defaults: four 960 x 1280 training areas, two validation
    /// areas, a minute of training.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        DemoOptions {
            out: out.into(),
            seconds: 60.0,
            width: 960,
            height: 1280,
            train_areas: vec![1, 3, 5, 7],
            val_areas: vec![30, 32],
            infer_area: 30,
            seed: 0,
            overwrite: false,
        }
    }
}

/// The files of step 5.
#[derive(Debug, Clone)]
pub struct DemoMap {
    pub area: u16,
    /// The 5-band feature raster that was mapped.
    pub input: PathBuf,
    pub map: PathBuf,
    pub qml: PathBuf,
    pub confidence: Option<PathBuf>,
    pub preview: PathBuf,
    /// The reference (class ids) and its preview.
    pub reference: PathBuf,
    pub reference_preview: PathBuf,
    pub pixels: u64,
    pub seconds: f64,
}

/// What the demo did and wrote.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The generated dataset, official ISPRS layout.
    pub data: PathBuf,
    pub prepared: PrepareSummary,
    /// Where the patches are (`vaihingen_{train,val}.{hdf5,bin}`).
    pub prepared_dir: PathBuf,
    /// The training config that was run (also in the run directory).
    pub config: PathBuf,
    pub run_dir: PathBuf,
    /// The model evaluated and used for the map (`best.safetensors`).
    pub model: PathBuf,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: Option<usize>,
    pub eval: EvalSummary,
    /// The leaderboard table (Markdown, the first block of the report).
    pub table: String,
    pub map: DemoMap,
    /// Seconds per step: synth, prepare, train, eval, infer.
    pub step_seconds: [f64; 5],
    pub seconds: f64,
}

/// Feedback from [`run`]: one line per event.
pub trait DemoLog {
    fn line(&self, _msg: &str) {}
}

/// No feedback.
pub struct QuietLog;
impl DemoLog for QuietLog {}

impl<F: Fn(&str)> DemoLog for F {
    fn line(&self, msg: &str) {
        self(msg)
    }
}

/// Pixels of `ids` (row-major, `w x h`) within `radius` px (Euclidean) of
/// a pixel of another class: the boundary that the eroded reference blacks
/// out. Pixels outside the raster do not count as another class.
pub fn eroded_boundary(ids: &[u8], w: usize, h: usize, radius: usize) -> Vec<bool> {
    assert_eq!(ids.len(), w * h);
    let r = radius as i64;
    // the disc, nearest offsets first (most boundary pixels exit early)
    let mut offsets: Vec<(i64, i64)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
        .filter(|&(dx, dy)| (dx != 0 || dy != 0) && dx * dx + dy * dy <= r * r)
        .collect();
    offsets.sort_by_key(|&(dx, dy)| dx * dx + dy * dy);
    let (wi, hi) = (w as i64, h as i64);
    let mut out = vec![false; w * h];
    for y in 0..hi {
        for x in 0..wi {
            let id = ids[(y * wi + x) as usize];
            out[(y * wi + x) as usize] = offsets.iter().any(|&(dx, dy)| {
                let (nx, ny) = (x + dx, y + dy);
                nx >= 0 && ny >= 0 && nx < wi && ny < hi && ids[(ny * wi + nx) as usize] != id
            });
        }
    }
    out
}

fn create_tiff(
    path: &Path,
    w: usize,
    h: usize,
    bands: usize,
    georef: &gdal::Dataset,
) -> Result<gdal::Dataset> {
    let mut opts = RasterCreationOptions::new();
    for (k, v) in [
        ("TILED", "YES"),
        ("COMPRESS", "DEFLATE"),
        ("BLOCKXSIZE", "512"),
        ("BLOCKYSIZE", "512"),
    ] {
        opts.add_name_value(k, v)?;
    }
    let mut ds = crate::raster::create::<u8>("GTiff", path, (w, h), bands, &opts)
        .map_err(|e| Error::gdal_file(path, "cannot create", e))?;
    if let Ok(gt) = georef.geo_transform() {
        ds.set_geo_transform(&gt).map_err(Error::on(path))?;
    }
    if let Ok(srs) = georef.spatial_ref() {
        ds.set_spatial_ref(&srs).map_err(Error::on(path))?;
    }
    Ok(ds)
}

fn write_rgb(
    path: &Path,
    w: usize,
    h: usize,
    rgb: [Vec<u8>; 3],
    georef: &gdal::Dataset,
) -> Result<()> {
    let ds = create_tiff(path, w, h, 3, georef)?;
    for (i, data) in rgb.into_iter().enumerate() {
        let mut band = ds.rasterband(i + 1).map_err(Error::on(path))?;
        let mut buf = Buffer::new((w, h), data);
        band.write((0, 0), (w, h), &mut buf)
            .map_err(|e| Error::gdal_file(path, "write failed", e))?;
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::file(path, e)
}

/// Writes area `n` of a generated Vaihingen-like dataset into `root` in the
/// official ISPRS layout: the [`synth`] scene of seed `seed` (`w x h` px)
/// as `top/` (IR-R-G) and `dsm/`, its class ids RGB-coded with the ISPRS
/// colours as `gts_for_participants/`, and the eroded reference (black
/// within [`ERODE_RADIUS`] px of another class) as
/// `gts_eroded_for_participants/`. With `keep_ids`, the synth reference
/// (class ids with a colour table) is moved there; otherwise it is
/// removed.
pub fn write_official_area(
    root: &Path,
    n: u16,
    w: usize,
    h: usize,
    seed: u64,
    keep_ids: Option<&Path>,
) -> Result<()> {
    let tmp = root.join(format!(".synth_area{n}"));
    let cfg = SynthConfig {
        width: w,
        height: h,
        seed,
        ..Default::default()
    };
    let out = synth(&cfg, &tmp, true, &|_, _| {})?;
    let [top, dsm, gt, eroded] = official_paths(root, n);
    for p in [&top, &dsm, &gt, &eroded] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
    }
    std::fs::rename(&out.image, &top).map_err(io(&top))?;
    std::fs::rename(&out.dsm, &dsm).map_err(io(&dsm))?;
    let (_, _, ids) = crate::raster::read_u8_band(&out.gt)?;
    let boundary = eroded_boundary(&ids, w, h, ERODE_RADIUS);
    let georef = open_raster(&top)?;
    let code = |eroded: bool| -> [Vec<u8>; 3] {
        let mut rgb = [vec![0u8; w * h], vec![0u8; w * h], vec![0u8; w * h]];
        for (i, &id) in ids.iter().enumerate() {
            if !(eroded && boundary[i]) {
                let c = ISPRS_COLOURS[id as usize];
                rgb[0][i] = c[0];
                rgb[1][i] = c[1];
                rgb[2][i] = c[2];
            }
        }
        rgb
    };
    write_rgb(&gt, w, h, code(false), &georef)?;
    write_rgb(&eroded, w, h, code(true), &georef)?;
    if let Some(dst) = keep_ids {
        std::fs::rename(&out.gt, dst).map_err(io(dst))?;
        let aux = crate::infer::write::aux_path(&out.gt);
        if aux.exists() {
            let _ = std::fs::rename(&aux, crate::infer::write::aux_path(dst));
        }
    }
    std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    Ok(())
}

/// The training configuration of the demo (TOML), for `classes` (a class
/// table file) and the prepared patches in `prepared`.
pub fn train_config_toml(classes: &Path, prepared: &Path, run_dir: &Path, seed: u64) -> String {
    let p = |p: &Path| {
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    format!(
        r#"# Written by `rstile demo`: the tiny FCN on the prepared Vaihingen-shaped
# patches (NIR, R, G, nDSM, NDVI). The demo runs it time-bounded; on its own:
#   rstile train --config THIS_FILE
[model]
arch = "tiny"
classes = "{classes}"
bands = [1, 2, 3, 4, 5]
band_names = ["nir", "red", "green", "ndsm", "ndvi"]
window = 256
overlap = 0.25
pixel_size = 0.09

[data]
train_patches = "{train}"
val_patches = "{val}"
ignore_boundary = true
workers = 2

[train]
epochs = 8
batch = 8
crop = 128
lr = 0.01
optimizer = "adamw"
weight_decay = 1e-4
schedule = "cosine"
seed = {seed}
out_dir = "{run}"
class_weights = [1.0, 1.0, 1.0, 1.0, 2.0, 1.0]
f1_classes = [0, 1, 2, 3, 4]

[augment]
flips = true
rot90 = true
scale = true
scale_min = 0.75
scale_max = 1.25
noise = false
jitter = true
brightness = 0.1
contrast = 0.1
"#,
        classes = p(classes),
        train = p(&prepared.join("vaihingen_train.bin")),
        val = p(&prepared.join("vaihingen_val.bin")),
        run = p(run_dir),
    )
}

struct EpochLog<'a> {
    log: &'a dyn DemoLog,
    budget: f64,
    t0: Instant,
}

impl TrainProgress for EpochLog<'_> {
    fn epoch_end(&self, m: &EpochMetrics) {
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.1}", 100.0 * v));
        self.log.line(&format!(
            "train: epoch {} loss {:.3}, val loss {}, mean F1 {}, mIoU {}, {:.1} samples/s, {:.1} s ({:.0} of {:.0} s)",
            m.epoch,
            m.train_loss,
            m.val_loss.map_or("n/a".to_string(), |v| format!("{v:.3}")),
            pct(m.val_mean_f1),
            pct(m.val_miou),
            m.samples_per_s,
            m.seconds,
            self.t0.elapsed().as_secs_f64(),
            self.budget
        ));
    }
    fn message(&self, msg: &str) {
        self.log.line(&format!("train: {msg}"));
    }
}

/// Prepares the output folder: creates it, or empties a previous demo's
/// (or any folder, with `overwrite`); refuses a folder that holds other
/// files.
fn claim_out(o: &DemoOptions) -> Result<()> {
    let out = &o.out;
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::file(out, "exists and is not a directory"));
        }
        let mut entries = std::fs::read_dir(out).map_err(io(out))?.peekable();
        let empty = entries.peek().is_none();
        if !empty {
            if !(out.join(MARKER).exists() || o.overwrite) {
                return Err(Error::file(
                    out,
                    "is not empty and not an earlier demo's output; choose another --out or pass --overwrite",
                ));
            }
            for e in entries.flatten() {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| Error::file(&p, format!("cannot remove: {e}")))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let marker = out.join(MARKER);
    std::fs::write(
        &marker,
        "rstile demo output; `rstile demo` may replace this folder\n",
    )
    .map_err(io(&marker))
}

/// Runs the demo; see the module documentation.
pub fn run(o: &DemoOptions, log: &dyn DemoLog) -> Result<DemoSummary> {
    if !(o.seconds.is_finite() && o.seconds >= 0.0) {
        return Err(Error::Config(format!(
            "--seconds {} must be a number of seconds >= 0",
            o.seconds
        )));
    }
    if o.train_areas.is_empty() || o.val_areas.is_empty() {
        return Err(Error::Config(
            "the demo needs training and validation areas".into(),
        ));
    }
    if !o.val_areas.contains(&o.infer_area) {
        return Err(Error::Config(format!(
            "the mapped area {} is not a validation area",
            o.infer_area
        )));
    }
    let t_all = Instant::now();
    claim_out(o)?;
    let data = o.out.join("isprs");
    let infer_dir = o.out.join("infer");
    std::fs::create_dir_all(&infer_dir).map_err(io(&infer_dir))?;
    let reference = infer_dir.join(format!("reference_area{}.tif", o.infer_area));
    let mut steps = [0f64; 5];

    // 1. synth, in the official layout
    let t = Instant::now();
    let areas: Vec<u16> = o.train_areas.iter().chain(&o.val_areas).copied().collect();
    for &n in &areas {
        let keep = (n == o.infer_area).then_some(reference.as_path());
        write_official_area(
            &data,
            n,
            o.width,
            o.height,
            o.seed.wrapping_mul(1000).wrapping_add(n as u64),
            keep,
        )?;
    }
    steps[0] = t.elapsed().as_secs_f64();
    log.line(&format!(
        "synth: {} areas of {}x{} px (training {:?}, validation {:?}) in the ISPRS layout in {:.1} s -> {}",
        areas.len(),
        o.width,
        o.height,
        o.train_areas,
        o.val_areas,
        steps[0],
        data.display()
    ));

    // 2. prepare
    let t = Instant::now();
    let prepared_dir = o.out.join("prepared");
    let mut po = PrepareOptions::new(&data, &prepared_dir);
    po.split = Split {
        name: "demo".into(),
        train: o.train_areas.clone(),
        val: o.val_areas.clone(),
    };
    po.raw = true;
    let prepared = prepare(&po)?;
    steps[1] = t.elapsed().as_secs_f64();
    for s in &prepared.splits {
        log.line(&format!(
            "prepare: {} patches of {} px (stride {} px) from areas {:?} -> {}",
            s.patches,
            prepared.patch,
            prepared.stride,
            s.areas.iter().map(|a| a.area).collect::<Vec<_>>(),
            s.file.display()
        ));
    }
    log.line(&format!("prepare: {:.1} s", steps[1]));

    // 3. train, time-bounded
    let t = Instant::now();
    let classes = o.out.join("classes_isprs.toml");
    let table = toml::to_string(&ClassTable::isprs()).expect("class table serialises");
    std::fs::write(&classes, table).map_err(io(&classes))?;
    let run_dir = o.out.join("run");
    let text = train_config_toml(&classes, &prepared_dir, &run_dir, o.seed);
    let config = o.out.join("train.toml");
    std::fs::write(&config, &text).map_err(io(&config))?;
    let mut cfg: TrainConfig = toml::from_str(&text)
        .map_err(|e| Error::file(&config, format!("invalid training config: {}", e.message())))?;
    // the first epoch runs at (nearly) the full learning rate; then the
    // number of epochs is re-estimated after every epoch
    cfg.train.epochs = 1000;
    let progress = EpochLog {
        log,
        budget: o.seconds,
        t0: t,
    };
    let mut report = crate::train::train(
        &cfg,
        &RunOptions {
            resume: None,
            pretrained: None,
            device: candle_core::Device::Cpu,
            max_epochs: Some(1),
        },
        &progress,
    )?;
    loop {
        let done = report.history.len();
        let elapsed = t.elapsed().as_secs_f64();
        let remaining = o.seconds - elapsed;
        if remaining <= 0.0 || report.stopped_early {
            break;
        }
        let per_epoch = elapsed / done.max(1) as f64;
        cfg.train.epochs = done + (remaining / per_epoch.max(1e-3)).ceil().max(1.0) as usize;
        report = crate::train::train(
            &cfg,
            &RunOptions {
                resume: Some(run_dir.clone()),
                pretrained: None,
                device: candle_core::Device::Cpu,
                max_epochs: Some(1),
            },
            &progress,
        )?;
        if report.history.len() == done {
            break;
        }
    }
    // the run directory records the config the run ended with
    cfg.train.epochs = report.history.len();
    let run_config = run_dir.join(crate::train::run::CONFIG);
    std::fs::write(&run_config, cfg.to_toml()).map_err(io(&run_config))?;
    steps[2] = t.elapsed().as_secs_f64();
    let model = run_dir.join(crate::train::run::BEST);
    log.line(&format!(
        "train: {} epoch(s) in {:.1} s (budget {:.0} s); best validation mean F1 {} at epoch {} -> {}",
        report.history.len(),
        steps[2],
        o.seconds,
        report
            .best_mean_f1
            .map_or("n/a".to_string(), |v| format!("{:.1}", 100.0 * v)),
        report.best_epoch.map_or("-".to_string(), |e| e.to_string()),
        model.display()
    ));

    // 4. eval
    let t = Instant::now();
    let eval_dir = o.out.join("eval");
    let mut eo = EvalOptions::new(&model, &data, &eval_dir);
    eo.areas = o.val_areas.clone();
    eo.keep_features = true;
    let eval = evaluate(&eo)?;
    steps[3] = t.elapsed().as_secs_f64();
    let md = eval.overall.to_markdown(&ClassTable::isprs());
    let table = md.split("\n\n").next().unwrap_or(&md).trim().to_string();
    log.line(&format!(
        "eval: areas {:?} ({} reference), mean F1 {}, mIoU {}, overall accuracy {} in {:.1} s -> {}",
        o.val_areas,
        eval.reference,
        eval.overall
            .mean_f1
            .map_or("n/a".to_string(), |v| format!("{:.1}", 100.0 * v)),
        eval.overall
            .miou
            .map_or("n/a".to_string(), |v| format!("{:.1}", 100.0 * v)),
        eval.overall
            .overall_accuracy
            .map_or("n/a".to_string(), |v| format!("{:.1}", 100.0 * v)),
        steps[3],
        eval.markdown.display()
    ));

    // 5. infer one area's feature raster into a map, style and preview
    let t = Instant::now();
    let input = eval_dir.join(format!("features_area{}.tif", o.infer_area));
    for &n in &o.val_areas {
        if n != o.infer_area {
            let _ = std::fs::remove_file(eval_dir.join(format!("features_area{n}.tif")));
        }
    }
    let map = infer_dir.join(format!("map_area{}.tif", o.infer_area));
    let meta = read_meta(&model)?;
    let iopts = InferOptions {
        confidence: true,
        overwrite: true,
        ..Default::default()
    };
    let plan = InferPlan::resolve(
        SceneInfo::probe(&input)?,
        map.clone(),
        &model,
        &meta,
        &iopts,
    )?;
    let net = Model::load(&model, &candle_core::Device::Cpu)?;
    let r = infer::infer(&plan, net, Arc::new(AtomicBool::new(false)), &NoProgress)?;
    let preview = map.with_extension("png");
    crate::infer::write::write_preview(&r.files.map, &preview, &meta.classes, 1024)?;
    let reference_preview = reference.with_extension("png");
    crate::infer::write::write_preview(&reference, &reference_preview, &meta.classes, 1024)?;
    steps[4] = t.elapsed().as_secs_f64();
    log.line(&format!(
        "infer: area {} ({} px) in {:.1} s -> {}",
        o.infer_area,
        r.pixels,
        steps[4],
        r.files.map.display()
    ));
    let map = DemoMap {
        area: o.infer_area,
        input,
        map: r.files.map.clone(),
        qml: r.files.qml.clone(),
        confidence: r.files.confidence.clone(),
        preview,
        reference,
        reference_preview,
        pixels: r.pixels,
        seconds: r.seconds,
    };
    Ok(DemoSummary {
        data,
        prepared,
        prepared_dir,
        config,
        run_dir,
        model,
        history: report.history,
        best_epoch: report.best_epoch,
        eval,
        table,
        map,
        step_seconds: steps,
        seconds: t_all.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eroded_boundary_by_hand() {
        // one row: classes 0 | 1 between x = 3 and x = 4
        let ids = [0u8, 0, 0, 0, 1, 1, 1, 1, 1];
        let b = eroded_boundary(&ids, 9, 1, 2);
        let want = [false, false, true, true, true, true, false, false, false];
        assert_eq!(b, want);
        assert_eq!(eroded_boundary(&ids, 9, 1, 0), vec![false; 9]);
        // a lone pixel in a 7 x 7 field, radius 2: the disc around it
        let mut ids = vec![0u8; 49];
        ids[3 * 7 + 3] = 4;
        let b = eroded_boundary(&ids, 7, 7, 2);
        let n = b.iter().filter(|&&v| v).count();
        // 13 pixels within distance 2 of the centre (centre included)
        assert_eq!(n, 13);
        assert!(b[3 * 7 + 3] && b[3 * 7 + 5] && b[2 * 7 + 2] && !b[7 + 2]);
    }

    #[test]
    fn a_busy_folder_is_refused_and_a_demo_folder_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = DemoOptions::new(dir.path().join("out"));
        std::fs::create_dir_all(&o.out).unwrap();
        std::fs::write(o.out.join("mine.txt"), "x").unwrap();
        let e = claim_out(&o).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(o.out.join("mine.txt").exists());
        o.overwrite = true;
        claim_out(&o).unwrap();
        assert!(!o.out.join("mine.txt").exists());
        o.overwrite = false;
        std::fs::write(o.out.join("old.tif"), "x").unwrap();
        claim_out(&o).unwrap();
        assert!(!o.out.join("old.tif").exists() && o.out.join(MARKER).exists());
    }
}
