//! Reading one area from either input layout into the five features, the
//! class ids and the boundary mask.

use super::features::{ndsm, ndvi};
use crate::error::{Error, Result};
use crate::raster::open_raster;
use std::path::{Path, PathBuf};

/// One labelled area, in memory.
#[derive(Debug, Clone)]
pub struct Area {
    pub id: u16,
    pub width: usize,
    pub height: usize,
    /// Band-major `5 x height x width`: NIR, R, G, nDSM, NDVI.
    pub features: Vec<f32>,
    /// Class ids 0..=5 of [`crate::classes::ClassTable::isprs`]; 255 = no label.
    pub labels: Vec<u8>,
    /// 1 on eroded-boundary (ignored) pixels, 0 elsewhere.
    pub mask: Vec<u8>,
}

/// Which of the two input layouts a folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The ISPRS archive: `top/`, `dsm/`, `gts_for_participants/`,
    /// `gts_eroded_for_participants/`.
    Official,
    /// The course's `vaihingen_N.hdf5` files.
    CourseHdf5,
}

impl Layout {
    /// Detects the layout of `dir`: `top/` means the official archive, a
    /// `vaihingen_*.hdf5` file the course's format.
    pub fn detect(dir: &Path) -> Result<Layout> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "no such directory"));
        }
        if dir.join("top").is_dir() {
            return Ok(Layout::Official);
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("vaihingen_") && name.ends_with(".hdf5") {
                return Ok(Layout::CourseHdf5);
            }
        }
        Err(Error::file(
            dir,
            "neither the ISPRS layout (a top/ folder) nor the course's vaihingen_N.hdf5 files",
        ))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Layout::Official => "isprs",
            Layout::CourseHdf5 => "course-hdf5",
        }
    }
}

/// The official file names of area `n`.
pub fn official_paths(dir: &Path, n: u16) -> [PathBuf; 4] {
    [
        dir.join(format!("top/top_mosaic_09cm_area{n}.tif")),
        dir.join(format!("dsm/dsm_09cm_matching_area{n}.tif")),
        dir.join(format!("gts_for_participants/top_mosaic_09cm_area{n}.tif")),
        dir.join(format!(
            "gts_eroded_for_participants/top_mosaic_09cm_area{n}_noBoundary.tif"
        )),
    ]
}

/// The ISPRS colour code, by class id.
pub const ISPRS_COLOURS: [[u8; 3]; 6] = [
    [255, 255, 255], // impervious surfaces
    [0, 0, 255],     // building
    [0, 255, 255],   // low vegetation
    [0, 255, 0],     // tree
    [255, 255, 0],   // car
    [255, 0, 0],     // clutter/background
];

/// Decodes one RGB colour: `Some(id)` for a class colour, `Some(255)` for
/// black when `black_is_ignore`, `None` for anything else.
#[inline]
pub fn decode_colour(rgb: [u8; 3], black_is_ignore: bool) -> Option<u8> {
    if black_is_ignore && rgb == [0, 0, 0] {
        return Some(255);
    }
    ISPRS_COLOURS
        .iter()
        .position(|c| *c == rgb)
        .map(|i| i as u8)
}

/// Decodes planar R, G, B bands into class ids; an unknown colour is an
/// error naming the file and the pixel (column, row).
pub fn decode_rgb(
    path: &Path,
    r: &[u8],
    g: &[u8],
    b: &[u8],
    width: usize,
    black_is_ignore: bool,
) -> Result<Vec<u8>> {
    let mut lut = std::collections::HashMap::new();
    let mut last: Option<([u8; 3], u8)> = None;
    let mut out = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        let rgb = [r[i], g[i], b[i]];
        if let Some(&(c, v)) = last.as_ref() {
            if c == rgb {
                out.push(v);
                continue;
            }
        }
        let id = match lut.get(&rgb) {
            Some(&v) => v,
            None => {
                let v = decode_colour(rgb, black_is_ignore).ok_or_else(|| {
                    Error::file(
                        path,
                        format!(
                            "unknown colour ({},{},{}) at pixel (column {}, row {}); \
                             not one of the ISPRS class colours{}",
                            rgb[0],
                            rgb[1],
                            rgb[2],
                            i % width,
                            i / width,
                            if black_is_ignore { " or black" } else { "" }
                        ),
                    )
                })?;
                lut.insert(rgb, v);
                v
            }
        };
        last = Some((rgb, id));
        out.push(id);
    }
    Ok(out)
}

