//! Joining the parts of a split run into one map.
//!
//! Each part of `rstile infer --part I/N` is a row band computed with a
//! blending halo on the global window grid, so its pixels are exactly those
//! of a single run; merging is a copy. The parts carry the settings that
//! produced them in their GDAL metadata, so that parts of different runs
//! are refused rather than silently joined.

use crate::error::{Error, Result};
use crate::infer::stitch::Band;
use crate::infer::window::Rect;
use crate::infer::write::{read_u8, MapFiles, MapSpec, MapWriter, Side, TILE};
use crate::raster::open_raster;
use crate::scale::parts::{Part, PartMeta};
use gdal::Metadata;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// One part file and what it says about itself.
#[derive(Debug, Clone)]
pub struct PartFile {
    pub path: PathBuf,
    pub meta: PartMeta,
}

/// Finds and checks the parts in `dir`, in part order.
pub fn find_parts(dir: &Path) -> Result<Vec<PartFile>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list the parts folder: {e}")))?;
    let mut by_base: BTreeMap<String, Vec<(Part, PathBuf)>> = BTreeMap::new();
    for e in rd {
        let e = e.map_err(|e| Error::file(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if let Some((base, part)) = Part::from_file_name(&name) {
            by_base
                .entry(base.to_string())
                .or_default()
                .push((part, e.path()));
        }
    }
    if by_base.is_empty() {
        return Err(Error::file(dir, "holds no parts (NAME.part-I-of-N.tif)"));
    }
    if by_base.len() > 1 {
        let names: Vec<_> = by_base.keys().cloned().collect();
        return Err(Error::file(
            dir,
            format!("holds parts of several maps: {}", names.join(", ")),
        ));
    }
    let (base, mut files) = by_base.into_iter().next().expect("one base");
    files.sort_by_key(|(p, path)| (p.index(), p.count(), path.clone()));
    let n = files[0].0.count();
    if let Some((p, path)) = files.iter().find(|(p, _)| p.count() != n) {
        return Err(Error::file(
            path,
            format!(
                "is part {} of {}, but other parts are of {n}",
                p.index(),
                p.count()
            ),
        ));
    }
    let missing: Vec<String> = (0..n)
        .filter(|&i| !files.iter().any(|(p, _)| p.index() == i))
        .map(|i| format!("{base}.part-{i}-of-{n}.tif"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::file(
            dir,
            format!("missing part(s): {}", missing.join(", ")),
        ));
    }
    let mut parts = Vec::new();
    for (part, path) in files {
        let ds = open_raster(&path)?;
        let meta = PartMeta::from_items(&path, |k| ds.metadata_item(k, ""))?;
        if meta.part != part {
            return Err(Error::file(
                &path,
                format!(
                    "its name and its {} metadata disagree",
                    crate::scale::parts::keys::PART
                ),
            ));
        }
        parts.push(PartFile { path, meta });
    }
    let first = &parts[0];
    for p in &parts[1..] {
        if !p.meta.same_run(&first.meta) {
            return Err(Error::file(
                &p.path,
                format!(
                    "comes from another run than {} (other scene, model or settings)",
                    first.path.display()
                ),
            ));
        }
    }
    Ok(parts)
}

/// Merges the parts in `dir` into `out`. Raising `stop` (SIGINT, SIGTERM)
/// ends it with [`Error::Interrupted`], leaving no file that looks finished.
pub fn merge(
    dir: &Path,
    out: &Path,
    overwrite: bool,
    cog: bool,
    stop: Option<&AtomicBool>,
) -> Result<MapFiles> {
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let parts = find_parts(dir)?;
    let first = &parts[0];
    let size = first.meta.scene.size();
    let gt = first.meta.scene.geo_transform;
    let classes = first.meta.classes.clone();
    for p in &parts {
        let want = p.meta.part.rows(size.height)?;
        let ds = open_raster(&p.path)?;
        let (w, h) = ds.raster_size();
        if p.meta.rows != want || w != size.width || h != want.1 - want.0 {
            return Err(Error::file(
                &p.path,
                format!(
                    "holds rows {:?} of {w}x{h} px, expected rows {want:?}",
                    p.meta.rows
                ),
            ));
        }
    }
    let first_ds = open_raster(&first.path)?;
    let srs = first_ds.spatial_ref().ok().and_then(|s| s.to_wkt().ok());
    // a GCP-georeferenced scene: the first part's points, back in scene lines
    let y0 = first.meta.rows.0 as f64;
    let gcps: Vec<gdal::Gcp> = first_ds
        .gcps()
        .iter()
        .map(|g| gdal::Gcp {
            line: g.line() + y0,
            ..gdal::Gcp::from(g)
        })
        .collect();
    let gcp_srs_wkt = first_ds
        .gcp_spatial_ref()
        .and_then(|s| s.to_wkt().ok())
        .filter(|s| !s.is_empty());
    drop(first_ds);
    // a side raster is merged when every part has it
    let has = |side: Side| parts.iter().all(|p| side.path(&p.path).exists());
    let sides: Vec<Side> = Side::ALL.into_iter().filter(|&s| has(s)).collect();
    let mut writer = MapWriter::create(MapSpec {
        path: out.to_path_buf(),
        size,
        geo_transform: gt,
        srs_wkt: srs,
        gcps,
        gcp_srs_wkt,
        classes,
        creation_options: Vec::new(),
        overwrite,
        confidence: sides.contains(&Side::Confidence),
        probabilities: sides.contains(&Side::Probabilities),
        rows: (0, size.height),
        overviews: true,
        cog,
        metadata: Vec::new(),
        settings: BTreeMap::new(),
        scene: None,
        resume: false,
        // a part (or a side raster of it) is never replaced by the merged map
        inputs: crate::output::Inputs::of(parts.iter().flat_map(|p| {
            std::iter::once(p.path.clone()).chain(Side::ALL.map(|s| s.path(&p.path)))
        })),
    })?;
    for p in &parts {
        let ds = open_raster(&p.path)?;
        let mut side_ds = Vec::new();
        for &side in &sides {
            let path = side.path(&p.path);
            side_ds.push((side, open_raster(&path)?, path));
        }
        let (y0, y1) = p.meta.rows;
        let mut y = y0;
        while y < y1 {
            if stopped() {
                // the writer removes its partial files: a merge is redone
                return Err(Error::Interrupted);
            }
            let h = TILE.min(y1 - y);
            let rect = Rect {
                x: 0,
                y: y - y0,
                width: size.width,
                height: h,
            };
            let what = format!("rows {}..{} of the part", y - y0, y - y0 + h);
            let read = |ds: &gdal::Dataset, path: &Path| read_u8(ds, path, rect, &what);
            let classes = read(&ds, &p.path)?;
            let mut confidence = None;
            let mut probabilities = None;
            for (side, sds, path) in &side_ds {
                let data = Some(read(sds, path)?);
                match side {
                    Side::Confidence => confidence = data,
                    Side::Probabilities => probabilities = data,
                }
            }
            writer.write(&Band {
                rect: Rect {
                    x: 0,
                    y,
                    width: size.width,
                    height: h,
                },
                classes,
                confidence,
                probabilities,
            })?;
            y += h;
        }
    }
    writer.finish_unless(stop)
}
