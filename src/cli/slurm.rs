//! `rstile slurm`: a map split over a Slurm array job and merged after it,
//! or training as one job. rstile ships no scheduler of its own.

use super::infer::MapFlags;
use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SlurmCmd {
    /// Map a scene as N parts in a Slurm array job, merged by a job that runs after it.
    Infer(Box<SlurmInferArgs>),
    /// Train as one Slurm job with GPUs (`rstile train --config`).
    Train(SlurmTrainArgs),
}

/// sbatch options shared by `rstile slurm infer` and `rstile slurm train`.
#[derive(Args)]
#[command(next_help_heading = "Slurm options")]
pub struct SbatchArgs {
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
pub struct SlurmInferArgs {
    /// The scene: any raster GDAL opens.
    scene: PathBuf,
    /// The merged map; scripts and logs go to MAP.slurm/, parts to MAP.parts/.
    #[arg(short, long)]
    output: PathBuf,
    /// Number of parts (row bands), one array task each.
    #[arg(long)]
    parts: usize,
    /// GPUs per array task; infer then runs with --device cuda:0.
    #[arg(long)]
    gpus_per_task: Option<usize>,
    /// Replace an existing map, parts and job scripts.
    #[arg(long)]
    overwrite: bool,
    /// The merge job writes a Cloud Optimized GeoTIFF.
    #[arg(long)]
    cog: bool,
    #[command(flatten)]
    sbatch: SbatchArgs,
    /// Every `rstile infer` flag that decides the map; those given here are
    /// passed on to every part.
    #[command(flatten)]
    map: MapFlags,
}

#[derive(Args)]
pub struct SlurmTrainArgs {
    /// The training configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// GPUs for the job (0 for none); train then runs with --device cuda:0.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Replace an existing job script (CONFIG.slurm/train.sbatch).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    sbatch: SbatchArgs,
    /// Further `rstile train` flags, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

pub fn run(cmd: SlurmCmd, matches: &ArgMatches) -> Result<()> {
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
            if a.map.window == Some(super::infer::WindowArg::Auto) {
                bail!("--window auto picks the window from one machine's memory, and the parts of one map must share it: give --window N");
            }
            let job = InferJob {
                rstile: exe,
                scene: a.scene,
                output: a.output,
                model: a.map.model,
                parts: a.parts,
                sbatch: opts(&a.sbatch, a.gpus_per_task),
                extra: given_map_flags(
                    matches.subcommand_matches("infer").expect("infer matches"),
                )?,
                overwrite: a.overwrite,
                cog: a.cog,
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
                overwrite: a.overwrite,
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

/// The `rstile infer` flags given on this command line (not their
/// defaults), as arguments for every part's `rstile infer`, read from clap's
/// own description of [`MapFlags`] so that a new flag needs no code here.
/// The model is passed on by the job itself.
fn given_map_flags(m: &ArgMatches) -> Result<Vec<String>> {
    let cmd = MapFlags::augment_args(clap::Command::new("infer"));
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "model" || m.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let long = arg.get_long().expect("every infer flag has a long name");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            out.push(format!("--{long}"));
            continue;
        }
        for occurrence in m.get_raw_occurrences(id).into_iter().flatten() {
            let values = occurrence
                .map(|v| {
                    v.to_str().map(str::to_string).with_context(|| {
                        format!(
                            "--{long} {}: not UTF-8, which a job script cannot carry",
                            v.to_string_lossy()
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let sep = arg
                .get_value_delimiter()
                .map(String::from)
                .unwrap_or_default();
            out.push(format!("--{long}={}", values.join(&sep)));
        }
    }
    Ok(out)
}
