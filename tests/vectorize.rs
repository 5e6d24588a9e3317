//! `rstile vectorize`: the real binary on real GeoTIFFs (hand-drawn shapes
//! across block seams, and a map written by `rstile infer`), read back with
//! GDAL/OGR, and the GeoPackage opened in QGIS.

mod common;

use common::*;
use gdal::vector::{Geometry, LayerAccess};
use gdal::Dataset;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const W: usize = 128;
const H: usize = 128;
/// Tile size of the hand-drawn map: 8 tile rows, so 7 seams at
/// `--block-rows 1`.
const TILE: usize = 16;
const PX: f64 = 0.5;

/// One polygon read back.
#[derive(Debug, Clone)]
struct Poly {
    class: i32,
    name: String,
    area: f64,
    geom: Geometry,
}

impl Poly {
    /// Sort and match key: class, envelope and area, rounded.
    fn key(&self) -> (i32, [i64; 4], i64) {
        let e = self.geom.envelope();
        let r = |v: f64| (v * 1000.0).round() as i64;
        (
            self.class,
            [r(e.MinX), r(e.MinY), r(e.MaxX), r(e.MaxY)],
            r(self.area),
        )
    }
}

fn read_polys(path: &Path) -> (Vec<Poly>, Option<String>, String) {
    let ds = Dataset::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert_eq!(ds.layer_count(), 1);
    let mut layer = ds.layer(0).unwrap();
    let name = layer.name();
    let srs = layer.spatial_ref().and_then(|s| s.to_wkt().ok());
    let idx = |n: &str| layer.defn().field_index(n).unwrap();
    let (ci, ni, ai) = (idx("class_id"), idx("class_name"), idx("area_m2"));
    let mut out = Vec::new();
    for f in layer.features() {
        let class = f.field_as_integer(ci).unwrap().unwrap();
        let name = f.field_as_string(ni).unwrap().unwrap();
        let area = f.field_as_double(ai).unwrap().unwrap();
        let geom = f.geometry().unwrap().clone();
        out.push(Poly {
            class,
            name,
            area,
            geom,
        });
    }
    out.sort_by_key(|p| p.key());
    (out, srs, name)
}

fn vectorize(map: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["vectorize", s(map), "-o", s(out)];
    args.extend_from_slice(extra);
    ok(&args)
}

/// Writes a tiled Byte GeoTIFF (EPSG:32632, `PX` m pixels, nodata 255) of
/// `data`, with an ISPRS legend unless `legend` is false.
fn write_map(path: &Path, w: usize, h: usize, data: &[u8], tile: usize, legend: bool) {
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let opts = gdal::cpl::CslStringList::from_iter([
        "TILED=YES".to_string(),
        format!("BLOCKXSIZE={tile}"),
        format!("BLOCKYSIZE={tile}"),
    ]);
    let mut ds = drv
        .create_with_band_type_with_options::<u8, _>(path, w, h, 1, &opts)
        .unwrap();
    ds.set_geo_transform(&[500000.0, PX, 0.0, 5400000.0, 0.0, -PX])
        .unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32632).unwrap())
        .unwrap();
    let mut band = ds.rasterband(1).unwrap();
    band.set_no_data_value(Some(255.0)).unwrap();
    band.write(
        (0, 0),
        (w, h),
        &mut gdal::raster::Buffer::new((w, h), data.to_vec()),
    )
    .unwrap();
    if legend {
        rstile::infer::write::set_legend(&ds, &rstile::classes::ClassTable::isprs(), path).unwrap();
    }
}

