//! What a run will do, decided before any thread starts.
//!
//! [`InferOptions`] is what the user asked for (`None` meaning "the model's
//! default" or "the library's default"); [`InferPlan::resolve`] checks it
//! against the scene and the model and resolves every default, so the
//! validated [`InferPlan`] is the only thing the pipeline sees. Everything
//! else here is derived from a plan: the [`MemoryBound`], the column
//! [`chunks`] and [`regions`] a run stitches, the [`settings`] recorded for
//! `--resume` and for merging parts, and the jobs of a many-scene run
//! ([`out_dir_jobs`]).
//!
//! The scene is processed in column chunks of `chunk` px (a multiple of the
//! 512 px output tile) so that the stitcher's strip does not grow with the
//! scene width; windows that straddle a chunk border are computed for both
//! chunks. In-flight data is bounded by the channel capacities
//! ([`InferPlan::queue_len`]). Nothing grows with the scene size but the
//! writer's overview tiles that span two chunks (about 1 KiB per map row at
//! worst, [`OverviewBuilder::bytes_for`]), and [`MemoryBound`] adds it all
//! up.

use crate::error::{Error, Result};
use crate::infer::overview::OverviewBuilder;
use crate::infer::read::{CellLattice, Normalize, SceneInfo};
use crate::infer::stitch::{Blend, Region};
use crate::infer::window::{GridError, Rect, Size, WindowGrid};
use crate::infer::write::{overview_factors, TILE};
use crate::model::ModelMeta;
use crate::scale::aoi::Aoi;
use crate::scale::parts::Part;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default column chunk: 4096 px.
pub const DEFAULT_CHUNK: usize = 4096;

/// GDAL's block cache by default, MiB. The pipeline decodes each block once
/// into its cells, so the cache only serves the blocks that two cells or two
/// chunks share and the map's tiles on their way to the file: 64 MiB cost
/// no measurable time against 256 on the linear 8192² run, and its peak RSS
/// 465-498 MiB against 603-616 (`benches/RESULTS.md`, issue 16 §7).
pub const DEFAULT_GDAL_CACHE_MB: usize = 64;

/// The default number of reader threads for `threads` compute threads:
/// two, or one on a single thread. The one rule for every caller.
pub fn default_readers(threads: usize) -> usize {
    threads.clamp(1, 2)
}

/// Where the post-processing (softmax, blending, argmax) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Post {
    /// On the model's device where that is not the CPU (and no test-time
    /// augmentation is asked for), else on the host.
    #[default]
    Auto,
    /// On the host: the probabilities come back from the device and the
    /// host stitcher ([`ChunkStitcher`](crate::infer::stitch::ChunkStitcher))
    /// blends them.
    Host,
    /// On the model's device ([`DeviceStitcher`](crate::infer::stitch_device::DeviceStitcher)),
    /// even the CPU (for tests: it gives the host's map).
    Device,
}

impl Post {
    /// Every choice, in the order the help lists them.
    pub const ALL: [Post; 3] = [Post::Auto, Post::Host, Post::Device];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Post::Auto => "auto",
            Post::Host => "host",
            Post::Device => "device",
        }
    }

    /// One line on what it does.
    pub fn help(self) -> &'static str {
        match self {
            Post::Auto => "on the model's device unless that is the CPU (or with --tta)",
            Post::Host => "on the host: the class probabilities come back from the device",
            Post::Device => "on the model's device, even the CPU (gives the same map)",
        }
    }
}

