//! The streaming pipeline: read → window/normalise → batch → model →
//! stitch → write, each stage on its own thread(s), joined by bounded
//! crossbeam channels, in memory bounded by the configuration.
//!
//! - [`plan`]: what the user asked for ([`InferOptions`]) resolved and
//!   checked into an [`InferPlan`], the only thing the pipeline sees, and
//!   what follows from it: the [`MemoryBound`], the column chunks and
//!   regions, the settings a run records.
//! - [`stages`]: one named function per stage thread, the channels between
//!   them, and how a run stops (in grid order without a reorder buffer;
//!   errors keep their type across threads).
//! - [`batch`]: windows into one tensor, the model's output back into one
//!   prediction per window.
//! - [`read`], [`window`], [`stitch`], [`write`]: the stages' work, each
//!   testable alone; `window` and `stitch` know neither GDAL nor candle.
//! - [`overview`]: the map's overviews built from its bands as the writer
//!   writes them (GDAL's `NEAREST`, pixel for pixel), so that finishing
//!   needs no second read of the map.
//! - [`stitch_device`]: `stitch`'s blending and argmax as candle tensor ops
//!   on the model's device, so that a GPU sends back only u8 rows; used where
//!   the model does not run on the CPU ([`InferPlan::post_on_device`]).
//!
//! [`infer`] ties them together: it opens the output and the readers (so a
//! bad scene fails before any thread starts), runs the stages and reports.

pub mod batch;
pub mod overview;
pub mod plan;
pub mod profile;
pub mod read;
pub mod stages;
pub mod stitch;
pub mod stitch_device;
pub mod tta;
pub mod window;
pub mod write;

pub use plan::{
    available_memory, chunks, default_readers, file_digest, human_bytes, out_dir_jobs, regions,
    settings, window_count, InferOptions, InferPlan, MemoryBound, MemoryLimit, Post, DEFAULT_CHUNK,
    DEFAULT_GDAL_CACHE_MB,
};

use crate::error::{Error, Result};
use crate::infer::read::{GdalReader, WindowSource};
use crate::infer::stages::Stages;
use crate::infer::window::WindowGrid;
use crate::infer::write::{MapFiles, MapSpec, MapWriter};
use crate::model::Model;
use crate::scale::parts::{PartMeta, PartScene};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct InferReport {
    pub files: MapFiles,
    /// Whether an unfinished run was continued.
    pub resumed: bool,
    /// A note about an unfinished run that was discarded or could not be
    /// continued.
    pub note: Option<String>,
    pub pixels: u64,
    pub seconds: f64,
    pub windows: u64,
    pub windows_skipped: u64,
    /// Windows not computed because they miss the AOI.
    pub windows_outside_aoi: u64,
    /// Scene pixels whose value was not finite once read as f32 (NaN,
    /// infinite, an f64 beyond f32's range) where the masks call them
    /// valid: mapped as nodata (counted in the rows this run computed).
    pub non_finite_pixels: u64,
    pub memory_bound: MemoryBound,
    /// Where the time went, stage by stage.
    pub profile: profile::ProfileReport,
}

