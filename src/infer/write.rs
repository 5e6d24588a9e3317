//! Writing the land-cover map: a QGIS-ready GeoTIFF, written atomically.
//!
//! The map is written under a hidden temporary name (`.MAP.tif.partial`) and
//! renamed only after its pixels, palette, category names, overviews and
//! style are complete; a failed, interrupted or killed run therefore never
//! leaves a file that looks finished. Dropping an unfinished [`MapWriter`]
//! removes the temporary files.
//!
//! QGIS details that shape this module: a TIFF palette always has 256
//! entries, so without the `.qml` sidecar QGIS lists 256 legend classes; GDAL
//! keeps GeoTIFF category names only in `MAP.tif.aux.xml`, which must follow
//! the rename; a second band would make QGIS choose a multiband renderer, so
//! the confidence and the class probabilities go to their own files
//! ([`Side`]), written band for band with the map, resumed and renamed with
//! it.
//!
//! Encoding: GDAL compresses the tiles, on `NUM_THREADS` worker threads
//! (the run's thread count unless `--co NUM_THREADS` says otherwise). The
//! map's overviews are allocated when the file is created and filled from
//! the bands as they are written ([`crate::infer::overview`]: GDAL's
//! `NEAREST`, pixel for pixel), so finishing reads nothing back; the side
//! rasters' `AVERAGE` overviews are still built by `GDALBuildOverviews` at
//! the end, which reads them once more.

use crate::classes::{ClassTable, NODATA};
use crate::error::{Error, Result};
use crate::hash::Fnv1a;
use crate::infer::overview::{OverviewBuilder, OverviewTile};
use crate::infer::read::Fingerprint;
use crate::infer::stitch::Band;
use crate::infer::window::Size;
use crate::output::{self, Inputs, OutputLock};
use crate::raster::{append, reset_errors, sibling, stem_with, take_failure};
use gdal::cpl::CslStringList;
use gdal::raster::{ColorEntry, ColorTable, PaletteInterpretation};
use gdal::spatial_ref::SpatialRef;
use gdal::Dataset;
use gdal::Metadata;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The output tile size; the stitcher emits bands of this many rows.
pub const TILE: usize = 512;

/// Everything the writer needs to create the map.
#[derive(Debug, Clone)]
pub struct MapSpec {
    pub path: PathBuf,
    pub size: Size,
    pub geo_transform: Option<[f64; 6]>,
    pub srs_wkt: Option<String>,
    /// The scene's ground control points (scene pixel and line), with
    /// their CRS: a scene georeferenced by GCPs has no geotransform, and
    /// its map carries the same points.
    pub gcps: Vec<gdal::Gcp>,
    pub gcp_srs_wkt: Option<String>,
    pub classes: ClassTable,
    /// GDAL creation options; these override the defaults key by key.
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    pub confidence: bool,
    /// Also write `MAP.probabilities.tif`: one u8 band per class.
    pub probabilities: bool,
    /// The raster rows `[y0, y1)` this file holds (a part of a split run
    /// holds a row band; a whole map holds `(0, height)`).
    pub rows: (usize, usize),
    /// Build overviews at the end (not for parts, which get merged).
    pub overviews: bool,
    /// Rewrite the finished map (and its side rasters) as Cloud Optimized
    /// GeoTIFFs with GDAL's COG driver, keeping their overviews.
    pub cog: bool,
    /// Extra GDAL metadata items (domain "").
    pub metadata: Vec<(String, String)>,
    /// The settings that produced the pixels; a resume must match them.
    pub settings: BTreeMap<String, String>,
    /// Continue an unfinished run with the same settings, if there is one.
    pub resume: bool,
    /// The scene's content; a resume must find the same (`None`: no scene,
    /// as in `merge`, which never resumes).
    pub scene: Option<Fingerprint>,
    /// The files the run reads: none of the map's files may be one of them.
    pub inputs: Inputs,
}

/// The files a finished map consists of.
#[derive(Debug, Clone)]
pub struct MapFiles {
    pub map: PathBuf,
    pub qml: PathBuf,
    pub confidence: Option<PathBuf>,
    pub probabilities: Option<PathBuf>,
}

/// The path of the confidence raster beside `map`: `MAP.confidence.tif`.
pub fn confidence_path(map: &Path) -> PathBuf {
    stem_with(map, ".confidence.tif")
}

/// The path of the class probabilities beside `map`: `MAP.probabilities.tif`.
pub fn probabilities_path(map: &Path) -> PathBuf {
    stem_with(map, ".probabilities.tif")
}

/// A raster written beside the map, band for band with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `MAP.confidence.tif`: the winning class's probability, 0..=100.
    Confidence,
    /// `MAP.probabilities.tif`: each class's probability x 254, one band
    /// per class (named after it).
    Probabilities,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Confidence, Side::Probabilities];

    /// Its path beside `map`.
    pub fn path(self, map: &Path) -> PathBuf {
        match self {
            Side::Confidence => confidence_path(map),
            Side::Probabilities => probabilities_path(map),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Confidence => "confidence",
            Side::Probabilities => "probabilities",
        }
    }

    /// Whether `spec` asks for it.
    pub fn wanted(self, spec: &MapSpec) -> bool {
        match self {
            Side::Confidence => spec.confidence,
            Side::Probabilities => spec.probabilities,
        }
    }

    fn bands(self, classes: &ClassTable) -> usize {
        match self {
            Side::Confidence => 1,
            Side::Probabilities => classes.len(),
        }
    }

    /// Its pixels in a finished band (band-sequential planes).
    pub fn data(self, band: &Band) -> Option<&[u8]> {
        match self {
            Side::Confidence => band.confidence.as_deref(),
            Side::Probabilities => band.probabilities.as_deref(),
        }
    }

    fn hashes(self, j: &mut Journal) -> &mut BTreeMap<usize, u64> {
        match self {
            Side::Confidence => &mut j.conf_hash,
            Side::Probabilities => &mut j.prob_hash,
        }
    }

    fn recorded(self, j: &Journal) -> &BTreeMap<usize, u64> {
        match self {
            Side::Confidence => &j.conf_hash,
            Side::Probabilities => &j.prob_hash,
        }
    }
}

