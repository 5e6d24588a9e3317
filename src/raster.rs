//! Opening, probing and writing rasters through GDAL, in one place.
//!
//! Paths reach GDAL as their bytes ([`c_path`]), never through UTF-8, so a
//! scene, map or preview whose file name is not valid UTF-8 (a Latin-1
//! `scène.tif`, say) is opened and written under exactly its name. (The
//! `gdal` crate's own `Dataset::open` and `Driver::create` pass
//! `to_string_lossy()`, which turns such a name into another file.) The
//! sidecar names GDAL and rstile derive from a file name ([`append`],
//! [`sibling`], [`stem_with`]) are built the same way, byte for byte.
//!
//! Failures keep GDAL's own reason: they come back as
//! [`Error::GdalFile`] with the typed
//! [`GdalError`] as source.

use crate::error::{Error, Result};
use crate::infer::window::Size;
use gdal::cpl::CslStringList;
use gdal::errors::GdalError;
use gdal::raster::{GdalDataType, GdalType};
use gdal::{Dataset, DriverManager, GdalOpenFlags};
use std::ffi::{CString, OsString};
use std::path::{Path, PathBuf};

/// `path` as the C string GDAL takes: its bytes on Unix (whatever their
/// encoding), UTF-8 elsewhere (GDAL's convention on Windows).
pub fn c_path(path: &Path) -> gdal::errors::Result<CString> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    Ok(CString::new(bytes)?)
}

/// `path` with `suffix` appended to its file name: `a.tif` → `a.tif.aux.xml`.
pub fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The file `prefix NAME suffix` beside `path` (whose file name is NAME):
/// `sibling("d/a.tif", ".", ".partial")` is `d/.a.tif.partial`.
pub fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix);
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

/// The file `STEM suffix` beside `path`: `stem_with("d/a.tif", ".qml")` is
/// `d/a.qml`.
pub fn stem_with(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(DriverManager::register_all);
}

/// GDAL's last error on this thread as a typed error (reset afterwards):
/// a `CplError` when GDAL recorded one, else a `NullPointer` for `method`.
pub fn last_error(method: &'static str) -> GdalError {
    let (class, number, msg) = unsafe {
        let class = gdal_sys::CPLGetLastErrorType();
        let number = gdal_sys::CPLGetLastErrorNo();
        let p = gdal_sys::CPLGetLastErrorMsg();
        let msg = if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        gdal_sys::CPLErrorReset();
        (class, number, msg)
    };
    if class == gdal_sys::CPLErr::CE_None {
        GdalError::NullPointer {
            method_name: method,
            msg,
        }
    } else {
        GdalError::CplError { class, number, msg }
    }
}

/// Takes GDAL's last error on this thread, if it was a failure, and resets
/// it. GDAL before 3.7 reports write failures during a flush or close only
/// this way, so a full disk would otherwise go unnoticed.
pub fn take_failure() -> Option<GdalError> {
    unsafe {
        let class = gdal_sys::CPLGetLastErrorType();
        let failed = class == gdal_sys::CPLErr::CE_Failure || class == gdal_sys::CPLErr::CE_Fatal;
        let e = failed.then(|| last_error("CPLGetLastErrorType"));
        gdal_sys::CPLErrorReset();
        e
    }
}

/// GDAL's last message on this thread (a warning too), if any, and resets it.
pub fn last_message() -> Option<String> {
    // SAFETY: reads GDAL's thread-local error state
    unsafe {
        let p = gdal_sys::CPLGetLastErrorMsg();
        let msg = (!p.is_null())
            .then(|| {
                std::ffi::CStr::from_ptr(p)
                    .to_string_lossy()
                    .trim()
                    .to_string()
            })
            .filter(|m| !m.is_empty());
        gdal_sys::CPLErrorReset();
        msg
    }
}

/// Forgets GDAL's last error on this thread.
pub fn reset_errors() {
    unsafe { gdal_sys::CPLErrorReset() }
}

