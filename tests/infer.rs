//! `rstile infer` end to end: the real binary on generated scenes and, when
//! present, on the real samples in ../shared/data/real.

mod common;
use common::*;
use std::path::Path;

/// Maps `image` with the tiny model and extra flags; returns the map path.
fn infer(dir: &Path, image: &Path, model: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let map = dir.join(format!("{name}.tif"));
    let mut args = vec![
        "infer",
        s(image),
        "-o",
        s(&map),
        "--model",
        s(model),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    map
}

#[test]
fn maps_keep_the_grid_and_carry_the_legend() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    for (w, h) in [(1000, 700), (333, 517), (100, 60), (1, 1)] {
        let scene = synth(t.path(), w, h, 1);
        let image = scene.join("image.tif");
        let png = t.path().join(format!("prev_{w}x{h}.png"));
        let map = infer(
            t.path(),
            &image,
            &m,
            &format!("map_{w}x{h}"),
            &["--preview", s(&png), "--confidence"],
        );
        check_map_files(&map, &image);
        assert!(
            std::fs::metadata(&png).unwrap().len() > 0,
            "preview written"
        );
        let conf = read_map(&t.path().join(format!("map_{w}x{h}.confidence.tif")));
        assert_eq!((conf.width, conf.height), (w, h));
        assert!(conf.data.iter().all(|&v| v <= 100), "confidence in 0..=100");
        let mm = read_map(&map);
        assert!(
            mm.data.iter().all(|&v| v <= 5),
            "a scene without nodata maps every pixel"
        );
    }
}

#[test]
fn map_is_identical_for_any_threads_batch_readers_and_chunk() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 96);
    let scene = synth(t.path(), 1300, 900, 2);
    let image = scene.join("image.tif");
    for blend in ["hann", "crop", "gaussian"] {
        let base = read_map(&infer(
            t.path(),
            &image,
            &m,
            &format!("base_{blend}"),
            &["--blend", blend],
        ))
        .data;
        let variants: [&[&str]; 3] = [
            &["--threads", "1", "--batch", "1", "--readers", "1"],
            &[
                "--threads",
                "2",
                "--batch",
                "7",
                "--readers",
                "3",
                "--chunk",
                "512",
            ],
            &["--batch", "3", "--chunk", "1024", "--gdal-cache", "8"],
        ];
        for (i, v) in variants.iter().enumerate() {
            let mut args = vec!["--blend", blend];
            args.extend_from_slice(v);
            let other = read_map(&infer(
                t.path(),
                &image,
                &m,
                &format!("v{i}_{blend}"),
                &args,
            ))
            .data;
            assert!(base == other, "{blend}: map differs under {v:?}");
        }
    }
}

#[test]
fn blending_differs_from_cropping_only_near_window_borders() {
    // Hann blending must change some pixels against crop (it really blends)
    // yet agree on most of them (it is the same model).
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 600, 400, 4);
    let image = scene.join("image.tif");
    let a = read_map(&infer(
        t.path(),
        &image,
        &m,
        "hann",
        &["--blend", "hann", "--overlap", "0.5"],
    ))
    .data;
    let b = read_map(&infer(
        t.path(),
        &image,
        &m,
        "crop",
        &["--blend", "crop", "--overlap", "0.5"],
    ))
    .data;
    let diff = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(diff > 0, "hann and crop gave the same map");
    assert!(
        diff < a.len() / 2,
        "hann and crop disagree on {diff} of {} px",
        a.len()
    );
}

#[test]
fn u16_and_f32_inputs_give_the_u8_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 700, 500, 5);
    let image = scene.join("image.tif");
    let base = read_map(&infer(t.path(), &image, &m, "u8", &[])).data;
    for ty in ["UInt16", "Int16", "Float32", "Float64"] {
        let conv = t.path().join(format!("img_{ty}.tif"));
        gdal_tool("gdal_translate", &["-q", "-ot", ty, s(&image), s(&conv)]);
        let map = infer(t.path(), &conv, &m, &format!("map_{ty}"), &[]);
        check_map_files(&map, &conv);
        assert!(read_map(&map).data == base, "{ty} input changed the map");
    }
}

