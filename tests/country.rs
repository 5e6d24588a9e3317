//! Country scale: split runs (`--part`, `merge`) and resumable runs
//! (`--resume`) give exactly the pixels of one uninterrupted run.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_map(scene: &Path, model: &Path, map: &Path, extra: &[&str]) -> String {
    let mut args = vec!["infer", s(scene), "-o", s(map), "--model", s(model)];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn parts_merge_into_the_single_run_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 1500, 1300, 21).join("image.tif");
    let single = t.path().join("single.tif");
    run_map(&scene, &m, &single, &["--quiet", "--confidence"]);
    let parts = t.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let pmap = parts.join("map.tif");
    for i in 0..3 {
        run_map(
            &scene,
            &m,
            &pmap,
            &["--quiet", "--confidence", "--part", &format!("{i}/3")],
        );
        assert!(parts.join(format!("map.part-{i}-of-3.tif")).exists());
    }
    let merged = t.path().join("merged.tif");
    let out = ok(&["merge", s(&parts), "-o", s(&merged)]);
    assert!(out.contains("merged"), "{out}");
    check_map_files(&merged, &scene);
    assert!(
        read_map(&single).data == read_map(&merged).data,
        "merged map differs from the single run"
    );
    let c1 = read_map(&t.path().join("single.confidence.tif")).data;
    let c2 = read_map(&t.path().join("merged.confidence.tif")).data;
    assert!(c1 == c2, "merged confidence differs");

    // a missing part is named
    std::fs::rename(
        parts.join("map.part-1-of-3.tif"),
        t.path().join("moved.tif"),
    )
    .unwrap();
    fails(
        &["merge", s(&parts), "-o", s(&t.path().join("m2.tif"))],
        "map.part-1-of-3.tif",
    );
    assert!(!t.path().join("m2.tif").exists());
    // a part of another run is named (--overwrite: the moved part's
    // sidecars are still there, and are never replaced without it)
    run_map(
        &scene,
        &m,
        &pmap,
        &[
            "--quiet",
            "--part",
            "1/3",
            "--window",
            "96",
            "--confidence",
            "--overwrite",
        ],
    );
    fails(
        &["merge", s(&parts), "-o", s(&t.path().join("m3.tif"))],
        "another run",
    );
    assert!(!t.path().join("m3.tif").exists());
}

#[test]
fn part_out_of_range_is_refused() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 600, 22).join("image.tif");
    let map = t.path().join("map.tif");
    fails(
        &infer_argv(&scene, &map, &m, &["--part", "3/3"]),
        "--part 3/3",
    );
    fails(
        &infer_argv(&scene, &map, &m, &["--part", "0/5"]),
        "at most 2 parts",
    );
    fails(
        &infer_argv(&scene, &map, &m, &["--part", "0/0"]),
        "N must be at least 1",
    );
    fails(&infer_argv(&scene, &map, &m, &["--part", "x"]), "--part x");
    let out = Command::new(bin())
        .args(infer_argv(&scene, &map, &m, &["--part", "auto"]))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLURM_ARRAY_TASK_ID"));
}

fn windows_in(summary: &str) -> u64 {
    summary
        .split(" windows,")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no window count in {summary}"))
}

