//! Command-line flags and their resolution into library calls.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rstile::classes::ClassTable;
use rstile::infer::read::SceneInfo;
use rstile::infer::stitch::Blend;
use rstile::infer::{self, InferOptions, InferPlan, Progress};
use rstile::model::ledger::Op;
use rstile::model::{Model, ModelMeta};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "rstile",
    version,
    about = "Land-cover maps from georeferenced imagery with a fully-convolutional network"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Map a scene: stream it through a model into a land-cover GeoTIFF.
    Infer(InferArgs),
    /// Write a generated, georeferenced Vaihingen-like scene.
    Synth(SynthArgs),
    /// Create or inspect model files.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Join the parts of a split run (`infer --part`) into one map.
    Merge(MergeArgs),
    /// Train a model from a TOML config (see configs/train_synth_tiny.toml).
    Train(TrainArgs),
    /// Run on a Slurm cluster: a map split over an array job, or training.
    #[command(subcommand)]
    Slurm(SlurmCmd),
    /// Prepare a benchmark dataset (patches, features, statistics).
    #[command(subcommand)]
    Prepare(PrepareCmd),
    /// Score a model on Vaihingen areas as the ISPRS leaderboard does (full tiles, streamed).
    Eval(EvalArgs),
    /// The whole Vaihingen benchmark on a generated dataset: synth, prepare, train, eval, infer.
    Demo(DemoArgs),
}

#[derive(Args)]
struct InferArgs {
    /// The scene(s): any raster GDAL opens (GeoTIFF, COG, VRT, ...).
    #[arg(required = true)]
    scene: Vec<PathBuf>,
    /// The output map (GeoTIFF), for one scene.
    #[arg(
        short,
        long,
        required_unless_present = "out_dir",
        conflicts_with = "out_dir"
    )]
    output: Option<PathBuf>,
    /// Map each scene to DIR/STEM.tif; a scene that fails is reported at
    /// the end and the others go on.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// The model file (.safetensors).
    #[arg(short, long)]
    model: PathBuf,
    /// Window size in px [default: the model's].
    #[arg(long)]
    window: Option<usize>,
    /// Overlap between windows, a fraction of the window [default: the model's].
    #[arg(long)]
    overlap: Option<f64>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Reader threads, each with its own GDAL handle [default: min(2, threads)].
    #[arg(long)]
    readers: Option<usize>,
    /// How overlapping predictions are combined: hann, gaussian or crop.
    #[arg(long, default_value = "hann")]
    blend: Blend,
    /// 1-based input bands, e.g. 1,2,3 [default: the first N bands].
    #[arg(long, value_delimiter = ',')]
    bands: Option<Vec<usize>>,
    /// Also write MAP.confidence.tif (0-100).
    #[arg(long)]
    confidence: bool,
    /// GDAL creation option KEY=VALUE (repeatable).
    #[arg(long = "co", value_name = "KEY=VALUE")]
    co: Vec<String>,
    /// Replace an existing map.
    #[arg(long)]
    overwrite: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
    /// Write a coloured PNG preview of the map.
    #[arg(long, value_name = "PNG")]
    preview: Option<PathBuf>,
    /// Internal column chunk width in px (multiple of 512); bounds memory.
    #[arg(long)]
    chunk: Option<usize>,
    /// GDAL block cache in MiB.
    #[arg(long, default_value_t = 256)]
    gdal_cache: usize,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute part I of N (I in 0..N) into MAP.part-I-of-N.tif; `auto`
    /// reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN.
    #[arg(long, value_name = "I/N|auto")]
    part: Option<String>,
    /// Continue an unfinished run of the same command.
    #[arg(long)]
    resume: bool,
    /// Only map inside these polygons (GeoJSON, GeoPackage, Shapefile, any CRS).
    #[arg(long, value_name = "FILE")]
    aoi: Option<PathBuf>,
}

#[derive(Args)]
struct MergeArgs {
    /// The folder with the parts (MAP.part-I-of-N.tif).
    parts: PathBuf,
    /// The merged map.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing map.
    #[arg(long)]
    overwrite: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Training config (TOML) [default with --resume: RUN_DIR/config.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in RUN_DIR exactly where it stopped.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// ImageNet ResNet weights (torchvision keys; .safetensors or .pth) for the encoder.
    #[arg(long, value_name = "FILE")]
    pretrained: Option<PathBuf>,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Size as WIDTHxHEIGHT, e.g. 2048x2048.
    #[arg(long)]
    size: String,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(short, long)]
    output: PathBuf,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Write a randomly initialised model.
    New(ModelNewArgs),
    /// Print what a model file holds.
    Info {
        /// The model file.
        model: PathBuf,
    },
    /// Time the network alone: forward passes and training steps on random
    /// input.
    Bench(ModelBenchArgs),
}

