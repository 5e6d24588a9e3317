//! `rstile merge`: join the parts of a split run into one map.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct MergeArgs {
    /// The folder with the parts (MAP.part-I-of-N.tif).
    parts: PathBuf,
    /// The merged map.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing map.
    #[arg(long)]
    overwrite: bool,
    /// Write the map as a Cloud Optimized GeoTIFF.
    #[arg(long)]
    cog: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let t = Instant::now();
    let stop = super::process::stop_flag()?;
    let files = rstile::scale::merge::merge(&a.parts, &a.output, a.overwrite, a.cog, Some(&stop))?;
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