/// An open side raster of the current generation.
struct SideFile {
    side: Side,
    ds: Dataset,
    tmp: PathBuf,
}

/// The sidecar paths GDAL and QGIS look for.
pub fn aux_path(p: &Path) -> PathBuf {
    append(p, ".aux.xml")
}

/// The QGIS style path: `MAP.qml`.
pub fn qml_path(map: &Path) -> PathBuf {
    map.with_extension("qml")
}

fn tmp_path(p: &Path) -> PathBuf {
    sibling(p, ".", ".partial")
}

/// Default creation options: 512 px tiles, DEFLATE with a predictor,
/// BigTIFF when needed.
pub fn default_creation_options() -> Vec<(String, String)> {
    [
        ("TILED", "YES"),
        ("BLOCKXSIZE", "512"),
        ("BLOCKYSIZE", "512"),
        ("COMPRESS", "DEFLATE"),
        ("PREDICTOR", "2"),
        ("BIGTIFF", "IF_SAFER"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn merged_options(user: &[(String, String)]) -> Result<CslStringList> {
    let mut opts = default_creation_options();
    for (k, v) in user {
        let k = k.to_ascii_uppercase();
        if k == "BLOCKXSIZE" || k == "BLOCKYSIZE" || k == "TILED" {
            return Err(Error::Config(format!(
                "--co {k} cannot be changed: rstile writes 512 x 512 tiles"
            )));
        }
        match opts.iter_mut().find(|(ok, _)| *ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => opts.push((k, v.clone())),
        }
    }
    let mut list = CslStringList::new();
    for (k, v) in &opts {
        list.set_name_value(k, v).map_err(|e| {
            Error::Config(format!("--co {k}={v}: {}", crate::error::gdal_reason(&e)))
        })?;
    }
    // against the GeoTIFF driver's own list: an unknown key or value would
    // otherwise be ignored (COMPRESS=NOPE wrote an uncompressed map)
    let driver = gdal::DriverManager::get_driver_by_name("GTiff")?;
    reset_errors();
    // SAFETY: a valid driver handle and a NULL-terminated option list
    let valid = unsafe { gdal_sys::GDALValidateCreationOptions(driver.c_driver(), list.as_ptr()) };
    if valid == 0 {
        let reason = crate::raster::last_message();
        return Err(Error::Config(format!(
            "--co: {} (see the GeoTIFF driver's creation options: gdalinfo --format GTiff)",
            reason.unwrap_or_else(|| "refused by GDAL's GeoTIFF driver".into())
        )));
    }
    Ok(list)
}

/// Checks `--co` options before any work: the keys rstile keeps fixed, and
/// GDAL's validation against the GeoTIFF driver's list.
pub fn check_creation_options(user: &[(String, String)]) -> Result<()> {
    merged_options(user).map(|_| ())
}

/// Creates a u8 GeoTIFF of `bands` bands on the scene's grid, nodata 255.
fn create_u8(path: &Path, spec: &MapSpec, bands: usize) -> Result<Dataset> {
    let mut opts = merged_options(&spec.creation_options)?;
    if opts.fetch_name_value("NUM_THREADS").is_none() {
        // GDAL compresses the tiles of each flush on its worker threads
        opts.set_name_value("NUM_THREADS", &rayon::current_num_threads().to_string())?;
    }
    if bands > 1 {
        // band-sequential: a band's tiles together, as GDAL reads one class
        opts.set_name_value("INTERLEAVE", "BAND")?;
    }
    let size = (spec.size.width, spec.rows.1 - spec.rows.0);
    let mut ds = crate::raster::create::<u8>("GTiff", path, size, bands, &opts)
        .map_err(|e| Error::gdal_file(&spec.path, "cannot create the map", e))?;
    if let Some(mut gt) = spec.geo_transform {
        // a row band starts `rows.0` rows down
        let y0 = spec.rows.0 as f64;
        gt[0] += gt[2] * y0;
        gt[3] += gt[5] * y0;
        ds.set_geo_transform(&gt).map_err(Error::on(&spec.path))?;
    }
    if let Some(wkt) = &spec.srs_wkt {
        let srs = SpatialRef::from_wkt(wkt).map_err(Error::on(&spec.path))?;
        ds.set_spatial_ref(&srs).map_err(Error::on(&spec.path))?;
    }
    if spec.geo_transform.is_none() && !spec.gcps.is_empty() {
        crate::raster::set_gcps(
            &ds,
            &spec.gcps,
            spec.rows.0 as f64,
            spec.gcp_srs_wkt.as_deref(),
        )
        .map_err(|e| {
            Error::gdal_file(
                &spec.path,
                "cannot carry over the scene's ground control points",
                e,
            )
        })?;
    }
    for b in 1..=bands {
        let mut band = ds.rasterband(b).map_err(Error::on(&spec.path))?;
        band.set_no_data_value(Some(NODATA as f64))
            .map_err(Error::on(&spec.path))?;
    }
    Ok(ds)
}

/// Names band `c + 1` after class `c` (the model's channel order).
fn name_bands(ds: &Dataset, classes: &ClassTable, path: &Path) -> Result<()> {
    for (c, class) in classes.classes.iter().enumerate() {
        let mut band = ds.rasterband(c + 1).map_err(Error::on(path))?;
        band.set_description(&class.name).map_err(Error::on(path))?;
    }
    Ok(())
}

/// Sets the palette and category names of band 1 from `classes`.
pub fn set_legend(ds: &Dataset, classes: &ClassTable, path: &Path) -> Result<()> {
    let mut band = ds.rasterband(1).map_err(Error::on(path))?;
    let mut ct = ColorTable::new(PaletteInterpretation::Rgba);
    let max_id = classes.classes.iter().map(|c| c.id).max().unwrap_or(0);
    for v in 0..=255u16 {
        ct.set_color_entry(v, &ColorEntry::rgba(0, 0, 0, 0));
    }
    for c in &classes.classes {
        let [r, g, b] = c.rgb();
        ct.set_color_entry(
            c.id as u16,
            &ColorEntry::rgba(r as i16, g as i16, b as i16, 255),
        );
    }
    band.set_color_table(&ct);
    if band.color_table().is_none() {
        return Err(Error::file(path, "GDAL refused the colour table"));
    }
    let mut names = CslStringList::new();
    for v in 0..=max_id {
        let name = classes
            .classes
            .iter()
            .find(|c| c.id == v)
            .map(|c| c.name.as_str())
            .unwrap_or("");
        names.add_string(name).map_err(Error::on(path))?;
    }
    let rv = unsafe {
        gdal_sys::GDALSetRasterCategoryNames(band.c_rasterband(), names.as_ptr() as *mut _)
    };
    if rv != gdal_sys::CPLErr::CE_None {
        return Err(Error::file(path, "GDAL refused the category names"));
    }
    Ok(())
}

/// Overview factors: halve until the smaller side is under 128 px, at
/// least one level.
pub fn overview_factors(size: Size) -> Vec<i32> {
    let mut f = vec![2];
    while size.width.max(size.height) / (*f.last().unwrap() as usize * 2) >= 128 {
        f.push(f.last().unwrap() * 2);
    }
    f
}

/// The resume journal: which rows of each column chunk are durably in the
/// partial map, and the settings that produced them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Journal {
    settings: BTreeMap<String, String>,
    /// Generation of the partial files the rows below live in.
    generation: u32,
    /// Column chunk start → first row not yet written (absolute raster row).
    rows_done: BTreeMap<usize, usize>,
    /// Column chunk start → chunk end.
    chunk_end: BTreeMap<usize, usize>,
    /// The scene the rows were computed from.
    #[serde(default)]
    scene: Option<Fingerprint>,
    /// Column chunk start → FNV-1a of the chunk's map rows written so far,
    /// row by row (the confidence's in `conf_hash`), checked before a
    /// resume trusts the partial file.
    #[serde(default)]
    map_hash: BTreeMap<usize, u64>,
    #[serde(default)]
    conf_hash: BTreeMap<usize, u64>,
    #[serde(default)]
    prob_hash: BTreeMap<usize, u64>,
}

/// The resume journal's path beside the partial map.
pub fn journal_path(map: &Path) -> PathBuf {
    append(&tmp_path(map), ".resume.json")
}

/// Writes the map band by band; [`finish`](MapWriter::finish) makes it real.
///
/// After each band the map is flushed and synced and the journal records
/// the rows written, so that a run killed at any moment can be resumed
/// from the journal without trusting anything it does not record.
pub struct MapWriter {
    /// Held from before the first check to the end: one writer per map.
    _lock: OutputLock,
    spec: MapSpec,
    map: Option<Dataset>,
    sides: Vec<SideFile>,
    tmp_map: PathBuf,
    journal: Journal,
    resumed: bool,
    keep: bool,
    done: bool,
    created: bool,
    note: Option<String>,
    /// The map's overviews, filled as its bands are written (`None`: the
    /// spec asks for none).
    overviews: Option<OverviewBuilder>,
    /// Time spent on them so far.
    overview_time: Duration,
}

impl MapWriter {
    /// Creates the temporary files, or reopens them when `spec.resume` is
    /// set and an unfinished run with the same settings left them. Fails if
    /// the output exists and `overwrite` is not set, or the place cannot be
    /// written, or the unfinished run used other settings.
    pub fn create(spec: MapSpec) -> Result<MapWriter> {
        let lock = OutputLock::acquire(&spec.path)?;
        // the map and every sidecar it may replace or remove
        for p in [
            spec.path.clone(),
            qml_path(&spec.path),
            aux_path(&spec.path),
            confidence_path(&spec.path),
            aux_path(&confidence_path(&spec.path)),
            probabilities_path(&spec.path),
            aux_path(&probabilities_path(&spec.path)),
        ] {
            output::check(&p, spec.overwrite, &spec.inputs)?;
        }
        let jpath = journal_path(&spec.path);
        let mut w = MapWriter {
            _lock: lock,
            map: None,
            sides: Vec::new(),
            tmp_map: PathBuf::new(),
            journal: Journal {
                settings: spec.settings.clone(),
                scene: spec.scene.clone(),
                ..Default::default()
            },
            resumed: false,
            keep: false,
            done: false,
            created: false,
            note: None,
            overviews: None,
            overview_time: Duration::ZERO,
            spec,
        };
        let old: Option<Journal> = match std::fs::read_to_string(&jpath) {
            Ok(text) => serde_json::from_str(&text).ok(),
            Err(_) => None,
        };
        let old = old.filter(|j| !j.rows_done.is_empty());
        if let (true, Some(old)) = (w.spec.resume, &old) {
            let diff: Vec<String> = w
                .spec
                .settings
                .iter()
                .filter(|(k, v)| old.settings.get(*k) != Some(*v))
                .map(|(k, v)| {
                    format!(
                        "{k} {} (now {v})",
                        old.settings.get(k).map(String::as_str).unwrap_or("unset")
                    )
                })
                .collect();
            if !diff.is_empty() {
                // nothing of this writer exists yet; the old run stays
                return Err(Error::file(
                    &w.spec.path,
                    format!(
                        "--resume: the unfinished run used other settings: {}",
                        diff.join(", ")
                    ),
                ));
            }
            if let (Some(was), Some(now)) = (&old.scene, &w.spec.scene) {
                if let Some(what) = was.differs(now) {
                    return Err(Error::file(
                        &w.spec.path,
                        format!(
                            "--resume: the scene changed since the unfinished run ({what}); \
                             run without --resume to start over"
                        ),
                    ));
                }
            }
            match w.continue_from(old) {
                Ok(()) => return Ok(w),
                Err(e) => {
                    w.note = Some(format!(
                        "the unfinished run could not be continued ({e}); starting over"
                    ));
                    w.map = None;
                    w.overviews = None;
                    w.sides.clear();
                    w.keep = false;
                }
            }
        }
        // a fresh start: clear leftovers of an earlier run
        if let Some(old) = &old {
            if !w.spec.resume {
                w.note = Some(
                    "an unfinished run of this map was discarded; pass --resume to continue one"
                        .into(),
                );
            }
            w.remove_generation(old.generation);
        }
        w.journal.generation = old.as_ref().map(|j| j.generation + 1).unwrap_or(0);
        w.remove_generation(w.journal.generation);
        let _ = std::fs::remove_file(&jpath);
        w.open_generation()?;
        w.save_journal()?;
        Ok(w)
    }

    /// A message for the user about an unfinished run, if any.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The partial file of the map (`None`) or of a side raster in
    /// `generation`.
    fn gen_path(&self, side: Option<Side>, generation: u32) -> PathBuf {
        let p = side.map_or(self.spec.path.clone(), |s| s.path(&self.spec.path));
        append(&tmp_path(&p), &format!(".{generation}"))
    }

    /// The size of the file this writer writes (a part: its rows).
    fn file_size(&self) -> Size {
        Size {
            width: self.spec.size.width,
            height: self.spec.rows.1 - self.spec.rows.0,
        }
    }

    /// Writes the map's pixels `classes` at `r` (file coordinates), and
    /// the overview tiles they complete.
    fn write_map(&mut self, r: crate::infer::window::Rect, classes: &[u8]) -> Result<()> {
        let path = &self.spec.path;
        let map = self.map.as_mut().expect("writer used after finish");
        write_u8(map, path, r, classes)?;
        let Some(ov) = &mut self.overviews else {
            return Ok(());
        };
        let t0 = Instant::now();
        let band = map.rasterband(1).map_err(Error::on(path))?;
        let done = ov.add(r, classes, |t: OverviewTile| -> Result<()> {
            let mut o = band
                .overview(t.level)
                .map_err(|e| Error::gdal_file(path, format!("no overview {}", t.level + 1), e))?;
            let (x, y, w, h) = (t.rect.x, t.rect.y, t.rect.width, t.rect.height);
            let mut buf = gdal::raster::Buffer::new((w, h), t.data.to_vec());
            o.write((x as isize, y as isize), (w, h), &mut buf)
                .map_err(|e| {
                    Error::gdal_file(
                        path,
                        format!(
                            "writing overview {} failed at rows {y}..{}",
                            t.level + 1,
                            y + h
                        ),
                        e,
                    )
                })
        });
        self.overview_time += t0.elapsed();
        done
    }

    /// Time spent on the map's overviews while writing its bands.
    pub fn overview_time(&self) -> Duration {
        self.overview_time
    }

    fn remove_generation(&self, generation: u32) {
        let all = std::iter::once(None).chain(Side::ALL.map(Some));
        for side in all {
            let p = self.gen_path(side, generation);
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(aux_path(&p));
        }
    }

    /// Creates the partial files of the journal's generation.
    fn open_generation(&mut self) -> Result<()> {
        self.tmp_map = self.gen_path(None, self.journal.generation);
        self.created = true;
        let mut map = create_u8(&self.tmp_map, &self.spec, 1)?;
        set_legend(&map, &self.spec.classes, &self.spec.path)?;
        for (k, v) in &self.spec.metadata {
            map.set_metadata_item(k, v, "")
                .map_err(Error::on(&self.spec.path))?;
        }
        self.overviews = None;
        if self.spec.overviews {
            // the overview levels, empty: filled as the bands come
            let size = self.file_size();
            let factors = overview_factors(size);
            build_overviews(&mut map, &self.spec.path, "NONE", &factors, None)?;
            self.overviews = Some(OverviewBuilder::new(size, &factors));
        }
        self.map = Some(map);
        for side in Side::ALL {
            if side.wanted(&self.spec) {
                let tmp = self.gen_path(Some(side), self.journal.generation);
                let ds = create_u8(&tmp, &self.spec, side.bands(&self.spec.classes))?;
                if side == Side::Probabilities {
                    name_bands(&ds, &self.spec.classes, &side.path(&self.spec.path))?;
                }
                self.sides.push(SideFile { side, ds, tmp });
            }
        }
        Ok(())
    }

    /// Continues an unfinished run: its files are never modified (libtiff
    /// rewrites a directory in two steps, so an in-place update killed at the
    /// wrong moment could break them). The journalled rows are copied into a
    /// new generation, and the journal switches to it only when the copy is
    /// durable; then the old generation goes.
    fn continue_from(&mut self, old: &Journal) -> Result<()> {
        if self.spec.scene.is_some() && old.scene.is_none() {
            return Err(Error::Config(
                "its journal records no scene fingerprint".into(),
            ));
        }
        let om = self.gen_path(None, old.generation);
        let old_map = crate::raster::open_raster(&om)?;
        let mut old_sides = Vec::new();
        for side in Side::ALL.into_iter().filter(|s| s.wanted(&self.spec)) {
            let p = self.gen_path(Some(side), old.generation);
            old_sides.push((side, crate::raster::open_raster(&p)?, p));
        }
        self.keep = true; // never throw away the run being continued
        self.journal.generation = old.generation + 1;
        self.remove_generation(self.journal.generation);
        self.open_generation()?;
        let y_base = self.spec.rows.0;
        for (&x0, &done) in &old.rows_done {
            let mut map_hash = Fnv1a::new();
            let mut side_hash: Vec<Fnv1a> = old_sides.iter().map(|_| Fnv1a::new()).collect();
            let x1 = old
                .chunk_end
                .get(&x0)
                .copied()
                .unwrap_or(self.spec.size.width);
            let mut y = y_base;
            while y < done {
                let h = TILE.min(done - y);
                let rect = crate::infer::window::Rect {
                    x: x0,
                    y: y - y_base,
                    width: x1 - x0,
                    height: h,
                };
                let classes = read_u8(&old_map, &om, rect, "the unfinished run")?;
                map_hash.update(&classes);
                let path = self.spec.path.clone();
                self.write_map(rect, &classes)?;
                for ((side, src, p), hash) in old_sides.iter().zip(side_hash.iter_mut()) {
                    let data = read_u8(src, p, rect, "the unfinished run")?;
                    hash.update(&data);
                    let dst = self
                        .sides
                        .iter_mut()
                        .find(|f| f.side == *side)
                        .expect("the same sides open");
                    write_u8(&mut dst.ds, &side.path(&path), rect, &data)?;
                }
                y += h;
            }
            // the partial file must hold exactly what the journal says
            let check = |name: &str, recorded: Option<&u64>, h: Fnv1a| -> Result<()> {
                match recorded {
                    Some(&r) if r == h.finish() => Ok(()),
                    Some(_) => Err(Error::Config(format!(
                        "the {name} rows of columns {x0}..{x1} do not match the journal's checksum"
                    ))),
                    None => Err(Error::Config(format!(
                        "the journal records no checksum for columns {x0}..{x1}"
                    ))),
                }
            };
            check("map", old.map_hash.get(&x0), map_hash)?;
            for ((side, _, _), hash) in old_sides.iter().zip(side_hash) {
                check(side.name(), side.recorded(old).get(&x0), hash)?;
            }
        }
        self.durable()?;
        self.journal.rows_done = old.rows_done.clone();
        self.journal.chunk_end = old.chunk_end.clone();
        self.journal.map_hash = old.map_hash.clone();
        self.journal.conf_hash = old.conf_hash.clone();
        self.journal.prob_hash = old.prob_hash.clone();
        self.save_journal()?;
        drop(old_map);
        drop(old_sides);
        self.remove_generation(old.generation);
        self.resumed = true;
        Ok(())
    }

    /// Flushes and syncs the partial files, checking GDAL's error state.
    fn durable(&mut self) -> Result<()> {
        let path = self.spec.path.clone();
        reset_errors();
        flush_twice(self.map.as_mut().expect("map open"), &path)?;
        if let Some(e) = take_failure() {
            return Err(Error::gdal_file(&path, "write failed", e));
        }
        sync(&self.tmp_map, &path)?;
        for f in &mut self.sides {
            let spath = f.side.path(&path);
            flush_twice(&mut f.ds, &spath)?;
            if let Some(e) = take_failure() {
                return Err(Error::gdal_file(&spath, "write failed", e));
            }
            sync(&f.tmp, &spath)?;
        }
        Ok(())
    }

    /// Keeps the unfinished map and its journal when dropped, so that the
    /// same command with `--resume` continues it (after SIGINT or SIGTERM).
    /// A writer without a scene (`merge`) has nothing to resume: its files
    /// go.
    pub fn keep_for_resume(&mut self) {
        self.keep |= self.spec.scene.is_some() && !self.journal.rows_done.is_empty();
    }

    /// Whether an unfinished run was picked up.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The first row of the column chunk starting at `x0` that is not yet
    /// written (absolute raster row).
    pub fn rows_done(&self, x0: usize) -> usize {
        self.journal
            .rows_done
            .get(&x0)
            .copied()
            .unwrap_or(self.spec.rows.0)
    }

    fn save_journal(&self) -> Result<()> {
        let j = journal_path(&self.spec.path);
        let tmp = append(&j, ".tmp");
        let text = serde_json::to_string(&self.journal).expect("journal serialises");
        if let Err(e) = std::fs::write(&tmp, text) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::file(
                &self.spec.path,
                format!("cannot write the resume journal: {e}"),
            ));
        }
        std::fs::rename(&tmp, &j).map_err(|e| Error::file(&j, e))
    }

    /// Writes one finished band of the map (raster coordinates), makes it
    /// durable, and records it in the journal.
    pub fn write(&mut self, band: &Band) -> Result<()> {
        let mut r = band.rect;
        r.y -= self.spec.rows.0;
        let path = self.spec.path.clone();
        reset_errors();
        self.write_map(r, &band.classes)?;
        for f in &mut self.sides {
            let data = f.side.data(band).ok_or_else(|| {
                Error::file(
                    &path,
                    format!("internal: a band without its {}", f.side.name()),
                )
            })?;
            write_u8(&mut f.ds, &f.side.path(&path), r, data)?;
        }
        self.durable()?;
        let x0 = band.rect.x;
        let mut h = self
            .journal
            .map_hash
            .get(&x0)
            .map_or(Fnv1a::new(), |&s| Fnv1a::resume(s));
        h.update(&band.classes);
        self.journal.map_hash.insert(x0, h.finish());
        for side in self.sides.iter().map(|f| f.side) {
            let data = side.data(band).expect("checked above");
            let hashes = side.hashes(&mut self.journal);
            let mut h = hashes.get(&x0).map_or(Fnv1a::new(), |&s| Fnv1a::resume(s));
            h.update(data);
            hashes.insert(x0, h.finish());
        }
        self.journal
            .rows_done
            .insert(band.rect.x, band.rect.y + band.rect.height);
        self.journal
            .chunk_end
            .insert(band.rect.x, band.rect.x + band.rect.width);
        self.save_journal()
    }

    /// Builds overviews, closes, writes the `.qml` and renames into place.
    pub fn finish(self) -> Result<MapFiles> {
        self.finish_unless(None)
    }

    /// [`finish`](Self::finish), unless `stop` is raised (SIGINT, SIGTERM)
    /// while the overviews are built: GDAL is then asked to stop at its
    /// next progress report, and the run ends with [`Error::Interrupted`],
    /// keeping the partial map and its journal (every row is in it) for
    /// `--resume`, as an interruption during inference does.
    pub fn finish_unless(mut self, stop: Option<&AtomicBool>) -> Result<MapFiles> {
        let factors = overview_factors(self.file_size());
        let path = self.spec.path.clone();
        let map = self.map.take().expect("finish twice");
        reset_errors();
        let (nearest, average) = (
            ("NEAREST", "writing the map failed"),
            ("AVERAGE", "writing failed"),
        );
        // the map's overviews are complete unless some rows never came:
        // then GDAL builds them from the map
        let built = self.overviews.as_ref().is_some_and(|o| o.complete());
        self.close_with_overviews(map, &path, nearest, &factors, !built, stop)?;
        let mut side_tmps = Vec::new();
        for SideFile { side, ds, tmp } in std::mem::take(&mut self.sides) {
            self.close_with_overviews(ds, &side.path(&path), average, &factors, true, stop)?;
            side_tmps.push((side, tmp));
        }
        if self.spec.cog {
            let done = rewrite_as_cog(&self.tmp_map, &path, &self.spec.creation_options, stop)
                .and_then(|()| {
                    side_tmps.iter().try_for_each(|(side, tmp)| {
                        rewrite_as_cog(tmp, &side.path(&path), &self.spec.creation_options, stop)
                    })
                });
            if let Err(e) = done {
                if matches!(e, Error::Interrupted) {
                    self.keep_for_resume();
                }
                return Err(e);
            }
        }
        let qml = qml_path(&path);
        let tmp_qml = tmp_path(&qml);
        let mv = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| Error::file(to, e));
        if let Err(e) = crate::qml::write_qml(&tmp_qml, &self.spec.classes) {
            let _ = std::fs::remove_file(&tmp_qml);
            let msg = e.to_string();
            let why = msg.rsplit_once(": ").map(|(_, w)| w).unwrap_or(&msg);
            return Err(Error::file(
                &qml,
                format!("cannot write the QGIS style: {why}"),
            ));
        }
        mv(&tmp_qml, &qml)?;
        if aux_path(&self.tmp_map).exists() {
            mv(&aux_path(&self.tmp_map), &aux_path(&path))?;
        } else {
            let _ = std::fs::remove_file(aux_path(&path));
        }
        let mut written = [None, None];
        for (i, side) in Side::ALL.into_iter().enumerate() {
            let spath = side.path(&path);
            match side_tmps.iter().find(|(s, _)| *s == side) {
                Some((_, tmp)) => {
                    if aux_path(tmp).exists() {
                        mv(&aux_path(tmp), &aux_path(&spath))?;
                    }
                    mv(tmp, &spath)?;
                    written[i] = Some(spath);
                }
                None => {
                    // an earlier map's side raster must not pass for this one's
                    let _ = std::fs::remove_file(aux_path(&spath));
                    let _ = std::fs::remove_file(&spath);
                }
            }
        }
        let [confidence, probabilities] = written;
        // the map itself goes last: once it exists, everything is complete
        mv(&self.tmp_map, &path)?;
        let _ = std::fs::remove_file(journal_path(&path));
        self.done = true;
        Ok(MapFiles {
            map: path,
            qml,
            confidence,
            probabilities,
        })
    }

    /// Builds `ds`'s overviews (when the spec asks for them and `build`
    /// says they are not there yet) with `resampling` and closes it; a
    /// failure is "`failed`". Interrupted overviews keep the run for
    /// `--resume`.
    fn close_with_overviews(
        &mut self,
        mut ds: Dataset,
        path: &Path,
        (resampling, failed): (&str, &str),
        factors: &[i32],
        build: bool,
        stop: Option<&AtomicBool>,
    ) -> Result<()> {
        if self.spec.overviews && build {
            if let Err(e) = build_overviews(&mut ds, path, resampling, factors, stop) {
                if matches!(e, Error::Interrupted) {
                    self.keep_for_resume();
                }
                return Err(e);
            }
        }
        ds.close().map_err(|e| Error::gdal_file(path, failed, e))?;
        if let Some(e) = take_failure() {
            return Err(Error::gdal_file(path, failed, e));
        }
        Ok(())
    }

    fn remove_tmp(&self) {
        self.remove_generation(self.journal.generation);
        let j = journal_path(&self.spec.path);
        let _ = std::fs::remove_file(append(&j, ".tmp"));
        let _ = std::fs::remove_file(j);
    }
}