#[derive(Args)]
struct ModelBenchArgs {
    /// A model file; without it, a random model of --arch with --bands and
    /// the six ISPRS classes.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Architecture of the random model.
    #[arg(long, default_value = "resnet50-fcn")]
    arch: String,
    /// Input bands of the random model.
    #[arg(long, default_value_t = 3)]
    bands: usize,
    /// Windows per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Window height and width.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Timed runs of each kind.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Also time training steps (forward, cross-entropy, backward, AdamW).
    #[arg(long)]
    train: bool,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelNewArgs {
    /// Architecture.
    #[arg(long)]
    arch: String,
    /// Number of input bands.
    #[arg(long)]
    bands: usize,
    /// Class table (TOML).
    #[arg(long)]
    classes: PathBuf,
    /// Output model file.
    #[arg(short, long)]
    output: PathBuf,
    /// Per-band mean, comma separated [default: 127.5 each].
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-band standard deviation [default: 64 each].
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Band names, comma separated.
    #[arg(long, value_delimiter = ',')]
    band_names: Option<Vec<String>>,
    /// Default window size.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Default overlap fraction.
    #[arg(long, default_value_t = 0.25)]
    overlap: f64,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace an existing file.
    #[arg(long)]
    overwrite: bool,
}

/// Parses the command line and runs it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    // GDAL errors come back as values; its own stderr printing would garble logs
    gdal::config::set_error_handler(|_, _, _| {});
    match cli.cmd {
        Cmd::Infer(a) => infer(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Synth(a) => synth(a),
        Cmd::Model(ModelCmd::New(a)) => model_new(a),
        Cmd::Model(ModelCmd::Info { model }) => model_info(model),
        Cmd::Model(ModelCmd::Bench(a)) => model_bench(a),
        Cmd::Train(a) => train(a),
        Cmd::Slurm(c) => slurm(c),
        Cmd::Prepare(PrepareCmd::Vaihingen(a)) => prepare_vaihingen(a),
        Cmd::Eval(a) => eval_vaihingen(a),
        Cmd::Demo(a) => demo(a),
    }
}

fn parse_co(co: &[String]) -> Result<Vec<(String, String)>> {
    co.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--co {kv}: expected KEY=VALUE"),
        })
        .collect()
}

fn parse_device(s: &str) -> Result<candle_core::Device> {
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let Some(n) = s
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        bail!("--device {s}: expected cpu or cuda:N");
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("--device {s}: this rstile was built without CUDA (rebuild with --features cuda)");
    }
    // cudarc loads libcuda, cuBLAS and cuRAND on first use and panics when
    // one is missing: make that the one-line error too
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let dev = std::panic::catch_unwind(|| candle_core::Device::new_cuda(n));
    std::panic::set_hook(hook);
    match dev {
        Ok(dev) => dev.with_context(|| format!("--device {s}: no usable GPU")),
        Err(panic) => {
            let msg = (panic.downcast_ref::<String>().map(String::as_str))
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("CUDA failed to start");
            // cudarc's message goes on with every file name it tried
            let msg = msg.split(" - searched").next().unwrap_or(msg);
            bail!("--device {s}: no usable GPU: {msg} (is the NVIDIA driver installed, and cuBLAS/cuRAND on LD_LIBRARY_PATH?)")
        }
    }
}