/// Runs `f` and returns, with its result, the messages of every warning or
/// error GDAL (or PROJ through GDAL) reported on this thread meanwhile, in
/// order, each on one line and said once. GDAL keeps only the last message
/// itself, and the last is often the least telling one ("Full reprojection
/// failed" after PROJ's "Invalid latitude").
pub fn collect_messages<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    unsafe extern "C" fn handler(
        class: gdal_sys::CPLErr::Type,
        _no: gdal_sys::CPLErrorNum,
        msg: *const std::ffi::c_char,
    ) {
        // SAFETY: the user data is the Vec pushed below, alive until the pop
        let out = unsafe { &mut *(gdal_sys::CPLGetErrorHandlerUserData() as *mut Vec<String>) };
        if class == gdal_sys::CPLErr::CE_Debug || msg.is_null() {
            return;
        }
        // SAFETY: GDAL passes a NUL-terminated message
        let text = unsafe { std::ffi::CStr::from_ptr(msg) }.to_string_lossy();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !out.contains(&text) {
            out.push(text);
        }
    }
    let mut messages: Vec<String> = Vec::new();
    // SAFETY: a thread-local handler, popped before `messages` goes away
    unsafe {
        gdal_sys::CPLErrorReset();
        gdal_sys::CPLPushErrorHandlerEx(
            Some(handler),
            &mut messages as *mut Vec<String> as *mut std::ffi::c_void,
        );
    }
    let r = f();
    // SAFETY: pops the handler pushed above
    unsafe {
        gdal_sys::CPLPopErrorHandler();
        gdal_sys::CPLErrorReset();
    }
    (r, messages)
}

/// `GDALOpenEx` on the path's bytes, with GDAL's reason on failure
/// (`GDAL_OF_VERBOSE_ERROR` is added: without it GDAL says nothing about
/// a file no driver recognises).
pub fn open_ex(path: &Path, flags: GdalOpenFlags) -> gdal::errors::Result<Dataset> {
    register();
    let c = c_path(path)?;
    let flags = flags | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR;
    reset_errors();
    let h = unsafe {
        gdal_sys::GDALOpenEx(
            c.as_ptr(),
            flags.bits(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if h.is_null() {
        return Err(last_error("GDALOpenEx"));
    }
    Ok(unsafe { Dataset::from_c_dataset(h) })
}

/// Whether `path` is a plain file name that names nothing on disk; GDAL's
/// virtual file systems (`/vsi...`) and driver prefixes (`GTIFF_DIR:`,
/// `STACIT:`, `NETCDF:`, ...) are not, so their errors keep GDAL's reason.
pub fn is_missing_file(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let b = path.as_os_str().as_bytes();
    let virtual_fs = b.starts_with(b"/vsi");
    let prefix = b.iter().position(|&c| c == b':').is_some_and(|i| {
        i > 1
            && b[..i]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
    });
    !virtual_fs && !prefix && std::fs::symlink_metadata(path).is_err()
}

/// Opens `path` read-only as a raster, with an error that names the file
/// and keeps GDAL's reason.
/// The files GDAL reads `ds` from (`GDALGetFileList`: for a VRT, the VRT
/// and its sources), as GDAL names them, on their bytes.
pub fn file_list(ds: &Dataset) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    // SAFETY: the list is owned by us and freed with CSLDestroy
    unsafe {
        let list = gdal_sys::GDALGetFileList(ds.c_dataset());
        if !list.is_null() {
            let mut i = 0;
            while !(*list.add(i)).is_null() {
                let bytes = std::ffi::CStr::from_ptr(*list.add(i)).to_bytes();
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)));
                i += 1;
            }
            gdal_sys::CSLDestroy(list);
        }
    }
    out
}

pub fn open_raster(path: &Path) -> Result<Dataset> {
    if path.is_dir() && path.extension().is_none() {
        return Err(Error::file(path, "is a directory, not a raster"));
    }
    // GDAL decides first: `/vsizip/...`, `/vsis3/...`, `GTIFF_DIR:1:...`
    // and other names it resolves itself are no files on this disk
    open_ex(
        path,
        GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY,
    )
    .map_err(|e| {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if is_missing_file(path) {
            Error::file(path, "no such file")
        } else if len == 0 && path.is_file() {
            Error::file(path, "empty file (0 bytes), not a raster")
        } else {
            Error::gdal_file(path, "not a raster GDAL can open", e)
        }
    })
}