impl Drop for MapWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.map.take());
            self.sides.clear();
            // only what this writer created goes; an older run it was
            // refused to continue stays for a matching --resume
            if self.created && !self.keep {
                self.remove_tmp();
            }
        }
    }
}

/// `GDALBuildOverviews` with a progress callback that asks GDAL to stop
/// when `stop` is raised; a stopped build is [`Error::Interrupted`]. (The
/// `gdal` crate's `build_overviews` passes no callback, so a SIGTERM waited
/// for the whole pyramid of a country-sized map.)
/// GDAL's progress callback that asks to stop once `arg` (an
/// `&AtomicBool`, or null) is raised.
unsafe extern "C" fn stop_progress(
    _done: f64,
    _msg: *const std::ffi::c_char,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    if arg.is_null() {
        return 1;
    }
    // SAFETY: `arg` is an `&AtomicBool` that the caller keeps alive
    let stop = unsafe { &*(arg as *const AtomicBool) };
    std::ffi::c_int::from(!stop.load(Ordering::Relaxed))
}

/// The COG driver's creation options for a map written with the GeoTIFF
/// options `user` (over the defaults): the same compression, predictor and
/// BigTIFF rule, 512 px tiles, the overviews already built, compression on
/// rstile's threads.
pub fn cog_options(user: &[(String, String)]) -> Result<CslStringList> {
    let mut opts = default_creation_options();
    for (k, v) in user {
        let k = k.to_ascii_uppercase();
        match opts.iter_mut().find(|(ok, _)| *ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => opts.push((k, v.clone())),
        }
    }
    let mut list = CslStringList::new();
    for (k, v) in &opts {
        let k = match k.as_str() {
            "COMPRESS" | "PREDICTOR" | "BIGTIFF" | "NUM_THREADS" => k.as_str(),
            "ZLEVEL" | "JPEG_QUALITY" | "ZSTD_LEVEL" => "LEVEL",
            _ => continue,
        };
        list.set_name_value(k, v)?;
    }
    list.set_name_value("BLOCKSIZE", "512")?;
    list.set_name_value("OVERVIEWS", "FORCE_USE_EXISTING")?;
    if list.fetch_name_value("NUM_THREADS").is_none() {
        list.set_name_value("NUM_THREADS", &rayon::current_num_threads().to_string())?;
    }
    Ok(list)
}