/// Sets the compute thread count before any thread pool exists.
fn set_threads(threads: Option<usize>) -> usize {
    let n = threads.filter(|&n| n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // candle and gemm size their pools from RAYON_NUM_THREADS
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rstile::model::bench::single_candle_pool();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}

struct Bar {
    bar: ProgressBar,
    start: Instant,
    pixels: std::sync::atomic::AtomicU64,
}

impl Progress for Bar {
    fn start(&self, windows: u64) {
        self.bar.set_length(windows);
    }
    fn window_done(&self, pixels: u64) {
        let p = self.pixels.fetch_add(pixels, Ordering::Relaxed) + pixels;
        self.bar.inc(1);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("{:.2} Mpx/s", p as f64 / secs / 1e6));
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn infer(a: InferArgs) -> Result<()> {
    let threads = set_threads(a.threads);
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancel.clone())?;
    }
    let device = parse_device(&a.device)?;
    let part = a.part.as_deref().map(parse_part).transpose()?;
    let jobs: Vec<(PathBuf, PathBuf)> = match (&a.output, &a.out_dir) {
        (Some(out), None) => {
            if a.scene.len() != 1 {
                bail!(
                    "{} scenes but one output; use --out-dir DIR to map several scenes",
                    a.scene.len()
                );
            }
            vec![(a.scene[0].clone(), out.clone())]
        }
        (None, Some(dir)) => {
            if !dir.is_dir() {
                bail!("{}: --out-dir is not an existing folder", dir.display());
            }
            let mut seen = std::collections::HashMap::new();
            let mut jobs = Vec::new();
            for sc in &a.scene {
                let stem = sc
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                if let Some(prev) = seen.insert(stem.clone(), sc.clone()) {
                    bail!(
                        "{} and {} would both map to {stem}.tif",
                        prev.display(),
                        sc.display()
                    );
                }
                jobs.push((sc.clone(), dir.join(format!("{stem}.tif"))));
            }
            jobs
        }
        _ => bail!("give -o MAP.tif or --out-dir DIR"),
    };
    if jobs.len() == 1 {
        let (scene, out) = &jobs[0];
        return infer_one(&a, scene, out, part, threads, &device, cancel);
    }
    let mut failed = Vec::new();
    for (i, (scene, out)) in jobs.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        if !a.quiet {
            eprintln!(
                "rstile: scene {} of {}: {}",
                i + 1,
                jobs.len(),
                scene.display()
            );
        }
        if let Err(e) = infer_one(&a, scene, out, part, threads, &device, cancel.clone()) {
            let msg = format!("{e:#}");
            eprintln!(
                "rstile: error: {}",
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            failed.push(scene.display().to_string());
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(rstile::Error::Interrupted.into());
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} scenes failed: {}",
            failed.len(),
            jobs.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn infer_one(
    a: &InferArgs,
    scene_path: &std::path::Path,
    output: &std::path::Path,
    part: Option<(usize, usize)>,
    threads: usize,
    device: &candle_core::Device,
    cancel: Arc<AtomicBool>,
) -> Result<()> {
    let meta = rstile::model::read_meta(&a.model)?;
    let scene = SceneInfo::probe(scene_path)?;
    if scene.geo_transform.is_none() || scene.srs_wkt.is_none() {
        eprintln!(
            "rstile: warning: {} has no georeferencing; the map is written without a CRS",
            scene_path.display()
        );
    }
    let opts = InferOptions {
        window: a.window,
        overlap: a.overlap,
        batch: a.batch,
        readers: a.readers.unwrap_or(threads.min(2)),
        blend: a.blend,
        bands: a.bands.clone(),
        chunk: a.chunk,
        confidence: a.confidence,
        creation_options: parse_co(&a.co)?,
        overwrite: a.overwrite,
        gdal_cache_mb: a.gdal_cache,
        part,
        resume: a.resume,
        aoi: a.aoi.clone(),
    };
    let plan = InferPlan::resolve(scene, output.to_path_buf(), &a.model, &meta, &opts)?;
    rstile::infer::write::check_output(&plan.output, a.overwrite)?;
    let model = Model::load(&a.model, device)?;
    let bound = infer::MemoryBound::of(&plan, &meta, model.num_params());
    if !a.quiet {
        eprintln!(
            "rstile: {} ({}x{} px, {} band(s)) -> {} with {} ({} classes), window {} overlap {:.2} batch {} threads {} blend {}",
            plan.scene.path.display(),
            plan.scene.size.width,
            plan.scene.size.height,
            plan.scene.band_count,
            plan.output.display(),
            meta.arch,
            meta.classes.len(),
            plan.window,
            plan.overlap,
            plan.batch,
            threads,
            plan.blend
        );
        eprintln!(
            "rstile: memory bound {:.0} MiB = model {:.0} + in-flight windows {:.0} + stitcher {:.0} + writer {:.0} + GDAL cache {:.0} + base {:.0}",
            mib(bound.total()),
            mib(bound.model),
            mib(bound.in_flight),
            mib(bound.stitcher),
            mib(bound.writer),
            mib(bound.gdal_cache),
            mib(bound.base)
        );
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} windows  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    let progress = Bar {
        bar,
        start: Instant::now(),
        pixels: Default::default(),
    };
    let report = match infer::infer(&plan, model, cancel, &progress) {
        Ok(r) => r,
        Err(e) => {
            progress.bar.finish_and_clear();
            if matches!(e, rstile::Error::Interrupted)
                && rstile::infer::write::journal_path(&plan.output).exists()
            {
                return Err(anyhow::Error::new(e).context(format!(
                    "{}: stopped; run the same command with --resume to continue",
                    plan.output.display()
                )));
            }
            return Err(e.into());
        }
    };
    progress.bar.finish_and_clear();
    if let Some(note) = &report.note {
        eprintln!("rstile: warning: {}: {note}", plan.output.display());
    }
    if report.resumed && !a.quiet {
        eprintln!(
            "rstile: continued the unfinished run of {}",
            plan.output.display()
        );
    }
    // with several scenes, each gets its own preview beside its map
    let preview = match (&a.preview, &a.out_dir) {
        (Some(_), Some(_)) => Some(output.with_extension("png")),
        (p, None) => p.clone(),
        _ => None,
    };
    if let Some(png) = &preview {
        rstile::infer::write::write_preview(&report.files.map, png, &meta.classes, 1024)?;
    }
    if !a.quiet {
        let peak = infer::peak_rss().unwrap_or(0);
        println!(
            "rstile: mapped {} px in {:.2} s ({:.2} Mpx/s), peak memory {:.0} MiB (bound {:.0} MiB), {} windows, {} skipped as nodata, {} skipped outside the AOI -> {}",
            report.pixels,
            report.seconds,
            report.pixels as f64 / report.seconds / 1e6,
            mib(peak),
            mib(report.memory_bound.total()),
            report.windows,
            report.windows_skipped,
            report.windows_outside_aoi,
            report.files.map.display()
        );
    }
    Ok(())
}

/// Parses `I/N`, or `auto` from a Slurm array job's environment.
fn parse_part(s: &str) -> Result<(usize, usize)> {
    if s == "auto" {
        let var = |k: &str| -> Result<usize> {
            let v = std::env::var(k).with_context(|| {
                format!("--part auto: {k} is not set (not inside a Slurm array job?)")
            })?;
            v.parse()
                .with_context(|| format!("--part auto: {k}={v} is not a number"))
        };
        let (id, count, min) = (
            var("SLURM_ARRAY_TASK_ID")?,
            var("SLURM_ARRAY_TASK_COUNT")?,
            var("SLURM_ARRAY_TASK_MIN")?,
        );
        if id < min {
            bail!("--part auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}");
        }
        return Ok((id - min, count));
    }
    s.split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)))
        .with_context(|| format!("--part {s}: expected I/N, e.g. 0/4, or auto"))
}