/// A scene opened as rstile reads its pixels.
///
/// A paletted raster (a single band of colour-table indices, which QGIS
/// shows in its colours) is read as those colours: an in-memory VRT with a
/// red, a green and a blue band, exactly what `gdal_translate -expand rgb`
/// makes of it (the palette's alpha is dropped), keeping the band's nodata
/// (or other mask) as the mask of all three (`-mask mask,1`; the expansion
/// alone would colour nodata). Every other raster is read as it is.
pub struct SceneDataset {
    /// What the pixels are read from (the RGB VRT of a paletted raster).
    pub ds: Dataset,
    /// The number of colour-table entries of a paletted raster.
    pub palette: Option<usize>,
    /// The paletted raster under the VRT, open as long as the VRT is
    /// (fields drop in order: the VRT first).
    _source: Option<Dataset>,
}

impl SceneDataset {
    /// The dataset on disk: the paletted raster under the RGB VRT, or the
    /// one the pixels are read from.
    pub fn source(&self) -> &Dataset {
        self._source.as_ref().unwrap_or(&self.ds)
    }
}

/// Opens `path` as rstile reads it ([`SceneDataset`]).
pub fn open_scene(path: &Path) -> Result<SceneDataset> {
    let ds = open_raster(path)?;
    let Some(entries) = palette_entries(&ds) else {
        return Ok(SceneDataset {
            ds,
            palette: None,
            _source: None,
        });
    };
    // gdal_translate -expand rgb drops the band's nodata: keep its mask
    let masked = !ds
        .rasterband(1)
        .and_then(|b| b.mask_flags())
        .map_err(Error::on(path))?
        .is_all_valid();
    let rgb = expand_rgb(&ds, masked)
        .map_err(|e| Error::gdal_file(path, "cannot expand its palette to RGB", e))?;
    Ok(SceneDataset {
        ds: rgb,
        palette: Some(entries),
        _source: Some(ds),
    })
}

/// The number of colour-table entries when `ds` is a paletted raster: one
/// band, with a colour table.
fn palette_entries(ds: &Dataset) -> Option<usize> {
    if ds.raster_count() != 1 {
        return None;
    }
    let band = ds.rasterband(1).ok()?;
    band.color_table().map(|c| c.entry_count())
}

/// `gdal_translate -of VRT -expand rgb [-mask mask,1] SRC ""`: an in-memory VRT
/// over `src`; with `mask`, band 1's mask (its nodata) becomes the VRT's
/// mask, shared by the three bands.
fn expand_rgb(src: &Dataset, mask: bool) -> gdal::errors::Result<Dataset> {
    let mut args = CslStringList::new();
    let extra: &[&str] = if mask { &["-mask", "mask,1"] } else { &[] };
    for a in ["-of", "VRT", "-expand", "rgb"].iter().chain(extra) {
        args.add_string(a)?;
    }
    reset_errors();
    // SAFETY: GDAL copies the argument list; the options are freed below
    let opts =
        unsafe { gdal_sys::GDALTranslateOptionsNew(args.as_ptr() as *mut _, std::ptr::null_mut()) };
    if opts.is_null() {
        return Err(last_error("GDALTranslateOptionsNew"));
    }
    let mut usage = 0;
    // SAFETY: a valid dataset handle and options; "" names no file (the
    // VRT stays in memory)
    let h = unsafe { gdal_sys::GDALTranslate(c"".as_ptr(), src.c_dataset(), opts, &mut usage) };
    unsafe { gdal_sys::GDALTranslateOptionsFree(opts) };
    if h.is_null() {
        return Err(last_error("GDALTranslate"));
    }
    Ok(unsafe { Dataset::from_c_dataset(h) })
}