impl std::fmt::Display for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for; `None` means "the model's default" (window,
/// overlap, bands) or "the library's default" (readers, chunk).
#[derive(Debug, Clone)]
pub struct InferOptions {
    pub window: Option<usize>,
    pub overlap: Option<f64>,
    /// The overlap in pixels instead of a fraction (`--halo`): the overlap
    /// is `halo / window`.
    pub halo: Option<usize>,
    pub batch: usize,
    /// Reader threads; `None`: [`default_readers`] of the compute threads
    /// (`rayon::current_num_threads()`).
    pub readers: Option<usize>,
    pub blend: Blend,
    pub bands: Option<Vec<usize>>,
    pub chunk: Option<usize>,
    pub confidence: bool,
    /// Also write `MAP.probabilities.tif` (one u8 band per class).
    pub probabilities: bool,
    /// Test-time augmentation.
    pub tta: crate::infer::tta::Tta,
    /// Where softmax, blending and argmax run.
    pub post: Post,
    pub creation_options: Vec<(String, String)>,
    /// Write the map as a Cloud Optimized GeoTIFF.
    pub cog: bool,
    pub overwrite: bool,
    /// GDAL block cache, MiB; see [`InferPlan::gdal_cache_mb`].
    pub gdal_cache_mb: usize,
    /// `Some(part)`: compute only that part of a split run.
    pub part: Option<Part>,
    pub resume: bool,
    /// A polygon file limiting the map.
    pub aoi: Option<PathBuf>,
    /// Refuse a run whose [`MemoryBound`] exceeds this many MiB; `Some(0)`:
    /// no limit; `None`: the memory available to the process
    /// ([`available_memory`]).
    pub max_memory_mb: Option<u64>,
}

impl Default for InferOptions {
    /// The command line's defaults: the model's window and overlap, batch 4,
    /// [`default_readers`], Hann blending, the first bands, a 256 MiB GDAL
    /// cache, the available memory as the limit.
    fn default() -> Self {
        InferOptions {
            window: None,
            overlap: None,
            halo: None,
            batch: 4,
            readers: None,
            blend: Blend::Hann,
            bands: None,
            chunk: None,
            confidence: false,
            probabilities: false,
            tta: crate::infer::tta::Tta::None,
            post: Post::Auto,
            creation_options: Vec::new(),
            cog: false,
            overwrite: false,
            gdal_cache_mb: DEFAULT_GDAL_CACHE_MB,
            part: None,
            resume: false,
            aoi: None,
            max_memory_mb: None,
        }
    }
}

/// A validated inference plan: the only thing the pipeline sees.
#[derive(Debug, Clone)]
pub struct InferPlan {
    pub scene: SceneInfo,
    pub output: PathBuf,
    pub window: usize,
    pub overlap: f64,
    pub batch: usize,
    /// Reader threads, each with its own GDAL handle.
    pub readers: usize,
    pub blend: Blend,
    /// 1-based band indices.
    pub bands: Vec<usize>,
    pub normalize: Normalize,
    /// Column chunk width in px, a multiple of 512.
    pub chunk: usize,
    pub confidence: bool,
    /// Also write `MAP.probabilities.tif`.
    pub probabilities: bool,
    /// Test-time augmentation: forward passes per window, averaged.
    pub tta: crate::infer::tta::Tta,
    /// Where softmax, blending and argmax run ([`InferPlan::post_on_device`]).
    pub post: Post,
    pub creation_options: Vec<(String, String)>,
    /// Write the map as a Cloud Optimized GeoTIFF (never for a part).
    pub cog: bool,
    pub overwrite: bool,
    /// GDAL block cache, MiB. The library does not apply it (it changes no
    /// process-wide state): the binary sets `GDAL_CACHEMAX` from it before
    /// running the plan. [`MemoryBound`] counts it.
    pub gdal_cache_mb: usize,
    /// Output rows `[y0, y1)`: the whole scene, or one part of a split run.
    pub rows: (usize, usize),
    /// The part of a split run, if this is one.
    pub part: Option<Part>,
    /// Continue an unfinished run of the same settings.
    pub resume: bool,
    /// The model file (for errors about the model).
    pub model_path: PathBuf,
    /// Digest of the model file, so a resume cannot mix models.
    pub model_digest: String,
    /// Only windows touching this area are computed; pixels outside are nodata.
    pub aoi: Option<Arc<Aoi>>,
    /// Digest of the AOI file.
    pub aoi_digest: Option<String>,
    /// The files this run reads (scene, model, AOI): no output may be one.
    pub inputs: crate::output::Inputs,
    /// The most memory the run may need ([`MemoryBound::check`]); `None`:
    /// no limit.
    pub max_memory: Option<MemoryLimit>,
}

/// The memory limit of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// Set by `--max-memory` (else: the memory available when the run
    /// was planned).
    pub from_flag: bool,
}

