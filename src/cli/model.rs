//! `rstile model`: create, inspect and time model files.

use super::{process, DeviceArg};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rstile::classes::ClassTable;
use rstile::model::arch::Arch;
use rstile::model::ledger::Op;
use rstile::model::onnx::OnnxModel;
use rstile::model::{Model, ModelMeta};
use rstile::output::Inputs;
use std::path::PathBuf;

super::value_enum!(ArchArg, Arch);

#[derive(Subcommand)]
pub enum ModelCmd {
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
    /// One forward pass on an NCHW float32 .npy, written as float32 .npy:
    /// the network's output as it computes it (logits for rstile's own
    /// models; logits or probabilities, as the graph gives them, for ONNX).
    /// For checking a model against PyTorch or onnxruntime.
    Run(ModelRunArgs),
    /// Write one of rstile's own models as ONNX (opset 17) for QGIS's
    /// Deepness plugin, onnxruntime or `rstile infer`: softmax inside, a
    /// dynamic batch, the window as the fixed size, Deepness metadata, and a
    /// STAC MLM sidecar STEM.stac.json (bands, normalisation, classes with
    /// colours).
    Export(ModelExportArgs),
    /// Read a PyTorch checkpoint (.pth/.pt state dict, Lightning .ckpt,
    /// .safetensors) as an rstile model: segmentation_models_pytorch's Unet
    /// on resnet18/34/50 (--from smp) becomes unet-resnet18/34/50;
    /// torchvision's fcn_resnet50 (--from torchvision) becomes
    /// resnet50-fcn-os8, its aux_classifier skipped.
    Import(ModelImportArgs),
}

