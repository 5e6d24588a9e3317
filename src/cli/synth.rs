//! `rstile synth`: write a generated, georeferenced scene, or generated
//! areas in the ISPRS Vaihingen archive's layout (`--isprs`).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct SynthArgs {
    /// Size as WIDTHxHEIGHT, e.g. 2048x2048.
    #[arg(long, value_parser = parse_size, required_unless_present = "isprs", conflicts_with = "isprs")]
    size: Option<(usize, usize)>,
    /// Write the Vaihingen archive's layout instead (top/, dsm/,
    /// gts_for_participants/, gts_eroded_for_participants/): every area at
    /// its official size, seed SEED + area.
    #[arg(long)]
    isprs: bool,
    /// With --isprs: only these areas, comma-separated (default: all 33).
    #[arg(long, value_delimiter = ',', requires = "isprs")]
    areas: Vec<u16>,
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
    let Some((w, h)) = a.size else {
        return isprs(a);
    };
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

fn isprs(a: SynthArgs) -> Result<()> {
    use rstile::synth::isprs::{all_areas, isprs_layout};
    let areas = if a.areas.is_empty() {
        all_areas()
    } else {
        a.areas.clone()
    };
    let t = Instant::now();
    let bar = super::bar(a.quiet, "{bar:30} {pos}/{len} areas  ETA {eta}");
    let done = isprs_layout(&a.output, &areas, a.seed, a.overwrite, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if !a.quiet {
        let px: usize = done.iter().map(|d| d.width * d.height).sum();
        println!(
            "rstile: wrote {} Vaihingen-sized areas ({:.0} Mpx, seed {} + area) in {:.1} s under {}",
            done.len(),
            px as f64 / 1e6,
            a.seed,
            t.elapsed().as_secs_f64(),
            a.output.display()
        );
    }
    Ok(())
}
