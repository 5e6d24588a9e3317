//! Command-line flags and their resolution into library calls.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rstile::classes::ClassTable;
use rstile::model::{Model, ModelMeta};
use rstile::pipeline::{self, InferOptions, InferPlan, Progress};
use rstile::read::SceneInfo;
use rstile::stitch::Blend;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "rstile", version, about = "Land-cover maps from georeferenced imagery with a fully-convolutional network")]
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
}

#[derive(Args)]
struct InferArgs {
    /// The scene: any raster GDAL opens (GeoTIFF, COG, VRT, ...).
    scene: PathBuf,
    /// The output map (GeoTIFF).
    #[arg(short, long)]
    output: PathBuf,
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
        Cmd::Synth(a) => synth(a),
        Cmd::Model(ModelCmd::New(a)) => model_new(a),
        Cmd::Model(ModelCmd::Info { model }) => model_info(model),
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
    let Some(n) = s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) else {
        bail!("--device {s}: expected cpu or cuda:N");
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("--device {s}: this rstile was built without CUDA (rebuild with --features cuda)");
    }
    candle_core::Device::new_cuda(n).with_context(|| format!("--device {s}: no usable GPU"))
}

/// Sets the compute thread count before any thread pool exists.
fn set_threads(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // candle and gemm size their pools from RAYON_NUM_THREADS
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
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
        self.bar.set_message(format!("{:.2} Mpx/s", p as f64 / secs / 1e6));
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
    rstile::write::check_output(&a.output, a.overwrite)?;
    let meta = rstile::model::read_meta(&a.model)?;
    let scene = SceneInfo::probe(&a.scene)?;
    if scene.geo_transform.is_none() || scene.srs_wkt.is_none() {
        eprintln!(
            "rstile: warning: {} has no georeferencing; the map is written without a CRS",
            a.scene.display()
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
    };
    let plan = InferPlan::resolve(scene, a.output.clone(), &meta, &opts)?;
    let model = Model::load(&a.model, &device)?;
    let bound = pipeline::MemoryBound::of(&plan, &meta, model.num_params());
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
    let report = pipeline::infer(&plan, model, cancel, &progress)?;
    progress.bar.finish_and_clear();
    if let Some(png) = &a.preview {
        rstile::write::write_preview(&report.files.map, png, &meta.classes, 1024)?;
    }
    if !a.quiet {
        let peak = pipeline::peak_rss().unwrap_or(0);
        println!(
            "rstile: mapped {} px in {:.2} s ({:.2} Mpx/s), peak memory {:.0} MiB (bound {:.0} MiB), {} windows, {} skipped as nodata -> {}",
            report.pixels,
            report.seconds,
            report.pixels as f64 / report.seconds / 1e6,
            mib(peak),
            mib(report.memory_bound.total()),
            report.windows,
            report.windows_skipped,
            report.files.map.display()
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
        bail!("{}: already exists; pass --overwrite to replace it", a.output.display());
    }
    let classes = ClassTable::from_toml_file(&a.classes)?;
    let meta = ModelMeta {
        format: 1,
        arch: a.arch.clone(),
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

fn model_info(path: PathBuf) -> Result<()> {
    let m = rstile::model::read_meta(&path)?;
    println!("{}", path.display());
    println!("  arch      {}", m.arch);
    println!("  bands     {} {}", m.bands, if m.band_names.is_empty() { String::new() } else { format!("({})", m.band_names.join(", ")) });
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
