//! `rstile train`: train a model from a TOML config.

use super::{process, DeviceArg};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
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
    device: DeviceArg,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
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
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.1} %", v * 100.0));
        let skipped = match m.train_unlabelled_windows {
            0 => String::new(),
            n => format!(", {n} window(s) without a labelled pixel skipped"),
        };
        self.line(format!(
            "rstile: epoch {} loss {:.4} val loss {} OA {} mean F1 {} mIoU {} ({:.1} samples/s, {:.0} s; ignored label pixels: train {}, val {}{skipped})",
            m.epoch,
            m.train_loss,
            f(m.val_loss),
            f(m.val_overall_accuracy),
            f(m.val_mean_f1),
            f(m.val_miou),
            m.samples_per_s,
            m.seconds,
            pct(m.train_ignored),
            pct(m.val_ignored),
        ));
    }
    fn message(&self, msg: &str) {
        self.line(format!("rstile: {msg}"));
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    process::set_threads(a.threads);
    process::reuse_freed_memory();
    let device = a.device.open()?;
    let config = match (&a.config, &a.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => dir.join(rstile::train::run::CONFIG),
        (None, None) => bail!("--config FILE is needed (or --resume RUN_DIR)"),
    };
    let cfg = rstile::train::TrainConfig::from_file(&config)?;
    let bar = super::bar(a.quiet, "{bar:30} step {pos}/{len}  {msg}  ETA {eta}");
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
