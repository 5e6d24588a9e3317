//! `--cog`: the map and its side rasters as Cloud Optimized GeoTIFFs, valid
//! by GDAL's own validator, with the same pixels, overviews and legend as
//! the plain map, through resume, parts and merge.
//! Run in release: `cargo test --release --test cog`.

mod common;
use common::*;
use gdal::Metadata;
use std::path::Path;
use std::process::Command;

const VALIDATOR: &str =
    "/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_cloud_optimized_geotiff.py";

/// GDAL's `validate_cloud_optimized_geotiff` (Debian's python3-gdal) on
/// `p`: panics with its report unless it says the file is valid. Without
/// the validator, prints SKIP (CI installs it: scripts/install-deps.sh).
fn assert_valid_cog(p: &Path) {
    if !Path::new(VALIDATOR).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-gdal must be installed in CI"
        );
        println!(
            "SKIP COG validation of {}: python3-gdal is not installed",
            p.display()
        );
        return;
    }
    let out = Command::new("/usr/bin/python3")
        .args([VALIDATOR, s(p)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("is a valid cloud optimized GeoTIFF"),
        "{}: {text}{}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The IMAGE_STRUCTURE metadata item LAYOUT of `p` (COG for the COG driver).
fn layout(p: &Path) -> Option<String> {
    let ds = gdal::Dataset::open(p).unwrap();
    ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE")
}

/// Every band's pixels and every overview's, band after band.
fn all_pixels(p: &Path) -> Vec<Vec<u8>> {
    let ds = gdal::Dataset::open(p).unwrap();
    let mut out = Vec::new();
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).unwrap();
        let (w, h) = band.size();
        out.push(
            band.read_as::<u8>((0, 0), (w, h), (w, h), None)
                .unwrap()
                .data()
                .to_vec(),
        );
        for o in 0..band.overview_count().unwrap() {
            let ov = band.overview(o as usize).unwrap();
            let (w, h) = ov.size();
            out.push(
                ov.read_as::<u8>((0, 0), (w, h), (w, h), None)
                    .unwrap()
                    .data()
                    .to_vec(),
            );
        }
    }
    out
}

/// Band 1's category names, as `gdalinfo -json` reports them.
fn category_names(p: &Path) -> Vec<String> {
    let out = Command::new("gdalinfo")
        .args(["-json", s(p)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["bands"][0]["categories"]
        .as_array()
        .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn cog_maps_are_valid_and_hold_the_plain_map_s_pixels() {
    let t = tmp();
    let d = t.path();
    let m = model(d, "tiny", 3, 128);
    let scene = synth(d, 1300, 1100, 4).join("image.tif");
    let plain = d.join("plain.tif");
    let cog = d.join("cog.tif");
    let sides = ["--quiet", "--confidence", "--probabilities"];
    ok(&infer_argv(&scene, &plain, &m, &sides));
    let mut argv = sides.to_vec();
    argv.push("--cog");
    ok(&infer_argv(&scene, &cog, &m, &argv));
    assert_eq!(layout(&plain), None);
    for (a, b) in [
        (plain.clone(), cog.clone()),
        (d.join("plain.confidence.tif"), d.join("cog.confidence.tif")),
        (
            d.join("plain.probabilities.tif"),
            d.join("cog.probabilities.tif"),
        ),
    ] {
        assert_valid_cog(&b);
        assert_eq!(layout(&b).as_deref(), Some("COG"), "{}", b.display());
        let (pa, pb) = (all_pixels(&a), all_pixels(&b));
        assert!(pb.len() > 1, "{}: no overviews", b.display());
        assert!(
            pa == pb,
            "{}: pixels or overviews differ from {}",
            b.display(),
            a.display()
        );
    }
    // the legend: palette, category names, the QGIS style; no leftovers
    check_map_files(&cog, &scene);
    assert_eq!(category_names(&cog), category_names(&plain));
    assert_eq!(category_names(&cog)[1], "building");
    let left: Vec<String> = names(d)
        .into_iter()
        .filter(|n| n.contains("partial") || n.ends_with(".cog"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // --cog is for a finished map: a part is merged first
    fails(
        &infer_argv(&scene, &d.join("p.tif"), &m, &["--part", "0/2", "--cog"]),
        "--cog",
    );
}

#[test]
fn cog_survives_resume_and_parts_and_merge() {
    let t = tmp();
    let d = t.path();
    let m = model(d, "tiny", 3, 128);
    let scene = synth(d, 1600, 1500, 9).join("image.tif");
    let whole = d.join("whole.tif");
    ok(&infer_argv(&scene, &whole, &m, &["--quiet", "--cog"]));
    assert_valid_cog(&whole);
    let want = all_pixels(&whole);
    // killed mid-run, then resumed: a valid COG with the same pixels
    let resumed = d.join("resumed.tif");
    kill_after_a_band(&scene, &m, &resumed, &["--cog"]);
    ok(&infer_argv(
        &scene,
        &resumed,
        &m,
        &["--quiet", "--chunk", "512", "--cog", "--resume"],
    ));
    assert_valid_cog(&resumed);
    assert!(all_pixels(&resumed) == want, "the resumed COG differs");
    // parts, merged into a COG
    let parts = d.join("parts");
    std::fs::create_dir(&parts).unwrap();
    for i in 0..3 {
        ok(&infer_argv(
            &scene,
            &parts.join("map.tif"),
            &m,
            &["--quiet", "--part", &format!("{i}/3")],
        ));
    }
    let merged = d.join("merged.tif");
    ok(&["merge", s(&parts), "-o", s(&merged), "--cog"]);
    assert_valid_cog(&merged);
    assert_eq!(layout(&merged).as_deref(), Some("COG"));
    assert!(all_pixels(&merged) == want, "the merged COG differs");
    check_map_files(&merged, &scene);
}
