//! `rstile eval`: score a model on Vaihingen areas as the ISPRS leaderboard does.

use super::process;
use anyhow::Result;
use clap::Args;
use rstile::classes::ClassTable;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// The model file (.safetensors): 5 input bands, the ISPRS classes.
    #[arg(long)]
    model: PathBuf,
    /// The ISPRS archive or a folder of the course's vaihingen_N.hdf5.
    #[arg(long)]
    data: PathBuf,
    /// Areas to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30,32")]
    areas: Vec<u16>,
    /// Score against the full reference instead of the eroded one.
    #[arg(long)]
    full_reference: bool,
    /// Output folder: map_areaN.tif, eval.md, eval.json.
    #[arg(long)]
    out: PathBuf,
    /// Radius in px of the nDSM ground estimate (as in prepare).
    #[arg(long, default_value_t = rstile::vaihingen::DEFAULT_GROUND_RADIUS)]
    ground_radius: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Keep the 5-band feature rasters (features_areaN.tif).
    #[arg(long)]
    keep_features: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    use rstile::vaihingen::eval::{evaluate, EvalOptions};
    process::single_candle_pool();
    process::gdal_cache(rstile::infer::InferOptions::default().gdal_cache_mb);
    let mut o = EvalOptions::new(a.model, a.data, a.out);
    o.areas = a.areas;
    o.full_reference = a.full_reference;
    o.ground_radius = a.ground_radius;
    o.batch = a.batch;
    o.keep_features = a.keep_features;
    let t0 = Instant::now();
    let s = evaluate(&o)?;
    let table = s.overall.to_markdown(&ClassTable::isprs());
    println!("{}", table.split("\n\n").next().unwrap_or(&table));
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1}", 100.0 * v));
    eprintln!(
        "mean F1 {} mIoU {} over areas {:?} ({} reference) in {:.1} s; report {} and {}",
        pct(s.overall.mean_f1),
        pct(s.overall.miou),
        s.areas.keys().collect::<Vec<_>>(),
        s.reference,
        t0.elapsed().as_secs_f64(),
        s.markdown.display(),
        s.json.display()
    );
    Ok(())
}
