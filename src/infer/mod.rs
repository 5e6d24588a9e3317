//! The streaming pipeline: reader(s) → window/normalise → batch → model →
//! stitch → writer, each stage on its own thread(s), joined by bounded
//! crossbeam channels.
//!
//! Order without a reorder buffer (the gzp idea): the dispatcher walks the
//! windows in the stitcher's order and, for each, sends the job to the
//! readers and a one-shot receiver to the stitcher, in that order. Readers
//! and the model may finish windows in any order and batch them in any
//! composition; the stitcher simply waits on the receivers in submission
//! order. Because the model is batch-invariant and the stitcher sums in grid
//! order, the map is identical for any thread count or batch size.
//!
//! In-flight data is bounded by the channel capacities: at most `queue`
//! windows are between the dispatcher and the stitcher, so at most that many
//! inputs or predictions exist at once. [`MemoryBound`] adds it all up.
//!
//! The scene is processed in column chunks of `chunk` px (a multiple of the
//! 512 px output tile) so that the stitcher's strip does not grow with the
//! scene width; windows that straddle a chunk border are computed for both
//! chunks. Nothing in the pipeline grows with the scene size.

pub mod read;
pub mod stitch;
pub mod window;
pub mod write;

use crate::error::{Error, Result};
use crate::infer::read::{Normalize, Reader, SceneInfo, WindowData};
use crate::infer::stitch::{Band, Blend, ChunkStitcher, Prediction, Region};
use crate::infer::window::{Window, WindowGrid};
use crate::infer::write::{MapFiles, MapSpec, MapWriter, TILE};
use crate::model::{Model, ModelMeta};
use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    /// GDAL block cache, MiB.
    pub gdal_cache_mb: usize,
    /// Output rows `[y0, y1)`: the whole scene, or one part of a split run.
    pub rows: (usize, usize),
    /// `Some((i, n))` for part `i` of `n`.
    pub part: Option<(usize, usize)>,
    /// Continue an unfinished run of the same settings.
    pub resume: bool,
    /// Digest of the model file, so a resume cannot mix models.
    pub model_digest: String,
    /// Only windows touching this area are computed; pixels outside are nodata.
    pub aoi: Option<Arc<crate::scale::aoi::Aoi>>,
    /// Digest of the AOI file.
    pub aoi_digest: Option<String>,
}

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
    pub memory_bound: MemoryBound,
}

/// The peak-memory bound of a configuration, in bytes, by part.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBound {
    pub model: u64,
    pub in_flight: u64,
    pub stitcher: u64,
    pub writer: u64,
    pub gdal_cache: u64,
    pub base: u64,
}

impl MemoryBound {
    /// Sum of the parts.
    pub fn total(&self) -> u64 {
        self.model + self.in_flight + self.stitcher + self.writer + self.gdal_cache + self.base
    }

    /// The bound for a plan and a model. See the README for the formula.
    pub fn of(plan: &InferPlan, meta: &ModelMeta, params: usize) -> MemoryBound {
        let px = (plan.window * plan.window) as u64;
        let bands = plan.bands.len() as u64;
        let k = meta.classes.len() as u64;
        let q = queue_len(plan) as u64;
        // each in-flight window holds its input (or its prediction) and mask
        let per_window = px * (4 * bands.max(k) + 1);
        let in_flight = (q + plan.readers as u64) * per_window;
        let model =
            params as u64 * 4 + plan.batch as u64 * px * activation_bytes_per_px(meta.arch.name());
        let width = plan.chunk.min(plan.scene.size.width.next_multiple_of(TILE));
        let stitcher = ChunkStitcher::bytes_for(plan.window, TILE, width, k as usize) as u64;
        let writer = 4 * (width * TILE) as u64 * (1 + plan.confidence as u64);
        MemoryBound {
            model,
            in_flight,
            stitcher,
            writer,
            gdal_cache: plan.gdal_cache_mb as u64 * (1 << 20),
            // the process with a tiny configuration (linear, batch 1, 16 MiB
            // cache) peaks at 139 MiB: binary, GDAL and driver state, allocator
            base: 128 << 20,
        }
    }
}