/// A 128x128 map whose objects cross the seams between its 16-row tiles in
/// every way that matters (see the comments).
fn drawn() -> Vec<u8> {
    let mut d = vec![2u8; W * H]; // one background region with many holes
    let mut fill = |x0: usize, y0: usize, x1: usize, y1: usize, v: u8| {
        for y in y0..y1 {
            for x in x0..x1 {
                d[y * W + x] = v;
            }
        }
    };
    // nodata in a corner
    fill(0, 0, 30, 5, 255);
    // a square ring of class 1 over three seams, class 3 inside it
    fill(8, 10, 60, 60, 1);
    fill(13, 15, 55, 55, 3);
    // a U open upwards: two pending legs joined only by its bottom
    fill(66, 8, 70, 50, 1);
    fill(86, 8, 90, 50, 1);
    fill(66, 46, 90, 50, 1);
    // an inverted U: one polygon above, two legs below the seams
    fill(66, 70, 95, 74, 1);
    fill(66, 74, 70, 110, 1);
    fill(91, 74, 95, 110, 1);
    // a comb spanning every block, closed alternately at top and bottom:
    // one polygon, complete only at the last block
    for (k, x) in [100usize, 104, 108, 112, 116, 120].iter().enumerate() {
        fill(*x, 2, x + 2, 126, 5);
        if k + 1 < 6 {
            let y = if k % 2 == 0 { 124 } else { 2 };
            fill(*x, y, x + 6, y + 2, 5);
        }
    }
    // a staircase of single pixels touching at corners only, across the
    // seam at row 112: all separate polygons (4-connected)
    for i in 0..28 {
        fill(30 + i, 98 + i, 31 + i, 99 + i, 4);
    }
    // bars ending exactly at a seam and starting right below it, side by
    // side (shared edge: joined) and offset (corner only: not joined)
    fill(10, 62, 30, 64, 0); // rows 62, 63; the seam is at 64
    fill(20, 64, 40, 66, 0); // overlaps [20, 30): joined
    fill(40, 78, 50, 80, 0); // rows 78, 79; seam at 80
    fill(50, 80, 60, 82, 0); // touches at the corner (50, 80): separate
                             // a horizontal bar lying across a seam (rows 95..97, seam at 96)
    fill(2, 95, 60, 97, 0);
    // a checkerboard patch over a seam: every pixel its own polygon
    for y in 110..118 {
        for x in 10..18 {
            if (x + y) % 2 == 0 {
                fill(x, y, x + 1, y + 1, 5);
            }
        }
    }
    d
}

fn pixel_counts(d: &[u8]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for &v in d {
        if v != 255 {
            *m.entry(v as i32).or_insert(0) += 1;
        }
    }
    m
}

fn area_per_class(polys: &[Poly]) -> BTreeMap<i32, f64> {
    let mut m = BTreeMap::new();
    for p in polys {
        *m.entry(p.class).or_insert(0.0) += p.area;
    }
    m
}

fn count_per_class(polys: &[Poly]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for p in polys {
        *m.entry(p.class).or_insert(0) += 1;
    }
    m
}

fn assert_areas_match_pixels(polys: &[Poly], counts: &BTreeMap<i32, usize>, px_area: f64) {
    let areas = area_per_class(polys);
    assert_eq!(
        areas.keys().collect::<Vec<_>>(),
        counts.keys().collect::<Vec<_>>()
    );
    for (c, n) in counts {
        let want = *n as f64 * px_area;
        let got = areas[c];
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1.0),
            "class {c}: polygons cover {got} m², pixels {want} m²"
        );
    }
    for p in polys {
        let g = p.geom.area();
        assert!(
            (g - p.area).abs() <= 1e-9 * g.max(1.0),
            "area_m2 {} vs geometry {g}",
            p.area
        );
        assert!(p.geom.is_valid(), "invalid polygon {:?}", p.key());
    }
}

fn vertices(v: &[Poly]) -> usize {
    v.iter()
        .map(|p| {
            (0..p.geom.geometry_count())
                .map(|r| p.geom.get_geometry(r).point_count())
                .sum::<usize>()
        })
        .sum()
}

/// Same polygons: same count, same keys, and each pair's geometries cover
/// the same ground (symmetric difference of zero area).
fn assert_same_polygons(a: &[Poly], b: &[Poly], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: polygon count");
    // no vertex left where a seam was: exactly as many as in one piece
    assert_eq!(vertices(a), vertices(b), "{what}: vertex count");
    for (p, q) in a.iter().zip(b) {
        assert_eq!(p.key(), q.key(), "{what}");
        assert_eq!(p.name, q.name, "{what}");
        assert!(q.geom.is_valid(), "{what}: invalid polygon {:?}", q.key());
        let d1 = p.geom.difference(&q.geom).map(|g| g.area()).unwrap();
        let d2 = q.geom.difference(&p.geom).map(|g| g.area()).unwrap();
        assert!(
            d1 + d2 < 1e-9,
            "{what}: polygon {:?} differs by {} m²",
            p.key(),
            d1 + d2
        );
    }
}

