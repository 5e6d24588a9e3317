//! Land-cover map → polygons (`rstile vectorize`): one polygon per
//! 4-connected region of a class, with its class id, class name and area in
//! m², written through OGR in any format GDAL can create, with a QGIS style.
//!
//! The map is read in blocks of whole tile rows ([`VectorizePlan::block_height`]
//! pixel rows). Each block is copied into an in-memory raster (class ids and
//! a validity mask: the map's own mask band, minus the `--skip` classes) and
//! polygonized by GDAL (`GDALPolygonize`, 4-connected, GDAL's default: pixels
//! that touch only at a corner are separate polygons) into an in-memory OGR
//! layer, in pixel coordinates. [`seams::Dissolver`] joins the polygons that
//! cross the seams between blocks, so no polygon is ever cut at a block
//! border: the result is the same set of polygons as polygonizing the whole
//! map at once. Complete polygons are turned into map coordinates, filtered
//! by `--min-area`, simplified (`--simplify`) and written.
//!
//! Memory: one block (2 bytes per pixel of it, twice: read and in-memory
//! raster), its polygons, and the polygons pending at the seam (those that
//! cross it, merged with all of their region above). The last term depends
//! on the map, not on the settings: a region spanning the whole map stays
//! pending to the end.
//!
//! Areas are in m²: the map must have a projected CRS (its linear unit
//! converts map units to metres). A map in a geographic CRS (degrees) or
//! without a CRS is refused, naming the file: reproject it first
//! (`gdalwarp -t_srs EPSG:...`). Areas are planimetric in that projection
//! (a UTM area is off by the projection's scale factor, under 0.1 %).
//!
//! `--simplify` uses OGR's `SimplifyPreserveTopology` on each polygon: a
//! polygon stays valid and keeps its holes, but neighbours are simplified
//! independently, so shared borders may no longer match exactly (small gaps
//! and overlaps at the tolerance's scale). `area_m2` is the area of the
//! polygon as written (after simplification); `--min-area` is applied to
//! the area of the complete, unsimplified polygon, and a dropped polygon
//! leaves a hole in the coverage (use a sieve on the raster to merge small
//! regions into their neighbours instead).
//!
//! Output: written into a hidden folder `.NAME.partial/` beside the output
//! (every file a driver makes: a shapefile's `.shx`, `.dbf`, `.prj` too) and
//! the style `STEM.qml`, then each file is renamed into place; on any error
//! the folder is removed and nothing is left. The format is chosen by the
//! extension, among GDAL's drivers that can create vector files.

pub mod seams;

