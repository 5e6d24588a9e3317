//! `rstile infer`: map scenes with a model.

use super::{mib, process, value_enum, DeviceArg};
use anyhow::{bail, Result};
use clap::Args;
use rstile::infer::read::SceneInfo;
use rstile::infer::stitch::Blend;
use rstile::infer::{self, InferOptions, InferPlan, Progress};
use rstile::model::Model;
use rstile::scale::parts::Part;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

value_enum!(BlendArg, Blend, help);
value_enum!(PostArg, rstile::infer::Post, help);

#[derive(Args)]
pub struct InferArgs {
    /// The scene(s): any raster GDAL opens (GeoTIFF, COG, VRT,
    /// 'STACIT:"items.json":asset=NAME', ...).
    #[arg(required_unless_present_any = ["stac", "stack"])]
    scene: Vec<PathBuf>,
    /// Map asset --asset of a local STAC ItemCollection (JSON) instead of a
    /// scene: the mosaic of its items (GDAL's STACIT driver).
    #[arg(long, value_name = "ITEMS.json", requires = "asset", conflicts_with_all = ["scene", "stack", "out_dir"])]
    stac: Option<PathBuf>,
    /// The asset of --stac to map.
    #[arg(long, value_name = "NAME", requires = "stac")]
    asset: Option<String>,
    /// Map these rasters' bands stacked in order instead of a scene (say
    /// Sentinel-2's 10 m and 20 m bands): one grid, their union at the
    /// finest resolution, coarser ones resampled by nearest neighbour (a VRT
    /// built in memory, as gdalbuildvrt -separate -resolution highest).
    #[arg(long, value_name = "A.tif,B.tif,...", value_delimiter = ',', conflicts_with_all = ["scene", "out_dir"])]
    stack: Vec<PathBuf>,
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
    #[command(flatten)]
    map: MapFlags,
    /// Replace an existing map.
    #[arg(long)]
    overwrite: bool,
    /// Write the map (and its side rasters) as a Cloud Optimized GeoTIFF:
    /// GDAL's COG driver rewrites the finished file with its overviews.
    #[arg(long, conflicts_with = "part")]
    cog: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
    /// Print where the time went: per stage, busy time by phase and the
    /// time spent waiting, and the stage that limits the run.
    #[arg(long)]
    profile: bool,
    /// Print the run's summary as one JSON object on stdout (with the
    /// profile) instead of the summary line.
    #[arg(long)]
    json: bool,
    /// Write a coloured PNG preview of the map.
    #[arg(long, value_name = "PNG")]
    preview: Option<PathBuf>,
    /// Compute part I of N (I in 0..N) into MAP.part-I-of-N.tif; `auto`
    /// reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN.
    #[arg(long, value_name = "I/N|auto")]
    part: Option<String>,
    /// Continue an unfinished run of the same command.
    #[arg(long)]
    resume: bool,
}