impl InferPlan {
    /// Checks the scene against the model and resolves defaults.
    pub fn resolve(
        scene: SceneInfo,
        output: PathBuf,
        model_path: &Path,
        meta: &ModelMeta,
        o: &InferOptions,
    ) -> Result<InferPlan> {
        let path = scene.path.clone();
        scene.check_palette(meta.bands)?;
        let bands = match &o.bands {
            Some(b) => b.clone(),
            None => {
                if scene.band_count < meta.bands {
                    return Err(Error::file(
                        &path,
                        format!(
                            "has {} band(s) but the model needs {}; choose bands with --bands",
                            scene.band_count, meta.bands
                        ),
                    ));
                }
                (1..=meta.bands).collect()
            }
        };
        if bands.len() != meta.bands {
            return Err(Error::Config(format!(
                "--bands selects {} band(s) but the model takes {}",
                bands.len(),
                meta.bands
            )));
        }
        for &b in &bands {
            if b == 0 || b > scene.band_count {
                return Err(Error::file(
                    &path,
                    format!("has no band {b} (it has {} band(s))", scene.band_count),
                ));
            }
            let t = scene.band_types[b - 1];
            if !crate::raster::supported_type(t) {
                return Err(Error::file(
                    &path,
                    format!(
                        "band {b} is of type {}, which rstile does not read (it reads 8-32 bit integers and 32/64 bit floats; complex and 64-bit integer bands are not supported)",
                        scene.band_type_names.get(b - 1).map_or("unknown", String::as_str)
                    ),
                ));
            }
        }
        let window = o.window.unwrap_or(meta.window);
        let overlap = match (o.overlap, o.halo) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "--overlap and --halo say the same thing: give one".into(),
                ))
            }
            (Some(f), None) => f,
            (None, Some(h)) => h as f64 / window.max(1) as f64,
            (None, None) => meta.overlap,
        };
        WindowGrid::new(scene.size, window, overlap).map_err(|e| match e {
            // the model's own defaults: name the model file
            GridError::WindowTooSmall(_) if o.window.is_none() => Error::file(
                model_path,
                format!("the model's default {e}; choose a window with --window"),
            ),
            GridError::BadOverlap(_) if o.overlap.is_none() => Error::file(
                model_path,
                format!("the model's default {e}; choose an overlap with --overlap"),
            ),
            GridError::WindowTooSmall(_) => Error::Config(format!("--window: {e}")),
            GridError::BadOverlap(_) => Error::Config(format!("--overlap: {e}")),
            GridError::EmptyRaster(..) => Error::file(&path, e),
        })?;
        let readers = o
            .readers
            .unwrap_or_else(|| default_readers(rayon::current_num_threads()));
        if o.batch == 0 || readers == 0 {
            return Err(Error::Config(
                "--batch and --readers must be at least 1".into(),
            ));
        }
        let chunk = o.chunk.unwrap_or(DEFAULT_CHUNK);
        if chunk == 0 || !chunk.is_multiple_of(TILE) {
            return Err(Error::Config(format!(
                "--chunk must be a positive multiple of {TILE}"
            )));
        }
        if o.post == Post::Device && o.tta != crate::infer::tta::Tta::None {
            return Err(Error::Config(
                "--post device does not do test-time augmentation: its passes are averaged on the host; drop --tta or use --post host".into(),
            ));
        }
        if o.cog && o.part.is_some() {
            return Err(Error::Config(
                "--cog makes the finished map a Cloud Optimized GeoTIFF; a part is merged first: give --cog to rstile merge".into(),
            ));
        }
        let rows = match o.part {
            Some(p) => p.rows(scene.size.height)?,
            None => (0, scene.size.height),
        };
        let output = match o.part {
            Some(p) => p.path(&output),
            None => output,
        };
        let aoi = o
            .aoi
            .as_deref()
            .map(|p| Aoi::load(p, &scene).map(Arc::new))
            .transpose()?;
        let aoi_digest = o.aoi.as_deref().map(file_digest).transpose()?;
        crate::infer::write::check_creation_options(&o.creation_options)?;
        if o.cog {
            crate::infer::write::cog_options(&o.creation_options)?;
        }
        // an ONNX model's external data files are inputs too
        let model_files = if crate::model::imported::is_onnx(model_path) {
            crate::model::onnx::model_files(model_path)
        } else {
            vec![model_path.to_path_buf()]
        };
        let inputs = crate::output::Inputs::of(
            [scene.path.as_path()]
                .into_iter()
                .chain(model_files.iter().map(PathBuf::as_path))
                .chain(o.aoi.as_deref()),
        );
        let max_memory = match o.max_memory_mb {
            Some(0) => None,
            Some(mb) => Some(MemoryLimit {
                bytes: mb.saturating_mul(1 << 20),
                from_flag: true,
            }),
            None => available_memory().map(|bytes| MemoryLimit {
                bytes,
                from_flag: false,
            }),
        };
        Ok(InferPlan {
            inputs,
            max_memory,
            aoi,
            aoi_digest,
            rows,
            part: o.part,
            resume: o.resume,
            // every file of the model: a resume never mixes two models
            model_digest: model_files
                .iter()
                .map(|f| file_digest(f))
                .collect::<Result<Vec<_>>>()?
                .join("+"),
            model_path: model_path.to_path_buf(),
            scene,
            output,
            window,
            overlap,
            batch: o.batch,
            readers,
            blend: o.blend,
            bands,
            normalize: Normalize {
                mean: meta.mean.clone(),
                std: meta.std.clone(),
            },
            chunk,
            confidence: o.confidence,
            probabilities: o.probabilities,
            tta: o.tta,
            post: o.post,
            creation_options: o.creation_options.clone(),
            cog: o.cog,
            overwrite: o.overwrite,
            gdal_cache_mb: o.gdal_cache_mb,
        })
    }

    /// `--window auto`: `o` resolved with the window, a multiple of 32, that
    /// computes the fewest window pixels per map pixel (windows straddling a
    /// column chunk's border counted for each chunk) among those the
    /// memory limit allows (`--max-memory`, else the memory available; the
    /// [`MemoryBound`] of a model of `params` parameters), up to the
    /// scene's larger side, keeping the overlap in pixels: `--halo`, else
    /// the model's (its overlap fraction times its window). A graph of
    /// `fixed` input size keeps it.
    pub fn resolve_auto_window(
        scene: SceneInfo,
        output: PathBuf,
        model_path: &Path,
        meta: &ModelMeta,
        o: &InferOptions,
        params: usize,
        fixed: Option<usize>,
    ) -> Result<InferPlan> {
        if o.part.is_some() {
            return Err(Error::Config(
                "--window auto picks the window from this machine's memory, and the parts of one map must share it: give --window N with --part".into(),
            ));
        }
        if o.overlap.is_some() {
            return Err(Error::Config(
                "--window auto keeps the overlap in pixels: give --halo PX instead of --overlap"
                    .into(),
            ));
        }
        let halo = o
            .halo
            .unwrap_or_else(|| (meta.overlap * meta.window as f64).round() as usize);
        let with = |w: usize| InferOptions {
            window: Some(w),
            halo: Some(halo),
            ..o.clone()
        };
        if let Some(w) = fixed {
            return InferPlan::resolve(scene, output, model_path, meta, &with(w));
        }
        const STEP: usize = 32;
        let side = scene
            .size
            .width
            .max(scene.size.height)
            .next_multiple_of(STEP);
        // the smallest window the halo allows (overlap at most MAX_OVERLAP)
        let smallest = ((halo as f64 / crate::infer::window::MAX_OVERLAP).ceil() as usize)
            .max(STEP)
            .next_multiple_of(STEP);
        let plan = InferPlan::resolve(scene, output, model_path, meta, &with(smallest))?;
        let fits = |w: usize| -> Result<bool> {
            let mut p = plan.clone();
            p.window = w;
            p.overlap = halo as f64 / w as f64;
            Ok(match p.max_memory {
                None => true,
                Some(limit) => MemoryBound::of(&p, meta, params)?.total() <= limit.bytes,
            })
        };
        // the largest window that fits, then among those up to it the one
        // that computes the fewest window pixels per map pixel (a window
        // beyond the scene only pads; ties go to the larger window)
        let largest = (smallest..=side.max(smallest))
            .rev()
            .step_by(STEP)
            .find_map(|w| match fits(w) {
                Ok(true) => Some(Ok(w)),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            })
            .transpose()?
            .unwrap_or(smallest);
        // the windows the run computes: a window that straddles a column
        // chunk's border is computed for both chunks (a 2176 px window with
        // 4096 px chunks was computed 1.98 times per map pixel, halo 128)
        let spans = chunks(plan.scene.size.width, plan.chunk);
        let cost = |w: usize| {
            WindowGrid::new(plan.scene.size, w, halo as f64 / w as f64).map_or(f64::INFINITY, |g| {
                let cols: usize = spans
                    .iter()
                    .map(|&(x0, x1)| g.cols_touching(x0, x1).len())
                    .sum();
                (w * w) as f64 * (cols * g.rows()) as f64
            })
        };
        let best = (smallest..=largest)
            .step_by(STEP)
            .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(b.cmp(&a)))
            .unwrap_or(smallest);
        let mut p = plan;
        p.window = best;
        p.overlap = halo as f64 / best as f64;
        WindowGrid::new(p.scene.size, p.window, p.overlap)
            .map_err(|e| Error::Config(format!("--window auto: {e}")))?;
        Ok(p)
    }

    /// Windows computed per map pixel: `w² · windows / pixels` (1 without
    /// overlap; the grid's overlap and border windows make it larger).
    pub fn recompute_factor(&self, windows: u64) -> f64 {
        let px = (self.scene.size.width * self.scene.size.height).max(1) as f64;
        (self.window * self.window) as f64 * windows as f64 / px
    }

    /// Whether softmax, blending and argmax run on the model's device (the
    /// [`DeviceStitcher`](crate::infer::stitch_device::DeviceStitcher)),
    /// for a model on the CPU or not: [`Post::Auto`] does where the model
    /// runs elsewhere, without test-time augmentation (averaged on the host).
    pub fn post_on_device(&self, model_on_cpu: bool) -> bool {
        match self.post {
            Post::Auto => !model_on_cpu && self.tta == crate::infer::tta::Tta::None,
            Post::Host => false,
            Post::Device => true,
        }
    }

    /// Windows allowed between the dispatcher and the stitcher: `2B + 2R`.
    pub fn queue_len(&self) -> usize {
        2 * self.batch + 2 * self.readers
    }
}