/// Progress callbacks, so the library knows no terminal.
pub trait Progress: Send + Sync {
    fn start(&self, _windows: u64) {}
    fn window_done(&self, _pixels: u64) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Runs the whole pipeline for `plan` with `model`, on the model's device.
/// Setting `cancel` stops the run with [`Error::Interrupted`], keeping what
/// was written for `--resume`. A run whose [`MemoryBound`] exceeds the
/// plan's limit, or a model whose weights are not finite
/// ([`batch::non_finite_params`]), is refused before anything is written. Changes no process-wide state (the binary
/// applies [`InferPlan::gdal_cache_mb`]).
pub fn infer(
    plan: &InferPlan,
    model: Model,
    cancel: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<InferReport> {
    let t0 = Instant::now();
    let grid = WindowGrid::new(plan.scene.size, plan.window, plan.overlap)
        .map_err(|e| Error::Config(format!("window settings: {e}")))?;
    let meta = model.meta.clone();
    // refuse a run that cannot fit, or a model that cannot map, before
    // anything is written (a NaN weight can hide behind a ReLU and give a
    // finite, wrong map, which the per-window check of the logits misses)
    let bound = MemoryBound::of(plan, &meta, model.num_params())?;
    bound.check(plan, &meta)?;
    let bad = batch::model_non_finite(&model)?;
    if !bad.is_empty() {
        return Err(Error::NonFinite(format!(
            "{}: the model's weights are not finite: {}; the file is damaged or comes from a \
             training run that diverged",
            plan.model_path.display(),
            batch::describe_bad(&bad)
        )));
    }
    let settings = settings(plan, &meta);
    let metadata = match plan.part {
        Some(part) => PartMeta::new(
            part,
            plan.rows,
            settings.clone(),
            meta.classes.clone(),
            PartScene {
                width: plan.scene.size.width,
                height: plan.scene.size.height,
                geo_transform: plan.scene.geo_transform,
            },
        )
        .items(),
        None => Vec::new(),
    };
    // readers open their handles up front, so a bad scene fails before work
    let mut readers: Vec<Box<dyn WindowSource>> = (0..plan.readers)
        .map(|_| -> Result<Box<dyn WindowSource>> {
            Ok(Box::new(GdalReader::open(
                &plan.scene.path,
                &plan.bands,
                plan.normalize.clone(),
                grid,
                plan.aoi.clone(),
            )?))
        })
        .collect::<Result<Vec<_>>>()?;
    // what the rows will be computed from, so a resume never splices scenes
    let scene = match readers.first_mut() {
        Some(r) => Some(r.fingerprint()?),
        None => None,
    };
    let mut writer = MapWriter::create(MapSpec {
        path: plan.output.clone(),
        size: plan.scene.size,
        geo_transform: plan.scene.geo_transform,
        srs_wkt: plan.scene.srs_wkt.clone(),
        gcps: plan.scene.gcps.clone(),
        gcp_srs_wkt: plan.scene.gcp_srs_wkt.clone(),
        classes: meta.classes.clone(),
        creation_options: plan.creation_options.clone(),
        overwrite: plan.overwrite,
        confidence: plan.confidence,
        probabilities: plan.probabilities,
        rows: plan.rows,
        overviews: plan.part.is_none(),
        cog: plan.cog && plan.part.is_none(),
        metadata,
        settings,
        resume: plan.resume,
        scene,
        inputs: plan.inputs.clone(),
    })?;
    let resumed = writer.resumed();
    let note = writer.note().map(str::to_string);
    let regions = regions(&grid, plan.chunk, plan.rows, &|x0| writer.rows_done(x0));
    let total = window_count(&grid, &regions);
    progress.start(total);

    let class_ids = meta.classes.classes.iter().map(|c| c.id).collect();
    let mut stages = Stages::new(plan, grid, &regions, class_ids, &cancel, progress);
    if plan.post_on_device(model.device().is_cpu()) {
        stages = stages.with_post_on(model.device().clone());
    }
    let t_pipeline = Instant::now();
    match stages.run(readers, model, &mut writer) {
        Ok(()) => {}
        Err(Error::Interrupted) => {
            writer.keep_for_resume();
            return Err(Error::Interrupted);
        }
        Err(e) => return Err(e),
    }
    let pipeline_s = t_pipeline.elapsed().as_secs_f64();
    let files = stages
        .profile()
        .finish
        .time(|| writer.finish_unless(Some(&cancel)))?;
    let profile = stages.profile().report(pipeline_s, plan.readers);

    Ok(InferReport {
        note,
        resumed,
        files,
        pixels: (plan.scene.size.width * plan.scene.size.height) as u64,
        seconds: t0.elapsed().as_secs_f64(),
        windows: total,
        windows_skipped: stages.skipped(),
        windows_outside_aoi: stages.outside_aoi(),
        non_finite_pixels: stages.non_finite_pixels(),
        memory_bound: bound,
        profile,
    })
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