use crate::classes::{Class, ClassTable, NODATA};
use crate::error::{Error, Result};
use crate::model::facts::PALETTE;
use crate::output::{self, Inputs, OutputLock};
use crate::raster::{append, c_path, open_raster, sibling, stem_with, take_failure};
use gdal::errors::GdalError;
use gdal::raster::Buffer;
use gdal::spatial_ref::SpatialRef;
use gdal::vector::{FieldDefn, Geometry, LayerAccess, LayerOptions};
use gdal::{Dataset, DriverManager, Metadata};
use gdal_sys::{OGRFieldType, OGRwkbGeometryType};
use seams::{Dissolver, Piece};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The pixels a block holds at most when `--block-rows` is not given (the
/// block is then as many whole tile rows as fit, at least one).
pub const DEFAULT_BLOCK_PIXELS: usize = 16 << 20;

/// The attribute fields of the written layer.
pub const FIELD_CLASS_ID: &str = "class_id";
pub const FIELD_CLASS_NAME: &str = "class_name";
pub const FIELD_AREA: &str = "area_m2";

/// What the caller asks for; [`VectorizePlan::resolve`] checks it.
#[derive(Debug, Clone, Default)]
pub struct VectorizeOptions {
    /// Simplification tolerance in map units (topology preserving).
    pub simplify: Option<f64>,
    /// Polygons smaller than this (m², before simplification) are dropped.
    pub min_area: Option<f64>,
    /// Class ids left out.
    pub skip: Vec<u8>,
    /// Tile rows per block (default: as many as keep a block under
    /// [`DEFAULT_BLOCK_PIXELS`]).
    pub block_rows: Option<usize>,
    /// Replace existing output files.
    pub overwrite: bool,
}

/// A validated vectorize run: everything is checked before anything is
/// written.
#[derive(Debug, Clone)]
pub struct VectorizePlan {
    pub map: PathBuf,
    pub output: PathBuf,
    /// The OGR driver's short name (`GPKG`, `ESRI Shapefile`, ...).
    pub driver: String,
    /// The layer's name: the output's file stem.
    pub layer: String,
    /// The QGIS style written beside the output (`STEM.qml`).
    pub qml: PathBuf,
    pub width: usize,
    pub height: usize,
    /// The map's tile (block) height in rows.
    pub tile_height: usize,
    /// Rows per block: whole tile rows.
    pub block_height: usize,
    pub geo_transform: [f64; 6],
    pub srs_wkt: String,
    /// Metres per map unit.
    pub metres_per_unit: f64,
    /// The legend read from the map: class names and colours by id.
    pub legend: Legend,
    pub simplify: Option<f64>,
    pub min_area: Option<f64>,
    pub skip: Vec<u8>,
    pub overwrite: bool,
    /// Things the caller should tell the user (a map without a legend).
    pub warnings: Vec<String>,
}

/// Class names (band category names) and colours (colour table) of a map.
#[derive(Debug, Clone)]
pub struct Legend {
    pub names: Vec<Option<String>>,
    pub colors: Vec<Option<[u8; 3]>>,
}

impl Legend {
    /// Reads band 1's category names and colour table.
    pub fn of(band: &gdal::raster::RasterBand) -> Legend {
        let mut names = vec![None; 256];
        // SAFETY: GDAL owns the list; read before any other call on the band
        unsafe {
            let list = gdal_sys::GDALGetRasterCategoryNames(band.c_rasterband());
            if !list.is_null() {
                let mut i = 0;
                while i < 256 && !(*list.add(i)).is_null() {
                    let s = std::ffi::CStr::from_ptr(*list.add(i)).to_string_lossy();
                    let s = s.trim();
                    if !s.is_empty() {
                        names[i] = Some(s.to_string());
                    }
                    i += 1;
                }
            }
        }
        let mut colors = vec![None; 256];
        if let Some(ct) = band.color_table() {
            for (i, c) in colors.iter_mut().enumerate().take(ct.entry_count()) {
                if let Some(e) = ct.entry_as_rgb(i) {
                    *c = Some([e.r as u8, e.g as u8, e.b as u8]);
                }
            }
        }
        names[NODATA as usize] = None;
        Legend { names, colors }
    }

    /// Whether the map names any class.
    pub fn has_names(&self) -> bool {
        self.names.iter().any(Option::is_some)
    }

    /// Whether the map has a colour table.
    pub fn has_colors(&self) -> bool {
        self.colors.iter().any(Option::is_some)
    }

    /// Class `id`: its name (else the id itself) and colour (else
    /// rstile's default palette).
    pub fn class(&self, id: u8) -> Class {
        let name = self.names[id as usize]
            .clone()
            .unwrap_or_else(|| id.to_string());
        let [r, g, b] = self.colors[id as usize]
            .unwrap_or_else(|| parse_rgb(PALETTE[id as usize % PALETTE.len()]));
        Class {
            id,
            name,
            color: format!("#{r:02x}{g:02x}{b:02x}"),
        }
    }

    /// The classes the legend names, and the `present` ones it does not,
    /// by id, `skip` left out.
    pub fn table(&self, present: impl IntoIterator<Item = u8>, skip: &[u8]) -> ClassTable {
        let mut ids: std::collections::BTreeSet<u8> = (0..=254u8)
            .filter(|&i| self.names[i as usize].is_some())
            .collect();
        ids.extend(present);
        ClassTable {
            classes: ids
                .into_iter()
                .filter(|i| !skip.contains(i) && *i != NODATA)
                .map(|i| self.class(i))
                .collect(),
        }
    }
}

fn parse_rgb(hex: &str) -> [u8; 3] {
    Class {
        id: 0,
        name: String::new(),
        color: hex.into(),
    }
    .rgb()
}

/// The OGR driver that creates vector files with `path`'s extension: the
/// first registered driver that can create vector datasets (`DCAP_CREATE`,
/// `DCAP_VECTOR`) and lists the extension in `DMD_EXTENSION(S)`.
pub fn driver_for(path: &Path) -> Result<gdal::Driver> {
    DriverManager::register_all();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .ok_or_else(|| {
            Error::file(
                path,
                "has no extension to choose a vector format by (.gpkg, .shp, .geojson, .fgb, ...)",
            )
        })?;
    let yes = |d: &gdal::Driver, k: &str| {
        d.metadata_item(k, "")
            .is_some_and(|v| v.eq_ignore_ascii_case("YES"))
    };
    for i in 0..DriverManager::count() {
        let Ok(d) = DriverManager::get_driver(i) else {
            continue;
        };
        if !yes(&d, "DCAP_VECTOR") || !yes(&d, "DCAP_CREATE") {
            continue;
        }
        let mut exts = String::new();
        for k in ["DMD_EXTENSION", "DMD_EXTENSIONS"] {
            if let Some(e) = d.metadata_item(k, "") {
                exts.push(' ');
                exts.push_str(&e);
            }
        }
        if exts
            .split_whitespace()
            .any(|e| e.eq_ignore_ascii_case(&ext))
        {
            return Ok(d);
        }
    }
    Err(Error::file(
        path,
        format!("no OGR driver of this GDAL writes vector files with the extension .{ext} (try .gpkg, .shp, .geojson or .fgb)"),
    ))
}

impl VectorizePlan {
    /// Checks the map, the options and the output; reads nothing but the
    /// map's header and writes nothing.
    pub fn resolve(map: &Path, output: &Path, opts: &VectorizeOptions) -> Result<VectorizePlan> {
        let ds = open_raster(map)?;
        let (width, height) = ds.raster_size();
        if ds.raster_count() < 1 {
            return Err(Error::file(map, "has no band"));
        }
        let band = ds.rasterband(1).map_err(Error::on(map))?;
        if band.band_type() != gdal::raster::GdalDataType::UInt8 {
            return Err(Error::file(
                map,
                format!(
                    "band 1 is {}, not a class map (Byte class ids, as rstile infer writes)",
                    band.band_type().name()
                ),
            ));
        }
        let geo_transform = ds.geo_transform().map_err(|_| {
            Error::file(
                map,
                "has no georeferencing; polygons and areas need the map's geotransform and CRS",
            )
        })?;
        let srs = ds.spatial_ref().map_err(|_| {
            Error::file(
                map,
                "has no CRS; areas in m² need a projected CRS (set one with gdal_edit.py -a_srs)",
            )
        })?;
        if srs.is_geographic() || !srs.is_projected() {
            return Err(Error::file(
                map,
                format!(
                    "its CRS ({}) is not projected; areas in m² need a projected CRS: reproject the map first (gdalwarp -r near -t_srs EPSG:...)",
                    srs.name().unwrap_or_else(|| "unnamed".into())
                ),
            ));
        }
        let metres_per_unit = srs.linear_units();
        let srs_wkt = srs.to_wkt().map_err(Error::on(map))?;
        let tile_height = band.block_size().1.max(1);

        if let Some(s) = opts.simplify {
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::Config(format!(
                    "--simplify {s}: expected a tolerance ≥ 0 in map units"
                )));
            }
        }
        if let Some(a) = opts.min_area {
            if !(a.is_finite() && a >= 0.0) {
                return Err(Error::Config(format!(
                    "--min-area {a}: expected an area ≥ 0 in m²"
                )));
            }
        }
        let block_rows = match opts.block_rows {
            Some(0) => return Err(Error::Config("--block-rows 0: expected at least 1".into())),
            Some(n) => n,
            None => (DEFAULT_BLOCK_PIXELS / width.max(1) / tile_height).max(1),
        };
        let block_height = block_rows.saturating_mul(tile_height).min(height.max(1));

        let driver = driver_for(output)?;
        let inputs = Inputs::of([map.to_path_buf(), append(map, ".aux.xml")]);
        output::check(output, opts.overwrite, &inputs)?;
        let qml = stem_with(output, ".qml");
        let map_qml = stem_with(map, ".qml");
        if output::same_path(&qml, &map_qml) {
            return Err(Error::file(
                &qml,
                format!(
                    "is the QGIS style of the map {}, and QGIS reads NAME.qml for NAME.tif and NAME.{} alike; name the output differently (e.g. {})",
                    map.display(),
                    output.extension().unwrap_or_default().to_string_lossy(),
                    stem_with(
                        output,
                        &format!(
                            "_polygons.{}",
                            output.extension().unwrap_or_default().to_string_lossy()
                        )
                    )
                    .display()
                ),
            ));
        }
        output::check(&qml, opts.overwrite, &inputs)?;

        let legend = Legend::of(&band);
        let mut warnings = Vec::new();
        match (legend.has_names(), legend.has_colors()) {
            (true, true) => {}
            (false, false) => warnings.push(format!(
                "{}: no class names and no colour table: classes are named by their ids and coloured from rstile's default palette",
                map.display()
            )),
            (false, true) => warnings.push(format!(
                "{}: no class names: classes are named by their ids",
                map.display()
            )),
            (true, false) => warnings.push(format!(
                "{}: no colour table: classes are coloured from rstile's default palette",
                map.display()
            )),
        }
        let mut skip = opts.skip.clone();
        skip.sort_unstable();
        skip.dedup();
        Ok(VectorizePlan {
            map: map.to_path_buf(),
            output: output.to_path_buf(),
            driver: driver.short_name(),
            layer: output
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            qml,
            width,
            height,
            tile_height,
            block_height,
            geo_transform,
            srs_wkt,
            metres_per_unit,
            legend,
            simplify: opts.simplify,
            min_area: opts.min_area,
            skip,
            overwrite: opts.overwrite,
            warnings,
        })
    }

    /// The number of blocks.
    pub fn blocks(&self) -> usize {
        self.height.div_ceil(self.block_height)
    }

    /// The area of one pixel in m².
    pub fn pixel_area_m2(&self) -> f64 {
        let g = &self.geo_transform;
        (g[1] * g[5] - g[2] * g[4]).abs() * self.metres_per_unit * self.metres_per_unit
    }
}