/// The ISPRS colour planes (R, G, B) of class ids `ids` (`w x h`), the
/// inverse of [`decode_rgb`]: an id without a colour is black, and with
/// `eroded` so is every pixel whose 4-neighbourhood holds another id (the
/// eroded reference's boundaries).
pub fn encode_rgb(ids: &[u8], w: usize, h: usize, eroded: bool) -> [Vec<u8>; 3] {
    let mut rgb = [vec![0u8; w * h], vec![0u8; w * h], vec![0u8; w * h]];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let id = ids[i];
            let boundary = eroded
                && ((x > 0 && ids[i - 1] != id)
                    || (x + 1 < w && ids[i + 1] != id)
                    || (y > 0 && ids[i - w] != id)
                    || (y + 1 < h && ids[i + w] != id));
            if let (false, Some(c)) = (boundary, ISPRS_COLOURS.get(id as usize)) {
                rgb[0][i] = c[0];
                rgb[1][i] = c[1];
                rgb[2][i] = c[2];
            }
        }
    }
    rgb
}

fn read_bands<T: gdal::raster::GdalType + Copy>(
    path: &Path,
    want_bands: usize,
) -> Result<(usize, usize, Vec<Vec<T>>)> {
    let ds = open_raster(path)?;
    let (w, h) = ds.raster_size();
    if ds.raster_count() < want_bands {
        return Err(Error::file(
            path,
            format!("has {} band(s), {} expected", ds.raster_count(), want_bands),
        ));
    }
    let mut bands = Vec::with_capacity(want_bands);
    for i in 1..=want_bands {
        let band = ds.rasterband(i).map_err(Error::on(path))?;
        let buf = band
            .read_as::<T>((0, 0), (w, h), (w, h), None)
            .map_err(|e| Error::gdal_file(path, format!("unreadable band {i}"), e))?;
        bands.push(buf.data().to_vec());
    }
    Ok((w, h, bands))
}

/// The five features of area `n` of the official layout, from its image
/// and DSM alone (the test areas have no reference): width, height and the
/// band-major `5 x height x width` planes.
pub fn official_features(
    dir: &Path,
    n: u16,
    ground_radius: usize,
) -> Result<(usize, usize, Vec<f32>)> {
    let [top, dsm_p, _, _] = official_paths(dir, n);
    for p in [&top, &dsm_p] {
        if !p.exists() {
            return Err(Error::file(p, format!("area {n} is missing: no such file")));
        }
    }
    let (w, h, img) = read_bands::<u8>(&top, 3)?;
    let (dw, dh, dsm) = read_bands::<f32>(&dsm_p, 1)?;
    if (dw, dh) != (w, h) {
        return Err(Error::file(
            &dsm_p,
            format!(
                "the DSM is {dw}x{dh} but its image {} is {w}x{h}",
                top.display()
            ),
        ));
    }
    let npix = w * h;
    let mut features = vec![0f32; 5 * npix];
    for i in 0..npix {
        let (nir, r, g) = (img[0][i] as f32, img[1][i] as f32, img[2][i] as f32);
        features[i] = nir;
        features[npix + i] = r;
        features[2 * npix + i] = g;
        features[4 * npix + i] = ndvi(nir, r);
    }
    drop(img);
    let nd = ndsm(&dsm[0], w, h, ground_radius);
    features[3 * npix..4 * npix].copy_from_slice(&nd);
    Ok((w, h, features))
}

