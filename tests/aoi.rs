//! `--aoi` is the union of the file's polygons, pixel for pixel: the real
//! binary maps a scene with GeoPackage AOIs made by ogr2ogr, and every pixel
//! of the map is checked against the union computed here independently
//! (axis-aligned rectangles in pixel space with edges off the pixel-centre
//! lattice, so a centre is inside a rectangle by plain comparison). Cases:
//! overlapping features in one layer, a MultiPolygon whose parts overlap, a
//! polygon with a hole (outside) that another polygon partly fills (inside
//! there), several layers overlapping across layers, the AOI in another CRS,
//! and a geometry that cannot be reprojected to the scene's CRS.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A rectangle in pixel coordinates: x0, y0, x1, y1.
type Rect = [f64; 4];

/// A polygon: an exterior rectangle and its holes.
struct Poly {
    outer: Rect,
    holes: Vec<Rect>,
    /// Write the exterior clockwise (holes the other way round), as many
    /// files do: the union must not depend on ring orientation.
    clockwise: bool,
}

fn poly(outer: Rect) -> Poly {
    Poly {
        outer,
        holes: Vec::new(),
        clockwise: false,
    }
}

/// A GeoJSON geometry of one or more polygons (a MultiPolygon when more).
enum Geom {
    Polygon(Poly),
    Multi(Vec<Poly>),
}

struct Case {
    t: tempfile::TempDir,
    model: PathBuf,
    scene: PathBuf,
    gt: [f64; 6],
    width: usize,
    height: usize,
}

fn setup(seed: u64) -> Case {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 200, seed).join("image.tif");
    let (width, height, gt, _) = grid_of(&scene);
    let gt = gt.expect("synth scenes are georeferenced");
    assert!(gt[2] == 0.0 && gt[4] == 0.0, "a north-up scene: {gt:?}");
    Case {
        t,
        model,
        scene,
        gt,
        width,
        height,
    }
}

impl Case {
    /// A ring of the rectangle in the scene's CRS, as GeoJSON.
    fn ring(&self, r: &Rect, clockwise: bool) -> String {
        let w = |x: f64, y: f64| (self.gt[0] + x * self.gt[1], self.gt[3] + y * self.gt[5]);
        let [x0, y0, x1, y1] = *r;
        // counter-clockwise in the CRS (y up): GeoJSON's order for exteriors
        let mut pts = [w(x0, y0), w(x0, y1), w(x1, y1), w(x1, y0), w(x0, y0)];
        if clockwise {
            pts.reverse();
        }
        let pts: Vec<String> = pts.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
        format!("[{}]", pts.join(","))
    }

    fn polygon_json(&self, p: &Poly) -> String {
        let mut rings = vec![self.ring(&p.outer, p.clockwise)];
        rings.extend(p.holes.iter().map(|h| self.ring(h, !p.clockwise)));
        format!("[{}]", rings.join(","))
    }