/// What a run wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Polygons written per class id.
    pub per_class: BTreeMap<u8, u64>,
    /// Polygons dropped by `--min-area`.
    pub dropped_small: u64,
    /// Polygons that simplification reduced to nothing.
    pub dropped_empty: u64,
    /// The most regions pending at one seam.
    pub max_pending: usize,
    /// The most polygon pieces held for them at one seam.
    pub max_pending_pieces: usize,
    /// Polygons joined from pieces of several blocks.
    pub joined: u64,
    pub blocks: usize,
    /// The classes of the style: those the map names and those present.
    pub classes: Vec<Class>,
    /// The files written, in place.
    pub files: Vec<PathBuf>,
}

impl Summary {
    /// Polygons written.
    pub fn polygons(&self) -> u64 {
        self.per_class.values().sum()
    }
}

/// Removes the partial folder unless disarmed.
struct PartialDir(Option<PathBuf>);

impl Drop for PartialDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn gdal_failure(e: GdalError) -> GdalError {
    take_failure().unwrap_or(e)
}

/// Runs `plan`: polygonizes the map block by block, writes the polygons,
/// the style, and renames them into place. `progress(rows_done, rows)` is
/// called after each block; when `stop` is raised the run ends after the
/// current block with [`Error::Interrupted`], leaving nothing.
pub fn vectorize(
    plan: &VectorizePlan,
    progress: &dyn Fn(usize, usize),
    stop: Option<&AtomicBool>,
) -> Result<Summary> {
    let _lock = OutputLock::acquire(&plan.output)?;
    let out = &plan.output;
    let dir = sibling(out, ".", ".partial");
    if std::fs::symlink_metadata(&dir).is_ok() {
        // a run that was killed left it; the lock says none runs now
        std::fs::remove_dir_all(&dir)
            .or_else(|_| std::fs::remove_file(&dir))
            .map_err(|e| Error::file(&dir, format!("cannot remove a stale partial output: {e}")))?;
    }
    std::fs::create_dir(&dir)
        .map_err(|e| Error::file(out, format!("cannot create {}: {e}", dir.display())))?;
    let mut guard = PartialDir(Some(dir.clone()));
    let name = out.file_name().unwrap_or_default();
    let tmp = dir.join(name);

    let mut summary = Summary {
        blocks: plan.blocks(),
        ..Default::default()
    };
    write_layer(plan, &tmp, &mut summary, progress, stop)?;

    let classes = plan
        .legend
        .table(summary.per_class.keys().copied(), &plan.skip);
    let qml_name = plan.qml.file_name().unwrap_or_default();
    crate::qml::write_vector_qml(&dir.join(qml_name), &classes, FIELD_CLASS_ID)?;
    summary.classes = classes.classes;

    // every file the driver made (a shapefile's .shx, .dbf, .prj, .cpg) and
    // the style: checked first, then renamed into place
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let inputs = Inputs::of([plan.map.clone(), append(&plan.map, ".aux.xml")]);
    let mut moves = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, e))? {
        let entry = entry.map_err(|e| Error::file(&dir, e))?;
        let dest = parent.join(entry.file_name());
        output::check(&dest, plan.overwrite, &inputs)?;
        moves.push((entry.path(), dest));
    }
    moves.sort();
    for (from, to) in &moves {
        std::fs::rename(from, to)
            .map_err(|e| Error::file(to, format!("cannot move into place: {e}")))?;
        summary.files.push(to.clone());
    }
    let _ = std::fs::remove_dir(&dir);
    guard.0 = None;
    Ok(summary)
}