/// Reads area `n` of the official layout. The eroded reference is optional:
/// without it the mask is all 0 (and `Ok` carries a note).
pub fn load_official(dir: &Path, n: u16, ground_radius: usize) -> Result<(Area, Option<String>)> {
    let [top, dsm_p, gt_p, er_p] = official_paths(dir, n);
    for p in [&top, &dsm_p, &gt_p] {
        if !p.exists() {
            return Err(Error::file(p, format!("area {n} is missing: no such file")));
        }
    }
    let (w, h, features) = official_features(dir, n, ground_radius)?;
    let (gw, gh, gt) = read_bands::<u8>(&gt_p, 3)?;
    if (gw, gh) != (w, h) {
        return Err(Error::file(
            &gt_p,
            format!(
                "the reference is {gw}x{gh} but its image {} is {w}x{h}",
                top.display()
            ),
        ));
    }
    let labels = decode_rgb(&gt_p, &gt[0], &gt[1], &gt[2], w, false)?;
    let mut note = None;
    let mask = if er_p.exists() {
        let (ew, eh, er) = read_bands::<u8>(&er_p, 3)?;
        if (ew, eh) != (w, h) {
            return Err(Error::file(
                &er_p,
                format!("the eroded reference is {ew}x{eh} but its image is {w}x{h}"),
            ));
        }
        let ids = decode_rgb(&er_p, &er[0], &er[1], &er[2], w, true)?;
        ids.iter().map(|&v| (v == 255) as u8).collect()
    } else {
        note = Some(format!(
            "{}: no eroded reference; the boundary mask of area {n} is empty",
            er_p.display()
        ));
        vec![0u8; w * h]
    };
    Ok((
        Area {
            id: n,
            width: w,
            height: h,
            features,
            labels,
            mask,
        },
        note,
    ))
}

/// Width, height and order (`true`: MATLAB's `5 x W x H`) of a course
/// file's `/x_N` of shape `shape`; see [`load_course`].
fn course_dims(path: &Path, n: u16, shape: &[usize]) -> Result<(usize, usize, bool)> {
    if shape.len() != 3 {
        return Err(Error::file(
            path,
            format!("/x_{n} has shape {shape:?}, 3 dimensions expected"),
        ));
    }
    match (shape[0] == 5, shape[2] == 5) {
        (true, false) => Ok((shape[1], shape[2], true)),
        (false, true) => Ok((shape[1], shape[0], false)),
        _ => Err(Error::file(
            path,
            format!("/x_{n} has shape {shape:?}: cannot tell which dimension holds the 5 features"),
        )),
    }
}

/// The width and height of area `n`, from its image's header alone.
pub fn area_size(layout: &Layout, dir: &Path, n: u16) -> Result<(usize, usize)> {
    match layout {
        Layout::Official => {
            let top = &official_paths(dir, n)[0];
            if !top.exists() {
                return Err(Error::file(
                    top,
                    format!("area {n} is missing: no such file"),
                ));
            }
            Ok(open_raster(top)?.raster_size())
        }
        Layout::CourseHdf5 => {
            let (path, f) = open_course(dir, n)?;
            let x = f
                .dataset(&format!("x_{n}"))
                .map_err(|e| Error::file(&path, format!("no dataset /x_{n}: {e}")))?;
            let (w, h, _) = course_dims(&path, n, &x.shape())?;
            Ok((w, h))
        }
    }
}

/// Opens the course file of area `n`; a missing file names the area.
fn open_course(dir: &Path, n: u16) -> Result<(PathBuf, hdf5::File)> {
    let path = course_path(dir, n);
    if !path.exists() {
        return Err(Error::file(
            &path,
            format!("area {n} is missing: no such file"),
        ));
    }
    let f = hdf5::File::open(&path)
        .map_err(|e| Error::file(&path, format!("not an HDF5 file: {e}")))?;
    Ok((path, f))
}

/// The course file of area `n`.
pub fn course_path(dir: &Path, n: u16) -> PathBuf {
    dir.join(format!("vaihingen_{n}.hdf5"))
}

