//! Scenes made of several files: a local STAC ItemCollection whose items
//! point at COGs (`--stac FILE --asset NAME`, and GDAL's own
//! `STACIT:"FILE":asset=NAME`), and a Sentinel-2-like stack of bands at
//! two resolutions (`--stack`), each mapped like the equivalent single
//! raster.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Writes a STAC ItemCollection of `items` (id, href, x origin, width) on
/// the synth grid (9 cm, EPSG:32632), `height` rows each.
fn item_collection(path: &Path, items: &[(&str, String, f64, usize)], height: usize) {
    let features: Vec<serde_json::Value> = items
        .iter()
        .map(|(id, href, x0, w)| {
            serde_json::json!({
                "type": "Feature",
                "stac_version": "1.0.0",
                "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
                "id": id,
                "geometry": null,
                "bbox": [0, 0, 0, 0],
                "properties": {
                    "datetime": "2026-06-01T10:00:00Z",
                    "proj:epsg": 32632,
                    "proj:shape": [height, w],
                    "proj:transform": [0.09, 0.0, x0, 0.0, -0.09, 5420000.0]
                },
                "assets": {
                    "image": {
                        "href": href,
                        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data"]
                    },
                    "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}
                },
                "links": []
            })
        })
        .collect();
    let fc = serde_json::json!({"type": "FeatureCollection", "features": features});
    std::fs::write(path, serde_json::to_string_pretty(&fc).unwrap()).unwrap();
}