#[test]
fn drawn_shapes_are_the_same_for_any_block_size_and_cover_their_pixels() {
    let t = tmp();
    let map = t.path().join("drawn.tif");
    let d = drawn();
    write_map(&map, W, H, &d, TILE, true);
    let whole = t.path().join("whole.gpkg");
    let out = vectorize(&map, &whole, &["--block-rows", "100"]);
    assert!(out.contains("in 1 block(s) of 128 rows"), "{out}");
    let (base, srs, layer) = read_polys(&whole);
    assert_eq!(layer, "whole");
    let want_srs = gdal::spatial_ref::SpatialRef::from_epsg(32632).unwrap();
    let got_srs = gdal::spatial_ref::SpatialRef::from_wkt(&srs.unwrap()).unwrap();
    assert_eq!(got_srs.auth_code().unwrap(), 32632);
    assert_eq!(got_srs, want_srs);
    let counts = pixel_counts(&d);
    assert_areas_match_pixels(&base, &counts, PX * PX);
    let n = count_per_class(&base);
    // ring, U, inverted U
    assert_eq!(n[&1], 3, "class 1");
    // the inside of the ring
    assert_eq!(n[&3], 1, "class 3");
    // 28 pixels touching at corners
    assert_eq!(n[&4], 28, "class 4");
    // the comb, and 32 checkerboard pixels
    assert_eq!(n[&5], 1 + 32, "class 5");
    // joined bars, two corner-touching bars, the bar across the seam
    assert_eq!(n[&0], 4, "class 0");
    let names: Vec<&str> = base.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"building") && names.contains(&"car"));

    for rows in ["1", "2", "3", "5"] {
        let p = t.path().join(format!("b{rows}.gpkg"));
        let out = vectorize(&map, &p, &["--block-rows", rows]);
        let blocks = H.div_ceil(TILE * rows.parse::<usize>().unwrap());
        assert!(out.contains(&format!("in {blocks} block(s)")), "{out}");
        let (polys, _, _) = read_polys(&p);
        assert_same_polygons(&base, &polys, &format!("--block-rows {rows}"));
    }
}

/// The comb (one polygon crossing every seam) and the ring's hole are
/// whole, not cut: exactly one class-5 polygon of the comb's size with the
/// comb's envelope, and the ring has one hole.
#[test]
fn objects_crossing_every_seam_are_one_polygon() {
    let t = tmp();
    let map = t.path().join("drawn.tif");
    write_map(&map, W, H, &drawn(), TILE, true);
    let p = t.path().join("small.gpkg");
    vectorize(&map, &p, &["--block-rows", "1"]);
    let (polys, _, _) = read_polys(&p);
    let combs: Vec<&Poly> = polys
        .iter()
        .filter(|p| p.class == 5 && p.area > 1.0)
        .collect();
    assert_eq!(combs.len(), 1);
    let e = combs[0].geom.envelope();
    assert_eq!(
        [e.MinX, e.MaxX, e.MinY, e.MaxY],
        [
            500000.0 + 100.0 * PX,
            500000.0 + 122.0 * PX,
            5400000.0 - 126.0 * PX,
            5400000.0 - 2.0 * PX
        ]
    );
    let ring = polys
        .iter()
        .find(|p| p.class == 1 && p.geom.envelope().MinX == 500000.0 + 8.0 * PX)
        .unwrap();
    assert_eq!(ring.geom.geometry_count(), 2, "outer ring and one hole");
    assert!((ring.area - (52.0 * 50.0 - 42.0 * 40.0) * PX * PX).abs() < 1e-9);
}

