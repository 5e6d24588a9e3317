//! `rstile demo`: the whole Vaihingen benchmark on a generated dataset.

use super::process;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (replaced if it holds an earlier demo).
    #[arg(long, default_value = "rstile-demo")]
    out: PathBuf,
    /// Training budget in seconds (stops after the epoch in which it runs out).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of the generated areas and of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Replace an output folder that is not empty and not an earlier demo's.
    #[arg(long)]
    overwrite: bool,
    /// Print only the table and the files written.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    process::set_threads(a.threads);
    process::gdal_cache(rstile::infer::InferOptions::default().gdal_cache_mb);
    let mut o = rstile::vaihingen::demo::DemoOptions::new(&a.out);
    o.seconds = a.seconds;
    o.seed = a.seed;
    o.overwrite = a.overwrite;
    let quiet = a.quiet;
    let log = move |msg: &str| {
        if !quiet {
            eprintln!("rstile: demo: {msg}");
        }
    };
    let s = rstile::vaihingen::demo::run(&o, &log)?;
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1}", 100.0 * v));
    println!(
        "Vaihingen-shaped demo: tiny FCN, {} epoch(s) in {:.0} s, areas {:?}, {} reference (F1 per class and overall accuracy, %):\n",
        s.history.len(),
        s.step_seconds[2],
        o.val_areas,
        s.eval.reference
    );
    println!("{}\n", s.table);
    println!(
        "mean F1 {} (5 classes), mIoU {} (6 classes)",
        pct(s.eval.overall.mean_f1),
        pct(s.eval.overall.miou)
    );
    println!("rstile: demo wrote:");
    let files: Vec<(&str, PathBuf)> = vec![
        ("dataset (ISPRS layout)", s.data.clone()),
        ("prepared patches", s.prepared_dir.clone()),
        ("training config", s.config.clone()),
        ("training run", s.run_dir.clone()),
        ("model", s.model.clone()),
        ("evaluation report", s.eval.markdown.clone()),
        ("evaluation JSON", s.eval.json.clone()),
        ("map", s.map.map.clone()),
        ("QGIS style", s.map.qml.clone()),
        ("map preview", s.map.preview.clone()),
        ("reference preview", s.map.reference_preview.clone()),
    ];
    for (what, p) in files {
        println!("  {what:<24} {}", p.display());
    }
    for p in &s.eval.maps {
        println!("  {:<24} {}", "evaluated map", p.display());
    }
    println!(
        "rstile: demo finished in {:.1} s (synth {:.1}, prepare {:.1}, train {:.1}, eval {:.1}, infer {:.1})",
        s.seconds,
        s.step_seconds[0],
        s.step_seconds[1],
        s.step_seconds[2],
        s.step_seconds[3],
        s.step_seconds[4]
    );
    Ok(())
}