/// The flags that decide how a map is computed, shared with `rstile slurm
/// infer`, which passes them on to every part.
#[derive(Args)]
#[command(next_help_heading = "Map options (passed on by `rstile slurm infer`)")]
pub struct MapFlags {
    /// The model file (.safetensors).
    #[arg(short, long)]
    pub model: PathBuf,
    /// The legend, in the format of configs/classes/ [default: the model's].
    #[arg(long, value_name = "FILE.toml")]
    classes: Option<PathBuf>,
    /// Per-band mean subtracted before the model, in the raster's units,
    /// comma separated [default: the model's].
    #[arg(
        long,
        value_name = "V,V,..",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    mean: Option<Vec<f32>>,
    /// Per-band standard deviation the input is divided by, in the raster's
    /// units, comma separated [default: the model's].
    #[arg(long, value_name = "V,V,..", value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Window size in px, or `auto`: among the windows whose memory bound
    /// fits --max-memory (else the memory available), the one that
    /// recomputes the least, keeping the overlap in pixels [default: the
    /// model's].
    #[arg(long, value_name = "PX|auto", value_parser = parse_window)]
    pub window: Option<WindowArg>,
    /// Overlap between windows, a fraction of the window [default: the model's].
    #[arg(long, conflicts_with = "halo")]
    overlap: Option<f64>,
    /// Overlap between windows in px (the seam context the network needs)
    /// [default with --window auto: the model's overlap times its window].
    #[arg(long, value_name = "PX")]
    halo: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Reader threads, each with its own GDAL handle [default: min(2, threads)].
    #[arg(long)]
    readers: Option<usize>,
    /// How overlapping predictions are combined.
    #[arg(long, value_enum, default_value = "hann")]
    blend: BlendArg,
    /// 1-based input bands, e.g. 1,2,3 [default: the first N bands].
    #[arg(long, value_delimiter = ',')]
    bands: Option<Vec<usize>>,
    /// Also write MAP.confidence.tif (0-100).
    #[arg(long)]
    confidence: bool,
    /// Also write MAP.probabilities.tif: one u8 band per class (probability
    /// x 254, 255 = nodata), named after the classes.
    #[arg(long)]
    probabilities: bool,
    /// Test-time augmentation: none, flips (identity and 2 mirrors: 3
    /// passes) or d4 (all 8 flips and rotations); the probabilities are
    /// averaged before blending.
    #[arg(long, default_value = "none", value_parser = parse_tta)]
    tta: rstile::infer::tta::Tta,
    /// GDAL creation option KEY=VALUE (repeatable).
    #[arg(long = "co", value_name = "KEY=VALUE", value_parser = parse_co)]
    co: Vec<(String, String)>,
    /// Internal column chunk width in px (multiple of 512); bounds memory.
    #[arg(long)]
    chunk: Option<usize>,
    /// GDAL block cache in MiB.
    #[arg(long, default_value_t = rstile::infer::DEFAULT_GDAL_CACHE_MB)]
    gdal_cache: usize,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Where softmax, blending and argmax run: on the model's device, so a
    /// GPU sends back only the u8 map rows, or on the host (the same map).
    #[arg(long, value_enum, default_value = "auto")]
    post: PostArg,
    /// Only map inside these polygons (GeoJSON, GeoPackage, Shapefile, any CRS).
    #[arg(long, value_name = "FILE")]
    aoi: Option<PathBuf>,
    /// Refuse a run whose memory bound exceeds this, in MiB; 0: no limit
    /// [default: the memory available].
    #[arg(long, value_name = "MiB")]
    max_memory: Option<u64>,
}

fn parse_co(kv: &str) -> Result<(String, String), String> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE".into()),
    }
}

