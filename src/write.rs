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
//! confidence goes to its own file.

use crate::classes::{ClassTable, NODATA};
use crate::error::{Error, Result};
use crate::read::one_line;
use crate::stitch::Band;
use crate::window::Size;
use gdal::cpl::CslStringList;
use gdal::raster::{ColorEntry, ColorTable, PaletteInterpretation};
use gdal::spatial_ref::SpatialRef;
use gdal::{Dataset, DriverManager};
use std::path::{Path, PathBuf};

/// The output tile size; the stitcher emits bands of this many rows.
pub const TILE: usize = 512;

/// Everything the writer needs to create the map.
#[derive(Debug, Clone)]
pub struct MapSpec {
    pub path: PathBuf,
    pub size: Size,
    pub geo_transform: Option<[f64; 6]>,
    pub srs_wkt: Option<String>,
    pub classes: ClassTable,
    /// GDAL creation options; these override the defaults key by key.
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    pub confidence: bool,
}

/// The files a finished map consists of.
#[derive(Debug, Clone)]
pub struct MapFiles {
    pub map: PathBuf,
    pub qml: PathBuf,
    pub confidence: Option<PathBuf>,
}

/// The path of the confidence raster beside `map`: `MAP.confidence.tif`.
pub fn confidence_path(map: &Path) -> PathBuf {
    let stem = map.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    map.with_file_name(format!("{stem}.confidence.tif"))
}

/// The sidecar paths GDAL and QGIS look for.
pub fn aux_path(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.aux.xml", p.display()))
}

/// The QGIS style path: `MAP.qml`.
pub fn qml_path(map: &Path) -> PathBuf {
    map.with_extension("qml")
}

fn tmp_path(p: &Path) -> PathBuf {
    let name = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    p.with_file_name(format!(".{name}.partial"))
}

/// Checks that `path` may be written: not a directory, in an existing
/// directory, and either new or `overwrite`.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::Config("the output path is empty".into()));
    }
    if path.is_dir() {
        return Err(Error::file(path, "is a directory; give a file name for the map"));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::file(path, format!("the folder {} does not exist", parent.display())));
    }
    if path.exists() && !overwrite {
        return Err(Error::file(path, "already exists; pass --overwrite to replace it"));
    }
    Ok(())
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
        list.set_name_value(k, v).map_err(|e| Error::Config(format!("--co {k}={v}: {e}")))?;
    }
    Ok(list)
}

/// Creates a single-band u8 GeoTIFF on the scene's grid.
fn create_u8(path: &Path, spec: &MapSpec) -> Result<Dataset> {
    let driver = DriverManager::get_driver_by_name("GTiff")?;
    let opts = merged_options(&spec.creation_options)?;
    let mut ds = driver
        .create_with_band_type_with_options::<u8, _>(path, spec.size.width, spec.size.height, 1, &opts)
        .map_err(|e| Error::file(&spec.path, format!("cannot create the map: {}", one_line(&e.to_string()))))?;
    if let Some(gt) = spec.geo_transform {
        ds.set_geo_transform(&gt).map_err(|e| Error::file(&spec.path, e))?;
    }
    if let Some(wkt) = &spec.srs_wkt {
        let srs = SpatialRef::from_wkt(wkt).map_err(|e| Error::file(&spec.path, e))?;
        ds.set_spatial_ref(&srs).map_err(|e| Error::file(&spec.path, e))?;
    }
    let mut band = ds.rasterband(1).map_err(|e| Error::file(&spec.path, e))?;
    band.set_no_data_value(Some(NODATA as f64)).map_err(|e| Error::file(&spec.path, e))?;
    Ok(ds)
}