#[test]
fn stac_items_map_like_the_scene_they_cut() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 1024, 768, 6).join("image.tif");
    let direct = t.path().join("direct.tif");
    ok(&infer_argv(&scene, &direct, &m, &["--quiet"]));
    // two COGs side by side, and the items that point at them by relative
    // hrefs, resolved against the collection's folder
    let cat = t.path().join("catalog");
    std::fs::create_dir(&cat).unwrap();
    for (name, x) in [("west.tif", "0"), ("east.tif", "512")] {
        gdal_tool(
            "gdal_translate",
            &[
                "-q",
                "-of",
                "COG",
                "-srcwin",
                x,
                "0",
                "512",
                "768",
                s(&scene),
                s(&cat.join(name)),
            ],
        );
    }
    let items = cat.join("items.json");
    item_collection(
        &items,
        &[
            ("west", "west.tif".into(), 496000.0, 512),
            ("east", "east.tif".into(), 496000.0 + 512.0 * 0.09, 512),
        ],
        768,
    );
    let via = t.path().join("stac.tif");
    let out = ok(&[
        "infer",
        "--stac",
        s(&items),
        "--asset",
        "image",
        "-o",
        s(&via),
        "--model",
        s(&m),
    ]);
    // the mosaic's grid is the scene's (STACIT computes its geotransform
    // from the items' extents, to about 1e-13)
    let (v, d) = (read_map(&via), read_map(&direct));
    assert_eq!((v.width, v.height), (1024, 768));
    for (a, b) in v.gt.unwrap().iter().zip(d.gt.unwrap()) {
        assert!((a - b).abs() < 1e-9, "{:?} vs {:?}", v.gt, d.gt);
    }
    assert!(v.data == d.data, "{out}");
    // GDAL's own syntax, run from the collection's folder (GDAL 3.6
    // resolves relative hrefs against the working directory)
    let via_gdal = t.path().join("stacit.tif");
    let run = Command::new(bin())
        .current_dir(&cat)
        .args([
            "infer",
            "STACIT:\"items.json\":asset=image",
            "-o",
            s(&via_gdal),
            "--model",
            s(&m),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(read_map(&via_gdal).data == read_map(&direct).data);

    // bad input: no item has the asset; an asset file that is missing
    let bad = t.path().join("bad.tif");
    let e = fails(
        &[
            "infer",
            "--stac",
            s(&items),
            "--asset",
            "visual",
            "-o",
            s(&bad),
            "--model",
            s(&m),
        ],
        "no item has an asset 'visual'",
    );
    assert!(
        e.contains("items.json") && e.contains("image, thumbnail"),
        "{e}"
    );
    std::fs::rename(cat.join("east.tif"), cat.join("gone.tif")).unwrap();
    let e = fails(
        &[
            "infer",
            "--stac",
            s(&items),
            "--asset",
            "image",
            "-o",
            s(&bad),
            "--model",
            s(&m),
        ],
        "does not exist",
    );
    assert!(e.contains("item 'east'") && e.contains("east.tif"), "{e}");
    assert!(!bad.exists());
    std::fs::rename(cat.join("gone.tif"), cat.join("east.tif")).unwrap();
    // an asset file is an input: never the output
    fails(
        &[
            "infer",
            "--stac",
            s(&items),
            "--asset",
            "image",
            "-o",
            s(&cat.join("west.tif")),
            "--model",
            s(&m),
            "--overwrite",
        ],
        "input",
    );
}

#[test]
fn a_stack_of_10_m_and_20_m_bands_maps_like_the_same_vrt() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 900, 700, 8).join("image.tif");
    let d = t.path();
    // "10 m" bands 1 and 2 at the scene's resolution, "20 m" band 3 at half
    let (b1, b2, b3) = (d.join("b1.tif"), d.join("b2.tif"), d.join("b3_20m.tif"));
    gdal_tool("gdal_translate", &["-q", "-b", "1", s(&scene), s(&b1)]);
    gdal_tool("gdal_translate", &["-q", "-b", "2", s(&scene), s(&b2)]);
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-b",
            "3",
            "-tr",
            "0.18",
            "0.18",
            "-r",
            "average",
            s(&scene),
            s(&b3),
        ],
    );
    // the reference: gdalbuildvrt's stack, mapped as a file
    let vrt = d.join("stack.vrt");
    gdal_tool(
        "gdalbuildvrt",
        &[
            "-q",
            "-separate",
            "-resolution",
            "highest",
            s(&vrt),
            s(&b1),
            s(&b2),
            s(&b3),
        ],
    );
    let want = d.join("vrt.tif");
    ok(&infer_argv(&vrt, &want, &m, &["--quiet"]));
    let list = format!("{},{},{}", s(&b1), s(&b2), s(&b3));
    let got = d.join("stack.tif");
    ok(&[
        "infer",
        "--stack",
        &list,
        "-o",
        s(&got),
        "--model",
        s(&m),
        "--quiet",
    ]);
    let (g, w) = (read_map(&got), read_map(&want));
    assert_eq!((g.width, g.height), (900, 700));
    assert_eq!(g.gt, w.gt);
    assert!(g.data == w.data, "the --stack map differs from the VRT's");
    // a two-band file enters with both bands
    let b12 = d.join("b12.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-b", "1", "-b", "2", s(&scene), s(&b12)],
    );
    let got2 = d.join("stack2.tif");
    let list2 = format!("{},{}", s(&b12), s(&b3));
    ok(&[
        "infer",
        "--stack",
        &list2,
        "-o",
        s(&got2),
        "--model",
        s(&m),
        "--quiet",
    ]);
    assert!(
        read_map(&got2).data == w.data,
        "two-band file stacked differently"
    );

    // bad input: a band in another CRS, named with both CRSs; no output
    let wgs = d.join("b2_wgs84.tif");
    gdal_tool("gdalwarp", &["-q", "-t_srs", "EPSG:4326", s(&b2), s(&wgs)]);
    let bad = d.join("bad.tif");
    let list3 = format!("{},{},{}", s(&b1), s(&wgs), s(&b3));
    let e = fails(
        &["infer", "--stack", &list3, "-o", s(&bad), "--model", s(&m)],
        "differs from that of",
    );
    assert!(
        e.contains("b2_wgs84.tif") && e.contains("EPSG:4326") && e.contains("EPSG:32632"),
        "{e}"
    );
    assert!(!bad.exists());
    // and a band file as the output is refused
    fails(
        &[
            "infer",
            "--stack",
            &list,
            "-o",
            s(&b1),
            "--model",
            s(&m),
            "--overwrite",
        ],
        "input",
    );
}