struct Bar {
    bar: indicatif::ProgressBar,
    start: Instant,
    pixels: AtomicU64,
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

pub fn run(a: InferArgs) -> Result<()> {
    process::pipeline_malloc();
    let threads = process::set_threads(a.map.threads);
    process::gdal_cache(a.map.gdal_cache);
    let cancel = process::stop_flag()?;
    let device = a.map.device.open()?;
    let part = a.part.as_deref().map(Part::from_arg).transpose()?;
    let composed = match (&a.stac, &a.asset) {
        (Some(file), Some(asset)) => Some(rstile::infer::read::compose::stac(file, asset)?),
        _ if !a.stack.is_empty() => Some(rstile::infer::read::compose::stack(&a.stack)?),
        _ => None,
    };
    if let (Some(c), Some(out)) = (&composed, &a.output) {
        // the files behind a composed scene are inputs: never the output
        rstile::output::check(out, a.overwrite, &rstile::output::Inputs::of(&c.files))?;
        return infer_one(&a, &c.scene, out, part, threads, &device, cancel);
    }
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
        (None, Some(dir)) => infer::out_dir_jobs(&a.scene, dir)?,
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
            eprintln!("rstile: error: {}", rstile::error::one_line(e.as_ref()));
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
    scene_path: &Path,
    output: &Path,
    part: Option<Part>,
    threads: usize,
    device: &candle_core::Device,
    cancel: Arc<AtomicBool>,
) -> Result<()> {
    let m = &a.map;
    let overrides = rstile::model::facts::Overrides {
        classes: match &m.classes {
            Some(p) => Some(rstile::classes::ClassTable::from_toml_file(p)?),
            None => None,
        },
        mean: m.mean.clone(),
        std: m.std.clone(),
        window: m.window.and_then(WindowArg::px),
        overlap: m.overlap,
    };
    // the model first: an ONNX graph's window and legend come with it
    let model = Model::open(&m.model, device, &overrides)?;
    let meta = model.meta.clone();
    let scene = SceneInfo::probe(scene_path)?;
    if let Some(imp) = model.imported() {
        if !a.quiet {
            let f = &imp.facts;
            eprintln!(
                "rstile: {}: ONNX graph, output {}; classes from {}, mean/std from {}, window from {}, overlap from {}",
                m.model.display(),
                imp.output,
                f.classes.from,
                f.mean.from,
                f.window.from,
                f.overlap.from
            );
        }
    }
    // the model's training pixel size (a native model's, or an ONNX graph's
    // Deepness `resolution`) against the scene's
    if let (Some(model_m), Some(px)) = (meta.pixel_size, scene.pixel_size_m()) {
        if let Some(w) = rstile::model::facts::resolution_warning(model_m * 100.0, px) {
            eprintln!("rstile: warning: {}: {w}", scene_path.display());
        }
    }
    if scene.geo_transform.is_none() && !scene.gcps.is_empty() {
        if !a.quiet {
            eprintln!(
                "rstile: {} is georeferenced by {} ground control points{}; the map carries the same points",
                scene_path.display(),
                scene.gcps.len(),
                if scene.gcp_srs_wkt.is_some() { "" } else { " without a CRS" }
            );
        }
    } else if scene.geo_transform.is_none() || scene.srs_wkt.is_none() {
        eprintln!(
            "rstile: warning: {} has no georeferencing; the map is written without a CRS",
            scene_path.display()
        );
    }
    let opts = InferOptions {
        window: m.window.and_then(WindowArg::px),
        overlap: m.overlap,
        halo: m.halo,
        batch: m.batch,
        readers: m.readers,
        blend: m.blend.0,
        bands: m.bands.clone(),
        chunk: m.chunk,
        confidence: m.confidence,
        probabilities: m.probabilities,
        tta: m.tta,
        post: m.post.0,
        creation_options: m.co.clone(),
        cog: a.cog,
        overwrite: a.overwrite,
        gdal_cache_mb: m.gdal_cache,
        part,
        resume: a.resume,
        aoi: m.aoi.clone(),
        max_memory_mb: m.max_memory,
    };
    let plan = if m.window == Some(WindowArg::Auto) {
        // a graph whose input size is fixed keeps it
        let fixed = model
            .imported()
            .filter(|i| matches!(i.facts.window.from, rstile::model::facts::From::Graph))
            .map(|_| meta.window);
        let p = InferPlan::resolve_auto_window(
            scene,
            output.to_path_buf(),
            &m.model,
            &meta,
            &opts,
            model.num_params(),
            fixed,
        )?;
        if !a.quiet {
            eprintln!(
                "rstile: --window auto: window {} px, halo {} px ({})",
                p.window,
                (p.overlap * p.window as f64).round(),
                match (fixed, p.max_memory) {
                    (Some(_), _) => "the graph's fixed input size".to_string(),
                    (None, Some(l)) => format!(
                        "the least recomputation whose memory bound fits {} MiB",
                        l.bytes >> 20
                    ),
                    (None, None) => "the least recomputation, no memory limit".to_string(),
                }
            );
        }
        p
    } else {
        InferPlan::resolve(scene, output.to_path_buf(), &m.model, &meta, &opts)?
    };
    if let (Some(n), false) = (plan.scene.palette, a.quiet) {
        eprintln!(
            "rstile: {} is a paletted raster ({n} colours): the model reads its red, green and blue colours (as gdal_translate -expand rgb makes them)",
            scene_path.display()
        );
    }
    // refused before any work: an input as output, a non-regular file, an
    // existing file without --overwrite (the map, and the preview)
    rstile::output::check(&plan.output, a.overwrite, &plan.inputs)?;
    let preview = match (&a.preview, &a.out_dir) {
        // with several scenes, each gets its own preview beside its map
        (Some(_), Some(_)) => Some(output.with_extension("png")),
        (p, None) => p.clone(),
        _ => None,
    };
    if let Some(png) = &preview {
        if rstile::output::same_path(png, &plan.output) {
            bail!("{}: --preview names the map itself", png.display());
        }
        rstile::output::check(png, a.overwrite, &plan.inputs)?;
    }
    let bound = infer::MemoryBound::of(&plan, &meta, model.num_params())?;
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
            "rstile: memory bound {:.0} MiB = model {:.0} + in-flight windows {:.0} + decoded cells {:.0} + stitcher {:.0} + writer {:.0} + GDAL cache {:.0} + base {:.0}",
            mib(bound.total()),
            mib(bound.model),
            mib(bound.in_flight),
            mib(bound.cells),
            mib(bound.stitcher),
            mib(bound.writer),
            mib(bound.gdal_cache),
            mib(bound.base)
        );
    }
    let progress = Bar {
        bar: super::bar(a.quiet, "{bar:30} {pos}/{len} windows  {msg}  ETA {eta}"),
        start: Instant::now(),
        pixels: AtomicU64::new(0),
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
    if report.non_finite_pixels > 0 {
        // not silenced by --quiet: the map has holes the scene does not
        eprintln!(
            "rstile: warning: {} pixel(s) of {} were not finite or out of float range (NaN, infinite, or beyond f32's ±3.4e38) and were mapped as nodata",
            report.non_finite_pixels,
            plan.scene.path.display()
        );
    }
    if let Some(png) = &preview {
        rstile::infer::write::write_preview(&report.files.map, png, &meta.classes, 1024)?;
    }
    let peak = infer::peak_rss().unwrap_or(0);
    if a.profile {
        for line in report.profile.table().lines() {
            eprintln!("rstile: profile: {line}");
        }
    }
    if a.json {
        let v = serde_json::json!({
            "map": report.files.map,
            "pixels": report.pixels,
            "seconds": report.seconds,
            "mpx_per_s": report.pixels as f64 / report.seconds / 1e6,
            "windows": report.windows,
            "windows_skipped": report.windows_skipped,
            "windows_outside_aoi": report.windows_outside_aoi,
            "peak_memory_bytes": peak,
            "memory_bound_bytes": report.memory_bound.total(),
            "window": plan.window,
            "overlap": plan.overlap,
            "recompute_factor": plan.recompute_factor(report.windows),
            "batch": plan.batch,
            "readers": plan.readers,
            "profile": report.profile,
        });
        println!("{v}");
    } else if !a.quiet {
        println!(
            "rstile: mapped {} px in {:.2} s ({:.2} Mpx/s), peak memory {:.0} MiB (bound {:.0} MiB), {} windows, recompute {:.2}x, {} skipped as nodata, {} skipped outside the AOI, limited by {} -> {}",
            report.pixels,
            report.seconds,
            report.pixels as f64 / report.seconds / 1e6,
            mib(peak),
            mib(report.memory_bound.total()),
            report.windows,
            plan.recompute_factor(report.windows),
            report.windows_skipped,
            report.windows_outside_aoi,
            report.profile.limiting,
            report.files.map.display()
        );
    }
    Ok(())
}

/// `--window`: pixels or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowArg {
    Px(usize),
    Auto,
}

impl WindowArg {
    fn px(self) -> Option<usize> {
        match self {
            WindowArg::Px(n) => Some(n),
            WindowArg::Auto => None,
        }
    }
}

fn parse_window(s: &str) -> std::result::Result<WindowArg, String> {
    match s {
        "auto" => Ok(WindowArg::Auto),
        _ => s
            .parse()
            .map(WindowArg::Px)
            .map_err(|_| format!("'{s}': expected a number of pixels or auto")),
    }
}

fn parse_tta(s: &str) -> std::result::Result<rstile::infer::tta::Tta, String> {
    s.parse()
}
