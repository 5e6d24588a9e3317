//! Areas of interest: polygons that limit what is read and computed.
//!
//! The polygons are reprojected to the raster's CRS by GDAL and then kept
//! in the raster's pixel coordinates as `geo` geometries, so that the
//! per-window questions — does this window touch the AOI, which of its
//! pixels lie inside — need neither GDAL nor a CRS. Pixel `(x, y)` is inside
//! when its centre `(x + 0.5, y + 0.5)` is.
//!
//! An AOI is the union of all its polygons: every polygon and multipolygon
//! part of every feature of every layer, overlapping or not (non-zero
//! winding over rings oriented exteriors one way and holes the other). A
//! hole is outside its own polygon, but inside the AOI where another
//! polygon covers it. Points and lines are ignored.

use crate::error::{Error, Result};
use crate::infer::window::Rect;
use crate::raster::SceneInfo;
use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::vector::LayerAccess;
use gdal::GdalOpenFlags;
use geo::orient::{Direction, Orient};
use geo::{BoundingRect, Coord, Intersects, MapCoords, MultiPolygon, Polygon};
use std::path::Path;

/// A CRS as a user knows it: `EPSG:4326 (WGS 84)`, or its name, or its
/// PROJ string.
fn crs_name(s: &SpatialRef) -> String {
    let name = s.name().filter(|n| !n.is_empty() && n != "unknown");
    match (s.authority().ok(), name) {
        (Some(a), Some(n)) => format!("{a} ({n})"),
        (Some(a), None) => a,
        (None, Some(n)) => format!("\"{n}\""),
        (None, None) => s
            .to_proj4()
            .ok()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "an unnamed CRS".into()),
    }
}

/// The AOI's geometry could not be transformed to the scene's CRS: one line
/// naming the file, both CRSs and GDAL's (or PROJ's) reasons, instead of
/// the crate's "OGR_G_TransformTo returned error: '6'".
fn transform_error(
    path: &Path,
    which: &str,
    from: &SpatialRef,
    to: &SpatialRef,
    scene: &Path,
    e: gdal::errors::GdalError,
    messages: Vec<String>,
) -> Error {
    let reason = if messages.is_empty() {
        match e {
            gdal::errors::GdalError::OgrError { .. } => String::new(),
            other => format!(": {}", crate::error::gdal_reason(&other)),
        }
    } else {
        format!(": {}", messages.join("; "))
    };
    Error::file(
        path,
        format!(
            "its geometry{which} cannot be transformed from {} to the CRS of the scene {}, {}{reason}",
            crs_name(from),
            scene.display(),
            crs_name(to),
        ),
    )
}

/// An area of interest in raster pixel coordinates.
#[derive(Debug, Clone)]
pub struct Aoi {
    shape: MultiPolygon<f64>,
    /// Oriented polygon edges `(x0, y0, x1, y1)`: exteriors counter-clockwise,
    /// holes clockwise, for winding-number scanline masks.
    edges: Vec<[f64; 4]>,
}

fn srs_gis_order(mut s: SpatialRef) -> SpatialRef {
    s.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    s
}