/// Rewrites the closed GeoTIFF `tmp` (the unfinished file of `name`) as a
/// Cloud Optimized GeoTIFF in place: GDAL's COG driver copies it, its
/// overviews, palette and category names (`.aux.xml`) into a sibling file
/// that then replaces it. Raising `stop` interrupts the copy
/// ([`Error::Interrupted`]); `tmp` is then untouched.
fn rewrite_as_cog(
    tmp: &Path,
    name: &Path,
    user: &[(String, String)],
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let failed = "writing the Cloud Optimized GeoTIFF failed";
    let opts = cog_options(user)?;
    let cog = sibling(tmp, "", ".cog");
    let src = Dataset::open(tmp).map_err(|e| Error::gdal_file(name, failed, e))?;
    let driver = gdal::DriverManager::get_driver_by_name("COG")
        .map_err(|e| Error::gdal_file(name, "GDAL has no COG driver", e))?;
    let c_cog = std::ffi::CString::new(cog.to_string_lossy().as_bytes())
        .map_err(|_| Error::file(name, "a path with a NUL byte"))?;
    let arg = stop.map_or(std::ptr::null_mut(), |s| {
        s as *const AtomicBool as *mut std::ffi::c_void
    });
    reset_errors();
    // SAFETY: valid driver and dataset handles, a NUL-terminated path and
    // option list, and a callback argument that outlives the call
    let out = unsafe {
        gdal_sys::GDALCreateCopy(
            driver.c_driver(),
            c_cog.as_ptr(),
            src.c_dataset(),
            0,
            opts.as_ptr(),
            Some(stop_progress),
            arg,
        )
    };
    let remove = || {
        let _ = std::fs::remove_file(&cog);
        let _ = std::fs::remove_file(aux_path(&cog));
    };
    if out.is_null() {
        remove();
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            reset_errors();
            return Err(Error::Interrupted);
        }
        return Err(Error::gdal_file(
            name,
            failed,
            crate::raster::last_error("GDALCreateCopy"),
        ));
    }
    // SAFETY: the handle GDALCreateCopy returned, closed once
    unsafe { gdal_sys::GDALClose(out) };
    drop(src);
    if let Some(e) = take_failure() {
        remove();
        return Err(Error::gdal_file(name, failed, e));
    }
    sync(&cog, name)?;
    std::fs::rename(&cog, tmp).map_err(|e| Error::file(name, e))?;
    if aux_path(&cog).exists() {
        std::fs::rename(aux_path(&cog), aux_path(tmp)).map_err(|e| Error::file(name, e))?;
    }
    Ok(())
}

