//! `rstile eval`: score a model on Vaihingen areas as the ISPRS leaderboard does.

use super::process;
use anyhow::Result;
use clap::Args;
use rstile::classes::ClassTable;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// The model file (.safetensors or .onnx): 5 input bands, the ISPRS classes.
    #[arg(long)]
    model: PathBuf,
    /// The ISPRS archive or a folder of the course's vaihingen_N.hdf5.
    #[arg(long)]
    data: PathBuf,
    /// Areas to evaluate, comma-separated [default: 30,32; with
    /// --submission the 17 test areas].
    #[arg(long, value_delimiter = ',')]
    areas: Vec<u16>,
    /// Score against the full reference instead of the eroded one.
    #[arg(long)]
    full_reference: bool,
    /// Output folder: map_areaN.tif, eval.md, eval.json.
    #[arg(
        long,
        required_unless_present = "submission",
        conflicts_with = "submission"
    )]
    out: Option<PathBuf>,
    /// Write the ISPRS benchmark's submission to this folder instead: each
    /// test area as top_mosaic_09cm_areaN_class.tif (RGB, ISPRS colours,
    /// the tile's size), and submission.zip of them. Needs only the
    /// archive's top/ and dsm/.
    #[arg(long, value_name = "DIR")]
    submission: Option<PathBuf>,
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
    let out = match (a.out.clone(), a.submission.clone()) {
        (_, Some(dir)) => return submission(a, dir),
        (Some(out), None) => out,
        (None, None) => anyhow::bail!("give --out DIR or --submission DIR"),
    };
    let mut o = EvalOptions::new(a.model, a.data, out);
    if !a.areas.is_empty() {
        o.areas = a.areas;
    }
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

fn submission(a: EvalArgs, dir: PathBuf) -> Result<()> {
    use rstile::vaihingen::submission::{write_submission, SubmissionOptions};
    let mut o = SubmissionOptions::new(a.model, a.data, dir);
    if !a.areas.is_empty() {
        o.areas = a.areas;
    }
    o.ground_radius = a.ground_radius;
    o.batch = a.batch;
    let t0 = Instant::now();
    let total = o.areas.len();
    let s = write_submission(&o, &|n, r| match r {
        Ok(p) => eprintln!("rstile: area {n}: {}", p.display()),
        Err(e) => eprintln!("rstile: error: area {n}: {}", rstile::error::one_line(e)),
    })?;
    if !s.failed.is_empty() {
        let names: Vec<String> = s.failed.iter().map(|(n, _)| n.to_string()).collect();
        anyhow::bail!(
            "{} of {total} test areas failed (areas {}); the others are in {}, and no submission.zip was written",
            s.failed.len(),
            names.join(", "),
            o.dir.display()
        );
    }
    eprintln!(
        "rstile: {} test areas mapped in {:.1} s -> {}",
        s.files.len(),
        t0.elapsed().as_secs_f64(),
        s.zip.as_deref().unwrap_or(&o.dir).display()
    );
    Ok(())
}