/// Creates the output at `tmp` and writes every polygon into it.
fn write_layer(
    plan: &VectorizePlan,
    tmp: &Path,
    summary: &mut Summary,
    progress: &dyn Fn(usize, usize),
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let out = &plan.output;
    let driver = DriverManager::get_driver_by_name(&plan.driver).map_err(Error::on(out))?;
    let c = c_path(tmp).map_err(Error::on(out))?;
    crate::raster::reset_errors();
    // SAFETY: a valid driver and C string; GDAL returns a new handle or null
    let h = unsafe {
        gdal_sys::GDALCreate(
            driver.c_driver(),
            c.as_ptr(),
            0,
            0,
            0,
            gdal_sys::GDALDataType::GDT_Unknown,
            std::ptr::null_mut(),
        )
    };
    if h.is_null() {
        return Err(Error::gdal_file(
            out,
            format!("{} cannot create it", plan.driver),
            crate::raster::last_error("GDALCreate"),
        ));
    }
    // SAFETY: a dataset handle GDAL just gave us, owned from here
    let mut ds = unsafe { Dataset::from_c_dataset(h) };
    let srs = SpatialRef::from_wkt(&plan.srs_wkt).map_err(Error::on(out))?;
    let layer = ds
        .create_layer(LayerOptions {
            name: &plan.layer,
            srs: Some(&srs),
            ty: OGRwkbGeometryType::wkbPolygon,
            options: None,
        })
        .map_err(|e| Error::gdal_file(out, "cannot create the layer", gdal_failure(e)))?;
    for (name, ty) in [
        (FIELD_CLASS_ID, OGRFieldType::OFTInteger),
        (FIELD_CLASS_NAME, OGRFieldType::OFTString),
        (FIELD_AREA, OGRFieldType::OFTReal),
    ] {
        FieldDefn::new(name, ty)
            .and_then(|f| f.add_to_layer(&layer))
            .map_err(|e| {
                Error::gdal_file(out, format!("cannot add the field {name}"), gdal_failure(e))
            })?;
    }
    // one transaction where the driver has them (GeoPackage: much faster)
    // SAFETY: the dataset handle is valid while `ds` lives
    let transaction = unsafe { gdal_sys::GDALDatasetStartTransaction(h, 0) } == 0;
    crate::raster::reset_errors();

    let names: Vec<String> = (0..=255u8).map(|i| plan.legend.class(i).name).collect();
    let unit2 = plan.metres_per_unit * plan.metres_per_unit;
    let mut write = |p: Piece| -> Result<()> {
        for poly in seams::polygons(&p.geom) {
            let g = to_map(&poly, &plan.geo_transform).map_err(Error::on(out))?;
            let full = g.area() * unit2;
            if plan.min_area.is_some_and(|m| full < m) {
                summary.dropped_small += 1;
                continue;
            }
            let g = match plan.simplify {
                Some(t) if t > 0.0 => g.simplify_preserve_topology(t).map_err(|e| {
                    Error::gdal_file(out, "cannot simplify a polygon", gdal_failure(e))
                })?,
                _ => g,
            };
            if g.is_empty() {
                summary.dropped_empty += 1;
                continue;
            }
            let area = g.area() * unit2;
            let mut f = gdal::vector::Feature::new(layer.defn()).map_err(Error::on(out))?;
            f.set_field_integer(0, p.class as i32)
                .and_then(|_| f.set_field_string(1, &names[p.class as usize]))
                .and_then(|_| f.set_field_double(2, area))
                .and_then(|_| f.set_geometry(g))
                .and_then(|_| f.create(&layer))
                .map_err(|e| Error::gdal_file(out, "cannot write a polygon", gdal_failure(e)))?;
            *summary.per_class.entry(p.class).or_default() += 1;
        }
        Ok(())
    };

    let src = open_raster(&plan.map)?;
    let band = src.rasterband(1).map_err(Error::on(&plan.map))?;
    let mask = band.open_mask_band().map_err(Error::on(&plan.map))?;
    let mut skip = [false; 256];
    for &s in &plan.skip {
        skip[s as usize] = true;
    }
    let mut dissolver = Dissolver::new(plan.height, &plan.map);
    let mut y0 = 0;
    while y0 < plan.height {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let y1 = (y0 + plan.block_height).min(plan.height);
        let h = y1 - y0;
        let read = |b: &gdal::raster::RasterBand| {
            b.read_as::<u8>((0, y0 as isize), (plan.width, h), (plan.width, h), None)
                .map(|buf| buf.into_shape_and_vec().1)
                .map_err(|e| Error::gdal_file(&plan.map, format!("cannot read rows {y0}..{y1}"), e))
        };
        let data = read(&band)?;
        let mut valid = read(&mask)?;
        for (v, &d) in valid.iter_mut().zip(&data) {
            if skip[d as usize] {
                *v = 0;
            }
        }
        let pieces = polygonize_block(data, valid, plan.width, y0, h).map_err(|e| {
            Error::gdal_file(&plan.map, format!("cannot polygonize rows {y0}..{y1}"), e)
        })?;
        dissolver.block(y0, y1, pieces, &mut write)?;
        progress(y1, plan.height);
        y0 = y1;
    }
    let (max_pending, pieces) = (dissolver.max_pending, dissolver.max_pending_pieces);
    let joined = dissolver.finish(&mut write)?;
    summary.max_pending = max_pending;
    summary.max_pending_pieces = pieces;
    summary.joined = joined;
    if transaction {
        // SAFETY: the dataset handle is valid while `ds` lives
        if unsafe { gdal_sys::GDALDatasetCommitTransaction(h) } != 0 {
            return Err(Error::gdal_file(
                out,
                "cannot commit the polygons",
                crate::raster::last_error("GDALDatasetCommitTransaction"),
            ));
        }
    }
    crate::raster::reset_errors();
    ds.flush_cache().map_err(Error::on(out))?;
    ds.close()
        .map_err(|e| Error::gdal_file(out, "cannot finish writing", e))?;
    if let Some(e) = take_failure() {
        return Err(Error::gdal_file(out, "cannot finish writing", e));
    }
    Ok(())
}