/// Kills a run with SIGKILL after `ms`, then resumes it.
fn kill_after(scene: &Path, model: &Path, map: &Path, ms: u64) {
    let mut child = Command::new(bin())
        .args([
            "infer",
            s(scene),
            "-o",
            s(map),
            "--model",
            s(model),
            "--quiet",
            "--chunk",
            "512",
            "--confidence",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn resume_after_sigkill_gives_the_same_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 2048, 1800, 23).join("image.tif");
    let whole = t.path().join("whole.tif");
    let full = run_map(&scene, &m, &whole, &["--chunk", "512", "--confidence"]);
    let total = windows_in(&full);
    let expected = read_map(&whole).data;
    let expected_conf = read_map(&t.path().join("whole.confidence.tif")).data;
    // kill points spread over the run, from a seeded sequence
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut resumed_less = false;
    for round in 0..4 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 300 + (seed >> 33) % 2500;
        let map: PathBuf = t.path().join(format!("r{round}.tif"));
        kill_after(&scene, &m, &map, ms);
        if map.exists() {
            continue; // finished before the kill
        }
        // and a second kill during the resume itself
        let mut child = Command::new(bin())
            .args(infer_argv(
                &scene,
                &map,
                &m,
                &["--quiet", "--chunk", "512", "--confidence", "--resume"],
            ))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let _ = child.kill();
        let _ = child.wait();
        if map.exists() {
            continue;
        }
        let out = run_map(
            &scene,
            &m,
            &map,
            &["--chunk", "512", "--confidence", "--resume"],
        );
        let done = windows_in(&out);
        assert!(done <= total, "resume computed {done} windows of {total}");
        if done < total {
            resumed_less = true;
        }
        assert!(
            read_map(&map).data == expected,
            "round {round} (kill at {ms} ms): resumed map differs"
        );
        let c = read_map(&t.path().join(format!("r{round}.confidence.tif"))).data;
        assert!(
            c == expected_conf,
            "round {round}: resumed confidence differs"
        );
        check_map_files(&map, &scene);
        assert_eq!(leftovers(&map), Vec::<String>::new(), "round {round}");
    }
    assert!(resumed_less, "no resume skipped finished work");
}

/// The hidden files of an unfinished run of `map` left in its folder.
fn leftovers(map: &Path) -> Vec<String> {
    let name = map.file_name().unwrap().to_str().unwrap();
    let prefix = format!(".{name}.partial");
    let mut v: Vec<String> = std::fs::read_dir(map.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// `touch -r`: gives `path` the modification time of `reference`.
fn same_mtime(path: &Path, reference: &Path) {
    let st = Command::new("touch")
        .args(["-r", s(reference), s(path)])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn resume_refuses_a_replaced_scene() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 2048, 2048, 26).join("image.tif");
    let whole = t.path().join("whole.tif");
    run_map(
        &scene,
        &m,
        &whole,
        &["--quiet", "--chunk", "512", "--confidence"],
    );
    let map = t.path().join("map.tif");
    let journal = kill_after_a_band(&scene, &m, &map, &["--confidence"]);

    // another scene of the same size in its place (rename keeps its mtime)
    let other = synth(&t.path().join("b"), 2048, 2048, 27).join("image.tif");
    let kept = t.path().join("kept.tif");
    std::fs::rename(&scene, &kept).unwrap();
    std::fs::copy(&other, &scene).unwrap();
    let argv = infer_argv(
        &scene,
        &map,
        &m,
        &["--chunk", "512", "--confidence", "--resume"],
    );
    fails(&argv, "the scene changed since the unfinished run");
    assert!(!map.exists() && journal.exists());

    // same size and time, other pixels: only the sampled pixels tell
    let raw = t.path().join("raw.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-co", "COMPRESS=NONE", s(&kept), s(&raw)],
    );
    let raw2 = t.path().join("raw2.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-co", "COMPRESS=NONE", s(&other), s(&raw2)],
    );
    assert_eq!(
        std::fs::metadata(&raw).unwrap().len(),
        std::fs::metadata(&raw2).unwrap().len()
    );
    let map2 = t.path().join("map2.tif");
    kill_after_a_band(&raw, &m, &map2, &[]);
    let stamp = t.path().join("stamp");
    std::fs::write(&stamp, b"").unwrap();
    same_mtime(&stamp, &raw);
    std::fs::copy(&raw2, &raw).unwrap();
    same_mtime(&raw, &stamp);
    fails(
        &infer_argv(&raw, &map2, &m, &["--chunk", "512", "--resume"]),
        "its pixels differ",
    );
    assert!(!map2.exists());

    // the real scene back, untouched: the resume continues and gives the
    // uninterrupted run's pixels, leaving no partial files behind
    std::fs::rename(&kept, &scene).unwrap();
    let out = rstile(&infer_argv(
        &scene,
        &map,
        &m,
        &["--chunk", "512", "--confidence", "--resume"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("continued the unfinished run"), "{err}");
    assert!(
        read_map(&map).data == read_map(&whole).data,
        "resumed map differs"
    );
    assert!(
        read_map(&t.path().join("map.confidence.tif")).data
            == read_map(&t.path().join("whole.confidence.tif")).data
    );
    assert_eq!(leftovers(&map), Vec::<String>::new());
}

#[test]
fn resume_checks_the_partial_file_against_the_journal() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 2048, 2048, 28).join("image.tif");
    let whole = t.path().join("whole.tif");
    run_map(&scene, &m, &whole, &["--quiet", "--chunk", "512"]);
    let map = t.path().join("map.tif");
    let journal = kill_after_a_band(&scene, &m, &map, &[]);
    // claim more rows than were written
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    let rows = j["rows_done"].as_object_mut().unwrap();
    for v in rows.values_mut() {
        *v = serde_json::json!((v.as_u64().unwrap() + 512).min(2048));
    }
    std::fs::write(&journal, j.to_string()).unwrap();
    let out = rstile(&infer_argv(
        &scene,
        &map,
        &m,
        &["--chunk", "512", "--resume"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // one warning line says why
    assert!(
        err.lines().any(|l| l.starts_with("rstile: warning: ")
            && l.contains("do not match the journal's checksum")
            && l.contains("starting over")),
        "{err}"
    );
    // started over: the whole map, no rows of nodata
    assert!(read_map(&map).data == read_map(&whole).data, "map differs");
    assert_eq!(leftovers(&map), Vec::<String>::new());
}

#[test]
fn resume_with_other_settings_is_refused() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 2048, 2048, 24).join("image.tif");
    let map = t.path().join("map.tif");
    let journal = kill_after_a_band(&scene, &m, &map, &[]);
    fails(
        &infer_argv(
            &scene,
            &map,
            &m,
            &["--chunk", "512", "--resume", "--window", "64"],
        ),
        "other settings: window 128 (now 64)",
    );
    let other = model(t.path(), "linear", 3, 128);
    fails(
        &infer_argv(&scene, &map, &other, &["--chunk", "512", "--resume"]),
        "other settings",
    );
    assert!(!map.exists());
    // the unfinished run survives the refusals and still resumes
    run_map(&scene, &m, &map, &["--quiet", "--chunk", "512", "--resume"]);
    assert!(map.exists() && !journal.exists());
}

