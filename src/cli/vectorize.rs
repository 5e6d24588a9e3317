//! `rstile vectorize`: a land-cover map's classes as polygons (GeoPackage,
//! or any vector format OGR writes, by extension), with a QGIS style.

use anyhow::Result;
use clap::Args;
use rstile::vectorize::{vectorize, VectorizeOptions, VectorizePlan};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct VectorizeArgs {
    /// The land-cover map (a Byte raster of class ids, as `rstile infer`
    /// writes it).
    map: PathBuf,
    /// The output: its extension picks the OGR format (.gpkg GeoPackage,
    /// .shp, .geojson, .fgb, ...). STEM.qml (the QGIS style) goes beside it.
    #[arg(short, long)]
    output: PathBuf,
    /// Simplify polygons with this tolerance in map units (OGR's
    /// SimplifyPreserveTopology, each polygon on its own).
    #[arg(long, value_name = "TOL")]
    simplify: Option<f64>,
    /// Drop polygons smaller than this many m² (before simplification).
    #[arg(long, value_name = "M2")]
    min_area: Option<f64>,
    /// Class ids to leave out, comma-separated (e.g. 0,5).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    skip: Vec<u8>,
    /// Tile rows of the map read and polygonized at a time (default: as
    /// many as keep a block under 16 Mpx). Polygons are joined across
    /// blocks, so this changes memory, never the result.
    #[arg(long, value_name = "N")]
    block_rows: Option<usize>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
    /// Print nothing but errors and warnings.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: VectorizeArgs) -> Result<()> {
    let t = Instant::now();
    let opts = VectorizeOptions {
        simplify: a.simplify,
        min_area: a.min_area,
        skip: a.skip.clone(),
        block_rows: a.block_rows,
        overwrite: a.overwrite,
    };
    let plan = VectorizePlan::resolve(&a.map, &a.output, &opts)?;
    for w in &plan.warnings {
        eprintln!("rstile: warning: {w}");
    }
    let bar = super::bar(a.quiet, "{bar:30} {pos}/{len} rows  ETA {eta}");
    let stop = super::process::stop_flag()?;
    let summary = vectorize(
        &plan,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        Some(&stop),
    )?;
    bar.finish_and_clear();
    if !a.quiet {
        let per_class: Vec<String> = summary
            .classes
            .iter()
            .filter_map(|c| {
                summary
                    .per_class
                    .get(&c.id)
                    .map(|n| format!("{} {n}", c.name))
            })
            .collect();
        let mut dropped = Vec::new();
        if summary.dropped_small > 0 {
            dropped.push(format!(
                "{} under --min-area dropped",
                summary.dropped_small
            ));
        }
        if summary.dropped_empty > 0 {
            dropped.push(format!("{} simplified away", summary.dropped_empty));
        }
        let dropped = if dropped.is_empty() {
            String::new()
        } else {
            format!("; {}", dropped.join(", "))
        };
        let per_class = if per_class.is_empty() {
            String::new()
        } else {
            format!(" ({})", per_class.join(", "))
        };
        println!(
            "rstile: vectorize: {} polygons{}{} from {}x{} px in {} block(s) of {} rows in {:.2} s -> {} ({}), {}",
            summary.polygons(),
            per_class,
            dropped,
            plan.width,
            plan.height,
            summary.blocks,
            plan.block_height,
            t.elapsed().as_secs_f64(),
            plan.output.display(),
            plan.driver,
            plan.qml.display()
        );
    }
    Ok(())
}