/// Polygonizes one block (class ids and validity, `width` × `h` pixels,
/// starting at row `y0`) in pixel coordinates, 4-connected.
fn polygonize_block(
    data: Vec<u8>,
    valid: Vec<u8>,
    width: usize,
    y0: usize,
    h: usize,
) -> gdal::errors::Result<Vec<Piece>> {
    let mem = DriverManager::get_driver_by_name("MEM")?;
    let mut ras = mem.create_with_band_type::<u8, _>("", width, h, 2)?;
    ras.set_geo_transform(&[0.0, 1.0, 0.0, y0 as f64, 0.0, 1.0])?;
    ras.rasterband(1)?
        .write((0, 0), (width, h), &mut Buffer::new((width, h), data))?;
    ras.rasterband(2)?
        .write((0, 0), (width, h), &mut Buffer::new((width, h), valid))?;
    let memv = DriverManager::get_driver_by_name("Memory")?;
    let mut vds = memv.create_vector_only("")?;
    let mut layer = vds.create_layer(LayerOptions {
        name: "block",
        srs: None,
        ty: OGRwkbGeometryType::wkbPolygon,
        options: None,
    })?;
    FieldDefn::new("class", OGRFieldType::OFTInteger)?.add_to_layer(&layer)?;
    let classes = ras.rasterband(1)?;
    let valid = ras.rasterband(2)?;
    crate::raster::reset_errors();
    // SAFETY: valid band and layer handles; no options, no progress
    let rv = unsafe {
        gdal_sys::GDALPolygonize(
            classes.c_rasterband(),
            valid.c_rasterband(),
            layer.c_layer(),
            0,
            std::ptr::null_mut(),
            None,
            std::ptr::null_mut(),
        )
    };
    if rv != gdal_sys::CPLErr::CE_None {
        return Err(crate::raster::last_error("GDALPolygonize"));
    }
    let mut out = Vec::new();
    for f in layer.features() {
        let class = f.field_as_integer(0)?.unwrap_or(0);
        if let Some(g) = f.geometry() {
            out.push(Piece {
                class: class as u8,
                geom: g.clone(),
            });
        }
    }
    Ok(out)
}