fn build_overviews(
    ds: &mut Dataset,
    path: &Path,
    resampling: &str,
    factors: &[i32],
    stop: Option<&AtomicBool>,
) -> Result<()> {
    use std::ffi::{c_int, c_void};
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    if stopped() {
        return Err(Error::Interrupted);
    }
    let resampling = std::ffi::CString::new(resampling).expect("no NUL in a resampling name");
    let arg = stop.map_or(std::ptr::null_mut(), |s| {
        s as *const AtomicBool as *mut c_void
    });
    reset_errors();
    // SAFETY: a valid dataset handle, `factors.len()` factors, all bands
    // (0, null), and a callback argument that outlives the call
    let rv = unsafe {
        gdal_sys::GDALBuildOverviews(
            ds.c_dataset(),
            resampling.as_ptr(),
            factors.len() as c_int,
            factors.as_ptr(),
            0,
            std::ptr::null(),
            Some(stop_progress),
            arg,
        )
    };
    if stopped() {
        reset_errors();
        return Err(Error::Interrupted);
    }
    if rv != gdal_sys::CPLErr::CE_None {
        return Err(Error::gdal_file(
            path,
            "building overviews failed",
            crate::raster::last_error("GDALBuildOverviews"),
        ));
    }
    Ok(())
}

/// Makes written tiles reachable from the file's directory. GDAL 3.6's
/// GTiff writes the last block it compressed only on the next flush, and the
/// tile index only on the one after: a single `FlushCache` leaves the newest
/// tile out of the file (seen on GDAL 3.6.2; the resume test checks it).
fn flush_twice(ds: &mut Dataset, path: &Path) -> Result<()> {
    ds.flush_cache().map_err(Error::on(path))?;
    ds.flush_cache().map_err(Error::on(path))
}