/// The peak-memory bound of a configuration, in bytes, by part.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBound {
    pub model: u64,
    pub in_flight: u64,
    /// The decoded cells the windows are cut from.
    pub cells: u64,
    pub stitcher: u64,
    pub writer: u64,
    pub gdal_cache: u64,
    pub base: u64,
}

impl MemoryBound {
    /// Sum of the parts (it fits: [`MemoryBound::of`] checks it).
    pub fn total(&self) -> u64 {
        self.parts().iter().fold(0u64, |a, p| a.saturating_add(p.1))
    }

    /// The parts, named.
    fn parts(&self) -> [(BoundPart, u64); 7] {
        [
            (BoundPart::Model, self.model),
            (BoundPart::InFlight, self.in_flight),
            (BoundPart::Cells, self.cells),
            (BoundPart::Stitcher, self.stitcher),
            (BoundPart::Writer, self.writer),
            (BoundPart::GdalCache, self.gdal_cache),
            (BoundPart::Base, self.base),
        ]
    }

    /// The bound for a plan and a model. See the README for the formula.
    /// Computed with checked arithmetic: a bound that does not fit in 64
    /// bits is an error naming the setting that makes it so.
    pub fn of(plan: &InferPlan, meta: &ModelMeta, params: usize) -> Result<MemoryBound> {
        let window = window_name(plan, meta);
        let wb = || format!("{window} with batch {}", plan.batch);
        let wbr = || format!("{} and {} reader(s)", wb(), plan.readers);
        let w = plan.window as u64;
        let bands = plan.bands.len() as u64;
        let k = meta.classes.len() as u64;
        let px = mul(&[w, w], &window)?;
        // each in-flight window holds its input (or its prediction) and mask
        let per_window = mul(&[px, 4 * bands.max(k) + 1], &window)?;
        let q = add(
            &[
                mul(&[2, plan.batch as u64], &wb())?,
                mul(&[2, plan.readers as u64], &wbr())?,
            ],
            &wbr(),
        )?;
        let in_flight = mul(
            &[add(&[q, plan.readers as u64], &wbr())?, per_window],
            &wbr(),
        )?;
        let activations = mul(
            &[plan.batch as u64, px, meta.arch.activation_bytes_per_px()],
            &wb(),
        )?;
        // test-time augmentation: the batch's transformed inputs and the
        // running sums of its predictions (each pass is one batch)
        let tta = if plan.tta == crate::infer::tta::Tta::None {
            0
        } else {
            mul(&[plan.batch as u64, px, 4 * (bands + k) + 4], &wb())?
        };
        let weights = mul(&[params as u64, 4], "the model")?;
        let run = add(&[weights, activations, tta], &wb())?;
        // an ONNX graph's weights exist up to three times while it loads
        // (the decoded protobuf, the tensors made from it, the convolutions
        // folded with their batch norms): measured, a resnet50-fcn graph at
        // a 64 px window peaked 206 MiB above the same model's safetensors
        let model = match meta.arch {
            crate::model::Net::Onnx { .. } => run.max(mul(&[weights, 3], "the model")?),
            _ => run,
        };
        let width = plan.chunk.min(plan.scene.size.width.next_multiple_of(TILE)) as u64;
        // ChunkStitcher::bytes_for, checked (a test holds them equal); with
        // --post device, DeviceStitcher::bytes_for: its strip holds 4 (k + 2)
        // bytes a pixel and the 2-D weights, in the model's memory (on a GPU
        // the host holds neither, and this part over-counts the host)
        let strip = add(&[w, TILE as u64], &window)?;
        let stitcher = if plan.post == Post::Device {
            add(
                &[
                    mul(&[strip, width, 4 * (k + 2)], &window)?,
                    mul(&[4, w, w], &window)?,
                ],
                &window,
            )?
        } else {
            mul(&[strip, width, 4 * k + 4 + 1], &window)?
        };
        // bands in flight: the map, the confidence, k probability planes
        let side_planes = 1 + plan.confidence as u64 + k * plan.probabilities as u64;
        let bands_in_flight = mul(&[4, width, TILE as u64, side_planes], "--chunk")?;
        // the map's overview tiles being filled (none for a part)
        let map_rows = Size {
            width: plan.scene.size.width,
            height: plan.rows.1 - plan.rows.0,
        };
        let overviews = if plan.part.is_none() {
            OverviewBuilder::bytes_for(map_rows, plan.chunk, &overview_factors(map_rows))
        } else {
            0
        };
        let writer = add(&[bands_in_flight, overviews], "--chunk")?;
        let gdal_cache = mul(&[plan.gdal_cache_mb as u64, 1 << 20], "--gdal-cache")?;
        let cells = cell_bytes(plan, 3 * plan.readers as u64 + 1);
        let bound = MemoryBound {
            model,
            in_flight,
            cells,
            stitcher,
            writer,
            gdal_cache,
            // the process with a tiny configuration (linear, batch 1, 16 MiB
            // cache) peaks at 139 MiB: binary, GDAL and driver state, allocator
            base: 128 << 20,
        };
        let parts = bound.parts().map(|p| p.1);
        let setting = match bound.dominant() {
            BoundPart::Writer => "--chunk".to_string(),
            BoundPart::GdalCache => "--gdal-cache".to_string(),
            _ => window,
        };
        add(&parts, &setting)?;
        Ok(bound)
    }

