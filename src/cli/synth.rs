//! `rstile synth`: write a generated, georeferenced scene.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct SynthArgs {
    /// Size as WIDTHxHEIGHT, e.g. 2048x2048.
    #[arg(long, value_parser = parse_size)]
    size: (usize, usize),
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace a scene already in the folder.
    #[arg(long)]
    overwrite: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    s.split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .context("expected WIDTHxHEIGHT, e.g. 2048x2048")
}

pub fn run(a: SynthArgs) -> Result<()> {
    let (w, h) = a.size;
    let cfg = rstile::synth::SynthConfig {
        width: w,
        height: h,
        seed: a.seed,
        ..Default::default()
    };
    let t = Instant::now();
    let bar = super::bar(a.quiet, "{bar:30} {pos}/{len} rows  ETA {eta}");
    let out = rstile::synth::synth(&cfg, &a.output, a.overwrite, &|done, total| {
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
