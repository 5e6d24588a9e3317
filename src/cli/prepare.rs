//! `rstile prepare`: benchmark datasets (patches, features, statistics).

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum PrepareCmd {
    /// ISPRS Vaihingen: 5-feature patches (NIR, R, G, nDSM, NDVI) as the course cut them.
    Vaihingen(PrepareVaihingenArgs),
}

#[derive(Args)]
pub struct PrepareVaihingenArgs {
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

fn vaihingen(a: PrepareVaihingenArgs) -> Result<()> {
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

pub fn run(cmd: PrepareCmd) -> Result<()> {
    match cmd {
        PrepareCmd::Vaihingen(a) => vaihingen(a),
    }
}