/// Sets the ground control points of `ds` (`GDALSetGCPs2`), their lines
/// moved up by `line_offset` (a row band of a scene starts that far down),
/// in the CRS `srs_wkt` (none when `None`).
pub fn set_gcps(
    ds: &Dataset,
    gcps: &[gdal::Gcp],
    line_offset: f64,
    srs_wkt: Option<&str>,
) -> gdal::errors::Result<()> {
    let srs = srs_wkt
        .map(gdal::spatial_ref::SpatialRef::from_wkt)
        .transpose()?;
    let strings = gcps
        .iter()
        .map(|g| Ok((CString::new(g.id.as_str())?, CString::new(g.info.as_str())?)))
        .collect::<gdal::errors::Result<Vec<_>>>()?;
    let list: Vec<gdal_sys::GDAL_GCP> = gcps
        .iter()
        .zip(&strings)
        .map(|(g, (id, info))| gdal_sys::GDAL_GCP {
            pszId: id.as_ptr() as *mut _,
            pszInfo: info.as_ptr() as *mut _,
            dfGCPPixel: g.pixel,
            dfGCPLine: g.line - line_offset,
            dfGCPX: g.x,
            dfGCPY: g.y,
            dfGCPZ: g.z,
        })
        .collect();
    let n = i32::try_from(list.len())?;
    reset_errors();
    // SAFETY: GDAL copies the points and the CRS; the strings outlive the call
    let rv = unsafe {
        gdal_sys::GDALSetGCPs2(
            ds.c_dataset(),
            n,
            list.as_ptr(),
            srs.as_ref()
                .map_or(std::ptr::null_mut(), |s| s.to_c_hsrs() as *mut _),
        )
    };
    if rv != gdal_sys::CPLErr::CE_None {
        return Err(last_error("GDALSetGCPs2"));
    }
    Ok(())
}

/// Creates `path` with the GDAL driver `driver` (`GDALCreate` on the
/// path's bytes): `size` px, `bands` bands of `T`, creation `options`.
pub fn create<T: GdalType>(
    driver: &str,
    path: &Path,
    size: (usize, usize),
    bands: usize,
    options: &CslStringList,
) -> gdal::errors::Result<Dataset> {
    register();
    let driver = DriverManager::get_driver_by_name(driver)?;
    let c = c_path(path)?;
    let (w, h, n) = (
        i32::try_from(size.0)?,
        i32::try_from(size.1)?,
        i32::try_from(bands)?,
    );
    reset_errors();
    let ds = unsafe {
        gdal_sys::GDALCreate(
            driver.c_driver(),
            c.as_ptr(),
            w,
            h,
            n,
            T::gdal_ordinal(),
            options.as_ptr(),
        )
    };
    if ds.is_null() {
        return Err(last_error("GDALCreate"));
    }
    Ok(unsafe { Dataset::from_c_dataset(ds) })
}

/// Copies `src` to `path` with the GDAL driver `driver` (`GDALCreateCopy`
/// on the path's bytes).
pub fn create_copy(
    src: &Dataset,
    driver: &str,
    path: &Path,
    options: &CslStringList,
) -> gdal::errors::Result<Dataset> {
    register();
    let driver = DriverManager::get_driver_by_name(driver)?;
    let c = c_path(path)?;
    reset_errors();
    let ds = unsafe {
        gdal_sys::GDALCreateCopy(
            driver.c_driver(),
            c.as_ptr(),
            src.c_dataset(),
            0,
            options.as_ptr(),
            None,
            std::ptr::null_mut(),
        )
    };
    if ds.is_null() {
        return Err(last_error("GDALCreateCopy"));
    }
    Ok(unsafe { Dataset::from_c_dataset(ds) })
}

/// Writes an RGB image, three planes of `width x height` bytes, as the PNG
/// `path`: through a MEM dataset and GDAL's PNG driver, into the hidden
/// `.NAME.partial` beside it and renamed into place, so that a failed write
/// leaves no half PNG. GDAL's `.aux.xml` for the temporary file is removed.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: [&[u8]; 3]) -> Result<()> {
    let mem = create::<u8>(
        "MEM",
        Path::new(""),
        (width, height),
        3,
        &CslStringList::new(),
    )?;
    for (plane, band_no) in rgb.into_iter().zip(1..) {
        let mut buf = gdal::raster::Buffer::new((width, height), plane.to_vec());
        mem.rasterband(band_no)?
            .write((0, 0), (width, height), &mut buf)?;
    }
    let tmp = sibling(path, ".", ".partial");
    reset_errors();
    // a write failure at close (a full disk) is only in GDAL's error state
    let written = create_copy(&mem, "PNG", &tmp, &CslStringList::new())
        .and_then(|out| out.close())
        .and_then(|()| take_failure().map_or(Ok(()), Err))
        .map_err(|e| Error::gdal_file(path, "cannot write the PNG", e));
    let _ = std::fs::remove_file(append(&tmp, ".aux.xml"));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// What rstile needs to know about a scene before reading it.
