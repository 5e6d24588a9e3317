//! Scenes composed of several files, for GDAL to read as one raster:
//! a STAC ItemCollection's asset ([`stac`], GDAL's STACIT driver) and a
//! stack of single-resolution rasters ([`stack`], a VRT built by GDAL's
//! `GDALBuildVRT` with `-separate -resolution highest`).
//!
//! Both return a name GDAL opens (`STACIT:"items.json":asset=visual`, or a
//! VRT in GDAL's in-memory file system, `/vsimem/`), which the pipeline then
//! reads like any scene, and the files behind it, which no output may
//! replace.

use crate::error::{Error, Result};
use crate::raster::open_raster;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// A composed scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// What GDAL opens.
    pub scene: PathBuf,
    /// The files read through it.
    pub files: Vec<PathBuf>,
}

/// The mosaic of asset `asset` of every item of the STAC ItemCollection
/// (a GeoJSON FeatureCollection of STAC items with the projection
/// extension) in `file`, through GDAL's STACIT driver. A file that is not
/// an ItemCollection, or in which no item has the asset, is an error naming
/// the file and listing the assets it has.
pub fn stac(file: &Path, asset: &str) -> Result<Composed> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::file(file, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(file, format!("not JSON: {e}")))?;
    let features = json
        .get("features")
        .and_then(|f| f.as_array())
        .ok_or_else(|| {
            Error::file(
                file,
                "not a STAC ItemCollection (a GeoJSON FeatureCollection with \"features\")",
            )
        })?;
    let mut assets: Vec<String> = features
        .iter()
        .filter_map(|f| f.get("assets").and_then(|a| a.as_object()))
        .flat_map(|a| a.keys().cloned())
        .collect();
    assets.sort();
    assets.dedup();
    if !assets.iter().any(|a| a == asset) {
        return Err(Error::file(
            file,
            if assets.is_empty() {
                format!("no item has an asset '{asset}': the file lists no asset")
            } else {
                format!(
                    "no item has an asset '{asset}'; its assets: {}",
                    assets.join(", ")
                )
            },
        ));
    }
    // GDAL 3.6 resolves a relative href against the working directory, STAC
    // against the item's file: the hrefs are made absolute in an in-memory
    // copy of the collection
    let base = std::fs::canonicalize(file)
        .map_err(|e| Error::file(file, e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut json = json;
    if let Some(features) = json.get_mut("features").and_then(|f| f.as_array_mut()) {
        for f in features {
            let id = f
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or("?")
                .to_string();
            let Some(assets) = f.get_mut("assets").and_then(|a| a.as_object_mut()) else {
                continue;
            };
            for (name, a) in assets.iter_mut() {
                let Some(href) = a.get_mut("href") else {
                    continue;
                };
                if let Some(h) = href.as_str().filter(|h| is_relative(h)) {
                    let abs = base.join(h);
                    // a missing file would only fail at its first window
                    if name == asset && !abs.exists() {
                        return Err(Error::file(
                            file,
                            format!(
                                "item '{id}': asset '{asset}' is {}, which does not exist",
                                abs.display()
                            ),
                        ));
                    }
                    *href = serde_json::Value::String(abs.display().to_string());
                }
            }
        }
    }
    let copy = vsimem_name("stac", ".json", &[file.display().to_string()]);
    let bytes = serde_json::to_vec(&json).map_err(|e| Error::file(file, e))?;
    gdal::vsi::create_mem_file(&copy, bytes)
        .map_err(|e| Error::gdal_file(file, "cannot copy into GDAL's memory", e))?;
    let scene = PathBuf::from(format!("STACIT:\"{copy}\":asset={asset}"));
    let files = file_list(&scene).map_err(|e| {
        // name the user's file, not the in-memory copy
        let msg = e.to_string();
        let why = msg.rsplit_once(": ").map_or(msg.as_str(), |(_, w)| w);
        Error::file(file, format!("asset '{asset}' cannot be read: {why}"))
    })?;
    Ok(Composed { scene, files })
}

/// The bands of `files`, in order (every band of each), stacked on one
/// grid: the union of their extents at the finest of their resolutions,
/// coarser rasters resampled by nearest neighbour (what `gdalbuildvrt
/// -separate -resolution highest` makes). All must share one CRS; a file
/// whose CRS differs from the first one's is an error naming both.
pub fn stack(files: &[PathBuf]) -> Result<Composed> {
    if files.len() < 2 {
        return Err(Error::Config(
            "--stack needs at least two rasters, comma-separated".into(),
        ));
    }
    let mut first: Option<(PathBuf, Option<gdal::spatial_ref::SpatialRef>)> = None;
    let mut singles = Vec::new();
    for f in files {
        let ds = open_raster(f)?;
        let srs = ds.spatial_ref().ok();
        match &first {
            None => first = Some((f.clone(), srs)),
            Some((f0, srs0)) => {
                let same = match (srs0, &srs) {
                    (Some(a), Some(b)) => a == b,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let name = |s: &Option<gdal::spatial_ref::SpatialRef>| {
                        s.as_ref().map_or("none".to_string(), describe)
                    };
                    return Err(Error::file(
                        f,
                        format!(
                            "its CRS ({}) differs from that of {} ({}); a stack needs one CRS (reproject with gdalwarp first)",
                            name(&srs),
                            f0.display(),
                            name(srs0)
                        ),
                    ));
                }
            }
        }
        // GDAL 3.6's -separate takes each source's first band only: a
        // multi-band file enters as one single-band VRT per band
        let n = ds.raster_count();
        if n == 1 {
            singles.push(f.display().to_string());
        } else {
            for b in 1..=n {
                let one = vsimem_name("band", ".vrt", &[f.display().to_string(), b.to_string()]);
                build_vrt(&one, &[f.display().to_string()], &["-b", &b.to_string()], f)?;
                singles.push(one);
            }
        }
    }
    let key: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let name = vsimem_name("stack", ".vrt", &key);
    build_vrt(
        &name,
        &singles,
        &["-separate", "-resolution", "highest"],
        &files[0],
    )?;
    Ok(Composed {
        scene: PathBuf::from(name),
        files: files.to_vec(),
    })
}

/// Whether a STAC href is a relative local path.
fn is_relative(href: &str) -> bool {
    !(href.contains("://") || href.starts_with('/') || href.starts_with("/vsi"))
}

/// A CRS for a message: `EPSG:n` or its name.
fn describe(s: &gdal::spatial_ref::SpatialRef) -> String {
    match (s.auth_name(), s.auth_code()) {
        (Some(a), Ok(c)) => format!("{a}:{c}"),
        _ => s.name().unwrap_or_else(|| "unnamed".into()),
    }
}

/// A stable in-memory file name for `parts` (the same command gives the
/// same name, so a resume finds the same settings).
fn vsimem_name(kind: &str, ext: &str, parts: &[String]) -> String {
    let mut h = crate::hash::Fnv1a::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    format!("/vsimem/rstile/{kind}-{:016x}{ext}", h.finish())
}

/// `GDALBuildVRT(dest, sources, args)`; errors name `about`.
fn build_vrt(dest: &str, sources: &[String], args: &[&str], about: &Path) -> Result<()> {
    let fail = |why: String| Error::file(about, format!("cannot build the stack's VRT: {why}"));
    let c = |s: &str| CString::new(s).map_err(|e| fail(e.to_string()));
    let args: Vec<CString> = args.iter().map(|a| c(a)).collect::<Result<_>>()?;
    let mut argv: Vec<*mut std::ffi::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let names: Vec<CString> = sources.iter().map(|s| c(s)).collect::<Result<_>>()?;
    let mut name_ptrs: Vec<*const std::ffi::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    name_ptrs.push(std::ptr::null());
    let dest_c = c(dest)?;
    crate::raster::reset_errors();
    // SAFETY: NULL-terminated argument and name lists of C strings that
    // outlive the calls; the options and the dataset are freed here
    unsafe {
        let opts = gdal_sys::GDALBuildVRTOptionsNew(argv.as_mut_ptr(), std::ptr::null_mut());
        if opts.is_null() {
            return Err(fail(
                crate::raster::last_message().unwrap_or_else(|| "bad options".into()),
            ));
        }
        let mut usage_error = 0;
        let ds = gdal_sys::GDALBuildVRT(
            dest_c.as_ptr(),
            sources.len() as i32,
            std::ptr::null_mut(),
            name_ptrs.as_ptr() as *mut *const std::ffi::c_char,
            opts,
            &mut usage_error,
        );
        gdal_sys::GDALBuildVRTOptionsFree(opts);
        if ds.is_null() {
            return Err(fail(
                crate::raster::last_message().unwrap_or_else(|| "GDALBuildVRT failed".into()),
            ));
        }
        gdal_sys::GDALClose(ds);
    }
    Ok(())
}

/// The files GDAL reads `scene` from.
fn file_list(scene: &Path) -> Result<Vec<PathBuf>> {
    Ok(crate::raster::file_list(&open_raster(scene)?))
}