/// A copy of the 3-band u8 `image` in `dir` with nodata 0 and the
/// rectangle at `at` of `size` set to it in every band.
fn blanked(
    dir: &Path,
    image: &Path,
    at: (isize, isize),
    size: (usize, usize),
) -> std::path::PathBuf {
    let nd = dir.join("nodata.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-a_nodata", "0", s(image), s(&nd)],
    );
    let ds = gdal::Dataset::open_ex(
        &nd,
        gdal::DatasetOptions {
            open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE,
            ..Default::default()
        },
    )
    .unwrap();
    for b in 1..=3 {
        let mut band = ds.rasterband(b).unwrap();
        let mut buf = gdal::raster::Buffer::new(size, vec![0u8; size.0 * size.1]);
        band.write(at, size, &mut buf).unwrap();
    }
    nd
}

#[test]
fn nodata_becomes_nodata_and_empty_windows_are_skipped() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 640, 480, 6);
    let image = scene.join("image.tif");
    // blank the left 300 columns in every band
    let nd = blanked(t.path(), &image, (0, 0), (300, 480));
    let map = t.path().join("nd_map.tif");
    let out = ok(&infer_argv(&nd, &map, &m, &[]));
    check_map_files(&map, &nd);
    let d = read_map(&map).data;
    for y in 0..480 {
        for x in 0..640 {
            let v = d[y * 640 + x];
            if x < 300 {
                assert_eq!(v, 255, "nodata pixel {x},{y} got class {v}");
            } else {
                assert!(v <= 5, "valid pixel {x},{y} is nodata");
            }
        }
    }
    let skipped: u64 = out
        .split(" skipped as nodata")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no skip count in summary: {out}"));
    assert!(
        skipped >= 4,
        "windows wholly in nodata must be skipped: {out}"
    );
}

#[test]
fn vrt_mosaic_maps_exactly_like_the_single_file() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 900, 700, 8);
    let image = scene.join("image.tif");
    let mut tiles = Vec::new();
    for (i, (x, y, w, h)) in [
        (0, 0, 500, 350),
        (500, 0, 400, 350),
        (0, 350, 500, 350),
        (500, 350, 400, 350),
    ]
    .iter()
    .enumerate()
    {
        let p = t.path().join(format!("tile{i}.tif"));
        gdal_tool(
            "gdal_translate",
            &[
                "-q",
                "-srcwin",
                &x.to_string(),
                &y.to_string(),
                &w.to_string(),
                &h.to_string(),
                s(&image),
                s(&p),
            ],
        );
        tiles.push(p.to_str().unwrap().to_string());
    }
    let vrt = t.path().join("mosaic.vrt");
    let mut args = vec!["-q", s(&vrt)];
    args.extend(tiles.iter().map(|s| s.as_str()));
    gdal_tool("gdalbuildvrt", &args);
    let a = read_map(&infer(t.path(), &image, &m, "single", &[])).data;
    let vmap = infer(t.path(), &vrt, &m, "mosaic", &[]);
    check_map_files(&vmap, &vrt);
    assert!(a == read_map(&vmap).data, "the VRT mosaic gave another map");
}

#[test]
fn cog_with_jpeg_tiles_and_band_selection() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 800, 600, 9);
    let image = scene.join("image.tif");
    let cog = t.path().join("cog.tif");
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-of",
            "COG",
            "-co",
            "COMPRESS=JPEG",
            s(&image),
            s(&cog),
        ],
    );
    let map = infer(t.path(), &cog, &m, "cog_map", &["--bands", "3,2,1"]);
    check_map_files(&map, &cog);
}