#[derive(Debug, Clone)]
pub struct SceneInfo {
    pub path: PathBuf,
    pub size: Size,
    pub band_count: usize,
    pub band_types: Vec<GdalDataType>,
    /// GDAL's own names of the band types (`Byte`, `CInt16`, `Int64`, ...),
    /// for messages: [`GdalDataType`] has no variant for some of them.
    pub band_type_names: Vec<String>,
    /// `None` when the scene has no geotransform.
    pub geo_transform: Option<[f64; 6]>,
    /// `None` when the scene has no CRS.
    pub srs_wkt: Option<String>,
    pub block: Size,
    /// True when some band has a mask other than "all valid".
    pub has_nodata: bool,
    /// Ground control points (a scene georeferenced by GCPs has no
    /// geotransform), with their CRS.
    pub gcps: Vec<gdal::Gcp>,
    pub gcp_srs_wkt: Option<String>,
    /// The number of colour-table entries of a paletted raster, which is
    /// read as red, green and blue bands ([`SceneDataset`]); the band
    /// count and types describe those.
    pub palette: Option<usize>,
}

impl SceneInfo {
    /// The pixel size in metres (the larger of the two axes), for a scene
    /// with a geotransform in a projected CRS; `None` otherwise (no
    /// georeferencing, or degrees).
    pub fn pixel_size_m(&self) -> Option<f64> {
        let gt = self.geo_transform?;
        let srs = gdal::spatial_ref::SpatialRef::from_wkt(self.srs_wkt.as_deref()?).ok()?;
        if !srs.is_projected() {
            return None;
        }
        let m = gt[1].abs().max(gt[5].abs()) * srs.linear_units();
        (m.is_finite() && m > 0.0).then_some(m)
    }

    /// Reads the scene's metadata.
    pub fn probe(path: &Path) -> Result<SceneInfo> {
        let scene = open_scene(path)?;
        let mut info = Self::of(&scene.ds, path)?;
        info.palette = scene.palette;
        Ok(info)
    }