    /// A GeoJSON file in the scene's CRS (EPSG:32632) with these features.
    fn geojson(&self, name: &str, geoms: &[Geom]) -> PathBuf {
        let features: Vec<String> = geoms
            .iter()
            .map(|g| {
                let geometry = match g {
                    Geom::Polygon(p) => {
                        format!(
                            r#"{{"type":"Polygon","coordinates":{}}}"#,
                            self.polygon_json(p)
                        )
                    }
                    Geom::Multi(ps) => {
                        let parts: Vec<String> = ps.iter().map(|p| self.polygon_json(p)).collect();
                        format!(
                            r#"{{"type":"MultiPolygon","coordinates":[{}]}}"#,
                            parts.join(",")
                        )
                    }
                };
                format!(r#"{{"type":"Feature","properties":{{}},"geometry":{geometry}}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"type":"FeatureCollection","crs":{{"type":"name","properties":{{"name":"urn:ogc:def:crs:EPSG::32632"}}}},"features":[{}]}}"#,
            features.join(",")
        );
        let p = self.t.path().join(format!("{name}.geojson"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A GeoPackage with one layer per entry, made by ogr2ogr.
    fn gpkg(&self, name: &str, layers: &[(&str, Vec<Geom>)]) -> PathBuf {
        let out = self.t.path().join(format!("{name}.gpkg"));
        for (i, (layer, geoms)) in layers.iter().enumerate() {
            let src = self.geojson(&format!("{name}_{layer}"), geoms);
            let mut args = vec!["-f", "GPKG"];
            if i > 0 {
                args.push("-update");
            }
            args.extend([s(&out), s(&src), "-nln", layer]);
            gdal_tool("ogr2ogr", &args);
        }
        out
    }

    /// Maps the scene with `--aoi aoi`; returns the map's pixels.
    fn map_with(&self, aoi: &Path, name: &str) -> Vec<u8> {
        let map = self.t.path().join(format!("{name}.tif"));
        let aoi_before = std::fs::read(aoi).unwrap();
        let scene_before = std::fs::read(&self.scene).unwrap();
        ok(&infer_argv(
            &self.scene,
            &map,
            &self.model,
            &["--aoi", s(aoi), "--quiet"],
        ));
        assert_eq!(std::fs::read(aoi).unwrap(), aoi_before, "the AOI changed");
        assert_eq!(
            std::fs::read(&self.scene).unwrap(),
            scene_before,
            "the scene changed"
        );
        check_map_files(&map, &self.scene);
        let m = read_map(&map);
        assert_eq!((m.width, m.height), (self.width, self.height));
        m.data
    }

    /// Checks every pixel of `data`: inside the union of `polys` a class
    /// id, outside nodata (255). Returns the number of inside pixels.
    fn check_union(&self, data: &[u8], polys: &[&Poly]) -> usize {
        let mut wrong = Vec::new();
        let mut inside = 0;
        for j in 0..self.height {
            for i in 0..self.width {
                let want = union_contains(polys, i as f64 + 0.5, j as f64 + 0.5);
                inside += want as usize;
                let got = data[j * self.width + i] != 255;
                if got != want {
                    wrong.push((i, j, want));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} pixels differ from the union, first (x, y, should be inside): {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        inside
    }
}

fn in_rect(r: &Rect, x: f64, y: f64) -> bool {
    x > r[0] && x < r[2] && y > r[1] && y < r[3]
}

/// The union, computed polygon by polygon: a pixel centre is inside when
/// some polygon has it inside its exterior and outside all its holes.
fn union_contains(polys: &[&Poly], x: f64, y: f64) -> bool {
    polys
        .iter()
        .any(|p| in_rect(&p.outer, x, y) && !p.holes.iter().any(|h| in_rect(h, x, y)))
}

// Rectangles with edges at .1 to .4 px: never on a pixel centre.
const A: Rect = [20.3, 15.2, 150.7, 120.4];
const B: Rect = [100.2, 80.3, 260.6, 180.1];
const C: Rect = [130.4, 40.1, 230.3, 100.2];

fn px(c: &Case, data: &[u8], x: usize, y: usize) -> u8 {
    data[y * c.width + x]
}

#[test]
fn overlapping_features_in_one_layer_are_a_union() {
    let c = setup(41);
    let polys = vec![
        poly(A),
        Poly {
            clockwise: true,
            ..poly(B)
        },
        poly(C),
    ];
    let geoms: Vec<Geom> = polys.into_iter().map(Geom::Polygon).collect::<Vec<_>>();
    let aoi = c.gpkg("features", &[("aoi", geoms)]);
    let data = c.map_with(&aoi, "features");
    let ps = [poly(A), poly(B), poly(C)];
    let refs: Vec<&Poly> = ps.iter().collect();
    let inside = c.check_union(&data, &refs);
    assert!(inside > 20_000 && inside < 300 * 200 - 10_000, "{inside}");
    // the overlaps of A and B, and of B and C, are mapped
    assert_ne!(px(&c, &data, 120, 100), 255, "overlap of A and B");
    assert_ne!(px(&c, &data, 200, 90), 255, "overlap of B and C");
    // inside the AOI the map is the full run's
    let full = c.t.path().join("full.tif");
    ok(&infer_argv(&c.scene, &full, &c.model, &["--quiet"]));
    let full = read_map(&full).data;
    for (k, (&a, &f)) in data.iter().zip(&full).enumerate() {
        if a != 255 {
            assert_eq!(a, f, "pixel {k} differs from the full run");
        }
    }
}

#[test]
fn a_multipolygon_whose_parts_overlap_is_a_union() {
    let c = setup(42);
    let parts = vec![
        poly(A),
        poly(B),
        Poly {
            clockwise: true,
            ..poly(C)
        },
    ];
    let aoi = c.gpkg("multi", &[("aoi", vec![Geom::Multi(parts)])]);
    let data = c.map_with(&aoi, "multi");
    let ps = [poly(A), poly(B), poly(C)];
    let refs: Vec<&Poly> = ps.iter().collect();
    c.check_union(&data, &refs);
    assert_ne!(px(&c, &data, 120, 100), 255, "overlap of two parts");
    // A, B and C all cover (140, 90): three parts over one pixel
    assert_ne!(px(&c, &data, 140, 90), 255, "overlap of three parts");
}

#[test]
fn a_hole_is_outside_unless_another_polygon_covers_it() {
    let c = setup(43);
    let holed = || Poly {
        outer: [30.2, 20.4, 270.3, 180.2],
        holes: vec![[80.4, 60.1, 200.2, 140.3]],
        clockwise: false,
    };
    // the hole alone
    let aoi = c.gpkg("hole", &[("aoi", vec![Geom::Polygon(holed())])]);
    let data = c.map_with(&aoi, "hole");
    let h = holed();
    c.check_union(&data, &[&h]);
    assert_eq!(px(&c, &data, 150, 100), 255, "the hole is outside");
    assert_ne!(px(&c, &data, 50, 100), 255, "the ring around it is inside");

    // a second feature covers the left part of the hole (and some of the
    // ring): that part is inside, the rest of the hole stays outside
    let filler = || poly([60.1, 90.2, 140.4, 170.3]);
    let aoi = c.gpkg(
        "hole_filled",
        &[(
            "aoi",
            vec![
                Geom::Polygon(holed()),
                Geom::Polygon(Poly {
                    clockwise: true,
                    ..filler()
                }),
            ],
        )],
    );
    let data = c.map_with(&aoi, "hole_filled");
    let (h, f) = (holed(), filler());
    c.check_union(&data, &[&h, &f]);
    assert_ne!(px(&c, &data, 100, 100), 255, "the filled part of the hole");
    assert_eq!(px(&c, &data, 170, 100), 255, "the rest of the hole");

    // the same as one MultiPolygon: a part filling another part's hole
    let aoi = c.gpkg(
        "hole_multi",
        &[("aoi", vec![Geom::Multi(vec![holed(), filler()])])],
    );
    let data = c.map_with(&aoi, "hole_multi");
    c.check_union(&data, &[&h, &f]);
    assert_ne!(px(&c, &data, 100, 100), 255, "the filled part of the hole");
}

#[test]
fn every_layer_of_a_geopackage_counts_and_layers_overlap() {
    let c = setup(44);
    let aoi = c.gpkg(
        "layers",
        &[
            ("first", vec![Geom::Polygon(poly(A))]),
            (
                "second",
                vec![Geom::Polygon(Poly {
                    clockwise: true,
                    ..poly(B)
                })],
            ),
            ("third", vec![Geom::Polygon(poly(C))]),
        ],
    );
    let info = std::process::Command::new("ogrinfo")
        .args(["-q", s(&aoi)])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&info.stdout);
    for l in ["first", "second", "third"] {
        assert!(
            listing.contains(l),
            "layer {l} in the GeoPackage: {listing}"
        );
    }
    let data = c.map_with(&aoi, "layers");
    let ps = [poly(A), poly(B), poly(C)];
    let refs: Vec<&Poly> = ps.iter().collect();
    c.check_union(&data, &refs);
    assert_ne!(
        px(&c, &data, 120, 100),
        255,
        "overlap of layers first and second"
    );
    assert_ne!(
        px(&c, &data, 200, 90),
        255,
        "overlap of layers second and third"
    );
}

#[test]
fn an_aoi_in_another_crs_is_the_same_union() {
    let c = setup(45);
    let src = c.gpkg(
        "utm",
        &[
            (
                "one",
                vec![
                    Geom::Polygon(poly(A)),
                    Geom::Polygon(Poly {
                        outer: [180.3, 20.2, 290.4, 190.1],
                        holes: vec![[200.2, 60.4, 270.1, 150.3]],
                        clockwise: true,
                    }),
                ],
            ),
            ("two", vec![Geom::Multi(vec![poly(B), poly(C)])]),
        ],
    );
    // every layer to WGS 84 (ogr2ogr keeps the layers): rstile reprojects
    // them back to the scene's UTM zone
    let wgs = c.t.path().join("wgs84.gpkg");
    gdal_tool("ogr2ogr", &["-t_srs", "EPSG:4326", s(&wgs), s(&src)]);
    let info = std::process::Command::new("ogrinfo")
        .args(["-so", "-al", s(&wgs)])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&info.stdout);
    assert!(
        listing.contains("WGS 84") && !listing.contains("UTM"),
        "the AOI is in WGS 84: {listing}"
    );
    let data = c.map_with(&wgs, "wgs84");
    // edges are 0.1 px or more from any pixel centre: a metre-level CRS
    // round trip (nanometres here) moves none of them across a centre
    let holed = Poly {
        outer: [180.3, 20.2, 290.4, 190.1],
        holes: vec![[200.2, 60.4, 270.1, 150.3]],
        clockwise: false,
    };
    let ps = [poly(A), holed, poly(B), poly(C)];
    let refs: Vec<&Poly> = ps.iter().collect();
    c.check_union(&data, &refs);
    // B covers part of the hole
    assert_ne!(px(&c, &data, 210, 120), 255, "B over the hole");
    assert_eq!(px(&c, &data, 265, 120), 255, "the hole");
}

/// The crate's "OGR_G_TransformTo returned error: '6'" is replaced by a
/// line naming the file, both CRSs and PROJ's reason.
#[test]
fn a_geometry_that_cannot_be_reprojected_is_named_with_both_crss() {
    let c = setup(46);
    // longitude and latitude swapped (a place at 120° E, 30° N): the
    // "latitude" of 120° does not exist, and PROJ refuses it
    let json = c.t.path().join("swapped.geojson");
    std::fs::write(
        &json,
        r#"{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:EPSG::4326"}},"features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[30.0,120.0],[30.1,120.0],[30.1,120.1],[30.0,120.1],[30.0,120.0]]]}}]}"#,
    )
    .unwrap();
    let aoi = c.t.path().join("swapped.gpkg");
    gdal_tool("ogr2ogr", &[s(&aoi), s(&json)]);
    let before: Vec<Vec<u8>> = [&aoi, &c.scene, &c.model]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let map = c.t.path().join("map.tif");
    let out = rstile(&infer_argv(&c.scene, &map, &c.model, &["--aoi", s(&aoi)]));
    assert_eq!(out.status.code(), Some(1));
    let err = fails(
        &infer_argv(&c.scene, &map, &c.model, &["--aoi", s(&aoi)]),
        "swapped.gpkg: its geometry (feature 1) cannot be transformed from EPSG:4326 (WGS 84) to the CRS of the scene",
    );
    for word in ["EPSG:32632", "UTM zone 32N", "Invalid latitude"] {
        assert!(err.contains(word), "the error names {word}: {err}");
    }
    for leak in ["OGR_G_TransformTo", "returned error", "CPL error"] {
        assert!(!err.contains(leak), "internals leak ({leak}): {err}");
    }
    let after: Vec<Vec<u8>> = [&aoi, &c.scene, &c.model]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "an input was modified");
    // an engineering (local) CRS that no operation links to the scene's
    let json = c.t.path().join("local.geojson");
    std::fs::write(
        &json,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[10,10],[90,10],[90,90],[10,10]]]}}]}"#,
    )
    .unwrap();
    let local = c.t.path().join("local.gpkg");
    gdal_tool(
        "ogr2ogr",
        &[
            "-a_srs",
            r#"ENGCRS["site grid",EDATUM["site"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],AXIS["y",north,LENGTHUNIT["metre",1]]]"#,
            s(&local),
            s(&json),
        ],
    );
    let err = fails(
        &infer_argv(&c.scene, &map, &c.model, &["--aoi", s(&local)]),
        "local.gpkg: its geometry (feature 1) cannot be transformed from \"site grid\" to the CRS of the scene",
    );
    for word in ["EPSG:32632", "Cannot find coordinate operations"] {
        assert!(err.contains(word), "the error names {word}: {err}");
    }
    assert!(!err.contains("OGR_G_TransformTo"), "{err}");
    // nothing written: no map, no partial, no lock
    let left: Vec<String> = std::fs::read_dir(c.t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("map"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
