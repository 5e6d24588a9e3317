//! The command line: one file per command, each with its flags (a clap
//! `Args` struct) beside its handler. Handlers resolve flags into the
//! library's validated plans and options; everything process-wide is in
//! [`process`].

mod demo;
mod eval;
mod infer;
mod merge;
mod model;
mod prepare;
mod process;
mod slurm;
mod synth;
mod train;
mod vectorize;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Infer(Box<infer::InferArgs>),
    /// Write a generated, georeferenced Vaihingen-like scene.
    Synth(synth::SynthArgs),
    /// Create or inspect model files.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Join the parts of a split run (`infer --part`) into one map.
    Merge(merge::MergeArgs),
    /// Train a model from a TOML config (see configs/train_synth_tiny.toml).
    Train(train::TrainArgs),
    /// Run on a Slurm cluster: a map split over an array job, or training.
    #[command(subcommand)]
    Slurm(slurm::SlurmCmd),
    /// Prepare a benchmark dataset (patches, features, statistics).
    #[command(subcommand)]
    Prepare(prepare::PrepareCmd),
    /// Score a model on Vaihingen areas as the ISPRS leaderboard does (full tiles, streamed).
    Eval(eval::EvalArgs),
    /// The whole Vaihingen benchmark on a generated dataset: synth, prepare, train, eval, infer.
    Demo(demo::DemoArgs),
    /// A land-cover map's classes as polygons (GeoPackage or any OGR format), with a QGIS style.
    Vectorize(vectorize::VectorizeArgs),
}

/// Parses the command line and runs it.
pub fn run() -> Result<()> {
    let matches = Cli::command().try_get_matches().map_err(usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(usage)?;
    process::quiet_gdal();
    match cli.cmd {
        Cmd::Infer(a) => infer::run(*a),
        Cmd::Merge(a) => merge::run(a),
        Cmd::Synth(a) => synth::run(a),
        Cmd::Model(c) => model::run(c),
        Cmd::Train(a) => train::run(a),
        Cmd::Slurm(c) => {
            // `slurm infer` passes the `infer` flags it was given on to every part
            let sub = matches.subcommand_matches("slurm").expect("slurm matches");
            slurm::run(c, sub)
        }
        Cmd::Prepare(c) => prepare::run(c),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Vectorize(a) => vectorize::run(a),
    }
}

/// A command line clap refused: printed as the one-line error, exit code 2.
#[derive(Debug)]
pub struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Help and version are printed as clap prints them; every other clap error
/// becomes a [`Usage`] error, so it is printed once, on one line, like the
/// others (clap's text without its "error:" and "try --help" lines).
fn usage(e: clap::Error) -> anyhow::Error {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let text = text.trim_start_matches("error:").trim();
    let text = text
        .split("\n\nFor more information")
        .next()
        .unwrap_or(text);
    let text = text.split("\n\nUsage:").next().unwrap_or(text);
    anyhow::Error::new(Usage(format!("{text} (see --help)")))
}

/// The compute device of `--device`: `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(DeviceArg::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(DeviceArg::Cuda)
            .ok_or_else(|| "expected cpu or cuda:N (N: the GPU's index, e.g. cuda:0)".to_string())
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// Opens the device, turning cudarc's panics on a missing driver or
    /// library into the one-line error.
    pub fn open(self) -> Result<candle_core::Device> {
        let n = match self {
            DeviceArg::Cpu => return Ok(candle_core::Device::Cpu),
            DeviceArg::Cuda(n) => n,
        };
        if !candle_core::utils::cuda_is_available() {
            bail!("--device {self}: this rstile was built without CUDA (rebuild with --features cuda)");
        }
        // cudarc loads libcuda, cuBLAS and cuRAND on first use and panics when
        // one is missing: make that the one-line error too
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let dev = std::panic::catch_unwind(|| candle_core::Device::new_cuda(n));
        std::panic::set_hook(hook);
        match dev {
            Ok(dev) => dev.with_context(|| format!("--device {self}: no usable GPU")),
            Err(panic) => {
                let msg = (panic.downcast_ref::<String>().map(String::as_str))
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("CUDA failed to start");
                // cudarc's message goes on with every file name it tried
                let msg = msg.split(" - searched").next().unwrap_or(msg);
                bail!("--device {self}: no usable GPU: {msg} (is the NVIDIA driver installed, and cuBLAS/cuRAND on LD_LIBRARY_PATH?)")
            }
        }
    }
}

/// A library enum as a clap value: its names (and, where it has them, each
/// one's help) come from the library (`ALL`, `name()`, `help()`), so no value
/// list is written twice.
macro_rules! value_enum {
    ($arg:ident, $lib:ty $(, $help:ident)?) => {
        #[derive(Debug, Clone, Copy)]
        pub struct $arg(pub $lib);

        impl clap::ValueEnum for $arg {
            fn value_variants<'a>() -> &'a [Self] {
                static ALL: std::sync::OnceLock<Vec<$arg>> = std::sync::OnceLock::new();
                ALL.get_or_init(|| <$lib>::ALL.iter().map(|&v| $arg(v)).collect())
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                let v = clap::builder::PossibleValue::new(self.0.name());
                $(let v = v.help(self.0.$help());)?
                Some(v)
            }
        }
    };
}
pub(crate) use value_enum;

/// Mebibytes, for messages.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// A progress bar on stderr, or a hidden one.
pub fn bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}