    /// The largest part.
    fn dominant(&self) -> BoundPart {
        self.parts()
            .into_iter()
            .max_by_key(|p| p.1)
            .map(|p| p.0)
            .expect("seven parts")
    }

    /// Refuses a bound above the plan's memory limit, before anything is
    /// written: the error states the bound, the limit and the part that
    /// dominates, with the settings that size it.
    pub fn check(&self, plan: &InferPlan, meta: &ModelMeta) -> Result<()> {
        let Some(limit) = plan.max_memory else {
            return Ok(());
        };
        if self.total() <= limit.bytes {
            return Ok(());
        }
        let part = self.dominant();
        let what = if limit.from_flag {
            format!("--max-memory {} MiB", limit.bytes >> 20)
        } else {
            format!("the {} of memory available", human_bytes(limit.bytes))
        };
        Err(Error::Config(format!(
            "the run would need up to {}, more than {what}: {}; {}, or raise --max-memory \
             (MiB, 0: no limit)",
            human_bytes(self.total()),
            part.describe(plan, meta, self),
            part.advice()
        )))
    }
}

/// Bytes of the decoded cells alive at once (see `stages.rs`): those
/// around the raster rows between the oldest of the `jobs` windows a reader
/// may still cut (in the channel, in the readers' hands, in the
/// dispatcher's) and the newest, over a region's source width; for the
/// regions of the chunk width and the narrower last one. Counted in whole
/// cells of the scene's [`CellLattice`], as f32 per band plus a mask byte.
fn cell_bytes(plan: &InferPlan, jobs: u64) -> u64 {
    let size = plan.scene.size;
    let Ok(grid) = WindowGrid::new(size, plan.window, plan.overlap) else {
        return 0;
    };
    let all = Rect {
        x: 0,
        y: 0,
        width: size.width,
        height: size.height,
    };
    let lattice = CellLattice::new((plan.scene.block.width, plan.scene.block.height), all);
    let chunk = plan.chunk.min(size.width);
    let mut widths = vec![chunk];
    if !size.width.is_multiple_of(chunk) {
        widths.push(size.width % chunk);
    }
    widths
        .into_iter()
        .map(|w| {
            let cols = grid.cols_touching(0, w).len().max(1) as u64;
            let rows = (jobs.div_ceil(cols) as usize)
                .saturating_mul(grid.stride())
                .saturating_add(plan.window)
                .min(size.height);
            let width = (w + plan.window).min(size.width);
            lattice.bytes_for(rows, width, plan.bands.len()) as u64
        })
        .max()
        .unwrap_or(0)
}

/// A part of the [`MemoryBound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundPart {
    Model,
    InFlight,
    Cells,
    Stitcher,
    Writer,
    GdalCache,
    Base,
}

impl BoundPart {
    /// What this part holds and which settings size it.
    fn describe(self, plan: &InferPlan, meta: &ModelMeta, b: &MemoryBound) -> String {
        let window = window_name(plan, meta);
        let width = plan.chunk.min(plan.scene.size.width.next_multiple_of(TILE));
        match self {
            BoundPart::Model => format!(
                "{window} needs {} for the model ({} activations at batch {})",
                human_bytes(b.model),
                meta.arch,
                plan.batch
            ),
            BoundPart::InFlight => format!(
                "{window} needs {} for the {} windows in flight (batch {}, {} reader(s))",
                human_bytes(b.in_flight),
                2 * plan.batch + 3 * plan.readers,
                plan.batch,
                plan.readers
            ),
            BoundPart::Cells => format!(
                "{window} needs {} for the decoded cells its windows are cut from",
                human_bytes(b.cells)
            ),
            BoundPart::Stitcher => format!(
                "{window} needs {} for the stitcher's strip of {} x {width} px (in the GPU's memory, not the host's, when the post-processing runs there)",
                human_bytes(b.stitcher),
                plan.window + TILE
            ),
            BoundPart::Writer => format!(
                "--chunk {} needs {} for the writer's bands",
                plan.chunk,
                human_bytes(b.writer)
            ),
            BoundPart::GdalCache => format!(
                "--gdal-cache {} MiB is the largest part",
                plan.gdal_cache_mb
            ),
            BoundPart::Base => format!("rstile itself needs {}", human_bytes(b.base)),
        }
    }