    /// A paletted scene is read as red, green and blue
    /// ([`SceneDataset`]): refused, naming the file, for a model that
    /// takes another number of bands.
    pub fn check_palette(&self, model_bands: usize) -> Result<()> {
        match self.palette {
            Some(n) if model_bands != 3 => Err(Error::file(
                &self.path,
                format!(
                    "is a paletted raster (its band holds indices into a colour table of {n} entries, not measurements); rstile reads it as its red, green and blue colours, as QGIS shows it, but the model takes {model_bands} band(s)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The metadata of the open raster `ds`, read from `path`.
    pub fn of(ds: &Dataset, path: &Path) -> Result<SceneInfo> {
        let (w, h) = ds.raster_size();
        let n = ds.raster_count();
        if n == 0 || w == 0 || h == 0 {
            return Err(Error::file(path, "the raster has no bands or no pixels"));
        }
        let mut types = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut has_nodata = false;
        let mut block = Size {
            width: w,
            height: 1,
        };
        for i in 1..=n {
            let b = ds.rasterband(i).map_err(Error::on(path))?;
            types.push(b.band_type());
            // SAFETY: a valid band handle; GDAL returns a static string
            names.push(unsafe {
                let t = gdal_sys::GDALGetRasterDataType(b.c_rasterband());
                let p = gdal_sys::GDALGetDataTypeName(t);
                if p.is_null() {
                    "unknown".to_string()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            });
            if i == 1 {
                let (bw, bh) = b.block_size();
                block = Size {
                    width: bw,
                    height: bh,
                };
            }
            let flags = b.mask_flags().map_err(Error::on(path))?;
            if !flags.is_all_valid() {
                has_nodata = true;
            }
        }
        let gt = ds.geo_transform().ok();
        let srs = ds
            .spatial_ref()
            .ok()
            .and_then(|s| s.to_wkt().ok())
            .filter(|s| !s.is_empty());
        let gcps: Vec<gdal::Gcp> = ds.gcps().iter().map(gdal::Gcp::from).collect();
        let gcp_srs_wkt = if gcps.is_empty() {
            None
        } else {
            ds.gcp_spatial_ref()
                .and_then(|s| s.to_wkt().ok())
                .filter(|s| !s.is_empty())
        };
        Ok(SceneInfo {
            path: path.to_path_buf(),
            size: Size {
                width: w,
                height: h,
            },
            band_count: n,
            band_types: types,
            band_type_names: names,
            geo_transform: gt,
            srs_wkt: srs,
            block,
            has_nodata,
            gcps,
            gcp_srs_wkt,
            palette: None,
        })
    }
}

/// Reads band 1 of a small raster (a map, a label image) whole, as u8:
/// `(width, height, pixels)`.
pub fn read_u8_band(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let ds = open_raster(path)?;
    let (w, h) = ds.raster_size();
    let band = ds.rasterband(1).map_err(Error::on(path))?;
    let buf = band
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .map_err(|e| Error::gdal_file(path, "cannot read band 1", e))?;
    Ok((w, h, buf.data().to_vec()))
}

/// Checks that a GDAL band type is one rstile reads.
pub fn supported_type(t: GdalDataType) -> bool {
    use GdalDataType::*;
    matches!(
        t,
        UInt8 | UInt16 | Int16 | UInt32 | Int32 | Float32 | Float64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names_keep_the_bytes() {
        assert_eq!(
            append(Path::new("d/a.tif"), ".aux.xml"),
            Path::new("d/a.tif.aux.xml")
        );
        assert_eq!(
            sibling(Path::new("d/a.tif"), ".", ".partial"),
            Path::new("d/.a.tif.partial")
        );
        assert_eq!(
            stem_with(Path::new("d/a.tif"), ".qml"),
            Path::new("d/a.qml")
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let p = Path::new(std::ffi::OsStr::from_bytes(b"d/sc\xe8ne.tif"));
            assert_eq!(
                append(p, ".aux.xml").as_os_str().as_bytes(),
                b"d/sc\xe8ne.tif.aux.xml"
            );
            assert_eq!(
                stem_with(p, ".confidence.tif").as_os_str().as_bytes(),
                b"d/sc\xe8ne.confidence.tif"
            );
            assert_eq!(c_path(p).unwrap().as_bytes(), b"d/sc\xe8ne.tif");
        }
    }

    #[test]
    fn create_write_and_reopen_a_non_utf8_name() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        let name = {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::OsStr::from_bytes(b"sc\xe8ne.tif").to_os_string()
        };
        #[cfg(not(unix))]
        let name = std::ffi::OsString::from("scène.tif");
        let p = dir.path().join(&name);
        let ds = create::<u8>("GTiff", &p, (7, 5), 2, &CslStringList::new()).unwrap();
        drop(ds);
        assert!(p.is_file(), "created under its own name");
        let info = SceneInfo::probe(&p).unwrap();
        assert_eq!(
            (info.size.width, info.size.height, info.band_count),
            (7, 5, 2)
        );
        let png = dir.path().join(stem_with(Path::new(&name), ".png"));
        write_png(&png, 2, 1, [&[1, 2], &[3, 4], &[5, 6]]).unwrap();
        assert!(png.is_file());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary or aux files left: {names:?}");
    }

    #[test]
    fn open_failures_keep_gdal_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "just some words\n").unwrap();
        let e = open_raster(&p).unwrap_err();
        assert!(
            matches!(&e, Error::GdalFile(f) if matches!(f.source, GdalError::CplError { .. })),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("not a raster GDAL can open: "), "{msg}");
        assert!(
            msg.contains("not recognized as a supported file format"),
            "{msg}"
        );
    }
}