fn sync(file: &Path, name: &Path) -> Result<()> {
    std::fs::File::open(file)
        .and_then(|f| f.sync_data())
        .map_err(|e| Error::file(name, format!("cannot sync to disk: {e}")))
}

/// Writes `r` of every band of `ds` from band-sequential planes.
fn write_u8(
    ds: &mut Dataset,
    path: &Path,
    r: crate::infer::window::Rect,
    data: &[u8],
) -> Result<()> {
    let npx = r.width * r.height;
    let bands = ds.raster_count();
    if data.len() != npx * bands {
        return Err(Error::file(
            path,
            format!(
                "internal: {} values for {bands} band(s) of {npx} px",
                data.len()
            ),
        ));
    }
    for (b, plane) in data.chunks_exact(npx).enumerate() {
        let mut band = ds.rasterband(b + 1).map_err(Error::on(path))?;
        let mut buf = gdal::raster::Buffer::new((r.width, r.height), plane.to_vec());
        band.write((r.x as isize, r.y as isize), (r.width, r.height), &mut buf)
            .map_err(|e| {
                Error::gdal_file(
                    path,
                    format!("write failed at rows {}..{}", r.y, r.y + r.height),
                    e,
                )
            })?;
    }
    Ok(())
}

/// Reads `r` of every band of `ds` as band-sequential planes; a failure is
/// "cannot read `what`".
pub(crate) fn read_u8(
    ds: &Dataset,
    path: &Path,
    r: crate::infer::window::Rect,
    what: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(r.width * r.height * ds.raster_count());
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).map_err(Error::on(path))?;
        let buf = band
            .read_as::<u8>(
                (r.x as isize, r.y as isize),
                (r.width, r.height),
                (r.width, r.height),
                None,
            )
            .map_err(|e| Error::gdal_file(path, format!("cannot read {what}"), e))?;
        out.extend_from_slice(buf.data());
    }
    Ok(out)
}

/// Writes a coloured PNG preview of a finished map, at most `max_side` px
/// (through [`crate::raster::write_png`]).
pub fn write_preview(map: &Path, png: &Path, classes: &ClassTable, max_side: usize) -> Result<()> {
    let ds = crate::raster::open_raster(map)?;
    let (w, h) = ds.raster_size();
    let scale = (w.max(h) as f64 / max_side as f64).max(1.0);
    let pw = ((w as f64 / scale).round() as usize).max(1);
    let ph = ((h as f64 / scale).round() as usize).max(1);
    let band = ds.rasterband(1).map_err(Error::on(map))?;
    let ids = band
        .read_as::<u8>((0, 0), (w, h), (pw, ph), None)
        .map_err(|e| Error::gdal_file(map, "cannot read the map", e))?;
    let mut lut = [[0u8; 3]; 256];
    for c in &classes.classes {
        lut[c.id as usize] = c.rgb();
    }
    let plane =
        |ch: usize| -> Vec<u8> { ids.data().iter().map(|&v| lut[v as usize][ch]).collect() };
    let (r, g, b) = (plane(0), plane(1), plane(2));
    crate::raster::write_png(png, pw, ph, [&r, &g, &b])
}