impl Aoi {
    /// Reads every polygon of every layer of `path` (any GDAL vector
    /// format), reprojected to the scene's CRS.
    pub fn load(path: &Path, scene: &SceneInfo) -> Result<Aoi> {
        let ds = crate::raster::open_ex(
            path,
            GdalOpenFlags::GDAL_OF_VECTOR | GdalOpenFlags::GDAL_OF_READONLY,
        )
        .map_err(|e| {
            if crate::raster::is_missing_file(path) {
                return Error::file(path, "no such file");
            }
            Error::gdal_file(
                path,
                "not a vector file GDAL can open (GeoJSON, GeoPackage, Shapefile, ...)",
                e,
            )
        })?;
        let gt = scene.geo_transform.ok_or_else(|| {
            Error::file(
                &scene.path,
                "has no georeferencing, so an AOI cannot be placed on it",
            )
        })?;
        let target = scene
            .srs_wkt
            .as_deref()
            .map(SpatialRef::from_wkt)
            .transpose()
            .map_err(Error::on(&scene.path))?
            .map(srs_gis_order);
        // inverse geotransform
        let det = gt[1] * gt[5] - gt[2] * gt[4];
        if det == 0.0 {
            return Err(Error::file(&scene.path, "has a degenerate geotransform"));
        }
        let to_px = |c: Coord<f64>| {
            let (dx, dy) = (c.x - gt[0], c.y - gt[3]);
            Coord {
                x: (gt[5] * dx - gt[2] * dy) / det,
                y: (-gt[4] * dx + gt[1] * dy) / det,
            }
        };
        let mut polys: Vec<Polygon<f64>> = Vec::new();
        let mut others = 0usize;
        let layers = ds.layer_count();
        for mut layer in ds.layers() {
            let layer_srs = layer.spatial_ref().map(srs_gis_order);
            let layer_name = layer.name();
            for feature in layer.features() {
                let Some(g) = feature.geometry() else {
                    continue;
                };
                let g = match (&layer_srs, &target) {
                    (Some(from), Some(to)) => {
                        let (r, messages) = crate::raster::collect_messages(|| g.transform_to(to));
                        r.map_err(|e| {
                            let which = match (feature.fid(), layers > 1) {
                                (Some(fid), true) => {
                                    format!(" (feature {fid} of layer {layer_name})")
                                }
                                (Some(fid), false) => format!(" (feature {fid})"),
                                (None, true) => format!(" (in layer {layer_name})"),
                                (None, false) => String::new(),
                            };
                            transform_error(path, &which, from, to, &scene.path, e, messages)
                        })?
                    }
                    _ => g.clone(),
                };
                match g.to_geo().map_err(Error::on(path))? {
                    geo::Geometry::Polygon(p) => polys.push(p.map_coords(to_px)),
                    geo::Geometry::MultiPolygon(mp) => polys.extend(mp.map_coords(to_px).0),
                    _ => others += 1,
                }
            }
        }
        if polys.is_empty() {
            let why = if others > 0 {
                "holds no polygons (only points or lines)"
            } else {
                "holds no features"
            };
            return Err(Error::file(
                path,
                format!("is not a polygon file: it {why}"),
            ));
        }
        let aoi = Aoi::from_pixel_polygons(MultiPolygon(polys));
        let all = Rect {
            x: 0,
            y: 0,
            width: scene.size.width,
            height: scene.size.height,
        };
        if !aoi.touches(&all) {
            return Err(Error::file(
                path,
                format!("does not overlap the scene {}", scene.path.display()),
            ));
        }
        Ok(aoi)
    }