fn geojson_polygon(path: &Path, epsg: u32, ring: &[(f64, f64)]) {
    let coords: Vec<String> = ring.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
    let text = format!(
        r#"{{"type":"FeatureCollection","crs":{{"type":"name","properties":{{"name":"urn:ogc:def:crs:EPSG::{epsg}"}}}},"features":[{{"type":"Feature","properties":{{}},"geometry":{{"type":"Polygon","coordinates":[[{}]]}}}}]}}"#,
        coords.join(",")
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn aoi_in_another_crs_limits_reads_and_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 1500, 1200, 25).join("image.tif");
    let (_, _, gt, _) = grid_of(&scene);
    let gt = gt.unwrap();
    // a triangle in pixel space, written in the scene's CRS, then reprojected
    // to WGS 84 by ogr2ogr so that rstile has to reproject it back
    let px = [(100.0, 80.0), (700.0, 120.0), (300.0, 600.0), (100.0, 80.0)];
    let ring: Vec<(f64, f64)> = px
        .iter()
        .map(|&(x, y)| (gt[0] + x * gt[1], gt[3] + y * gt[5]))
        .collect();
    let utm = t.path().join("aoi_utm.geojson");
    geojson_polygon(&utm, 32632, &ring);
    let wgs = t.path().join("aoi_wgs84.gpkg");
    gdal_tool("ogr2ogr", &["-t_srs", "EPSG:4326", s(&wgs), s(&utm)]);

    let full = t.path().join("full.tif");
    run_map(&scene, &m, &full, &["--quiet"]);
    let cut = t.path().join("cut.tif");
    let out = run_map(&scene, &m, &cut, &["--aoi", s(&wgs)]);
    let outside: u64 = out
        .split(" skipped outside the AOI")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no AOI count: {out}"));
    assert!(
        outside > windows_in(&out) / 2,
        "most windows miss the AOI: {out}"
    );
    check_map_files(&cut, &scene);
    let (a, b) = (read_map(&full).data, read_map(&cut).data);
    let inside = |x: f64, y: f64| {
        // the triangle, with a margin of 2 px for reprojection round-off
        let tri = geo::Polygon::new(geo::LineString::from(px.to_vec()), vec![]);
        use geo::{Contains, Distance, Euclidean};
        let p = geo::Point::new(x, y);
        if Euclidean::distance(&p, tri.exterior()) < 2.0 {
            None
        } else {
            Some(tri.contains(&p))
        }
    };
    let (mut n_in, mut n_out) = (0, 0);
    for y in 0..1200 {
        for x in 0..1500 {
            let i = y * 1500 + x;
            match inside(x as f64 + 0.5, y as f64 + 0.5) {
                Some(true) => {
                    n_in += 1;
                    assert_eq!(b[i], a[i], "inside pixel {x},{y} differs from the full map");
                }
                Some(false) => {
                    n_out += 1;
                    assert_eq!(b[i], 255, "outside pixel {x},{y} is not nodata");
                }
                None => {}
            }
        }
    }
    assert!(n_in > 100_000 && n_out > 100_000);
}

