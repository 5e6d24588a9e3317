//! Synthetic Vaihingen-like scenes: a seeded, deterministic generator of an
//! IR-R-G image, a DSM and a ground truth on one grid, streamed tile by tile.
//!
//! The scene is procedural: a jittered street grid (cells of roughly 40-80 m,
//! roads 6-9 m wide with 1.2-2.2 m sidewalks and dashed centre markings)
//! whose cells hold houses with gable or flat roofs (some with solar panels),
//! annexes, garages, driveways, terraces, gardens, hedges, trees, parked and
//! moving cars, bins and construction sites; some cells are blocks of flats
//! with parking lots, some are parks. Buildings, trees, hedges, cars and
//! clutter cast shadows toward the north-north-west (sun azimuth 150°,
//! elevation 60°). Everything is a pure function of the seed and the pixel's
//! position ([`pixel`]), designed for 9 cm pixels, so:
//!
//! * any tile can be generated on its own: memory does not grow with the
//!   scene, and tiles meet without seams;
//! * a scene's content does not depend on its size: a small scene is the
//!   top-left corner of a larger one with the same seed;
//! * the same seed always gives the same bytes.
//!
//! Over large areas the classes cover about 26% impervious surfaces, 25%
//! building, 23% low vegetation, 22% tree, 1.5% car and 2% clutter; a single
//! 1024 x 1024 scene (92 m) holds only a few street cells and varies more.
//!
//! Class ids are those of [`ClassTable::isprs`]. `pixel_size` only sets the
//! geotransform; the content is always drawn at 9 cm per pixel. Heights are
//! quantised to 1/64 m. GDAL keeps the category names of gt.tif in a
//! `gt.tif.aux.xml` side-car (GeoTIFF has no tag for them).

pub mod isprs;
mod noise;
mod render;
mod scene;

use crate::classes::ClassTable;
use crate::error::{Error, Result};
use gdal::raster::{Buffer, ColorEntry, ColorTable, GdalType};
use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::{Dataset, Metadata};
use rayon::prelude::*;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// What to generate, and on which grid.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Scene width in pixels.
    pub width: usize,
    /// Scene height in pixels.
    pub height: usize,
    /// Seed of the scene: the same seed gives the same scene.
    pub seed: u64,
    /// Pixel size in CRS units (metres); default 0.09.
    pub pixel_size: f64,
    /// X of the top-left corner (CRS units).
    pub origin_x: f64,
    /// Y of the top-left corner (CRS units).
    pub origin_y: f64,
    /// EPSG code of the CRS; default 32632 (UTM 32N, where Vaihingen is).
    pub epsg: u32,
    /// Tile size of the GeoTIFFs and generation block (pixels, a multiple of 16, at most 2048).
    pub block: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            width: 1024,
            height: 1024,
            seed: 0,
            pixel_size: 0.09,
            // Vaihingen an der Enz, UTM 32N.
            origin_x: 496_000.0,
            origin_y: 5_420_000.0,
            epsg: 32632,
            block: 512,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::Config(format!(
                "synthetic scene size {}x{} is empty",
                self.width, self.height
            )));
        }
        if self.width > i32::MAX as usize || self.height > i32::MAX as usize {
            return Err(Error::Config(format!(
                "synthetic scene size {}x{} is too large",
                self.width, self.height
            )));
        }
        if self.block == 0 || !self.block.is_multiple_of(16) || self.block > 2048 {
            return Err(Error::Config(format!(
                "synthetic scene block size {} must be a multiple of 16 between 16 and 2048",
                self.block
            )));
        }
        if !(self.pixel_size.is_finite() && self.pixel_size > 0.0) {
            return Err(Error::Config(format!(
                "pixel size {} must be positive",
                self.pixel_size
            )));
        }
        if !(self.origin_x.is_finite() && self.origin_y.is_finite()) {
            return Err(Error::Config("the scene origin must be finite".into()));
        }
        Ok(())
    }

    /// The GDAL geotransform of the scene.
    pub fn geo_transform(&self) -> [f64; 6] {
        [
            self.origin_x,
            self.pixel_size,
            0.0,
            self.origin_y,
            0.0,
            -self.pixel_size,
        ]
    }
}