#[derive(Args)]
pub struct ModelImportArgs {
    /// The checkpoint.
    checkpoint: PathBuf,
    /// Where it comes from: smp (--arch unet-resnet18/34/50) or torchvision
    /// (--arch resnet50-fcn-os8).
    #[arg(long = "from", value_parser = parse_source)]
    source: rstile::model::import::Source,
    /// The architecture to read it as.
    #[arg(long, value_enum)]
    arch: ArchArg,
    /// The class table (TOML, the format of configs/classes/); its count
    /// must be the checkpoint's.
    #[arg(long)]
    classes: PathBuf,
    /// Per-band mean in the raster's units [default: ImageNet's x 255 for 3 bands].
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-band standard deviation [default: ImageNet's x 255 for 3 bands].
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Default window size.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Default overlap fraction.
    #[arg(long, default_value_t = 0.25)]
    overlap: f64,
    /// Pixel size in metres of the imagery the checkpoint was trained on
    /// (exported as Deepness' `resolution`; infer warns on scenes that
    /// differ by more than 25 %).
    #[arg(long, value_name = "M")]
    pixel_size: Option<f64>,
    /// The model file to write (.safetensors).
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    overwrite: bool,
}

fn parse_source(s: &str) -> std::result::Result<rstile::model::import::Source, String> {
    s.parse()
}

#[derive(Args)]
pub struct ModelExportArgs {
    /// The model (.safetensors).
    model: PathBuf,
    /// The ONNX file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
pub struct ModelRunArgs {
    /// The model: rstile's own (.safetensors) or an ONNX file (.onnx).
    model: PathBuf,
    /// The input batch, a float32 array (batch, bands, height, width).
    #[arg(long)]
    input: PathBuf,
    /// The output .npy.
    #[arg(short, long)]
    output: PathBuf,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
pub struct ModelBenchArgs {
    /// A model file; without it, a random model of --arch with --bands and
    /// the six ISPRS classes.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Architecture of the random model.
    #[arg(long, value_enum, default_value = "resnet50-fcn")]
    arch: ArchArg,
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
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// For an .onnx model: also time each kind of node over --iters
    /// forward passes (seconds per forward, fused Convs by what they
    /// absorbed), to see where the time goes.
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
pub struct ModelNewArgs {
    /// Architecture.
    #[arg(long, value_enum)]
    arch: ArchArg,
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
    /// Pixel size in metres of the imagery the model is for (exported as
    /// Deepness' `resolution`; infer warns on scenes that differ by more
    /// than 25 %).
    #[arg(long, value_name = "M")]
    pixel_size: Option<f64>,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace an existing file.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::New(a) => model_new(a),
        ModelCmd::Info { model } => model_info(model),
        ModelCmd::Bench(a) => model_bench(a),
        ModelCmd::Run(a) => model_run(a),
        ModelCmd::Export(a) => model_export(a),
        ModelCmd::Import(a) => model_import(a),
    }
}

fn model_import(a: ModelImportArgs) -> Result<()> {
    use rstile::model::import::{import, ImportOptions};
    rstile::output::check(
        &a.output,
        a.overwrite,
        &Inputs::of([&a.checkpoint, &a.classes]),
    )?;
    let classes = ClassTable::from_toml_file(&a.classes)?;
    let o = ImportOptions {
        source: a.source,
        arch: a.arch.0,
        classes,
        mean: a.mean,
        std: a.std,
        window: a.window,
        overlap: a.overlap,
        pixel_size: a.pixel_size,
    };
    let model = import(&a.checkpoint, &o)?;
    model.save(&a.output)?;
    println!(
        "rstile: wrote {} ({}, {} bands, {} classes, {} parameters) from {}",
        a.output.display(),
        model.meta.arch,
        model.meta.bands,
        model.meta.classes.len(),
        model.num_params(),
        a.checkpoint.display()
    );
    Ok(())
}

fn model_export(a: ModelExportArgs) -> Result<()> {
    let inputs = Inputs::of([&a.model]);
    let sidecar = rstile::raster::stem_with(&a.output, ".stac.json");
    for p in [&a.output, &sidecar] {
        rstile::output::check(p, a.overwrite, &inputs)?;
    }
    if rstile::model::imported::is_onnx(&a.model) {
        bail!(
            "{}: already an ONNX model; export takes rstile's own .safetensors models",
            a.model.display()
        );
    }
    let model = Model::open(&a.model, &candle_core::Device::Cpu, &Default::default())?;
    let (onnx, stac) = rstile::model::export::export(&model, &a.output)?;
    let m = &model.meta;
    if !rstile::model::export::deepness_can_feed(&model) {
        eprintln!(
            "rstile: warning: {}: the model takes {} band(s); Deepness feeds 3 (RGB) or 4 (RGBA) 8-bit bands, so it cannot run this model; {} says what it needs",
            onnx.display(),
            m.bands,
            stac.display()
        );
    }
    println!(
        "rstile: wrote {} ({}, opset {}, input [batch, {}, {}, {}], {} classes, softmax inside) and {}",
        onnx.display(),
        m.arch,
        rstile::model::export::OPSET,
        m.bands,
        m.window,
        m.window,
        m.classes.len(),
        stac.display()
    );
    Ok(())
}

fn model_new(a: ModelNewArgs) -> Result<()> {
    let inputs = Inputs::of([&a.classes]);
    rstile::output::check(&a.output, a.overwrite, &inputs)?;
    let classes = ClassTable::from_toml_file(&a.classes)?;
    let meta = ModelMeta {
        band_names: a.band_names.unwrap_or_default(),
        mean: a.mean.unwrap_or_else(|| vec![127.5; a.bands]),
        std: a.std.unwrap_or_else(|| vec![64.0; a.bands]),
        window: a.window,
        overlap: a.overlap,
        pixel_size: a.pixel_size,
        ..ModelMeta::new(a.arch.0, a.bands, classes)
    };
    meta.validate()?;
    let model = Model::new_random(meta, a.seed, &candle_core::Device::Cpu)?;
    model.save(&a.output)?;
    println!(
        "rstile: wrote {} ({}, {} bands, {} classes, {} parameters)",
        a.output.display(),
        a.arch.0,
        a.bands,
        model.meta.classes.len(),
        model.num_params()
    );
    Ok(())
}

fn model_bench(a: ModelBenchArgs) -> Result<()> {
    let threads = process::set_threads(a.threads);
    process::reuse_freed_memory();
    let device = a.device.open()?;
    if a.batch == 0 || a.size < 32 || a.iters == 0 {
        bail!("model bench: --batch and --iters must be at least 1, --size at least 32");
    }
    if a.profile && !a.model.as_deref().is_some_and(is_onnx) {
        bail!("model bench: --profile times the nodes of an .onnx model");
    }
    // with --profile, the graph as the forward pass runs it
    let mut graph = None;
    let model = match &a.model {
        Some(path) => {
            let mut flags = rstile::model::facts::Overrides {
                window: Some(a.size),
                ..Default::default()
            };
            if is_onnx(path) {
                // the legend and normalisation change no arithmetic: a
                // graph that names no classes is timed with stand-ins
                let mut g = rstile::model::onnx::OnnxModel::load(path, &device)?;
                let fixed = g.outputs().first().and_then(|o| o.dims.get(1)?.fixed());
                let k = match fixed {
                    Some(k) => k,
                    None => g.resolve(a.size, a.size)?.outputs[0][1],
                };
                let names: Vec<String> = (0..k.max(2)).map(|i| format!("class {i}")).collect();
                let bands = g.bands().unwrap_or(1);
                flags.classes = Some(rstile::model::facts::named_classes(&names));
                flags.mean = Some(vec![0.0; bands]);
                flags.std = Some(vec![1.0; bands]);
                if a.profile {
                    // what the forward pass runs: the map's logits
                    g.strip_final_softmax();
                    graph = Some(g);
                }
            }
            let m = Model::open(path, &device, &flags)?;
            if m.imported().is_some() && a.train {
                bail!(
                    "{}: an ONNX graph runs forward only; drop --train",
                    path.display()
                );
            }
            m
        }
        None => {
            let meta = ModelMeta {
                window: a.size,
                ..ModelMeta::new(a.arch.0, a.bands, ClassTable::isprs())
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
    let profile = match graph {
        Some(g) => {
            let x = candle_core::Tensor::randn(
                0f32,
                1f32,
                (a.batch, model.meta.bands, a.size, a.size),
                &device,
            )?;
            Some(g.profile(&x, a.iters)?)
        }
        None => None,
    };
    let px = (a.batch * a.size * a.size) as f64;
    let gflops = sp.forward_flops as f64 / 1e9;
    if a.json {
        let mut o = serde_json::json!({
            "arch": model.meta.arch.name(),
            "bands": model.meta.bands,
            "batch": a.batch,
            "size": a.size,
            "device": a.device.to_string(),
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
        if let Some(p) = &profile {
            let n = a.iters as f64;
            o["profile"] = p
                .iter()
                .map(|t| {
                    serde_json::json!({"node": t.name, "kind": t.kind, "output": t.output,
                        "seconds": t.seconds / n, "gflop": t.flops as f64 / n / 1e9})
                })
                .collect::<Vec<_>>()
                .into();
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
    if let Some(p) = &profile {
        print_profile(p, a.iters as f64);
    }
    Ok(())
}

/// A graph's profile: time per node kind, then the slowest nodes, per
/// forward pass (`n` of them were timed).
fn print_profile(p: &[rstile::model::onnx::NodeTime], n: f64) {
    let total: f64 = p.iter().map(|t| t.seconds).sum::<f64>() / n;
    let mut kinds: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
    for t in p {
        let k = kinds.entry(&t.kind).or_default();
        k.0 += 1;
        k.1 += t.seconds / n;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!("  per forward, by node kind ({total:.3} s in nodes):");
    for (k, (c, s)) in kinds {
        println!(
            "    {k:<24} {c:>4} nodes  {s:.3} s  {:>5.1} %",
            100.0 * s / total
        );
    }
    println!("  the slowest nodes:");
    for t in p.iter().take(10) {
        let s = t.seconds / n;
        let rate = if t.flops > 0 {
            format!("  {:.0} GFLOP/s", t.flops as f64 / t.seconds / 1e9)
        } else {
            String::new()
        };
        let out = format!("{:?}", t.output);
        println!(
            "    {:<16} {out:<20} {s:.3} s{rate:<16}  {}",
            t.kind, t.name
        );
    }
}

fn is_onnx(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

fn model_run(a: ModelRunArgs) -> Result<()> {
    process::set_threads(a.threads);
    let inputs = Inputs::of([&a.model, &a.input]);
    rstile::output::check(&a.output, a.overwrite, &inputs)?;
    let device = a.device.open()?;
    let x = rstile::model::npy::read_f32(&a.input)?;
    let y = if is_onnx(&a.model) {
        let model = OnnxModel::load(&a.model, &device)?;
        model.run(&x)?
    } else {
        let model = Model::load(&a.model, &device)?;
        let x = x.to_device(&device)?;
        model
            .forward_t(&x, false)
            .map_err(|e| rstile::Error::file(&a.input, e))?
    };
    rstile::model::npy::write_f32(&a.output, &y)?;
    println!(
        "rstile: wrote {} {:?} from {} {:?}",
        a.output.display(),
        y.dims(),
        a.input.display(),
        x.dims()
    );
    Ok(())
}

/// An ONNX graph: inputs and outputs, ops, metadata and the facts found
/// (with their origins, or the one that is missing), parameters and FLOPs.
fn onnx_info(path: &std::path::Path) -> Result<()> {
    use rstile::model::facts::Overrides;
    let dev = candle_core::Device::Cpu;
    println!("{}", path.display());
    // a graph rstile cannot run fails here, naming the op and its node
    let g = OnnxModel::load(path, &dev)?;
    let dims = |v: &rstile::model::onnx::ValueInfo| {
        let d: Vec<String> = v.dims.iter().map(|d| d.to_string()).collect();
        format!("{} [{}] {}", v.name, d.join(", "), v.elem_type)
    };
    println!("  producer  {} (opset {})", g.producer(), g.opset());
    println!("  input     {}", dims(g.input()));
    for o in g.outputs() {
        println!("  output    {}", dims(o));
    }
    let ops: Vec<String> = g
        .op_histogram()
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("  ops       {}", ops.join(", "));
    println!("  params    {}", g.num_params());
    for (k, v) in g.metadata_props() {
        println!("  metadata  {k} = {v}");
    }
    match Model::open(path, &dev, &Overrides::default()) {
        Ok(m) => {
            let imp = m.imported().expect("an ONNX model");
            let f = &imp.facts;
            println!("  output is {}", imp.output);
            println!(
                "  classes   {} (from {})",
                f.classes.value.len(),
                f.classes.from
            );
            for c in &f.classes.value.classes {
                println!("    {:>3}  {:<8} {}", c.id, c.color, c.name);
            }
            println!("  mean      {:?} (from {})", f.mean.value, f.mean.from);
            println!("  std       {:?} (from {})", f.std.value, f.std.from);
            println!("  window    {} px (from {})", f.window.value, f.window.from);
            println!("  overlap   {} (from {})", f.overlap.value, f.overlap.from);
            if let Some(r) = &f.resolution_cm {
                println!("  pixel     {} cm (from {})", r.value, r.from);
            }
            let w = f.window.value;
            println!(
                "  compute   {:.2} GFLOP per window, {} bytes of activations per pixel",
                m.forward_flops(1, w, w)? as f64 / 1e9,
                m.meta.arch.activation_bytes_per_px()
            );
            println!("  runs      yes");
        }
        Err(e) => println!("  runs      with flags: {e}"),
    }
    Ok(())
}

fn model_info(path: PathBuf) -> Result<()> {
    if rstile::model::imported::is_onnx(&path) {
        return onnx_info(&path);
    }
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
    match m.pixel_size {
        Some(p) => println!("  pixel     {p} m (the ground sample distance it was made for)"),
        None => println!("  pixel     unknown"),
    }
    println!("  classes   {}", m.classes.len());
    for c in &m.classes.classes {
        println!("    {:>3}  {:<8} {}", c.id, c.color, c.name);
    }
    let model = Model::load(&path, &candle_core::Device::Cpu)?;
    println!("  params    {}", model.num_params());
    Ok(())
}
