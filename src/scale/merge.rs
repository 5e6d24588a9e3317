//! Joining the parts of a split run into one map.
//!
//! Each part of `rstile infer --part I/N` is a row band computed with a
//! blending halo on the global window grid, so its pixels are exactly those
//! of a single run; merging is a copy. The parts carry the settings that
//! produced them in their GDAL metadata, so that parts of different runs
//! are refused rather than silently joined.

use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::part_rows;
use crate::infer::read::open_raster;
use crate::infer::stitch::Band;
use crate::infer::window::{Rect, Size};
use crate::infer::write::{confidence_path, MapFiles, MapSpec, MapWriter, TILE};
use gdal::Metadata;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One part file and what it says about itself.
#[derive(Debug, Clone)]
pub struct Part {
    pub path: PathBuf,
    pub index: usize,
    pub count: usize,
    pub rows: (usize, usize),
    pub settings: String,
    pub classes: String,
    pub scene: String,
}

fn parse_name(name: &str) -> Option<(String, usize, usize)> {
    let stem = name.strip_suffix(".tif")?;
    let (base, rest) = stem.rsplit_once(".part-")?;
    let (i, n) = rest.split_once("-of-")?;
    Some((base.to_string(), i.parse().ok()?, n.parse().ok()?))
}

fn item(ds: &gdal::Dataset, path: &Path, key: &str) -> Result<String> {
    ds.metadata_item(key, "")
        .ok_or_else(|| Error::file(path, format!("is not an rstile part (no {key} metadata)")))
}

/// Finds and checks the parts in `dir`.
pub fn find_parts(dir: &Path) -> Result<Vec<Part>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list the parts folder: {e}")))?;
    let mut by_base: BTreeMap<String, Vec<(usize, usize, PathBuf)>> = BTreeMap::new();
    for e in rd {
        let e = e.map_err(|e| Error::file(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if let Some((base, i, n)) = parse_name(&name) {
            by_base.entry(base).or_default().push((i, n, e.path()));
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
    files.sort();
    let n = files[0].1;
    if let Some((i, m, p)) = files.iter().find(|(_, m, _)| *m != n) {
        return Err(Error::file(
            p,
            format!("is part {i} of {m}, but other parts are of {n}"),
        ));
    }
    let present: Vec<usize> = files.iter().map(|f| f.0).collect();
    let missing: Vec<String> = (0..n)
        .filter(|i| !present.contains(i))
        .map(|i| format!("{base}.part-{i}-of-{n}.tif"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::file(
            dir,
            format!("missing part(s): {}", missing.join(", ")),
        ));
    }
    let mut parts = Vec::new();
    for (i, _, path) in files {
        let ds = open_raster(&path)?;
        let rows = item(&ds, &path, "RSTILE_ROWS")?;
        let rows = rows
            .split_once(',')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| Error::file(&path, "bad RSTILE_ROWS metadata"))?;
        let part = Part {
            index: i,
            count: n,
            rows,
            settings: item(&ds, &path, "RSTILE_SETTINGS")?,
            classes: item(&ds, &path, "RSTILE_CLASSES")?,
            scene: item(&ds, &path, "RSTILE_SCENE")?,
            path,
        };
        if item(&ds, &part.path, "RSTILE_PART")? != format!("{i}/{n}") {
            return Err(Error::file(
                &part.path,
                "its name and its RSTILE_PART metadata disagree",
            ));
        }
        parts.push(part);
    }
    let first = parts[0].clone();
    for p in &parts[1..] {
        if p.settings != first.settings || p.classes != first.classes || p.scene != first.scene {
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

/// Merges the parts in `dir` into `out`.
pub fn merge(dir: &Path, out: &Path, overwrite: bool) -> Result<MapFiles> {
    let parts = find_parts(dir)?;
    let first = &parts[0];
    let scene: serde_json::Value = serde_json::from_str(&first.scene)
        .map_err(|e| Error::file(&first.path, format!("bad RSTILE_SCENE metadata: {e}")))?;
    let size = Size {
        width: scene["width"].as_u64().unwrap_or(0) as usize,
        height: scene["height"].as_u64().unwrap_or(0) as usize,
    };
    let gt: Option<[f64; 6]> =
        serde_json::from_value(scene["geo_transform"].clone()).unwrap_or(None);
    let classes: ClassTable = serde_json::from_str(&first.classes)
        .map_err(|e| Error::file(&first.path, format!("bad RSTILE_CLASSES metadata: {e}")))?;
    for p in &parts {
        let want = part_rows(size.height, p.index, p.count)?;
        let ds = open_raster(&p.path)?;
        let (w, h) = ds.raster_size();
        if p.rows != want || w != size.width || h != want.1 - want.0 {
            return Err(Error::file(
                &p.path,
                format!(
                    "holds rows {:?} of {w}x{h} px, expected rows {want:?}",
                    p.rows
                ),
            ));
        }
    }
    let srs = open_raster(&first.path)?
        .spatial_ref()
        .ok()
        .and_then(|s| s.to_wkt().ok());
    let confidence = parts.iter().all(|p| confidence_path(&p.path).exists());
    let mut writer = MapWriter::create(MapSpec {
        path: out.to_path_buf(),
        size,
        geo_transform: gt,
        srs_wkt: srs,
        classes,
        creation_options: Vec::new(),
        overwrite,
        confidence,
        rows: (0, size.height),
        overviews: true,
        metadata: Vec::new(),
        settings: BTreeMap::new(),
        resume: false,
    })?;
    for p in &parts {
        let ds = open_raster(&p.path)?;
        let band = ds.rasterband(1).map_err(|e| Error::file(&p.path, e))?;
        let cds = if confidence {
            Some(open_raster(&confidence_path(&p.path))?)
        } else {
            None
        };
        let mut y = p.rows.0;
        while y < p.rows.1 {
            let h = TILE.min(p.rows.1 - y);
            let local = (y - p.rows.0) as isize;
            let read = |b: &gdal::raster::RasterBand, path: &Path| {
                b.read_as::<u8>((0, local), (size.width, h), (size.width, h), None)
                    .map(|buf| buf.data().to_vec())
                    .map_err(|e| Error::file(path, e))
            };
            let classes = read(&band, &p.path)?;
            let confidence = match &cds {
                Some(c) => Some(read(
                    &c.rasterband(1).map_err(|e| Error::file(&p.path, e))?,
                    &p.path,
                )?),
                None => None,
            };
            writer.write(&Band {
                rect: Rect {
                    x: 0,
                    y,
                    width: size.width,
                    height: h,
                },
                classes,
                confidence,
            })?;
            y += h;
        }
    }
    writer.finish()
}