/// The files [`synth`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOutput {
    /// 3 bands IR, R, G, Byte.
    pub image: PathBuf,
    /// 1 band Float32, surface height in metres above sea level.
    pub dsm: PathBuf,
    /// 1 band Byte, class ids of [`ClassTable::isprs`], with colours and names.
    pub gt: PathBuf,
}

/// Everything the scene holds at one pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthPixel {
    /// Class id (0..=5, [`ClassTable::isprs`]).
    pub class: u8,
    /// Near infrared.
    pub ir: u8,
    /// Red.
    pub r: u8,
    /// Green.
    pub g: u8,
    /// Surface height in metres above sea level.
    pub height: f32,
}

/// The content of pixel (x, y) (column, row from the scene's top-left corner)
/// of the scene with seed `cfg_seed`: what [`synth`] writes there, bit for bit,
/// whatever the scene's size. Coordinates may be negative; keep |x|, |y| < 2^40.
///
/// This generates the features of the surrounding street cells, so it costs
/// some 30 µs (release build): use it for checks, not for whole scenes.
pub fn pixel(cfg_seed: u64, x: i64, y: i64) -> SynthPixel {
    let t = render::render(cfg_seed, x, y, 1, 1);
    SynthPixel {
        class: t.gt[0],
        ir: t.ir[0],
        r: t.r[0],
        g: t.g[0],
        height: t.dsm[0],
    }
}