#[test]
fn bad_aoi_files_are_refused() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 200, 26).join("image.tif");
    let map = t.path().join("map.tif");
    let pts = t.path().join("points.geojson");
    std::fs::write(
        &pts,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[9.0,48.9]}}]}"#,
    )
    .unwrap();
    fails(
        &infer_argv(&scene, &map, &m, &["--aoi", s(&pts)]),
        "points.geojson: is not a polygon file",
    );
    let far = t.path().join("far.geojson");
    geojson_polygon(
        &far,
        4326,
        &[(100.0, 10.0), (101.0, 10.0), (101.0, 11.0), (100.0, 10.0)],
    );
    fails(
        &infer_argv(&scene, &map, &m, &["--aoi", s(&far)]),
        "far.geojson: does not overlap",
    );
    let txt = t.path().join("aoi.txt");
    std::fs::write(&txt, "hello").unwrap();
    fails(
        &infer_argv(&scene, &map, &m, &["--aoi", s(&txt)]),
        "aoi.txt",
    );
    assert!(!map.exists());
}

#[test]
fn many_scenes_go_on_past_a_failure() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let a = synth(t.path(), 300, 200, 27).join("image.tif");
    let tiles = t.path().join("tiles");
    std::fs::create_dir(&tiles).unwrap();
    std::fs::copy(&a, tiles.join("a.tif")).unwrap();
    std::fs::write(tiles.join("b.tif"), "not a raster").unwrap();
    std::fs::copy(
        synth(t.path(), 200, 260, 28).join("image.tif"),
        tiles.join("c.tif"),
    )
    .unwrap();
    let maps = t.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    let out = rstile(&[
        "infer",
        s(&tiles.join("a.tif")),
        s(&tiles.join("b.tif")),
        s(&tiles.join("c.tif")),
        "--out-dir",
        s(&maps),
        "--model",
        s(&m),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed scene must fail the run");
    assert!(err.contains("b.tif: not a raster"), "{err}");
    assert!(
        err.lines().last().unwrap().contains("1 of 3 scenes failed"),
        "{err}"
    );
    check_map_files(&maps.join("a.tif"), &tiles.join("a.tif"));
    check_map_files(&maps.join("c.tif"), &tiles.join("c.tif"));
    assert!(!maps.join("b.tif").exists());
}

/// Cuts `image` into `nx x ny` GeoTIFF tiles and returns their paths.
fn cut_tiles(image: &Path, dir: &Path, nx: usize, ny: usize) -> Vec<PathBuf> {
    let src = gdal::Dataset::open(image).unwrap();
    let (w, h) = src.raster_size();
    let gt = src.geo_transform().unwrap();
    let srs = src.spatial_ref().unwrap();
    let (tw, th) = (w / nx, h / ny);
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let bands: Vec<Vec<u8>> = (1..=3)
        .map(|b| {
            src.rasterband(b)
                .unwrap()
                .read_as::<u8>((0, 0), (w, h), (w, h), None)
                .unwrap()
                .data()
                .to_vec()
        })
        .collect();
    let mut out = Vec::new();
    for ty in 0..ny {
        for tx in 0..nx {
            let p = dir.join(format!("t_{tx:03}_{ty:03}.tif"));
            let mut ds = drv.create_with_band_type::<u8, _>(&p, tw, th, 3).unwrap();
            let mut tgt = gt;
            tgt[0] += (tx * tw) as f64 * gt[1];
            tgt[3] += (ty * th) as f64 * gt[5];
            ds.set_geo_transform(&tgt).unwrap();
            ds.set_spatial_ref(&srs).unwrap();
            for (b, data) in bands.iter().enumerate() {
                let mut tile = Vec::with_capacity(tw * th);
                for y in 0..th {
                    let row = (ty * th + y) * w + tx * tw;
                    tile.extend_from_slice(&data[row..row + tw]);
                }
                let mut buf = gdal::raster::Buffer::new((tw, th), tile);
                ds.rasterband(b + 1)
                    .unwrap()
                    .write((0, 0), (tw, th), &mut buf)
                    .unwrap();
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn vrt_of_a_thousand_files_maps_like_one_file_with_bounded_handles() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 2560, 1600, 29).join("image.tif");
    let dir = t.path().join("tiles");
    std::fs::create_dir(&dir).unwrap();
    let tiles = cut_tiles(&scene, &dir, 40, 25);
    assert_eq!(tiles.len(), 1000);
    let list = t.path().join("list.txt");
    std::fs::write(
        &list,
        tiles
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let vrt = t.path().join("mosaic.vrt");
    gdal_tool(
        "gdalbuildvrt",
        &["-q", "-input_file_list", s(&list), s(&vrt)],
    );
    let single = t.path().join("single.tif");
    run_map(&scene, &m, &single, &["--quiet"]);
    let vmap = t.path().join("vrt_map.tif");
    let mut child = Command::new(bin())
        .args(infer_argv(&vrt, &vmap, &m, &["--quiet"]))
        .spawn()
        .unwrap();
    let fd_dir = format!("/proc/{}/fd", child.id());
    let mut max_fds = 0;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        if let Ok(rd) = std::fs::read_dir(&fd_dir) {
            max_fds = max_fds.max(rd.count());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("open file handles peaked at {max_fds} for a VRT of 1000 files");
    assert!(max_fds > 0 && max_fds < 300, "open file handles: {max_fds}");
    check_map_files(&vmap, &vrt);
    assert!(
        read_map(&single).data == read_map(&vmap).data,
        "the 1000-file VRT gave another map"
    );
}

/// SIGTERM during `merge`, in its rows or its overviews, ends it with exit
/// 130 and leaves nothing behind: no map, no hidden partial files.
#[test]
fn merge_stops_on_sigterm_and_leaves_nothing() {
    let t = tmp();
    let m = model(t.path(), "linear", 3, 256);
    let scene = synth(t.path(), 6000, 6000, 29).join("image.tif");
    let parts = t.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let pmap = parts.join("map.tif");
    for i in 0..2 {
        run_map(
            &scene,
            &m,
            &pmap,
            &["--quiet", "--confidence", "--part", &format!("{i}/2")],
        );
    }
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let merged = out_dir.join("merged.tif");
    let mut stopped = 0;
    for ms in [300u64, 1500, 3000, 3800] {
        let child = Command::new(bin())
            .args([
                "merge",
                s(&parts),
                "-o",
                s(&merged),
                "--quiet",
                "--overwrite",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        sigterm(child.id());
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(130) => {
                stopped += 1;
                let left: Vec<String> = std::fs::read_dir(&out_dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .collect();
                assert!(left.is_empty(), "stopped at {ms} ms, left {left:?}");
            }
            Some(0) => check_map_files(&merged, &scene),
            c => panic!(
                "merge ended with {c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        for e in std::fs::read_dir(&out_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    assert!(stopped > 0, "no merge was stopped");
}

fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