#[test]
fn scene_without_georeferencing_warns_and_maps() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 200, 150, 10);
    let plain = t.path().join("plain.tif");
    {
        let src = gdal::Dataset::open(scene.join("image.tif")).unwrap();
        let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
        let dst = drv
            .create_with_band_type::<u8, _>(&plain, 200, 150, 3)
            .unwrap();
        for b in 1..=3 {
            let data = src
                .rasterband(b)
                .unwrap()
                .read_as::<u8>((0, 0), (200, 150), (200, 150), None)
                .unwrap();
            let mut buf = gdal::raster::Buffer::new((200, 150), data.data().to_vec());
            dst.rasterband(b)
                .unwrap()
                .write((0, 0), (200, 150), &mut buf)
                .unwrap();
        }
    }
    let map = t.path().join("plain_map.tif");
    let out = rstile(&infer_argv(&plain, &map, &m, &[]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("no georeferencing"),
        "{err}"
    );
    let mm = read_map(&map);
    assert_eq!((mm.width, mm.height), (200, 150));
    assert!(mm.wkt.is_none());
}

#[test]
fn existing_output_needs_overwrite() {
    let t = tmp();
    let m = model(t.path(), "linear", 3, 64);
    let scene = synth(t.path(), 100, 100, 11);
    let image = scene.join("image.tif");
    let map = infer(t.path(), &image, &m, "once", &[]);
    let before = std::fs::read(&map).unwrap();
    fails(&infer_argv(&image, &map, &m, &[]), "--overwrite");
    assert_eq!(
        before,
        std::fs::read(&map).unwrap(),
        "the existing map was touched"
    );
    infer(t.path(), &image, &m, "once", &["--overwrite"]);
}

#[test]
fn model_family_runs_through_the_pipeline() {
    let t = tmp();
    let scene = synth(t.path(), 300, 260, 12);
    let image = scene.join("image.tif");
    for arch in ["linear", "tiny", "resnet18-fcn", "resnet18-fcn8s"] {
        let m = model(t.path(), arch, 3, 128);
        let info = ok(&["model", "info", s(&m)]);
        assert!(info.contains(arch) && info.contains("building"), "{info}");
        let map = infer(t.path(), &image, &m, &format!("map_{arch}"), &[]);
        check_map_files(&map, &image);
    }
}

// ---- real samples -------------------------------------------------------

fn real_case(file: &str, bands: usize, extra: &[&str]) {
    let Some(real) = real_data(file) else { return };
    let t = tmp();
    let scene = real.join(file);
    let m = model(t.path(), "tiny", bands, 128);
    let map = infer(t.path(), &scene, &m, "real", extra);
    check_map_files(&map, &scene);
    let (_, _, gt, wkt) = grid_of(&scene);
    assert!(gt.is_some() && wkt.is_some(), "{file} is georeferenced");
    qgis_check(&map, t.path());
}

#[test]
fn real_aerial_nl_jpeg_tiles() {
    real_case("aerial_nl/ortho_025m_epsg28992.tif", 3, &[]);
}

#[test]
fn real_naip_4_bands_choose_3() {
    real_case(
        "naip_1m/m_3607824_se_17_1_20160620_sub.tif",
        3,
        &["--bands", "4,1,2"],
    );
}

#[test]
fn real_landsat_with_nodata() {
    let Some(real) = real_data("landsat_rgb") else {
        return;
    };
    real_case("landsat_rgb/RGB.byte.tif", 3, &[]);
    // the nodata collar must be nodata in the map
    let t = tmp();
    let scene = real.join("landsat_rgb/RGB.byte.tif");
    let m = model(t.path(), "tiny", 3, 128);
    let map = infer(t.path(), &scene, &m, "ls", &[]);
    let d = read_map(&map).data;
    assert_eq!(d[0], 255, "the corner is nodata");
    let nd = d.iter().filter(|&&v| v == 255).count();
    assert!(
        nd > d.len() / 10 && nd < d.len() * 9 / 10,
        "nodata share {nd} of {}",
        d.len()
    );
}

#[test]
fn real_spacenet_u16_panchromatic() {
    let Some(real) = real_data("spacenet_atlanta") else {
        return;
    };
    let dir = real.join("spacenet_atlanta");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "tif")
                && gdal::Dataset::open(p).is_ok_and(|d| {
                    d.rasterband(1)
                        .is_ok_and(|b| b.band_type() == gdal::raster::GdalDataType::UInt16)
                })
        })
        .expect("a u16 raster in spacenet_atlanta");
    let rel = format!(
        "spacenet_atlanta/{}",
        file.file_name().unwrap().to_string_lossy()
    );
    real_case(&rel, 1, &[]);
}