    /// Which settings lower it.
    fn advice(self) -> &'static str {
        match self {
            BoundPart::Model => "lower --batch or --window",
            BoundPart::InFlight => "lower --window, --batch or --readers",
            BoundPart::Cells => "lower --window, --readers or --chunk",
            BoundPart::Stitcher => "lower --window or --chunk",
            BoundPart::Writer => "lower --chunk",
            BoundPart::GdalCache => "lower --gdal-cache",
            BoundPart::Base => "free some memory",
        }
    }
}

/// How errors name the window: the flag, or the model's default.
fn window_name(plan: &InferPlan, meta: &ModelMeta) -> String {
    if plan.window == meta.window {
        format!("the model's window {} px", plan.window)
    } else {
        format!("--window {}", plan.window)
    }
}

fn overflow(setting: &str) -> Error {
    Error::Config(format!(
        "{setting}: the memory bound does not fit in 64 bits (more than 16 EiB)"
    ))
}

/// The product of `parts`, or an error naming `setting`.
fn mul(parts: &[u64], setting: &str) -> Result<u64> {
    parts
        .iter()
        .try_fold(1u64, |a, &b| a.checked_mul(b))
        .ok_or_else(|| overflow(setting))
}

/// The sum of `parts`, or an error naming `setting`.
fn add(parts: &[u64], setting: &str) -> Result<u64> {
    parts
        .iter()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .ok_or_else(|| overflow(setting))
}

/// A byte count for people: MiB below 10 GiB, then GiB, TiB, PiB, EiB.
pub fn human_bytes(b: u64) -> String {
    let mut v = b as f64 / (1u64 << 20) as f64;
    if v < 10240.0 {
        return format!("{v:.0} MiB");
    }
    for unit in ["GiB", "TiB", "PiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
    }
    format!("{:.1} EiB", v / 1024.0)
}

/// The memory this process may still use, in bytes: `MemAvailable` of
/// `/proc/meminfo`, or the limit of the process's memory cgroup (a Slurm
/// job's `--mem`, a container's limit) where that is lower. `None` where
/// neither can be read.
pub fn available_memory() -> Option<u64> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let meminfo = read(Path::new("/proc/meminfo")).and_then(|s| mem_available(&s));
    let cgroup = read(Path::new("/proc/self/cgroup")).and_then(|s| cgroup_limit(&s, &read));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The memory limit of the cgroup named in a `/proc/self/cgroup` text
/// (v2 `memory.max`, or v1 `memory.limit_in_bytes`), read with `read`. The
/// cgroup's own folder is tried, then the mount's root (which is the
/// process's cgroup inside a container). `None`: no limit found ("max").
fn cgroup_limit(proc_cgroup: &str, read: &dyn Fn(&Path) -> Option<String>) -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let limit = [base.join(path).join(file), base.join(file)]
            .iter()
            .find_map(|p| read(p))
            .and_then(|s| s.trim().parse::<u64>().ok());
        if limit.is_some() {
            return limit;
        }
    }
    None
}

/// The column chunks `[x0, x1)` of a scene.
pub fn chunks(width: usize, chunk: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut x0 = 0;
    while x0 < width {
        let x1 = (x0 + chunk).min(width);
        v.push((x0, x1));
        x0 = x1;
    }
    v
}

/// The regions a run stitches: one per column chunk, from the first row
/// not yet written to the end of the run's rows. Finished chunks are left out.
pub fn regions(
    grid: &WindowGrid,
    chunk: usize,
    rows: (usize, usize),
    done: &dyn Fn(usize) -> usize,
) -> Vec<Region> {
    chunks(grid.raster().width, chunk)
        .into_iter()
        .map(|(x0, x1)| Region {
            x0,
            x1,
            y0: done(x0).max(rows.0),
            y1: rows.1,
        })
        .filter(|r| r.y0 < r.y1)
        .collect()
}

/// Number of windows the run computes or skips (chunk borders count twice).
pub fn window_count(grid: &WindowGrid, regions: &[Region]) -> u64 {
    regions
        .iter()
        .map(|r| {
            (grid.cols_touching(r.x0, r.x1).len() * grid.rows_touching(r.y0, r.y1).len()) as u64
        })
        .sum()
}

/// The settings that determine a map's pixels, recorded for `--resume`
/// and for merging parts.
pub fn settings(plan: &InferPlan, meta: &ModelMeta) -> BTreeMap<String, String> {
    let canon = std::fs::canonicalize(&plan.scene.path).unwrap_or_else(|_| plan.scene.path.clone());
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("scene", canon.display().to_string());
    put(
        "scene_size",
        format!("{}x{}", plan.scene.size.width, plan.scene.size.height),
    );
    put("model", plan.model_digest.clone());
    put("arch", meta.arch.to_string());
    put("window", plan.window.to_string());
    put("overlap", plan.overlap.to_string());
    put("bands", format!("{:?}", plan.bands));
    put("mean", format!("{:?}", meta.mean));
    put("std", format!("{:?}", meta.std));
    put(
        "classes",
        format!(
            "{:?}",
            meta.classes
                .classes
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        ),
    );
    put("blend", plan.blend.to_string());
    put("chunk", plan.chunk.to_string());
    put("confidence", plan.confidence.to_string());
    put("probabilities", plan.probabilities.to_string());
    put("tta", plan.tta.to_string());
    put("rows", format!("{}..{}", plan.rows.0, plan.rows.1));
    put(
        "aoi",
        plan.aoi_digest.clone().unwrap_or_else(|| "none".into()),
    );
    m
}