fn merge(a: MergeArgs) -> Result<()> {
    let t = Instant::now();
    let files = rstile::scale::merge::merge(&a.parts, &a.output, a.overwrite)?;
    if !a.quiet {
        println!(
            "rstile: merged {} into {} in {:.2} s",
            a.parts.display(),
            files.map.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let (w, h) = a
        .size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .with_context(|| format!("--size {}: expected WIDTHxHEIGHT, e.g. 2048x2048", a.size))?;
    let cfg = rstile::synth::SynthConfig {
        width: w,
        height: h,
        seed: a.seed,
        ..Default::default()
    };
    let t = Instant::now();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    let out = rstile::synth::synth(&cfg, &a.output, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if !a.quiet {
        println!(
            "rstile: wrote {}x{} px scene (seed {}) in {:.2} s: {}, {}, {}",
            w,
            h,
            a.seed,
            t.elapsed().as_secs_f64(),
            out.image.display(),
            out.dsm.display(),
            out.gt.display()
        );
    }
    Ok(())
}

fn model_new(a: ModelNewArgs) -> Result<()> {
    if a.output.exists() && !a.overwrite {
        bail!(
            "{}: already exists; pass --overwrite to replace it",
            a.output.display()
        );
    }
    let classes = ClassTable::from_toml_file(&a.classes)?;
    let meta = ModelMeta {
        format: 1,
        arch: a.arch.parse()?,
        bands: a.bands,
        band_names: a.band_names.unwrap_or_default(),
        mean: a.mean.unwrap_or_else(|| vec![127.5; a.bands]),
        std: a.std.unwrap_or_else(|| vec![64.0; a.bands]),
        classes,
        window: a.window,
        overlap: a.overlap,
    };
    meta.validate()?;
    let model = Model::new_random(meta, a.seed, &candle_core::Device::Cpu)?;
    model.save(&a.output)?;
    println!(
        "rstile: wrote {} ({}, {} bands, {} classes, {} parameters)",
        a.output.display(),
        a.arch,
        a.bands,
        model.meta.classes.len(),
        model.num_params()
    );
    Ok(())
}

fn model_bench(a: ModelBenchArgs) -> Result<()> {
    let threads = set_threads(a.threads);
    rstile::model::bench::reuse_freed_memory();
    let device = parse_device(&a.device)?;
    if a.batch == 0 || a.size < 32 || a.iters == 0 {
        bail!("model bench: --batch and --iters must be at least 1, --size at least 32");
    }
    let model = match &a.model {
        Some(path) => Model::load(path, &device)?,
        None => {
            let meta = ModelMeta {
                format: 1,
                arch: a.arch.parse()?,
                bands: a.bands,
                band_names: Vec::new(),
                mean: vec![0.0; a.bands],
                std: vec![1.0; a.bands],
                classes: ClassTable::isprs(),
                window: a.size,
                overlap: 0.25,
            };
            meta.validate()?;
            Model::new_random(meta, 0, &device)?
        }
    };
    let cfg = rstile::model::bench::SpeedConfig {
        batch: a.batch,
        size: a.size,
        iters: a.iters,
        warmup: a.warmup,
        train: a.train,
    };
    let sp = rstile::model::bench::measure(&model, &cfg)?;
    let px = (a.batch * a.size * a.size) as f64;
    let gflops = sp.forward_flops as f64 / 1e9;
    if a.json {
        let mut o = serde_json::json!({
            "arch": model.meta.arch,
            "bands": model.meta.bands,
            "batch": a.batch,
            "size": a.size,
            "device": a.device,
            "threads": threads,
            "forward_gflop": gflops,
            "forward_min_s": sp.forward.min_s,
            "forward_median_s": sp.forward.median_s,
        });
        if let Some(t) = sp.train_step {
            o["train_step_min_s"] = t.min_s.into();
            o["train_step_median_s"] = t.median_s.into();
        }
        if let Some([f, b, u]) = sp.train_phases {
            o["train_phases_s"] = serde_json::json!({"forward": f, "backward": b, "update": u});
        }
        if let Some(ops) = sp.train_ops {
            let m: serde_json::Map<String, serde_json::Value> = Op::ALL
                .iter()
                .zip(ops)
                .map(|(op, t)| (op.name().replace(' ', "_"), t.into()))
                .collect();
            o["train_ops_s"] = m.into();
        }
        println!("{o}");
        return Ok(());
    }
    println!(
        "{} {}x{}x{}x{} on {} ({} threads), {:.1} GFLOP per forward",
        model.meta.arch, a.batch, model.meta.bands, a.size, a.size, a.device, threads, gflops
    );
    let f = sp.forward;
    println!(
        "  forward     min {:.3} s  median {:.3} s  {:.1} GFLOP/s  {:.3} Mpx/s",
        f.min_s,
        f.median_s,
        gflops / f.min_s,
        px / f.min_s / 1e6
    );
    if let Some(t) = sp.train_step {
        println!(
            "  train step  min {:.3} s  median {:.3} s  {:.2} samples/s",
            t.min_s,
            t.median_s,
            a.batch as f64 / t.min_s
        );
    }
    if let Some([f, b, u]) = sp.train_phases {
        println!("    of which   forward+loss {f:.3} s  backward {b:.3} s  update {u:.3} s");
    }
    if let (Some([f, b, _]), Some(ops)) = (sp.train_phases, sp.train_ops) {
        let [cf, cb, nf, nb, pf, pb] = ops;
        println!(
            "    forward:   conv {cf:.3} s  batch norm {nf:.3} s  max pool {pf:.3} s  other {:.3} s",
            f - cf - nf - pf
        );
        println!(
            "    backward:  conv {cb:.3} s  batch norm {nb:.3} s  max pool {pb:.3} s  other {:.3} s",
            b - cb - nb - pb
        );
    }
    Ok(())
}

fn model_info(path: PathBuf) -> Result<()> {
    let m = rstile::model::read_meta(&path)?;
    println!("{}", path.display());
    println!("  arch      {}", m.arch);
    println!(
        "  bands     {} {}",
        m.bands,
        if m.band_names.is_empty() {
            String::new()
        } else {
            format!("({})", m.band_names.join(", "))
        }
    );
    println!("  mean      {:?}", m.mean);
    println!("  std       {:?}", m.std);
    println!("  window    {} px, overlap {}", m.window, m.overlap);
    println!("  classes   {}", m.classes.len());
    for c in &m.classes.classes {
        println!("    {:>3}  {:<8} {}", c.id, c.color, c.name);
    }
    let model = Model::load(&path, &candle_core::Device::Cpu)?;
    println!("  params    {}", model.num_params());
    Ok(())
}

struct TrainBar {
    bar: ProgressBar,
    epoch: std::cell::Cell<(usize, usize)>,
    quiet: bool,
}

impl TrainBar {
    /// A line above the bar, or on stderr when there is no terminal.
    fn line(&self, msg: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }
}

impl rstile::train::TrainProgress for TrainBar {
    fn epoch_start(&self, epoch: usize, epochs: usize, steps: usize) {
        self.epoch.set((epoch, epochs));
        self.bar.reset();
        self.bar.set_length(steps as u64);
        self.bar.set_message(format!("epoch {epoch}/{epochs}"));
    }
    fn step(&self, step: usize, loss: f64, samples_per_s: f64) {
        let (e, n) = self.epoch.get();
        self.bar.set_position(step as u64);
        self.bar.set_message(format!(
            "epoch {e}/{n}  loss {loss:.4}  {samples_per_s:.1} samples/s"
        ));
    }
    fn validating(&self) {
        let (e, n) = self.epoch.get();
        self.bar.set_message(format!("epoch {e}/{n}  validating"));
    }
    fn epoch_end(&self, m: &rstile::train::EpochMetrics) {
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        self.line(format!(
            "rstile: epoch {} loss {:.4} val loss {} OA {} mean F1 {} mIoU {} ({:.1} samples/s, {:.0} s)",
            m.epoch,
            m.train_loss,
            f(m.val_loss),
            f(m.val_overall_accuracy),
            f(m.val_mean_f1),
            f(m.val_miou),
            m.samples_per_s,
            m.seconds
        ));
    }
    fn message(&self, msg: &str) {
        self.line(format!("rstile: {msg}"));
    }
}

fn train(a: TrainArgs) -> Result<()> {
    set_threads(a.threads);
    rstile::model::bench::reuse_freed_memory();
    let device = parse_device(&a.device)?;
    let config = match (&a.config, &a.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => dir.join(rstile::train::run::CONFIG),
        (None, None) => bail!("--config FILE is needed (or --resume RUN_DIR)"),
    };
    let cfg = rstile::train::TrainConfig::from_file(&config)?;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len}  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    let progress = TrainBar {
        bar,
        epoch: std::cell::Cell::new((0, 0)),
        quiet: a.quiet,
    };
    let opts = rstile::train::RunOptions {
        resume: a.resume.clone(),
        pretrained: a.pretrained.clone(),
        device,
        max_epochs: None,
    };
    let report = rstile::train::train(&cfg, &opts, &progress)?;
    progress.bar.finish_and_clear();
    if !a.quiet {
        let f = report
            .best_mean_f1
            .map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let early = if report.stopped_early {
            " (early stop)"
        } else {
            ""
        };
        println!(
            "rstile: trained {} epoch(s){}; best validation mean F1 {} at epoch {} -> {}",
            report.history.len(),
            early,
            f,
            report.best_epoch.map_or("-".to_string(), |e| e.to_string()),
            report.run_dir.join(rstile::train::run::BEST).display()
        );
    }
    Ok(())
}

#[derive(Subcommand)]
enum SlurmCmd {
    /// Map a scene as N parts in a Slurm array job, merged by a job that runs after it.
    Infer(SlurmInferArgs),
    /// Train as one Slurm job with GPUs (`rstile train --config`).
    Train(SlurmTrainArgs),
}

/// sbatch options shared by `rstile slurm infer` and `rstile slurm train`.
#[derive(Args)]
struct SbatchArgs {
    /// Slurm partition [default: the cluster's].
    #[arg(long)]
    partition: Option<String>,
    /// Time limit per job, e.g. 02:00:00 [default: the partition's].
    #[arg(long)]
    time: Option<String>,
    /// Account to charge [default: the user's].
    #[arg(long)]
    account: Option<String>,
    /// CPUs per task; rstile then runs with as many --threads.
    #[arg(long)]
    cpus_per_task: Option<usize>,
    /// Print the scripts instead of writing and submitting them.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct SlurmInferArgs {
    /// The scene: any raster GDAL opens.
    scene: PathBuf,
    /// The merged map; scripts and logs go to MAP.slurm/, parts to MAP.parts/.
    #[arg(short, long)]
    output: PathBuf,
    /// The model file (.safetensors).
    #[arg(short, long)]
    model: PathBuf,
    /// Number of parts (row bands), one array task each.
    #[arg(long)]
    parts: usize,
    /// GPUs per array task; infer then runs with --device cuda:0.
    #[arg(long)]
    gpus_per_task: Option<usize>,
    /// Replace an existing map and parts.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    sbatch: SbatchArgs,
    /// Further `rstile infer` flags for every part, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

#[derive(Args)]
struct SlurmTrainArgs {
    /// The training configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// GPUs for the job (0 for none); train then runs with --device cuda:0.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    #[command(flatten)]
    sbatch: SbatchArgs,
    /// Further `rstile train` flags, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

fn slurm(cmd: SlurmCmd) -> Result<()> {
    use rstile::scale::slurm::{InferJob, SbatchOptions, TrainJob};
    let opts = |s: &SbatchArgs, gpus: Option<usize>| SbatchOptions {
        partition: s.partition.clone(),
        time: s.time.clone(),
        account: s.account.clone(),
        gpus,
        cpus_per_task: s.cpus_per_task,
    };
    let exe = std::env::current_exe().context("the path of the rstile binary")?;
    match cmd {
        SlurmCmd::Infer(a) => {
            let job = InferJob {
                rstile: exe,
                scene: a.scene,
                output: a.output,
                model: a.model,
                parts: a.parts,
                sbatch: opts(&a.sbatch, a.gpus_per_task),
                extra: a.extra,
                overwrite: a.overwrite,
            }
            .resolve()?;
            let l = job.layout()?;
            if a.sbatch.dry_run {
                println!("# ---- {} ----", l.array_script.display());
                print!("{}", job.array_script()?);
                println!(
                    "# ---- {} (sbatch --dependency=afterok:ARRAY_JOB --kill-on-invalid-dep=yes) ----",
                    l.merge_script.display()
                );
                print!("{}", job.merge_script()?);
                return Ok(());
            }
            let s = job.submit()?;
            println!(
                "rstile: array job {}: {} part(s) of {} into {} (scripts and logs in {})",
                s.array,
                job.parts,
                job.scene.display(),
                l.parts_dir.display(),
                l.slurm_dir.display()
            );
            println!(
                "rstile: merge job {}: after array job {} succeeds -> {}",
                s.merge,
                s.array,
                l.output.display()
            );
        }
        SlurmCmd::Train(a) => {
            if !a.config.exists() {
                bail!("{}: no such config file", a.config.display());
            }
            let job = TrainJob {
                rstile: exe,
                config: rstile::scale::slurm::absolute(&a.config)?,
                workdir: std::env::current_dir().context("the working directory")?,
                sbatch: opts(&a.sbatch, Some(a.gpus)),
                extra: a.extra,
            };
            if a.sbatch.dry_run {
                println!(
                    "# ---- {} ----",
                    job.slurm_dir().join("train.sbatch").display()
                );
                print!("{}", job.script()?);
                return Ok(());
            }
            let (id, script) = job.submit()?;
            println!(
                "rstile: train job {id}: {} (log in {})",
                script.display(),
                job.slurm_dir().display()
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum PrepareCmd {
    /// ISPRS Vaihingen: 5-feature patches (NIR, R, G, nDSM, NDVI) as the course cut them.
    Vaihingen(PrepareVaihingenArgs),
}

#[derive(Args)]
struct PrepareVaihingenArgs {
    /// The ISPRS archive (top/, dsm/, gts_*/) or a folder of the course's vaihingen_N.hdf5.
    #[arg(long)]
    data: PathBuf,
    /// Output folder for vaihingen_train.hdf5, vaihingen_val.hdf5 and vaihingen_meta.json.
    #[arg(long)]
    out: PathBuf,
    /// course, isprs, or a TOML file with `train = [..]` and `val = [..]`.
    #[arg(long, default_value = "course")]
    split: String,
    /// The course's factor: stride = int(patch * overlap) (0.6: 153 px for 256 px patches).
    #[arg(long, default_value_t = 0.6)]
    overlap: f64,
    /// Patch size in px.
    #[arg(long, default_value_t = 256)]
    patch: usize,
    /// Radius in px of the ground estimate (morphological opening) for the nDSM.
    #[arg(long, default_value_t = rstile::vaihingen::DEFAULT_GROUND_RADIUS)]
    ground_radius: usize,
    /// Also write memory-mappable copies vaihingen_<split>.bin (+ .bin.json).
    #[arg(long)]
    raw: bool,
}

fn prepare_vaihingen(a: PrepareVaihingenArgs) -> Result<()> {
    use rstile::vaihingen::{prepare, PrepareOptions, Split};
    let mut opts = PrepareOptions::new(a.data, a.out);
    opts.split = Split::parse(&a.split)?;
    opts.overlap = a.overlap;
    opts.patch = a.patch;
    opts.ground_radius = a.ground_radius;
    opts.raw = a.raw;
    opts.progress = true;
    let t0 = Instant::now();
    let s = prepare(&opts)?;
    for n in &s.notes {
        eprintln!("rstile: note: {n}");
    }
    for sp in &s.splits {
        eprintln!(
            "{}: {} patches from areas {:?} -> {}",
            sp.name,
            sp.patches,
            sp.areas.iter().map(|x| x.area).collect::<Vec<_>>(),
            sp.file.display()
        );
        println!("Generated {} samples!", sp.patches);
    }
    eprintln!(
        "prepared in {:.1} s ({} layout, split {}, patch {} px, stride {} px)",
        t0.elapsed().as_secs_f64(),
        s.layout,
        s.split,
        s.patch,
        s.stride
    );
    Ok(())
}

#[derive(Args)]
struct EvalArgs {
    /// The model file (.safetensors): 5 input bands, the ISPRS classes.
    #[arg(long)]
    model: PathBuf,
    /// The ISPRS archive or a folder of the course's vaihingen_N.hdf5.
    #[arg(long)]
    data: PathBuf,
    /// Areas to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30,32")]
    areas: Vec<u16>,
    /// Score against the full reference instead of the eroded one.
    #[arg(long)]
    full_reference: bool,
    /// Output folder: map_areaN.tif, eval.md, eval.json.
    #[arg(long)]
    out: PathBuf,
    /// Radius in px of the nDSM ground estimate (as in prepare).
    #[arg(long, default_value_t = rstile::vaihingen::DEFAULT_GROUND_RADIUS)]
    ground_radius: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Keep the 5-band feature rasters (features_areaN.tif).
    #[arg(long)]
    keep_features: bool,
}

fn eval_vaihingen(a: EvalArgs) -> Result<()> {
    use rstile::vaihingen::eval::{evaluate, EvalOptions};
    rstile::model::bench::single_candle_pool();
    let mut o = EvalOptions::new(a.model, a.data, a.out);
    o.areas = a.areas;
    o.full_reference = a.full_reference;
    o.ground_radius = a.ground_radius;
    o.batch = a.batch;
    o.keep_features = a.keep_features;
    let t0 = Instant::now();
    let s = evaluate(&o)?;
    let table = s.overall.to_markdown(&ClassTable::isprs());
    println!("{}", table.split("\n\n").next().unwrap_or(&table));
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1}", 100.0 * v));
    eprintln!(
        "mean F1 {} mIoU {} over areas {:?} ({} reference) in {:.1} s; report {} and {}",
        pct(s.overall.mean_f1),
        pct(s.overall.miou),
        s.areas.keys().collect::<Vec<_>>(),
        s.reference,
        t0.elapsed().as_secs_f64(),
        s.markdown.display(),
        s.json.display()
    );
    Ok(())
}

#[derive(Args)]
struct DemoArgs {
    /// Output folder (replaced if it holds an earlier demo).
    #[arg(long, default_value = "rstile-demo")]
    out: PathBuf,
    /// Training budget in seconds (stops after the epoch in which it runs out).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of the generated areas and of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Replace an output folder that is not empty and not an earlier demo's.
    #[arg(long)]
    overwrite: bool,
    /// Print only the table and the files written.
    #[arg(short, long)]
    quiet: bool,
}

fn demo(a: DemoArgs) -> Result<()> {
    set_threads(a.threads);
    let mut o = rstile::vaihingen::demo::DemoOptions::new(&a.out);
    o.seconds = a.seconds;
    o.seed = a.seed;
    o.overwrite = a.overwrite;
    let quiet = a.quiet;
    let log = move |msg: &str| {
        if !quiet {
            eprintln!("rstile: demo: {msg}");
        }
    };
    let s = rstile::vaihingen::demo::run(&o, &log)?;
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1}", 100.0 * v));
    println!(
        "Vaihingen-shaped demo: tiny FCN, {} epoch(s) in {:.0} s, areas {:?}, {} reference (F1 per class and overall accuracy, %):\n",
        s.history.len(),
        s.step_seconds[2],
        o.val_areas,
        s.eval.reference
    );
    println!("{}\n", s.table);
    println!(
        "mean F1 {} (5 classes), mIoU {} (6 classes)",
        pct(s.eval.overall.mean_f1),
        pct(s.eval.overall.miou)
    );
    println!("rstile: demo wrote:");
    let files: Vec<(&str, PathBuf)> = vec![
        ("dataset (ISPRS layout)", s.data.clone()),
        ("prepared patches", s.prepared_dir.clone()),
        ("training config", s.config.clone()),
        ("training run", s.run_dir.clone()),
        ("model", s.model.clone()),
        ("evaluation report", s.eval.markdown.clone()),
        ("evaluation JSON", s.eval.json.clone()),
        ("map", s.map.map.clone()),
        ("QGIS style", s.map.qml.clone()),
        ("map preview", s.map.preview.clone()),
        ("reference preview", s.map.reference_preview.clone()),
    ];
    for (what, p) in files {
        println!("  {what:<24} {}", p.display());
    }
    for p in &s.eval.maps {
        println!("  {:<24} {}", "evaluated map", p.display());
    }
    println!(
        "rstile: demo finished in {:.1} s (synth {:.1}, prepare {:.1}, train {:.1}, eval {:.1}, infer {:.1})",
        s.seconds,
        s.step_seconds[0],
        s.step_seconds[1],
        s.step_seconds[2],
        s.step_seconds[3],
        s.step_seconds[4]
    );
    Ok(())
}