// ---- QGIS ----------------------------------------------------------------

fn qgis_available() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import qgis.core"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Opens the map in real QGIS (headless) and checks layer, CRS, renderer,
/// legend and rendered colours.
fn qgis_check(map: &Path, dir: &Path) {
    if !qgis_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "QGIS (python3-qgis) must be installed in CI"
        );
        println!(
            "SKIP QGIS check of {}: python3-qgis is not installed",
            map.display()
        );
        return;
    }
    let ds = gdal::Dataset::open(map).unwrap();
    let epsg = ds.spatial_ref().ok().and_then(|s| s.auth_code().ok());
    let expected = serde_json::json!({
        "epsg": epsg,
        "classes": rstile::classes::ClassTable::isprs().classes,
    });
    let exp = dir.join("expected.json");
    std::fs::write(&exp, expected.to_string()).unwrap();
    let png = dir.join("qgis.png");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/qgis/check_map.py"
        ))
        .args([map, &exp, &png])
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

#[test]
fn qgis_shows_the_generated_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 600, 500, 13);
    let map = infer(t.path(), &scene.join("image.tif"), &m, "q", &[]);
    qgis_check(&map, t.path());
    // the same map as a Cloud Optimized GeoTIFF
    let cog = infer(t.path(), &scene.join("image.tif"), &m, "q_cog", &["--cog"]);
    qgis_check(&cog, t.path());
}