#[test]
fn skip_min_area_and_simplify_have_their_effect() {
    let t = tmp();
    let map = t.path().join("drawn.tif");
    let d = drawn();
    write_map(&map, W, H, &d, TILE, true);
    let (base, _, _) = read_polys(&{
        let p = t.path().join("all.gpkg");
        vectorize(&map, &p, &["--block-rows", "1"]);
        p
    });

    let p = t.path().join("skip.gpkg");
    vectorize(&map, &p, &["--skip", "2,4", "--block-rows", "1"]);
    let (polys, _, _) = read_polys(&p);
    let n = count_per_class(&polys);
    assert!(!n.contains_key(&2) && !n.contains_key(&4), "{n:?}");
    let mut want = count_per_class(&base);
    want.remove(&2);
    want.remove(&4);
    assert_eq!(n, want);
    let qml = std::fs::read_to_string(t.path().join("skip.qml")).unwrap();
    assert!(!qml.contains(r#"value="2""#) && qml.contains(r#"value="3""#));

    // single pixels are 0.25 m²: dropped under 0.3 m², the rest stays
    let p = t.path().join("min.gpkg");
    let out = vectorize(&map, &p, &["--min-area", "0.3", "--block-rows", "2"]);
    let (polys, _, _) = read_polys(&p);
    let small = base.iter().filter(|p| p.area < 0.3).count();
    // the staircase, the checkerboard's class-5 pixels and the 18 class-2
    // pixels they enclose (the inner 6x6 of the board, every other one)
    assert_eq!(small, 28 + 32 + 18);
    assert!(
        out.contains(&format!("{small} under --min-area dropped")),
        "{out}"
    );
    assert_eq!(polys.len(), base.len() - small);
    assert!(polys.iter().all(|p| p.area >= 0.3));

    // simplification on a real, ragged map: fewer vertices, similar area
    let model = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 400, 300, 5);
    let real = t.path().join("real.tif");
    ok(&infer_argv(&scene.join("image.tif"), &real, &model, &[]));
    let full = t.path().join("full.gpkg");
    vectorize(&real, &full, &[]);
    let simple = t.path().join("simple.gpkg");
    vectorize(&real, &simple, &["--simplify", "0.3"]);
    let (a, _, _) = read_polys(&full);
    let (b, _, _) = read_polys(&simple);
    let (va, vb) = (vertices(&a), vertices(&b));
    assert!(vb * 10 < va * 8, "simplify: {vb} vertices of {va}");
    assert_eq!(a.len(), b.len(), "topology preserving keeps every polygon");
    let (sa, sb): (f64, f64) = (
        a.iter().map(|p| p.area).sum(),
        b.iter().map(|p| p.area).sum(),
    );
    assert!((sa - sb).abs() < 0.05 * sa, "area {sb} vs {sa}");
    assert!(b.iter().all(|p| p.geom.is_valid()));
}

/// A map written by `rstile infer`, re-tiled to 32 rows so that its ragged
/// regions cross 28 seams: the same polygons in blocks as in one piece,
/// covering exactly the pixels of each class; other formats by extension.
#[test]
fn an_inferred_map_in_many_blocks_and_formats() {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 700, 900, 11);
    let map = t.path().join("map.tif");
    ok(&infer_argv(&scene.join("image.tif"), &map, &model, &[]));
    let small = t.path().join("map32.tif");
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-co",
            "TILED=YES",
            "-co",
            "BLOCKXSIZE=32",
            "-co",
            "BLOCKYSIZE=32",
            s(&map),
            s(&small),
        ],
    );
    let whole = t.path().join("whole.gpkg");
    vectorize(&small, &whole, &["--block-rows", "1000"]);
    let blocks = t.path().join("blocks.gpkg");
    let out = vectorize(&small, &blocks, &["--block-rows", "1"]);
    assert!(out.contains("in 29 block(s) of 32 rows"), "{out}");
    let (a, srs, _) = read_polys(&whole);
    let (b, _, _) = read_polys(&blocks);
    assert_same_polygons(&a, &b, "inferred map, 32-row blocks");
    let m = read_map(&map);
    let px = m.gt.unwrap()[1] * m.gt.unwrap()[5].abs();
    assert_areas_match_pixels(&b, &pixel_counts(&m.data), px);
    let got = gdal::spatial_ref::SpatialRef::from_wkt(&srs.unwrap()).unwrap();
    let want = gdal::spatial_ref::SpatialRef::from_wkt(m.wkt.as_ref().unwrap()).unwrap();
    assert_eq!(got, want, "the map's CRS");

    for (ext, driver) in [
        ("shp", "ESRI Shapefile"),
        ("geojson", "GeoJSON"),
        ("fgb", "FlatGeobuf"),
    ] {
        let p = t.path().join(format!("as_{ext}.{ext}"));
        let out = vectorize(&map, &p, &["--block-rows", "1"]);
        assert!(out.contains(&format!("({driver})")), "{out}");
        let (c, _, _) = read_polys(&p);
        assert_eq!(c.len(), a.len(), "{ext}");
        assert_areas_match_pixels(&c, &pixel_counts(&m.data), px);
        assert!(t.path().join(format!("as_{ext}.qml")).is_file());
    }
    assert!(t.path().join("as_shp.dbf").is_file() && t.path().join("as_shp.prj").is_file());
    assert_no_partials(t.path());
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn assert_no_partials(dir: &Path) {
    for p in listing(dir) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".partial") && !name.ends_with(".lock"),
            "left behind: {name}"
        );
    }
}