/// `poly` (pixel coordinates) in map coordinates through `gt`.
fn to_map(poly: &Geometry, gt: &[f64; 6]) -> gdal::errors::Result<Geometry> {
    let mut out = Geometry::empty(OGRwkbGeometryType::wkbPolygon)?;
    let mut pts = Vec::new();
    for r in 0..poly.geometry_count() {
        pts.clear();
        poly.get_geometry(r).get_points(&mut pts);
        let mut ring = Geometry::empty(OGRwkbGeometryType::wkbLinearRing)?;
        for &(x, y, _) in &pts {
            ring.add_point_2d((gt[0] + x * gt[1] + y * gt[2], gt[3] + x * gt[4] + y * gt[5]));
        }
        out.add_geometry(ring)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_by_extension() {
        for (name, driver) in [
            ("a.gpkg", "GPKG"),
            ("a.GPKG", "GPKG"),
            ("d/a.shp", "ESRI Shapefile"),
            ("a.geojson", "GeoJSON"),
            ("a.fgb", "FlatGeobuf"),
        ] {
            assert_eq!(driver_for(Path::new(name)).unwrap().short_name(), driver);
        }
        for (name, want) in [
            (
                "a.xyz",
                "no OGR driver of this GDAL writes vector files with the extension .xyz",
            ),
            ("a.tif", "extension .tif"),
            ("a", "has no extension"),
        ] {
            let e = driver_for(Path::new(name)).err().unwrap().to_string();
            assert!(e.starts_with(name) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn legend_tables_name_present_and_named_classes() {
        let mut names = vec![None; 256];
        let mut colors = vec![None; 256];
        names[1] = Some("building".to_string());
        colors[1] = Some([0, 0, 255]);
        let legend = Legend { names, colors };
        let t = legend.table([1, 3, 255], &[]);
        let got: Vec<(u8, &str, &str)> = t
            .classes
            .iter()
            .map(|c| (c.id, c.name.as_str(), c.color.as_str()))
            .collect();
        // 3 is present but unnamed: its id, and the default palette's colour
        assert_eq!(got, vec![(1, "building", "#0000ff"), (3, "3", PALETTE[3])]);
        assert!(legend.table([1, 3], &[1]).classes.iter().all(|c| c.id == 3));
    }
}