/// Peak activation memory of one forward pass per input pixel, in bytes,
/// measured on the CPU (f32, eval mode): the growth of peak RSS from batch 1
/// to batch 5 at 256 x 256 windows, rounded up (linear 185, tiny 254,
/// resnet18-fcn 1418, resnet50-fcn 5860 bytes per pixel).
pub fn activation_bytes_per_px(arch: &str) -> u64 {
    match arch {
        "linear" => 256,
        "tiny" => 320,
        a if a.starts_with("resnet18") || a.starts_with("resnet34") => 1600,
        _ => 6144,
    }
}

/// Windows allowed between the dispatcher and the stitcher.
fn queue_len(plan: &InferPlan) -> usize {
    2 * plan.batch + 2 * plan.readers
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
    put("blend", plan.blend.to_string());
    put("chunk", plan.chunk.to_string());
    put("confidence", plan.confidence.to_string());
    put("rows", format!("{}..{}", plan.rows.0, plan.rows.1));
    put(
        "aoi",
        plan.aoi_digest.clone().unwrap_or_else(|| "none".into()),
    );
    m
}

/// FNV-1a digest of a file, to recognise the same model file.
pub fn file_digest(path: &std::path::Path) -> Result<String> {
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

/// The rows of part `i` of `n`: whole 512-row tile rows, split evenly.
pub fn part_rows(height: usize, i: usize, n: usize) -> Result<(usize, usize)> {
    let tiles = height.div_ceil(TILE);
    if n == 0 || i >= n {
        return Err(Error::Config(format!(
            "--part {i}/{n}: the part must be in 0..{n}"
        )));
    }
    if n > tiles {
        return Err(Error::Config(format!(
            "--part {i}/{n}: the scene has only {tiles} row(s) of {TILE} px tiles; split it into at most {tiles} parts"
        )));
    }
    let a = i * tiles / n;
    let b = (i + 1) * tiles / n;
    Ok(((a * TILE).min(height), (b * TILE).min(height)))
}

/// Progress callbacks, so the library knows no terminal.
pub trait Progress: Send + Sync {
    fn start(&self, _windows: u64) {}
    fn window_done(&self, _pixels: u64) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

enum Slot {
    Skipped,
    Done { probs: Vec<f32>, valid: Vec<u8> },
}

type SlotResult = Result<Slot>;

enum Order {
    Window(Window, Receiver<SlotResult>),
    EndRow(usize),
    EndChunk,
}

struct Job {
    window: Window,
    reply: Sender<SlotResult>,
}

struct ModelJob {
    data: WindowData,
    reply: Sender<SlotResult>,
}

/// Runs the whole pipeline for `plan` with `model`, on `device`.
pub fn infer(
    plan: &InferPlan,
    model: Model,
    cancel: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<InferReport> {
    let t0 = Instant::now();
    let _ = gdal::config::set_config_option("GDAL_CACHEMAX", &plan.gdal_cache_mb.to_string());
    let grid = WindowGrid::new(plan.scene.size, plan.window, plan.overlap)
        .map_err(|e| Error::Config(format!("window settings: {e}")))?;
    let meta = model.meta.clone();
    let bound = MemoryBound::of(plan, &meta, model.num_params());
    let settings = settings(plan, &meta);
    let mut metadata = Vec::new();
    if let Some((i, n)) = plan.part {
        metadata.push(("RSTILE_PART".to_string(), format!("{i}/{n}")));
        metadata.push((
            "RSTILE_ROWS".to_string(),
            format!("{},{}", plan.rows.0, plan.rows.1),
        ));
        let mut shared = settings.clone();
        shared.remove("rows");
        metadata.push((
            "RSTILE_SETTINGS".to_string(),
            serde_json::to_string(&shared).expect("json"),
        ));
        metadata.push((
            "RSTILE_CLASSES".to_string(),
            serde_json::to_string(&meta.classes).expect("json"),
        ));
        metadata.push((
            "RSTILE_SCENE".to_string(),
            serde_json::json!({
                "width": plan.scene.size.width,
                "height": plan.scene.size.height,
                "geo_transform": plan.scene.geo_transform,
            })
            .to_string(),
        ));
    }
    let mut writer = MapWriter::create(MapSpec {
        path: plan.output.clone(),
        size: plan.scene.size,
        geo_transform: plan.scene.geo_transform,
        srs_wkt: plan.scene.srs_wkt.clone(),
        classes: meta.classes.clone(),
        creation_options: plan.creation_options.clone(),
        overwrite: plan.overwrite,
        confidence: plan.confidence,
        rows: plan.rows,
        overviews: plan.part.is_none(),
        metadata,
        settings,
        resume: plan.resume,
    })?;
    let resumed = writer.resumed();
    let note = writer.note().map(str::to_string);
    let regions = regions(&grid, plan.chunk, plan.rows, &|x0| writer.rows_done(x0));
    let total = window_count(&grid, &regions);
    progress.start(total);

    // readers open their handles up front, so a bad scene fails before work
    let mut readers = Vec::with_capacity(plan.readers);
    for _ in 0..plan.readers {
        readers.push(Reader::open(
            &plan.scene.path,
            &plan.bands,
            plan.normalize.clone(),
            grid,
            plan.aoi.clone(),
        )?);
    }

    let abort = Arc::new(AtomicBool::new(false));
    let skipped = Arc::new(AtomicU64::new(0));
    let outside = Arc::new(AtomicU64::new(0));
    let q = queue_len(plan);
    let (job_tx, job_rx) = bounded::<Job>(2 * plan.readers);
    let (model_tx, model_rx) = bounded::<ModelJob>(2 * plan.batch);
    let (order_tx, order_rx) = bounded::<Order>(q);
    let (band_tx, band_rx) = bounded::<Band>(2);

    let class_ids: Vec<u8> = meta.classes.classes.iter().map(|c| c.id).collect();
    let result = std::thread::scope(|s| -> Result<MapFiles> {
        // dispatcher
        let d_abort = abort.clone();
        let d_cancel = cancel.clone();
        let d_regions = regions.clone();
        let d_outside = outside.clone();
        let aoi = plan.aoi.clone();
        let dispatcher = spawn(s, "rstile-dispatch", move || {
            for reg in d_regions {
                for r in grid.rows_touching(reg.y0, reg.y1) {
                    for c in grid.cols_touching(reg.x0, reg.x1) {
                        if d_abort.load(Ordering::Relaxed) || d_cancel.load(Ordering::Relaxed) {
                            return;
                        }
                        let (tx, rx) = bounded(1);
                        let w = grid.window(c, r);
                        if order_tx.send(Order::Window(w, rx)).is_err() {
                            return;
                        }
                        if aoi.as_ref().is_some_and(|a| !a.touches(&grid.clip(&w))) {
                            d_outside.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send(Ok(Slot::Skipped));
                            continue;
                        }
                        if job_tx
                            .send(Job {
                                window: w,
                                reply: tx,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    if order_tx.send(Order::EndRow(r)).is_err() {
                        return;
                    }
                }
                if order_tx.send(Order::EndChunk).is_err() {
                    return;
                }
            }
        });

        // readers
        let mut reader_handles = Vec::new();
        for mut reader in readers.drain(..) {
            let job_rx = job_rx.clone();
            let model_tx = model_tx.clone();
            let abort = abort.clone();
            let skipped = skipped.clone();
            reader_handles.push(spawn(s, "rstile-read", move || {
                for job in job_rx.iter() {
                    match reader.read_window(&job.window) {
                        Ok(data) if !data.any_valid => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            let _ = job.reply.send(Ok(Slot::Skipped));
                        }
                        Ok(data) => {
                            if model_tx
                                .send(ModelJob {
                                    data,
                                    reply: job.reply,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            let _ = job.reply.send(Err(e));
                            return;
                        }
                    }
                }
            }));
        }
        drop(job_rx);
        drop(model_tx);

        // model
        let m_abort = abort.clone();
        let batch = plan.batch;
        let nb = plan.bands.len();
        let n = plan.window;
        let model_handle = spawn(s, "rstile-model", move || {
            let mut jobs: Vec<ModelJob> = Vec::with_capacity(batch);
            loop {
                jobs.clear();
                match model_rx.recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => return,
                }
                while jobs.len() < batch {
                    match model_rx.recv_timeout(Duration::from_millis(5)) {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                match run_batch(&model, &jobs, nb, n) {
                    Ok(outs) => {
                        for (job, probs) in jobs.drain(..).zip(outs) {
                            let valid = job.data.valid;
                            let _ = job.reply.send(Ok(Slot::Done { probs, valid }));
                        }
                    }
                    Err(e) => {
                        m_abort.store(true, Ordering::Relaxed);
                        let msg = e.to_string();
                        for job in jobs.drain(..) {
                            let _ = job
                                .reply
                                .send(Err(Error::Config(format!("model forward failed: {msg}"))));
                        }
                        return;
                    }
                }
            }
        });

        // stitcher
        let s_cancel = cancel.clone();
        let s_abort = abort.clone();
        let stitcher = spawn(s, "rstile-stitch", move || -> Result<()> {
            let mut chunk_iter = regions.clone().into_iter();
            let new_stitcher = |reg: Region| {
                ChunkStitcher::new(
                    grid,
                    plan.blend,
                    class_ids.clone(),
                    reg,
                    TILE,
                    plan.confidence,
                )
            };
            let mut st = chunk_iter.next().map(new_stitcher);
            let fail = |e: Error| {
                s_abort.store(true, Ordering::Relaxed);
                Err(e)
            };
            for msg in order_rx.iter() {
                if s_cancel.load(Ordering::Relaxed) {
                    return fail(Error::Interrupted);
                }
                let cur = st.as_mut().expect("stitcher present");
                match msg {
                    Order::Window(w, rx) => {
                        let slot = match rx.recv() {
                            Ok(r) => r,
                            Err(_) if s_cancel.load(Ordering::Relaxed) => {
                                return fail(Error::Interrupted)
                            }
                            Err(_) => {
                                return fail(Error::Config("a pipeline stage stopped early".into()))
                            }
                        };
                        match slot {
                            Ok(Slot::Skipped) => cur.add(&w, None),
                            Ok(Slot::Done { probs, valid }) => cur.add(
                                &w,
                                Some(Prediction {
                                    probs: &probs,
                                    valid: &valid,
                                }),
                            ),
                            Err(e) => return fail(e),
                        }
                        let clip = grid.clip(&w);
                        progress.window_done(clip.area() as u64);
                    }
                    Order::EndRow(r) => {
                        for b in cur.end_row(r) {
                            if band_tx.send(b).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Order::EndChunk => {
                        let done = st.take().expect("stitcher present");
                        for b in done.finish() {
                            if band_tx.send(b).is_err() {
                                return Ok(());
                            }
                        }
                        st = chunk_iter.next().map(new_stitcher);
                        if st.is_none() {
                            return Ok(());
                        }
                    }
                }
            }
            if s_cancel.load(Ordering::Relaxed) {
                return fail(Error::Interrupted);
            }
            Ok(())
        });

        // writer, on this thread
        let mut write_err = None;
        for band in band_rx.iter() {
            if let Err(e) = writer.write(&band) {
                abort.store(true, Ordering::Relaxed);
                write_err = Some(e);
                break;
            }
        }
        drop(band_rx);
        let st_res = join(stitcher);
        join(dispatcher);
        for h in reader_handles {
            join(h);
        }
        join(model_handle);
        if cancel.load(Ordering::Relaxed) {
            writer.keep_for_resume();
            return Err(Error::Interrupted);
        }
        if let Some(e) = write_err {
            return Err(e);
        }
        st_res?;
        writer.finish()
    })?;

    Ok(InferReport {
        note,
        resumed,
        files: result,
        pixels: (plan.scene.size.width * plan.scene.size.height) as u64,
        seconds: t0.elapsed().as_secs_f64(),
        windows: total,
        windows_skipped: skipped.load(Ordering::Relaxed),
        windows_outside_aoi: outside.load(Ordering::Relaxed),
        memory_bound: bound,
    })
}

/// Spawns a named scoped thread (names show in `top -H` and `perf`).
fn spawn<'scope, 'env, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .expect("spawn a pipeline thread")
}

/// Joins a scoped thread, re-raising its panic.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn run_batch(model: &Model, jobs: &[ModelJob], bands: usize, n: usize) -> Result<Vec<Vec<f32>>> {
    let b = jobs.len();
    let mut input = Vec::with_capacity(b * bands * n * n);
    for j in jobs {
        input.extend_from_slice(&j.data.input);
    }
    let x = Tensor::from_vec(input, (b, bands, n, n), &Device::Cpu)?.to_device(model.device())?;
    let probs = model.predict_probs(&x)?;
    let per = probs.len() / b;
    Ok(probs.chunks(per).map(|c| c.to_vec()).collect())
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What the user asked for; `None` means "the model's default".
#[derive(Debug, Clone)]
pub struct InferOptions {
    pub window: Option<usize>,
    pub overlap: Option<f64>,
    pub batch: usize,
    pub readers: usize,
    pub blend: Blend,
    pub bands: Option<Vec<usize>>,
    pub chunk: Option<usize>,
    pub confidence: bool,
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    pub gdal_cache_mb: usize,
    /// `Some((i, n))`: compute part `i` of `n`.
    pub part: Option<(usize, usize)>,
    pub resume: bool,
    /// A polygon file limiting the map.
    pub aoi: Option<PathBuf>,
}

impl Default for InferOptions {
    /// The command line's defaults: the model's window and overlap, batch 4,
    /// 2 readers, Hann blending, the first bands, a 256 MiB GDAL cache.
    fn default() -> Self {
        InferOptions {
            window: None,
            overlap: None,
            batch: 4,
            readers: 2,
            blend: Blend::Hann,
            bands: None,
            chunk: None,
            confidence: false,
            creation_options: Vec::new(),
            overwrite: false,
            gdal_cache_mb: 256,
            part: None,
            resume: false,
            aoi: None,
        }
    }
}

/// The file of part `i` of `n` of the map `map`: `MAP.part-I-of-N.tif`.
pub fn part_path(map: &std::path::Path, i: usize, n: usize) -> PathBuf {
    let stem = map
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    map.with_file_name(format!("{stem}.part-{i}-of-{n}.tif"))
}

/// Default column chunk: 4096 px.
pub const DEFAULT_CHUNK: usize = 4096;

impl InferPlan {
    /// Checks the scene against the model and resolves defaults.
    pub fn resolve(
        scene: SceneInfo,
        output: PathBuf,
        model_path: &std::path::Path,
        meta: &ModelMeta,
        o: &InferOptions,
    ) -> Result<InferPlan> {
        let path = scene.path.clone();
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
            if !crate::infer::read::supported_type(t) {
                return Err(Error::file(
                    &path,
                    format!("band {b} has type {t:?}, which rstile cannot read"),
                ));
            }
        }
        let window = o.window.unwrap_or(meta.window);
        let overlap = o.overlap.unwrap_or(meta.overlap);
        WindowGrid::new(scene.size, window, overlap)
            .map_err(|e| Error::Config(format!("window settings: {e}")))?;
        if o.batch == 0 || o.readers == 0 {
            return Err(Error::Config(
                "--batch and --readers must be at least 1".into(),
            ));
        }
        let chunk = o.chunk.unwrap_or(DEFAULT_CHUNK);
        if chunk == 0 || chunk % TILE != 0 {
            return Err(Error::Config(format!(
                "--chunk must be a positive multiple of {TILE}"
            )));
        }
        let rows = match o.part {
            Some((i, n)) => part_rows(scene.size.height, i, n)?,
            None => (0, scene.size.height),
        };
        let output = match o.part {
            Some((i, n)) => part_path(&output, i, n),
            None => output,
        };
        let aoi = o
            .aoi
            .as_deref()
            .map(|p| crate::scale::aoi::Aoi::load(p, &scene).map(Arc::new))
            .transpose()?;
        let aoi_digest = o.aoi.as_deref().map(file_digest).transpose()?;
        Ok(InferPlan {
            aoi,
            aoi_digest,
            rows,
            part: o.part,
            resume: o.resume,
            model_digest: file_digest(model_path)?,
            scene,
            output,
            window,
            overlap,
            batch: o.batch,
            readers: o.readers,
            blend: o.blend,
            bands,
            normalize: Normalize {
                mean: meta.mean.clone(),
                std: meta.std.clone(),
            },
            chunk,
            confidence: o.confidence,
            creation_options: o.creation_options.clone(),
            overwrite: o.overwrite,
            gdal_cache_mb: o.gdal_cache_mb,
        })
    }
}