#[test]
fn a_map_without_legend_works_with_ids_and_a_warning() {
    let t = tmp();
    let map = t.path().join("bare.tif");
    write_map(&map, W, H, &drawn(), TILE, false);
    let p = t.path().join("bare_v.gpkg");
    let out = rstile(&["vectorize", s(&map), "-o", s(&p)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("rstile: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("bare.tif") && warnings[0].contains("default palette"),
        "{err}"
    );
    let (polys, _, _) = read_polys(&p);
    assert!(polys.iter().all(|p| p.name == p.class.to_string()));
    let qml = std::fs::read_to_string(t.path().join("bare_v.qml")).unwrap();
    // rstile's default palette: #4363d8 for id 3
    assert!(qml.contains(r#"value="3" symbol="3" label="3""#), "{qml}");
    assert!(qml.contains("67,99,216,255"), "{qml}");
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_leaves_nothing() {
    let t = tmp();
    let map = t.path().join("m.tif");
    write_map(&map, W, H, &drawn(), TILE, true);
    let before = listing(t.path());

    let bad = t.path().join("out.xyz");
    fails(&["vectorize", s(&map), "-o", s(&bad)], "out.xyz");
    let e = fails(&["vectorize", s(&map), "-o", s(&bad)], "no OGR driver");
    assert!(e.contains(".xyz"), "{e}");
    fails(
        &["vectorize", s(&map), "-o", s(&t.path().join("noext"))],
        "has no extension",
    );
    fails(
        &[
            "vectorize",
            s(&t.path().join("nope.tif")),
            "-o",
            s(&t.path().join("a.gpkg")),
        ],
        "nope.tif: no such file",
    );
    // the output's style would be the map's own m.qml
    std::fs::write(t.path().join("m.qml"), "raster style").unwrap();
    fails(
        &[
            "vectorize",
            s(&map),
            "-o",
            s(&t.path().join("m.gpkg")),
            "--overwrite",
        ],
        "is the QGIS style of the map",
    );
    std::fs::remove_file(t.path().join("m.qml")).unwrap();
    // not a class map
    let f32map = t.path().join("f.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-ot", "Float32", s(&map), s(&f32map)],
    );
    fails(
        &["vectorize", s(&f32map), "-o", s(&t.path().join("f.gpkg"))],
        "f.tif: band 1 is Float32",
    );
    std::fs::remove_file(&f32map).unwrap();
    let _ = std::fs::remove_file(t.path().join("f.tif.aux.xml"));
    // geographic CRS
    let geo = t.path().join("geo.tif");
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-a_srs",
            "EPSG:4326",
            "-a_ullr",
            "8",
            "49",
            "8.1",
            "48.9",
            s(&map),
            s(&geo),
        ],
    );
    fails(
        &["vectorize", s(&geo), "-o", s(&t.path().join("g.gpkg"))],
        "geo.tif: its CRS (WGS 84) is not projected",
    );
    std::fs::remove_file(&geo).unwrap();
    let _ = std::fs::remove_file(t.path().join("geo.tif.aux.xml"));
    fails(
        &[
            "vectorize",
            s(&map),
            "-o",
            s(&t.path().join("a.gpkg")),
            "--block-rows",
            "0",
        ],
        "--block-rows 0",
    );
    assert_eq!(listing(t.path()), before, "nothing written");

    // an existing output is refused without --overwrite and kept
    let out = t.path().join("o.gpkg");
    std::fs::write(&out, b"mine").unwrap();
    fails(
        &["vectorize", s(&map), "-o", s(&out)],
        "o.gpkg: already exists",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    assert!(!t.path().join("o.qml").exists());
    vectorize(&map, &out, &["--overwrite"]);
    assert!(read_polys(&out).0.len() > 30);
    // never onto the input, even under another name
    let link = t.path().join("link.gpkg");
    std::fs::hard_link(&map, &link).unwrap();
    fails(
        &["vectorize", s(&map), "-o", s(&link), "--overwrite"],
        "link.gpkg: is an input of this run",
    );
    std::fs::remove_file(&link).unwrap();
    assert_no_partials(t.path());
}

/// A run that fails after writing its polygons (here: a shapefile whose
/// `.dbf` cannot be put in place, as a folder of that name is in the way)
/// leaves neither the output nor its style nor its partial folder.
#[test]
fn a_run_failing_after_writing_leaves_nothing() {
    let t = tmp();
    let map = t.path().join("m.tif");
    write_map(&map, W, H, &drawn(), TILE, true);
    let dir = t.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(dir.join("x.dbf")).unwrap();
    let out = dir.join("x.shp");
    fails(
        &["vectorize", s(&map), "-o", s(&out), "--overwrite"],
        "x.dbf: is a directory",
    );
    assert_eq!(listing(&dir), vec![dir.join("x.dbf")]);
}

/// SIGINT during a run: exit status 130, and neither output, style,
/// partial folder nor lock file is left.
#[test]
fn an_interrupted_run_leaves_nothing() {
    let t = tmp();
    let map = t.path().join("noise.tif");
    // class noise: about a polygon per two pixels, 128 blocks of 16 rows
    let (w, h) = (1024, 2048);
    let mut state = 7u64;
    let data: Vec<u8> = (0..w * h)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 6) as u8
        })
        .collect();
    write_map(&map, w, h, &data, 16, true);
    let dir = t.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("noise.gpkg");
    let mut child = std::process::Command::new(bin())
        .args(["vectorize", s(&map), "-o", s(&out), "--block-rows", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.join(".noise.gpkg.partial");
    let t0 = std::time::Instant::now();
    while !partial.exists() {
        assert!(t0.elapsed().as_secs() < 60, "no partial folder appeared");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: signalling the child this test started
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
}

// ---- QGIS ----------------------------------------------------------------

fn qgis_available() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import qgis.core"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Opens the GeoPackage in real QGIS (headless) and checks layer, CRS,
/// feature count, the categorized renderer from the sidecar style, and the
/// rendered colours.
#[test]
fn qgis_shows_the_polygons_with_their_style() {
    if !qgis_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "QGIS (python3-qgis) must be installed in CI"
        );
        println!("SKIP QGIS check of vectorize: python3-qgis is not installed");
        return;
    }
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 600, 500, 13);
    let map = t.path().join("q.tif");
    ok(&infer_argv(&scene.join("image.tif"), &map, &m, &[]));
    let gpkg = t.path().join("q_polygons.gpkg");
    vectorize(&map, &gpkg, &["--block-rows", "1"]);
    let (polys, _, _) = read_polys(&gpkg);
    let ds = Dataset::open(&map).unwrap();
    let epsg = ds.spatial_ref().ok().and_then(|s| s.auth_code().ok());
    let expected = serde_json::json!({
        "epsg": epsg,
        "features": polys.len(),
        "classes": rstile::classes::ClassTable::isprs().classes,
    });
    let exp = t.path().join("expected.json");
    std::fs::write(&exp, expected.to_string()).unwrap();
    let png = t.path().join("qgis_vector.png");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/qgis/check_vector.py"
        ))
        .args([&gpkg, &exp, &png])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "QGIS check failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
