//! SIGTERM while overviews are built ends the run promptly and keeps the
//! partial map and its journal for `--resume`, as a SIGTERM during
//! inference does (issue 13 item 14: overview building ignored the stop
//! flag, and a country-sized pyramid takes minutes).
//!
//! The map's own overviews are filled while its bands are written (issue
//! 16 §4); the confidence raster's `AVERAGE` overviews are still built by
//! GDAL at the end, and that is where the signal lands. The scene is a
//! sparse 16000 x 16000 GeoTIFF with a small AOI: inference ends within a
//! second or two (almost every window lies outside the AOI), and then GDAL
//! spends over a second on the confidence overviews of 256 Mpx. The
//! journal tells when every row is written, that is, when the overviews
//! begin; the signal is sent then.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIDE: usize = 16000;

/// Whether the journal says that every row of every column chunk is done:
/// the chunks it lists cover the width, and each is done to the last row.
fn all_rows_done(journal: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return false;
    };
    let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let (Some(rows), Some(ends)) = (
        j.get("rows_done").and_then(|r| r.as_object()),
        j.get("chunk_end").and_then(|r| r.as_object()),
    ) else {
        return false;
    };
    let mut chunks: Vec<(usize, usize)> = ends
        .iter()
        .filter_map(|(x0, x1)| Some((x0.parse().ok()?, x1.as_u64()? as usize)))
        .collect();
    chunks.sort();
    let mut x = 0;
    for (x0, x1) in chunks {
        if x0 != x {
            return false;
        }
        x = x1;
    }
    x == SIDE
        && rows
            .values()
            .all(|v| v.as_u64().is_some_and(|y| y as usize >= SIDE))
}

#[test]
fn sigterm_while_overviews_are_built_keeps_the_run_for_resume() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = t.path().join("big.tif");
    gdal_tool(
        "gdal_create",
        &[
            "-of",
            "GTiff",
            "-outsize",
            "16000",
            "16000",
            "-bands",
            "3",
            "-ot",
            "Byte",
            "-a_srs",
            "EPSG:32632",
            "-a_ullr",
            "496000",
            "5420000",
            "504000",
            "5412000",
            "-a_nodata",
            "0",
            "-co",
            "TILED=YES",
            "-co",
            "SPARSE_OK=TRUE",
            s(&scene),
        ],
    );
    // pixels in the top left corner (the rest stays nodata)
    {
        let ds = gdal::Dataset::open_ex(
            &scene,
            gdal::DatasetOptions {
                open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE
                    | gdal::GdalOpenFlags::GDAL_OF_RASTER,
                ..Default::default()
            },
        )
        .unwrap();
        for b in 1..=3 {
            let data: Vec<u8> = (0..128 * 128).map(|i| (40 * b + i % 97) as u8).collect();
            let mut buf = gdal::raster::Buffer::new((128, 128), data);
            ds.rasterband(b)
                .unwrap()
                .write((0, 0), (128, 128), &mut buf)
                .unwrap();
        }
    }
    // 60 x 60 px in that corner (0.5 m pixels)
    let aoi = t.path().join("aoi.geojson");
    std::fs::write(
        &aoi,
        r#"{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:EPSG::32632"}},"features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[496010,5419990],[496040,5419990],[496040,5419960],[496010,5419960],[496010,5419990]]]}}]}"#,
    )
    .unwrap();
    let scene_before = std::fs::read(&scene).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let map = out.join("map.tif");
    let journal = out.join(".map.tif.partial.resume.json");
    let argv = infer_argv(
        &scene,
        &map,
        &m,
        &["--aoi", s(&aoi), "--quiet", "--confidence"],
    );

    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(&argv)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rows_at = None;
    while child.try_wait().unwrap().is_none() {
        if all_rows_done(&journal) {
            rows_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rows_at = rows_at.expect("the run ended before every row was written");
    // the last band's journal entry comes a moment before inference hands
    // over to the overviews (a signal then stops the inference loop, which
    // always worked): wait into the overview phase (1.5 s on 2 cores)
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished within 0.2 s of its last row: the overviews are too quick for this test"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let signalled = Instant::now();
    let o = child.wait_with_output().unwrap();
    let waited = signalled.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    println!(
        "every row written at {:.2} s, SIGTERM 0.2 s later; exit after {:.3} s more",
        rows_at.as_secs_f64(),
        waited.as_secs_f64()
    );
    // without the stop flag in the overview loop, the run finished the
    // pyramid and exited 0 with a map
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("map.tif: stopped; run the same command with --resume to continue")
            && err.contains("interrupted"),
        "{err}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "took {waited:?} to stop after SIGTERM"
    );
    assert!(!map.exists(), "a map after SIGTERM");
    assert!(journal.exists(), "the journal is kept for --resume");
    let partial = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .any(|n| {
            n.starts_with(".map.tif.partial.") && !n.ends_with(".json") && !n.ends_with(".xml")
        });
    assert!(partial, "the partial map is kept");

    // --resume has no pixels left to compute: it builds the overviews and
    // finishes, leaving nothing temporary
    let mut resume = argv.clone();
    resume.push("--resume");
    let o = rstile(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = gdal::Dataset::open(&map).unwrap();
    assert_eq!(ds.raster_size(), (SIDE, SIDE));
    let band = ds.rasterband(1).unwrap();
    assert!(band.overview_count().unwrap() >= 6, "the full pyramid");
    let corner = band
        .read_as::<u8>((0, 0), (128, 128), (128, 128), None)
        .unwrap();
    let inside = corner.data()[30 * 128 + 50];
    assert!(inside <= 5, "an AOI pixel holds a class: {inside}");
    assert_eq!(corner.data()[100 * 128 + 100], 255, "outside the AOI");
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert_eq!(std::fs::read(&scene).unwrap(), scene_before);
}