/// A model that fails mid-run (here: fed two bands where it takes three, a
/// plan the library never resolves but a caller can build) stops the run
/// with the model's own error, wrapped in `Error::Model` (not a string, not
/// a "stage stopped" error from another thread), and leaves no output.
#[test]
fn a_failing_model_reports_its_own_error_and_leaves_nothing() {
    use rstile::infer::{self, read::SceneInfo, InferOptions, InferPlan, NoProgress};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 200, 4).join("image.tif");
    let map = t.path().join("map.tif");
    let meta = rstile::model::read_meta(&m).unwrap();
    let opts = InferOptions {
        readers: Some(2),
        ..Default::default()
    };
    let mut plan = InferPlan::resolve(
        SceneInfo::probe(&scene).unwrap(),
        map.clone(),
        &m,
        &meta,
        &opts,
    )
    .unwrap();
    plan.bands = vec![1, 2];
    let net = rstile::model::Model::load(&m, &candle_core::Device::Cpu).unwrap();
    let err = infer::infer(&plan, net, Arc::new(AtomicBool::new(false)), &NoProgress)
        .expect_err("a model fed the wrong band count fails");
    match &err {
        rstile::Error::Model { context, source } => {
            assert!(context.contains("model forward failed"), "{context}");
            // the model's own error, as the model raised it
            assert!(
                source
                    .to_string()
                    .contains("shape (batch, 3, height, width)"),
                "{source:?}"
            );
        }
        other => panic!("expected Error::Model, got {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("map") || n.starts_with(".map"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--mean`/`--std` replace the model's normalisation and `--classes` its
/// legend: the map equals that of a model file holding the same values.
#[test]
fn mean_std_and_classes_flags_override_the_model() {
    let t = tmp();
    let image = synth(t.path(), 300, 200, 31).join("image.tif");
    let classes = common::ISPRS_CLASSES;
    let new_model = |name: &str, extra: &[&str]| {
        let p = t.path().join(name);
        let mut args = vec![
            "model",
            "new",
            "--arch",
            "tiny",
            "--bands",
            "3",
            "--classes",
            classes,
            "-o",
            s(&p),
            "--window",
            "64",
            "--seed",
            "5",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        p
    };
    let plain = new_model("plain.safetensors", &[]);
    let norm = ["--mean", "10,-20,30", "--std", "50,60,70"];
    let normed = new_model("normed.safetensors", &norm);
    let want = read_map(&infer(t.path(), &image, &normed, "want", &[])).data;
    let default = read_map(&infer(t.path(), &image, &plain, "default", &[])).data;
    let got = read_map(&infer(t.path(), &image, &plain, "got", &norm)).data;
    assert!(got == want, "--mean/--std do not give the model file's map");
    assert!(
        default != want,
        "the test cannot tell the normalisations apart"
    );

    // the legend: six renamed classes reach the map's sidecars
    let legend = t.path().join("legend.toml");
    let text = std::fs::read_to_string(classes)
        .unwrap()
        .replace("building", "roof");
    std::fs::write(&legend, text).unwrap();
    let map = infer(
        t.path(),
        &image,
        &plain,
        "legend",
        &["--classes", s(&legend)],
    );
    let qml = std::fs::read_to_string(map.with_extension("qml")).unwrap();
    assert!(qml.contains("roof") && !qml.contains("building"), "{qml}");

    // bad values name the flag and the model, and write nothing
    let out = t.path().join("bad.tif");
    let argv = |extra: &[&'static str]| {
        let mut v = vec![
            "infer".to_string(),
            s(&image).to_string(),
            "-o".into(),
            s(&out).to_string(),
            "--model".into(),
            s(&plain).to_string(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |extra: &[&'static str], needle: &str| {
        let v = argv(extra);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        fails(&v, needle);
        assert!(!out.exists());
    };
    run(&["--mean", "1,2", "--std", "1,1"], "--mean/--std");
    run(&["--mean", "1,2,3"], "--mean and --std go together");
    run(&["--mean", "1,2,3", "--std", "1,0,1"], "--mean/--std");
    let four = t.path().join("four.toml");
    let text = std::fs::read_to_string(classes).unwrap();
    let cut: Vec<&str> = text.split("[[class]]").take(5).collect();
    std::fs::write(&four, cut.join("[[class]]")).unwrap();
    let v = argv(&[]);
    let mut v: Vec<&str> = v.iter().map(String::as_str).collect();
    v.extend(["--classes", s(&four)]);
    fails(&v, "--classes gives 4 classes, the model outputs 6");
}

/// `--profile --json`: every stage's busy and waiting time, consistent
/// with the run's wall time, and the limiting stage named.
#[test]
fn profile_accounts_for_every_stage() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 900, 700, 5).join("image.tif");
    let map = t.path().join("p.tif");
    let out = rstile_output_of(&infer_argv(&scene, &map, &m, &["--profile", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.0.trim()).unwrap();
    let p = &v["profile"];
    let wall = p["pipeline_s"].as_f64().unwrap();
    assert!(wall > 0.0 && wall <= v["seconds"].as_f64().unwrap());
    let stages: Vec<&str> = p["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["dispatch", "read", "model", "stitch", "write"]);
    for s in p["stages"].as_array().unwrap() {
        let busy: f64 = s["busy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_f64().unwrap())
            .sum();
        let threads = s["threads"].as_f64().unwrap();
        let total = busy + s["wait_in_s"].as_f64().unwrap() + s["wait_out_s"].as_f64().unwrap();
        // a stage's threads cannot be busy or waiting longer than they lived
        assert!(
            total <= wall * threads * 1.05 + 0.05,
            "{s}: {total} s of {wall} s"
        );
        assert!(busy > 0.0, "{s}");
    }
    // the model stage's phases are all there and the forward pass counts
    let model = &p["stages"][2]["busy"];
    let forward = model
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b[0] == "forward")
        .unwrap();
    assert!(forward[1].as_f64().unwrap() > 0.0);
    assert!(stages.contains(&p["limiting"].as_str().unwrap()));
    // the table goes to stderr, one line per stage and the verdict
    assert!(out.1.contains("rstile: profile: model"), "{}", out.1);
    assert!(out.1.contains("limited by"), "{}", out.1);
}

fn rstile_output_of(args: &[&str]) -> (String, String) {
    let o = rstile(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// `--halo PX` is the overlap in pixels; `--window auto` picks, among the
/// windows whose memory bound fits the limit, the one that recomputes the
/// least, keeping the halo; it is refused where parts must share a window.
#[test]
fn window_auto_and_halo() {
    let t = tmp();
    let d = t.path();
    let m = model(d, "tiny", 3, 128);
    let scene = synth(d, 1500, 1000, 8).join("image.tif");
    let json = |map: &str, extra: &[&str]| -> serde_json::Value {
        let mut argv = vec!["--json"];
        argv.extend_from_slice(extra);
        let out = ok(&infer_argv(&scene, &d.join(map), &m, &argv));
        serde_json::from_str(out.trim()).unwrap()
    };
    // the halo in pixels is the overlap as a fraction: the same map
    json("frac.tif", &["--window", "256", "--overlap", "0.25"]);
    json("halo.tif", &["--window", "256", "--halo", "64"]);
    assert!(read_map(&d.join("frac.tif")).data == read_map(&d.join("halo.tif")).data);
    // auto: the model's halo (0.25 x 128 px = 32 px), a multiple of 32,
    // fewer window pixels per map pixel than the model's own window
    let default = json("default.tif", &[]);
    let auto = json("auto.tif", &["--window", "auto"]);
    let w = auto["window"].as_u64().unwrap();
    assert_eq!(w % 32, 0);
    assert_eq!((auto["overlap"].as_f64().unwrap() * w as f64).round(), 32.0);
    let (ra, rd) = (
        auto["recompute_factor"].as_f64().unwrap(),
        default["recompute_factor"].as_f64().unwrap(),
    );
    assert!(ra < rd, "auto recomputes {ra}x, the default {rd}x");
    // a tighter limit gives a window that fits it
    let tight = json(
        "tight.tif",
        &[
            "--window",
            "auto",
            "--max-memory",
            "450",
            "--gdal-cache",
            "16",
        ],
    );
    let wt = tight["window"].as_u64().unwrap();
    assert!(tight["memory_bound_bytes"].as_u64().unwrap() <= 450 << 20);
    assert!(wt <= w, "{wt} > {w}");
    check_map_files(&d.join("tight.tif"), &scene);
    fails(
        &infer_argv(
            &scene,
            &d.join("p.tif"),
            &m,
            &["--window", "auto", "--part", "0/2"],
        ),
        "--window auto",
    );
    fails(
        &infer_argv(
            &scene,
            &d.join("p.tif"),
            &m,
            &["--window", "auto", "--overlap", "0.2"],
        ),
        "--halo",
    );
    fails(
        &infer_argv(&scene, &d.join("p.tif"), &m, &["--window", "wide"]),
        "expected a number of pixels or auto",
    );
}

/// `--post device` runs softmax, blending and argmax as candle tensor ops
/// on the model's device (the GPU's path, here on the CPU): the map, its
/// confidence and its probabilities equal the host stitcher's, byte for
/// byte, with nodata, several chunks and every blend.
#[test]
fn post_on_the_device_gives_the_host_s_map() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 700, 530, 9);
    let image = scene.join("image.tif");
    // blank a block, so some windows are skipped and some half valid
    let nd = blanked(t.path(), &image, (10, 300), (200, 150));
    for blend in ["hann", "gaussian", "crop"] {
        let flags = [
            "--blend",
            blend,
            "--chunk",
            "512",
            "--batch",
            "3",
            "--confidence",
            "--probabilities",
        ];
        let host = infer(t.path(), &nd, &m, &format!("host_{blend}"), &flags);
        let mut dev_flags = flags.to_vec();
        dev_flags.extend(["--post", "device"]);
        let dev = infer(t.path(), &nd, &m, &format!("dev_{blend}"), &dev_flags);
        let (a, b) = (read_map(&host).data, read_map(&dev).data);
        assert!(a.contains(&255) && a.iter().any(|&v| v != 255));
        assert!(a == b, "{blend}: the device's map differs from the host's");
        for side in ["confidence", "probabilities"] {
            let side_of = |p: &Path| p.with_extension(format!("{side}.tif"));
            assert!(
                read_bands(&side_of(&host)) == read_bands(&side_of(&dev)),
                "{blend}: the device's {side} differ from the host's"
            );
        }
    }
    // test-time augmentation averages its passes on the host
    fails(
        &infer_argv(
            &nd,
            &t.path().join("x.tif"),
            &m,
            &["--post", "device", "--tta", "flips"],
        ),
        "--post device does not do test-time augmentation",
    );
}