/// Reads area `n` of the course's HDF5 format.
///
/// `/x_N` holds NIR, R, G, nDSM, NDVI. Written by MATLAB's `h5write`, an
/// `H x W x 5` MATLAB array appears in C order with its dimensions reversed,
/// `5 x W x H` (element `[c][col][row]`); the course's Python tool undid that
/// with `np.transpose`. A dataset whose *last* dimension is 5 is read as
/// C-ordered `H x W x 5` instead; one whose first and last are both 5 is
/// ambiguous and an error. `/y_N` and `/m_N` follow the order of `/x_N`
/// (`W x H` or `H x W`).
///
/// `/y_N` holds the course's labels 1..=6 (the ISPRS classes in the
/// benchmark order, as the course's `evaluate_network.py` compares
/// `argmax + 1` to them); they become ids 0..=5, any other value 255.
/// `/m_N` is 1 on boundary pixels. Every dataset may be stored as any
/// numeric type (HDF5 converts).
pub fn load_course(dir: &Path, n: u16) -> Result<Area> {
    let (path, f) = open_course(dir, n)?;
    let ds = |name: &str| {
        f.dataset(name)
            .map_err(|e| Error::file(&path, format!("no dataset /{name}: {e}")))
    };
    let x = ds(&format!("x_{n}"))?;
    let (w, h, matlab) = course_dims(&path, n, &x.shape())?;
    let raw: Vec<f32> = x
        .read_raw()
        .map_err(|e| Error::file(&path, format!("cannot read /x_{n}: {e}")))?;
    let npix = w * h;
    let mut features = vec![0f32; 5 * npix];
    if matlab {
        // raw[c][col][row]
        for c in 0..5 {
            let plane = &raw[c * npix..(c + 1) * npix];
            let out = &mut features[c * npix..(c + 1) * npix];
            for col in 0..w {
                for row in 0..h {
                    out[row * w + col] = plane[col * h + row];
                }
            }
        }
    } else {
        // raw[row][col][c]
        for i in 0..npix {
            for c in 0..5 {
                features[c * npix + i] = raw[i * 5 + c];
            }
        }
    }
    let read_2d = |name: String| -> Result<Vec<f64>> {
        let d = ds(&name)?;
        let s = d.shape();
        let want = if matlab { vec![w, h] } else { vec![h, w] };
        if s != want {
            return Err(Error::file(
                &path,
                format!("/{name} has shape {s:?}, {want:?} expected to match /x_{n}"),
            ));
        }
        let v: Vec<f64> = d
            .read_raw()
            .map_err(|e| Error::file(&path, format!("cannot read /{name}: {e}")))?;
        if !matlab {
            return Ok(v);
        }
        let mut t = vec![0f64; npix];
        for col in 0..w {
            for row in 0..h {
                t[row * w + col] = v[col * h + row];
            }
        }
        Ok(t)
    };
    let y = read_2d(format!("y_{n}"))?;
    let labels = y
        .iter()
        .map(|&v| {
            if (1.0..=6.0).contains(&v) && v.fract() == 0.0 {
                v as u8 - 1
            } else {
                255
            }
        })
        .collect();
    let mask = match f.dataset(&format!("m_{n}")) {
        Ok(_) => read_2d(format!("m_{n}"))?
            .iter()
            .map(|&v| (v != 0.0) as u8)
            .collect(),
        Err(_) => vec![0u8; npix],
    };
    Ok(Area {
        id: n,
        width: w,
        height: h,
        features,
        labels,
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_code_round_trips_and_rejects_unknown() {
        for (i, c) in ISPRS_COLOURS.iter().enumerate() {
            assert_eq!(decode_colour(*c, false), Some(i as u8));
        }
        assert_eq!(decode_colour([0, 0, 0], true), Some(255));
        assert_eq!(decode_colour([0, 0, 0], false), None);
        let e = decode_rgb(
            Path::new("gt.tif"),
            &[255, 1],
            &[255, 2],
            &[255, 3],
            2,
            false,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("gt.tif") && msg.contains("(1,2,3)") && msg.contains("column 1, row 0"),
            "{msg}"
        );
    }

    #[test]
    fn eroded_reference_is_black_on_boundaries_only() {
        // 3 x 2: building | building | tree / building x 3
        let ids = [1u8, 1, 3, 1, 1, 1];
        let [r, g, b] = encode_rgb(&ids, 3, 2, true);
        let black: Vec<bool> = (0..6)
            .map(|i| r[i] == 0 && g[i] == 0 && b[i] == 0)
            .collect();
        assert_eq!(black, [false, true, true, false, false, true]);
        let [r, g, b] = encode_rgb(&ids, 3, 2, false);
        assert_eq!([r[2], g[2], b[2]], ISPRS_COLOURS[3]);
        assert_eq!([r[0], g[0], b[0]], ISPRS_COLOURS[1]);
    }
}