    /// An AOI from polygons already in pixel coordinates.
    pub fn from_pixel_polygons(shape: MultiPolygon<f64>) -> Aoi {
        let shape = shape.orient(Direction::Default);
        let mut edges = Vec::new();
        for p in &shape.0 {
            for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                for l in ring.lines() {
                    edges.push([l.start.x, l.start.y, l.end.x, l.end.y]);
                }
            }
        }
        Aoi { shape, edges }
    }

    /// Whether the pixel rectangle touches the AOI.
    pub fn touches(&self, r: &Rect) -> bool {
        if r.width == 0 || r.height == 0 {
            return false;
        }
        let rect = geo::Rect::new(
            Coord {
                x: r.x as f64,
                y: r.y as f64,
            },
            Coord {
                x: (r.x + r.width) as f64,
                y: (r.y + r.height) as f64,
            },
        );
        match self.shape.bounding_rect() {
            Some(b) if b.intersects(&rect) => self.shape.intersects(&rect.to_polygon()),
            _ => false,
        }
    }

    /// Inside-mask (1 = inside) of the `width x height` pixels starting at
    /// (`x0`, `y0`), row-major; coordinates may lie outside the raster.
    pub fn mask(&self, x0: i64, y0: i64, width: usize, height: usize) -> Vec<u8> {
        let mut m = vec![0u8; width * height];
        let (ylo, yhi) = (y0 as f64, (y0 + height as i64) as f64);
        let edges: Vec<&[f64; 4]> = self
            .edges
            .iter()
            .filter(|e| e[1].max(e[3]) >= ylo && e[1].min(e[3]) <= yhi)
            .collect();
        // (x, +1 or -1) where an oriented edge crosses the row's centre line
        let mut xs: Vec<(f64, i32)> = Vec::new();
        for j in 0..height {
            let yc = (y0 + j as i64) as f64 + 0.5;
            xs.clear();
            for e in &edges {
                let (ax, ay, bx, by) = (e[0], e[1], e[2], e[3]);
                // half-open rule so a vertex on the line counts once
                if (ay <= yc) != (by <= yc) {
                    let dir = if ay <= yc { 1 } else { -1 };
                    xs.push((ax + (yc - ay) * (bx - ax) / (by - ay), dir));
                }
            }
            xs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut winding = 0;
            for k in 0..xs.len() {
                winding += xs[k].1;
                if winding == 0 || k + 1 == xs.len() {
                    continue;
                }
                // pixel i is inside when its centre x0 + i + 0.5 is in [a, b)
                let (lo, hi) = (xs[k].0, xs[k + 1].0);
                let a = (lo - 0.5 - x0 as f64).ceil().max(0.0) as usize;
                let b = ((hi - 0.5 - x0 as f64).ceil().max(0.0) as usize).min(width);
                if a < b {
                    m[j * width + a..j * width + b].fill(1);
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{polygon, Contains, Intersects};

    #[test]
    fn mask_matches_point_in_polygon() {
        // vertices off the half-pixel lattice, so no pixel centre lies on an
        // edge up to rounding (where the two tests could disagree)
        let p: Polygon<f64> = polygon![(x: 3.213, y: 1.031), (x: 40.71, y: 5.317), (x: 30.029, y: 33.31), (x: 8.017, y: 25.043), (x: 3.213, y: 1.031)];
        let hole: Polygon<f64> = polygon![(x: 15.011, y: 10.023), (x: 25.037, y: 10.019), (x: 20.013, y: 20.041), (x: 15.011, y: 10.023)];
        let with_hole = Polygon::new(p.exterior().clone(), vec![hole.exterior().clone()]);
        let aoi = Aoi::from_pixel_polygons(MultiPolygon(vec![with_hole.clone()]));
        let m = aoi.mask(-2, -3, 50, 40);
        for j in 0..40 {
            for i in 0..50 {
                let c = geo::Point::new(i as f64 - 2.0 + 0.5, j as f64 - 3.0 + 0.5);
                if with_hole.intersects(&c) && !with_hole.contains(&c) {
                    continue; // a centre exactly on the boundary may go either way
                }
                assert_eq!(m[j * 50 + i] == 1, with_hole.contains(&c), "pixel {i},{j}");
            }
        }
        assert!(aoi.touches(&Rect {
            x: 0,
            y: 0,
            width: 5,
            height: 5
        }));
        assert!(!aoi.touches(&Rect {
            x: 41,
            y: 0,
            width: 5,
            height: 4
        }));
    }

    #[test]
    fn overlapping_polygons_are_a_union_and_holes_stay_holes() {
        // two overlapping features, the second given clockwise, and a
        // polygon with a hole that a third polygon partly fills
        let a: Polygon<f64> = polygon![(x: 2.013, y: 2.017), (x: 30.011, y: 2.031), (x: 30.023, y: 20.007), (x: 2.029, y: 20.041), (x: 2.013, y: 2.017)];
        let b: Polygon<f64> = polygon![(x: 15.019, y: 10.013), (x: 15.037, y: 35.029), (x: 45.041, y: 35.011), (x: 45.007, y: 10.039), (x: 15.019, y: 10.013)];
        let outer = polygon![(x: 50.011, y: 2.003), (x: 90.017, y: 2.021), (x: 90.031, y: 38.013), (x: 50.027, y: 38.037), (x: 50.011, y: 2.003)];
        let hole = polygon![(x: 60.013, y: 10.029), (x: 80.021, y: 10.011), (x: 80.037, y: 30.019), (x: 60.009, y: 30.041), (x: 60.013, y: 10.029)];
        let holed = Polygon::new(outer.exterior().clone(), vec![hole.exterior().clone()]);
        let filler: Polygon<f64> = polygon![(x: 55.007, y: 15.031), (x: 70.029, y: 15.013), (x: 70.011, y: 25.037), (x: 55.033, y: 25.009), (x: 55.007, y: 15.031)];
        let parts = vec![a, b, holed, filler];
        let aoi = Aoi::from_pixel_polygons(MultiPolygon(parts.clone()));
        let m = aoi.mask(0, 0, 100, 45);
        let mut inside = 0;
        for j in 0..45 {
            for i in 0..100 {
                let c = geo::Point::new(i as f64 + 0.5, j as f64 + 0.5);
                if parts.iter().any(|p| p.intersects(&c) && !p.contains(&c)) {
                    continue;
                }
                let want = parts.iter().any(|p| p.contains(&c));
                inside += want as usize;
                assert_eq!(m[j * 100 + i] == 1, want, "pixel {i},{j}");
            }
        }
        // the overlap of a and b and the filled part of the hole are inside
        assert_eq!(m[15 * 100 + 20], 1, "overlap of two features");
        assert_eq!(m[20 * 100 + 62], 1, "hole filled by another feature");
        assert_eq!(m[20 * 100 + 75], 0, "hole");
        assert!(inside > 1000);
    }
}