/// Sets the palette and category names of band 1 from `classes`.
pub fn set_legend(ds: &Dataset, classes: &ClassTable, path: &Path) -> Result<()> {
    let mut band = ds.rasterband(1).map_err(|e| Error::file(path, e))?;
    let mut ct = ColorTable::new(PaletteInterpretation::Rgba);
    let max_id = classes.classes.iter().map(|c| c.id).max().unwrap_or(0);
    for v in 0..=255u16 {
        ct.set_color_entry(v, &ColorEntry::rgba(0, 0, 0, 0));
    }
    for c in &classes.classes {
        let [r, g, b] = c.rgb();
        ct.set_color_entry(c.id as u16, &ColorEntry::rgba(r as i16, g as i16, b as i16, 255));
    }
    band.set_color_table(&ct);
    if band.color_table().is_none() {
        return Err(Error::file(path, "GDAL refused the colour table"));
    }
    let mut names = CslStringList::new();
    for v in 0..=max_id {
        let name = classes.classes.iter().find(|c| c.id == v).map(|c| c.name.as_str()).unwrap_or("");
        names.add_string(name).map_err(|e| Error::file(path, e))?;
    }
    let rv = unsafe { gdal_sys::GDALSetRasterCategoryNames(band.c_rasterband(), names.as_ptr() as *mut _) };
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

/// Writes the map band by band; [`finish`](MapWriter::finish) makes it real.
pub struct MapWriter {
    spec: MapSpec,
    map: Option<Dataset>,
    conf: Option<Dataset>,
    tmp_map: PathBuf,
    tmp_conf: PathBuf,
    done: bool,
}

impl MapWriter {
    /// Creates the temporary files. Fails if the output exists and
    /// `overwrite` is not set, or the place cannot be written.
    pub fn create(spec: MapSpec) -> Result<MapWriter> {
        check_output(&spec.path, spec.overwrite)?;
        let tmp_map = tmp_path(&spec.path);
        let cpath = confidence_path(&spec.path);
        let tmp_conf = tmp_path(&cpath);
        let mut w = MapWriter {
            map: None,
            conf: None,
            tmp_map,
            tmp_conf,
            done: false,
            spec,
        };
        // clean leftovers of a killed run
        w.remove_tmp();
        let map = create_u8(&w.tmp_map, &w.spec)?;
        set_legend(&map, &w.spec.classes, &w.spec.path)?;
        w.map = Some(map);
        if w.spec.confidence {
            w.conf = Some(create_u8(&w.tmp_conf, &w.spec)?);
        }
        Ok(w)
    }

    /// Writes one finished band of the map.
    pub fn write(&mut self, band: &Band) -> Result<()> {
        let r = band.rect;
        let ds = self.map.as_ref().expect("writer used after finish");
        write_u8(ds, &self.spec.path, r, &band.classes)?;
        if let (Some(c), Some(data)) = (self.conf.as_ref(), band.confidence.as_ref()) {
            write_u8(c, &confidence_path(&self.spec.path), r, data)?;
        }
        Ok(())
    }

    /// Builds overviews, closes, writes the `.qml` and renames into place.
    pub fn finish(mut self) -> Result<MapFiles> {
        let factors = overview_factors(self.spec.size);
        let path = self.spec.path.clone();
        let mut map = self.map.take().expect("finish twice");
        map.build_overviews("NEAREST", &factors, &[])
            .map_err(|e| Error::file(&path, format!("building overviews failed: {}", one_line(&e.to_string()))))?;
        map.close()
            .map_err(|e| Error::file(&path, format!("writing the map failed: {}", one_line(&e.to_string()))))?;
        let cpath = confidence_path(&path);
        if let Some(mut c) = self.conf.take() {
            c.build_overviews("AVERAGE", &factors, &[])
                .map_err(|e| Error::file(&cpath, format!("building overviews failed: {}", one_line(&e.to_string()))))?;
            c.close()
                .map_err(|e| Error::file(&cpath, format!("writing failed: {}", one_line(&e.to_string()))))?;
        }
        let qml = qml_path(&path);
        crate::qml::write_qml(&qml, &self.spec.classes)?;
        let mv = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| Error::file(to, e));
        if aux_path(&self.tmp_map).exists() {
            mv(&aux_path(&self.tmp_map), &aux_path(&path))?;
        } else {
            let _ = std::fs::remove_file(aux_path(&path));
        }
        let confidence = if self.spec.confidence {
            if aux_path(&self.tmp_conf).exists() {
                mv(&aux_path(&self.tmp_conf), &aux_path(&cpath))?;
            }
            mv(&self.tmp_conf, &cpath)?;
            Some(cpath)
        } else {
            None
        };
        // the map itself goes last: once it exists, everything is complete
        mv(&self.tmp_map, &path)?;
        self.done = true;
        Ok(MapFiles { map: path, qml, confidence })
    }

    fn remove_tmp(&self) {
        for p in [&self.tmp_map, &self.tmp_conf] {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(aux_path(p));
        }
    }
}

impl Drop for MapWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.map.take());
            drop(self.conf.take());
            self.remove_tmp();
        }
    }
}

fn write_u8(ds: &Dataset, path: &Path, r: crate::window::Rect, data: &[u8]) -> Result<()> {
    let mut band = ds.rasterband(1).map_err(|e| Error::file(path, e))?;
    let mut buf = gdal::raster::Buffer::new((r.width, r.height), data.to_vec());
    band.write((r.x as isize, r.y as isize), (r.width, r.height), &mut buf)
        .map_err(|e| Error::file(path, format!("write failed at rows {}..{}: {}", r.y, r.y + r.height, one_line(&e.to_string()))))
}

/// Writes a coloured PNG preview of a finished map, at most `max_side` px.
pub fn write_preview(map: &Path, png: &Path, classes: &ClassTable, max_side: usize) -> Result<()> {
    let ds = crate::read::open_raster(map)?;
    let (w, h) = ds.raster_size();
    let scale = (w.max(h) as f64 / max_side as f64).max(1.0);
    let pw = ((w as f64 / scale).round() as usize).max(1);
    let ph = ((h as f64 / scale).round() as usize).max(1);
    let band = ds.rasterband(1).map_err(|e| Error::file(map, e))?;
    let ids = band
        .read_as::<u8>((0, 0), (w, h), (pw, ph), None)
        .map_err(|e| Error::file(map, e))?;
    let mut lut = [[0u8; 3]; 256];
    for c in &classes.classes {
        lut[c.id as usize] = c.rgb();
    }
    let mem = DriverManager::get_driver_by_name("MEM")?;
    let rgb = mem.create_with_band_type::<u8, _>("", pw, ph, 3)?;
    for ch in 0..3 {
        let data: Vec<u8> = ids.data().iter().map(|&v| lut[v as usize][ch]).collect();
        let mut buf = gdal::raster::Buffer::new((pw, ph), data);
        rgb.rasterband(ch + 1)?.write((0, 0), (pw, ph), &mut buf)?;
    }
    let tmp = tmp_path(png);
    let pngd = DriverManager::get_driver_by_name("PNG")?;
    let out = rgb
        .create_copy(&pngd, &tmp, &CslStringList::new())
        .map_err(|e| Error::file(png, format!("cannot write the preview: {}", one_line(&e.to_string()))))?;
    out.close().map_err(|e| Error::file(png, e))?;
    let _ = std::fs::remove_file(aux_path(&tmp));
    std::fs::rename(&tmp, png).map_err(|e| Error::file(png, e))?;
    Ok(())
}