/// FNV-1a digest of a file, to recognise the same model file.
pub fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut h = crate::hash::Fnv1a::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::file(path, e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok(format!("{len}:{:016x}", h.finish()))
}

/// The jobs of a many-scene run: each scene maps to `DIR/STEM.tif`.
/// Returns `(scene, map)` pairs in the order given. `dir` must be an
/// existing folder, and no two scenes may share a file stem (they would
/// write the same map). Names are handled as `OsStr`, so a stem that is not
/// UTF-8 keeps its bytes.
pub fn out_dir_jobs(scenes: &[PathBuf], dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "--out-dir is not an existing folder"));
    }
    let mut seen: HashMap<OsString, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(scenes.len());
    for scene in scenes {
        let stem = scene
            .file_stem()
            .ok_or_else(|| Error::file(scene, "has no file name to name its map after"))?;
        if let Some(prev) = seen.insert(stem.to_os_string(), scene) {
            return Err(Error::Config(format!(
                "{} and {} would both map to {}.tif",
                prev.display(),
                scene.display(),
                stem.to_string_lossy()
            )));
        }
        let mut name = stem.to_os_string();
        name.push(".tif");
        jobs.push((scene.clone(), dir.join(name)));
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::stitch::ChunkStitcher;

    #[test]
    fn default_readers_is_two_or_one() {
        assert_eq!(default_readers(0), 1);
        assert_eq!(default_readers(1), 1);
        assert_eq!(default_readers(2), 2);
        assert_eq!(default_readers(64), 2);
    }

    /// A plan without a scene file: a 10000 x 10000 px, 3-band scene.
    fn plan(window: usize, batch: usize) -> (InferPlan, ModelMeta) {
        let meta = ModelMeta::new(
            crate::model::Arch::Tiny,
            3,
            crate::classes::ClassTable::isprs(),
        );
        let plan = InferPlan {
            scene: SceneInfo {
                path: PathBuf::from("scene.tif"),
                size: crate::infer::window::Size {
                    width: 10000,
                    height: 10000,
                },
                band_count: 3,
                band_types: Vec::new(),
                band_type_names: Vec::new(),
                geo_transform: None,
                srs_wkt: None,
                block: crate::infer::window::Size {
                    width: 256,
                    height: 256,
                },
                has_nodata: false,
                gcps: Vec::new(),
                gcp_srs_wkt: None,
                palette: None,
            },
            output: PathBuf::from("map.tif"),
            inputs: crate::output::Inputs::new(),
            window,
            overlap: 0.25,
            batch,
            readers: 2,
            blend: Blend::Hann,
            bands: vec![1, 2, 3],
            normalize: Normalize {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            chunk: DEFAULT_CHUNK,
            confidence: false,
            probabilities: false,
            tta: crate::infer::tta::Tta::None,
            post: Post::Auto,
            creation_options: Vec::new(),
            cog: false,
            overwrite: false,
            gdal_cache_mb: 256,
            rows: (0, 10000),
            part: None,
            resume: false,
            model_digest: String::new(),
            model_path: PathBuf::from("model.safetensors"),
            aoi: None,
            aoi_digest: None,
            max_memory: None,
        };
        (plan, meta)
    }

    #[test]
    fn post_runs_on_the_device_where_the_model_does() {
        use crate::infer::tta::Tta;
        let (mut p, meta) = plan(512, 4);
        assert!(!p.post_on_device(true), "auto: the CPU stitcher on the CPU");
        assert!(p.post_on_device(false), "auto: on a GPU, there");
        p.tta = Tta::Flips;
        assert!(!p.post_on_device(false), "auto: TTA averages on the host");
        p.post = Post::Device;
        assert!(p.post_on_device(true));
        p.post = Post::Host;
        assert!(!p.post_on_device(false));
        // --post device counts the device stitcher's strip (on the host
        // when the model runs there)
        p.post = Post::Device;
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        assert_eq!(
            b.stitcher as usize,
            crate::infer::stitch_device::DeviceStitcher::bytes_for(512, TILE, DEFAULT_CHUNK, 6)
        );
    }

    #[test]
    fn memory_bound_is_the_readme_formula() {
        let (p, meta) = plan(512, 4);
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        let px = 512 * 512;
        assert_eq!(b.model, 4000 + 4 * px * 320);
        assert_eq!(b.in_flight, (2 * 4 + 2 * 2 + 2) * px * (4 * 6 + 1));
        // stride 384; 11 windows touch a 4096 px chunk, so the 7 windows a
        // reader may still cut lie in one grid row: 384 + 512 rows, 5 cells
        // of 256 rows at worst; 4096 + 512 columns, 6 cells of 1024
        assert_eq!(b.cells, (5 * 256) * (6 * 1024) * (4 * 3 + 1));
        assert_eq!(
            b.stitcher as usize,
            ChunkStitcher::bytes_for(512, TILE, DEFAULT_CHUNK, 6)
        );
        let size = p.scene.size;
        assert_eq!(
            b.writer,
            4 * 4096 * 512
                + OverviewBuilder::bytes_for(size, DEFAULT_CHUNK, &overview_factors(size))
        );
        assert_eq!(b.gdal_cache, 256 << 20);
        assert_eq!(
            b.total(),
            b.model + b.in_flight + b.cells + b.stitcher + b.writer + b.gdal_cache + b.base
        );
    }

    #[test]
    fn memory_bound_overflow_names_the_setting() {
        let (mut p, meta) = plan(1_000_000_000, 4);
        p.window = 1_000_000_000;
        let e = MemoryBound::of(&p, &meta, 1000).unwrap_err().to_string();
        assert!(
            e.contains("--window 1000000000") && e.contains("does not fit in 64 bits"),
            "{e}"
        );
        let (mut p, meta) = plan(512, 4);
        p.gdal_cache_mb = usize::MAX / 2;
        let e = MemoryBound::of(&p, &meta, 1000).unwrap_err().to_string();
        assert!(e.starts_with("--gdal-cache: "), "{e}");
        let (p, meta) = plan(512, usize::MAX / 4);
        let e = MemoryBound::of(&p, &meta, 1000).unwrap_err().to_string();
        assert!(e.contains("with batch"), "{e}");
    }

    #[test]
    fn a_bound_over_the_limit_is_refused_naming_the_largest_part() {
        let (mut p, meta) = plan(100_000, 4);
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        // no limit: accepted
        b.check(&p, &meta).unwrap();
        p.max_memory = Some(MemoryLimit {
            bytes: 8 << 30,
            from_flag: true,
        });
        let e = b.check(&p, &meta).unwrap_err().to_string();
        assert!(e.contains("more than --max-memory 8192 MiB"), "{e}");
        assert!(
            e.contains(
                "--window 100000 needs 11.6 TiB for the model (tiny activations at batch 4)"
            ),
            "{e}"
        );
        assert!(e.contains("lower --batch or --window"), "{e}");
        assert!(e.contains(&human_bytes(b.total())), "{e}");
        p.batch = 1;
        p.readers = 64;
        p.window = 512;
        p.max_memory = Some(MemoryLimit {
            bytes: 1 << 30,
            from_flag: true,
        });
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        let e = b.check(&p, &meta).unwrap_err().to_string();
        assert!(
            e.contains("the model's window 512 px needs 1212 MiB for the 194 windows in flight (batch 1, 64 reader(s)); lower --window, --batch or --readers"),
            "{e}"
        );
        // the model's own window is named as such
        let (mut p, mut meta) = plan(512, 4);
        meta.window = 512;
        p.gdal_cache_mb = 100_000;
        p.max_memory = Some(MemoryLimit {
            bytes: 1 << 30,
            from_flag: false,
        });
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        let e = b.check(&p, &meta).unwrap_err().to_string();
        assert!(
            e.contains("more than the 1024 MiB of memory available"),
            "{e}"
        );
        assert!(
            e.contains("--gdal-cache 100000 MiB is the largest part"),
            "{e}"
        );
        p.gdal_cache_mb = 256;
        p.batch = 4000;
        let b = MemoryBound::of(&p, &meta, 1000).unwrap();
        let e = b.check(&p, &meta).unwrap_err().to_string();
        assert!(
            e.contains("the model's window 512 px needs") && e.contains("at batch 4000"),
            "{e}"
        );
    }

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(300 << 20), "300 MiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn available_memory_reads_meminfo_and_cgroups() {
        let meminfo = "MemTotal:       24684000 kB\nMemFree:  1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        let files = |p: &Path| -> Option<String> {
            match p.to_str()? {
                "/sys/fs/cgroup/job/memory.max" => Some("4294967296\n".into()),
                "/sys/fs/cgroup/memory/slurm/job_1/memory.limit_in_bytes" => {
                    Some("1073741824\n".into())
                }
                "/sys/fs/cgroup/open/memory.max" => Some("max\n".into()),
                _ => None,
            }
        };
        assert_eq!(cgroup_limit("0::/job\n", &files), Some(4 << 30));
        assert_eq!(
            cgroup_limit("5:cpu:/\n4:memory:/slurm/job_1\n0::/\n", &files),
            Some(1 << 30)
        );
        assert_eq!(cgroup_limit("0::/open\n", &files), None);
        assert_eq!(cgroup_limit("0::/elsewhere\n", &files), None);
        // this machine: some figure, or none
        if let Some(b) = available_memory() {
            assert!(b > 0);
        }
    }

    #[test]
    fn chunks_cover_the_width() {
        assert_eq!(chunks(0, 512), vec![]);
        assert_eq!(chunks(1000, 512), vec![(0, 512), (512, 1000)]);
        assert_eq!(chunks(1024, 512), vec![(0, 512), (512, 1024)]);
    }

    #[test]
    fn out_dir_jobs_map_stems_and_refuse_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let scenes = vec![PathBuf::from("a/x.tif"), PathBuf::from("b/y.vrt")];
        let jobs = out_dir_jobs(&scenes, dir.path()).unwrap();
        assert_eq!(jobs[0], (scenes[0].clone(), dir.path().join("x.tif")));
        assert_eq!(jobs[1], (scenes[1].clone(), dir.path().join("y.tif")));

        let dup = vec![PathBuf::from("a/x.tif"), PathBuf::from("b/x.vrt")];
        let e = out_dir_jobs(&dup, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a/x.tif and b/x.vrt would both map to x.tif"),
            "{e}"
        );

        let e = out_dir_jobs(&scenes, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out-dir is not an existing folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn out_dir_jobs_keep_non_utf8_stems() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let scene = PathBuf::from(std::ffi::OsStr::from_bytes(b"s\xffcene.tif"));
        let jobs = out_dir_jobs(std::slice::from_ref(&scene), dir.path()).unwrap();
        assert_eq!(
            jobs[0].1.file_name().unwrap().as_bytes(),
            b"s\xffcene.tif".as_slice()
        );
    }
}