/// Writes `dir/image.tif` (3 bands IR-R-G, Byte), `dir/dsm.tif` (Float32
/// heights in m) and `dir/gt.tif` (Byte class ids 0..=5 of
/// [`ClassTable::isprs`], with a colour table and category names), all on the
/// grid of `cfg`, tiled `cfg.block` x `cfg.block` and DEFLATE-compressed.
/// Creates `dir` if missing; an existing scene there is replaced only with
/// `overwrite` (and never when it is not a regular file).
///
/// Tiles are generated in parallel, a few at a time, and written as whole
/// blocks as they come, so memory stays bounded whatever the scene size.
/// `progress(done, total)` is called, on the calling thread, after each tile
/// with the number of pixels written so far and the scene's pixel count.
/// On error the three files are removed.
pub fn synth(
    cfg: &SynthConfig,
    dir: &Path,
    overwrite: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<SynthOutput> {
    cfg.validate()?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the directory: {e}")))?;
    let out = SynthOutput {
        image: dir.join("image.tif"),
        dsm: dir.join("dsm.tif"),
        gt: dir.join("gt.tif"),
    };
    for p in [&out.image, &out.dsm, &out.gt] {
        crate::output::check(p, overwrite, &crate::output::Inputs::new())?;
    }
    let result = write_all(cfg, &out, progress);
    if result.is_err() {
        for p in [&out.image, &out.dsm, &out.gt] {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(crate::infer::write::aux_path(p));
        }
    }
    result.map(|()| out)
}

/// Creates a tiled, compressed GeoTIFF on the grid of `cfg`.
fn create<T: GdalType>(
    cfg: &SynthConfig,
    path: &Path,
    bands: usize,
    predictor: u8,
    srs: &SpatialRef,
) -> Result<Dataset> {
    let fail = |e: gdal::errors::GdalError| Error::gdal_file(path, "", e);
    // A stale side-car from an earlier run would override what we write.
    let _ = std::fs::remove_file(crate::infer::write::aux_path(path));
    let block = cfg.block.to_string();
    let predictor = predictor.to_string();
    let mut opts = gdal::cpl::CslStringList::new();
    for (k, v) in [
        ("TILED", "YES"),
        ("BLOCKXSIZE", block.as_str()),
        ("BLOCKYSIZE", block.as_str()),
        ("COMPRESS", "DEFLATE"),
        // Level 3 (of libdeflate's 1-12) writes 15% faster than the default 6
        // for 1.5% larger files on this noisy content.
        ("ZLEVEL", "3"),
        ("PREDICTOR", predictor.as_str()),
        ("BIGTIFF", "IF_SAFER"),
        ("NUM_THREADS", "ALL_CPUS"),
    ] {
        opts.set_name_value(k, v)?;
    }
    // on the path's bytes, so a non-UTF-8 folder name is kept
    let mut ds = crate::raster::create::<T>("GTiff", path, (cfg.width, cfg.height), bands, &opts)
        .map_err(fail)?;
    ds.set_geo_transform(&cfg.geo_transform()).map_err(fail)?;
    ds.set_spatial_ref(srs).map_err(fail)?;
    Ok(ds)
}

/// Sets the category names of `band` (entry k names value k).
fn set_category_names(
    band: &gdal::raster::RasterBand,
    names: &[String],
) -> std::result::Result<(), String> {
    let owned: Vec<CString> = names
        .iter()
        .map(|n| CString::new(n.as_str()).map_err(|e| e.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let mut list: Vec<*mut std::ffi::c_char> = owned.iter().map(|c| c.as_ptr() as *mut _).collect();
    list.push(std::ptr::null_mut());
    // SAFETY: `list` is a null-terminated array of valid C strings that
    // outlive the call; GDAL copies the list.
    let rv =
        unsafe { gdal_sys::GDALSetRasterCategoryNames(band.c_rasterband(), list.as_mut_ptr()) };
    if rv != gdal_sys::CPLErr::CE_None {
        return Err("GDAL refused the category names".into());
    }
    let got = category_names(band);
    if got != names {
        return Err(format!("category names did not stick: got {got:?}"));
    }
    Ok(())
}

/// The category names of `band` (empty when it has none).
fn category_names(band: &gdal::raster::RasterBand) -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: GDAL returns a null-terminated list owned by the band (or null).
    unsafe {
        let list = gdal_sys::GDALGetRasterCategoryNames(band.c_rasterband());
        if list.is_null() {
            return out;
        }
        let mut k = 0;
        while !(*list.add(k)).is_null() {
            out.push(CStr::from_ptr(*list.add(k)).to_string_lossy().into_owned());
            k += 1;
        }
    }
    out
}

/// Labels gt.tif's band: colour table and category names of the ISPRS classes.
fn label_gt(ds: &Dataset, path: &Path) -> Result<()> {
    let table = ClassTable::isprs();
    let mut band = ds.rasterband(1).map_err(Error::on(path))?;
    let mut ct = ColorTable::default();
    let max_id = table.classes.iter().map(|c| c.id).max().unwrap_or(0) as usize;
    let mut names = vec![String::new(); max_id + 1];
    for c in &table.classes {
        let [r, g, b] = c.rgb();
        ct.set_color_entry(
            c.id as u16,
            &ColorEntry::rgba(r as i16, g as i16, b as i16, 255),
        );
        names[c.id as usize] = c.name.clone();
    }
    band.set_color_table(&ct);
    match band.color_table() {
        Some(t) if t.entry_count() > max_id => {}
        _ => {
            return Err(Error::file(
                path,
                "GDAL did not keep the colour table of the ground truth",
            ))
        }
    }
    set_category_names(&band, &names).map_err(|e| Error::file(path, e))?;
    band.set_description("class").map_err(Error::on(path))?;
    Ok(())
}

/// Most pixels generated in one parallel chunk (8 tiles of 512 x 512).
const MAX_CHUNK_PIXELS: usize = 8 * 512 * 512;

/// One generated tile and the block it goes to.
struct Block {
    bx: usize,
    by: usize,
    tile: render::Tile,
}

/// Pads a row-major `w` x `h` raster to `b` x `b` (moves it when it fills the block).
fn pad<T: Copy + Default>(v: Vec<T>, w: usize, h: usize, b: usize) -> Vec<T> {
    if w == b && h == b {
        return v;
    }
    let mut out = vec![T::default(); b * b];
    for r in 0..h {
        out[r * b..r * b + w].copy_from_slice(&v[r * w..r * w + w]);
    }
    out
}

/// Writes one whole block (GDALWriteBlock: straight to the driver, no block
/// cache, and never a reread since every tile is written once, all bands of
/// a tile in a row).
fn write_block<T: GdalType + Copy + Default>(
    ds: &Dataset,
    band: usize,
    (bx, by): (usize, usize),
    data: Vec<T>,
    (w, h, b): (usize, usize, usize),
    path: &Path,
) -> Result<()> {
    let fail = |e: gdal::errors::GdalError| Error::gdal_file(path, "", e);
    let mut buf = Buffer::new((b, b), pad(data, w, h, b));
    ds.rasterband(band)
        .map_err(fail)?
        .write_block((bx, by), &mut buf)
        .map_err(fail)
}

fn write_all(cfg: &SynthConfig, out: &SynthOutput, progress: &dyn Fn(u64, u64)) -> Result<()> {
    let mut srs = SpatialRef::from_epsg(cfg.epsg)
        .map_err(|e| Error::Config(format!("EPSG:{}: {e}", cfg.epsg)))?;
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let image = create::<u8>(cfg, &out.image, 3, 2, &srs)?;
    let dsm = create::<f32>(cfg, &out.dsm, 1, 3, &srs)?;
    let gt = create::<u8>(cfg, &out.gt, 1, 2, &srs)?;
    for (k, name) in ["IR", "R", "G"].iter().enumerate() {
        image
            .rasterband(k + 1)
            .and_then(|mut band| band.set_description(name))
            .map_err(|e| Error::file(&out.image, e))?;
    }
    {
        let mut band = dsm.rasterband(1).map_err(|e| Error::file(&out.dsm, e))?;
        band.set_description("height")
            .map_err(|e| Error::file(&out.dsm, e))?;
        let unit = CString::new("m").expect("no NUL");
        // SAFETY: valid band handle and C string; GDAL copies the string.
        unsafe { gdal_sys::GDALSetRasterUnitType(band.c_rasterband(), unit.as_ptr()) };
    }
    label_gt(&gt, &out.gt)?;

    let b = cfg.block;
    let (nbx, nby) = (cfg.width.div_ceil(b), cfg.height.div_ceil(b));
    let total = cfg.width as u64 * cfg.height as u64;
    // Tiles of one block row are generated in chunks of up to 8 (and up to
    // 2 Mpx) in parallel while the previous chunk is written: at most three
    // chunks in memory, whatever the scene size.
    let chunk = (MAX_CHUNK_PIXELS / (b * b)).clamp(1, rayon::current_num_threads().clamp(1, 8));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Block>>(1);
    let seed = cfg.seed;
    let (w, h) = (cfg.width, cfg.height);
    std::thread::scope(|s| {
        s.spawn(move || {
            for by in 0..nby {
                for start in (0..nbx).step_by(chunk) {
                    let blocks: Vec<Block> = (start..(start + chunk).min(nbx))
                        .into_par_iter()
                        .map(|bx| {
                            let (x0, y0) = (bx * b, by * b);
                            let (tw, th) = (b.min(w - x0), b.min(h - y0));
                            Block {
                                bx,
                                by,
                                tile: render::render(seed, x0 as i64, y0 as i64, tw, th),
                            }
                        })
                        .collect();
                    if tx.send(blocks).is_err() {
                        return; // the writer gave up
                    }
                }
            }
        });
        let mut done = 0u64;
        for blocks in rx {
            for blk in blocks {
                let (at, t) = ((blk.bx, blk.by), blk.tile);
                let size = (t.w, t.h, b);
                write_block(&image, 1, at, t.ir, size, &out.image)?;
                write_block(&image, 2, at, t.r, size, &out.image)?;
                write_block(&image, 3, at, t.g, size, &out.image)?;
                write_block(&dsm, 1, at, t.dsm, size, &out.dsm)?;
                write_block(&gt, 1, at, t.gt, size, &out.gt)?;
                done += (t.w * t.h) as u64;
                progress(done, total);
            }
        }
        Ok::<(), Error>(())
    })?;
    image.close().map_err(|e| Error::file(&out.image, e))?;
    dsm.close().map_err(|e| Error::file(&out.dsm, e))?;
    gt.close().map_err(|e| Error::file(&out.gt, e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
