//! Inputs that were accepted but misread (issue 13, items 9 and 10): the
//! real binary on rasters made here, one test per case. Each asserts the
//! exit status, the one-line message and its words, and what is left on
//! disk. Run in release: `cargo test --release --test inputs`.

mod common;
use common::*;
use gdal::raster::{Buffer, ColorEntry, ColorTable, PaletteInterpretation};
use gdal::Dataset;
use std::path::{Path, PathBuf};
use std::process::Output;

fn classes_toml() -> &'static str {
    common::ISPRS_CLASSES
}

/// A training config: `train` (image, label) pairs and `val` pairs, the
/// tiny model, 4 windows of `crop` px per epoch, one epoch.
fn train_config(train: (&Path, &Path), val: (&Path, &Path), run: &Path, crop: usize) -> String {
    format!(
        "[model]\narch = \"tiny\"\nclasses = \"{}\"\nbands = [1, 2, 3]\n\n\
         [data]\nsamples_per_epoch = 4\nval_window = 64\nworkers = 1\n\
         [[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"train\"\n\
         [[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"val\"\n\n\
         [train]\nepochs = 1\nbatch = 2\ncrop = {crop}\nlr = 0.01\nout_dir = \"{}\"\n",
        classes_toml(),
        train.0.display(),
        train.1.display(),
        val.0.display(),
        val.1.display(),
        run.display()
    )
}

/// Writes a config file and runs `rstile train` on it.
fn train(dir: &Path, name: &str, text: &str) -> (PathBuf, Output) {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    let out = rstile(&["train", "--config", s(&cfg)]);
    (cfg, out)
}

/// A one-band u8 label raster of `w` x `h` px on the grid of `like`, with
/// nodata 255, whose pixel (x, y) is `f(x, y)`.
fn label_raster(path: &Path, like: &Path, f: impl Fn(usize, usize) -> u8) {
    let src = Dataset::open(like).unwrap();
    let (w, h) = src.raster_size();
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = drv.create_with_band_type::<u8, _>(path, w, h, 1).unwrap();
    if let Ok(gt) = src.geo_transform() {
        ds.set_geo_transform(&gt).unwrap();
    }
    let mut band = ds.rasterband(1).unwrap();
    band.set_no_data_value(Some(255.0)).unwrap();
    let data: Vec<u8> = (0..w * h).map(|i| f(i % w, i / w)).collect();
    band.write((0, 0), (w, h), &mut Buffer::new((w, h), data))
        .unwrap();
}

// ---------------------------------------------------------------- item 9

/// A training crop larger than a training scene (it trained with loss
/// 0.0000 and exit 0) is refused, naming the config, the scene and both
/// sizes, before the run directory exists.
#[test]
fn a_crop_larger_than_the_training_scene_is_refused() {
    let t = tmp();
    let a = synth(t.path(), 64, 48, 1);
    let v = synth(t.path(), 64, 64, 2);
    let run = t.path().join("run");
    let text = train_config(
        (&a.join("image.tif"), &a.join("gt.tif")),
        (&v.join("image.tif"), &v.join("gt.tif")),
        &run,
        96,
    );
    let cfg = t.path().join("big_crop.toml");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(
        &["train", "--config", s(&cfg)],
        "train.crop 96 px is larger than the training scene",
    );
    assert!(err.contains("big_crop.toml"), "names the config: {err}");
    assert!(
        err.contains(&format!("{} (64x48 px)", a.join("image.tif").display())),
        "names the scene and its size: {err}"
    );
    assert!(err.contains("at most 48 px"), "{err}");
    assert!(!run.exists(), "the run directory was created");
    // a crop that fits trains
    let text = train_config(
        (&a.join("image.tif"), &a.join("gt.tif")),
        (&v.join("image.tif"), &v.join("gt.tif")),
        &run,
        48,
    );
    let (_, out) = train(t.path(), "fits", &text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("best.safetensors").exists());
}

/// A label raster in which no pixel is a class id (all nodata, or values
/// of another table) is refused before training, naming the label file.
#[test]
fn a_label_raster_without_a_single_class_id_is_refused() {
    let t = tmp();
    let a = synth(t.path(), 96, 96, 1);
    let v = synth(t.path(), 64, 64, 2);
    let image = a.join("image.tif");
    for (name, value) in [("nodata", 255u8), ("other_ids", 17)] {
        let label = t.path().join(format!("{name}.tif"));
        label_raster(&label, &image, |_, _| value);
        let run = t.path().join(format!("run_{name}"));
        let text = train_config(
            (&image, &label),
            (&v.join("image.tif"), &v.join("gt.tif")),
            &run,
            32,
        );
        let cfg = t.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let err = fails(
            &["train", "--config", s(&cfg)],
            "no pixel of the label raster is a class id of the class table (0, 1, 2, 3, 4, 5)",
        );
        assert!(
            err.contains(&format!("error: {}: ", label.display())),
            "names the label raster first: {err}"
        );
        assert!(!run.exists(), "{name}: the run directory was created");
    }
}

/// Labels so sparse that no training window of an epoch holds one (one
/// labelled pixel in a corner the windows miss): the run fails naming the
/// label file instead of training with loss 0 and exit 0, and leaves no
/// model behind.
#[test]
fn an_epoch_whose_windows_hold_no_labelled_pixel_fails() {
    let t = tmp();
    let a = synth(t.path(), 128, 128, 1);
    let v = synth(t.path(), 64, 64, 2);
    let image = a.join("image.tif");
    let label = t.path().join("sparse.tif");
    label_raster(
        &label,
        &image,
        |x, y| if (x, y) == (127, 127) { 1 } else { 255 },
    );
    let run = t.path().join("run");
    let text = train_config(
        (&image, &label),
        (&v.join("image.tif"), &v.join("gt.tif")),
        &run,
        32,
    );
    let cfg = t.path().join("sparse.toml");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(
        &["train", "--config", s(&cfg)],
        "none of the 4 training windows of epoch 1 holds a labelled pixel",
    );
    assert!(
        err.contains(&format!("error: {}: ", label.display())),
        "names the label raster: {err}"
    );
    assert!(err.contains("sparse.toml"), "{err}");
    for f in ["last.safetensors", "best.safetensors", "state.json"] {
        assert!(!run.join(f).exists(), "{f} was written");
    }
}

/// Every epoch reports the share of ignored label pixels, on its line and
/// in metrics.csv / metrics.jsonl; a label raster with its left half
/// nodata shows a much larger share than the full labels.
#[test]
fn each_epoch_reports_the_share_of_ignored_label_pixels() {
    let t = tmp();
    let a = synth(t.path(), 128, 128, 1);
    let v = synth(t.path(), 64, 64, 2);
    let image = a.join("image.tif");
    let half = t.path().join("half.tif");
    let full = gdal::Dataset::open(a.join("gt.tif")).unwrap();
    let gt = full
        .rasterband(1)
        .unwrap()
        .read_as::<u8>((0, 0), (128, 128), (128, 128), None)
        .unwrap()
        .data()
        .to_vec();
    label_raster(
        &half,
        &image,
        |x, y| if x < 64 { 255 } else { gt[y * 128 + x] },
    );
    let mut shares = Vec::new();
    for (name, label) in [("full", a.join("gt.tif")), ("half", half)] {
        let run = t.path().join(format!("run_{name}"));
        let text = train_config(
            (&image, &label),
            (&v.join("image.tif"), &v.join("gt.tif")),
            &run,
            32,
        );
        let (_, out) = train(t.path(), name, &text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("rstile: epoch 1 "))
            .unwrap_or_else(|| panic!("no epoch line: {err}"));
        assert!(line.contains("ignored label pixels: train "), "{line}");
        let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |k: &str| {
            let i = head
                .iter()
                .position(|h| *h == k)
                .unwrap_or_else(|| panic!("{k}: {csv}"));
            row[i].parse::<f64>().unwrap()
        };
        let share = col("train_ignored");
        assert!((0.0..=1.0).contains(&share), "{share}");
        assert!((0.0..=1.0).contains(&col("val_ignored")));
        assert_eq!(col("train_unlabelled_windows"), 0.0);
        let json: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(run.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert!((json["train_ignored"].as_f64().unwrap() - share).abs() < 1e-6);
        // the line shows the same share, in percent
        assert!(
            line.contains(&format!("train {:.1} %", share * 100.0)),
            "{line} vs {share}"
        );
        shares.push(share);
    }
    assert!(
        shares[1] > shares[0] + 0.25,
        "half the labels nodata: ignored {:.3} vs {:.3}",
        shares[1],
        shares[0]
    );
}

// ---------------------------------------------------------------- item 10

/// A scene georeferenced only by GCPs (no geotransform) gives a map with
/// the same GCPs and their CRS (they were dropped), and so does its
/// confidence raster; the run says how it is georeferenced.
#[test]
fn a_gcp_only_scene_gives_a_map_with_the_same_gcps() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    // tall enough for two parts of 512 px row bands
    let scene = synth(t.path(), 100, 1100, 3).join("image.tif");
    let gcp = t.path().join("gcp.tif");
    let points = [
        (0.0, 0.0, 500000.0, 5000000.0),
        (100.0, 0.0, 500200.0, 5000020.0),
        (0.0, 1100.0, 499990.0, 4997800.0),
        (100.0, 1100.0, 500210.0, 4997815.0),
        (50.5, 700.5, 500100.0, 4998600.0),
    ];
    let mut args: Vec<String> = vec!["-q".into(), "-a_srs".into(), "EPSG:32632".into()];
    for (p, l, x, y) in points {
        args.extend(
            [
                "-gcp",
                &p.to_string(),
                &l.to_string(),
                &x.to_string(),
                &y.to_string(),
            ]
            .map(String::from),
        );
    }
    args.extend([s(&scene).to_string(), s(&gcp).to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    gdal_tool("gdal_translate", &argv);
    let src = Dataset::open(&gcp).unwrap();
    assert!(src.geo_transform().is_err(), "the scene has only GCPs");
    assert_eq!(src.gcps().len(), 5);

    let map = t.path().join("map.tif");
    let out = rstile(&infer_argv(&gcp, &map, &m, &["--confidence"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "is georeferenced by 5 ground control points; the map carries the same points"
        ),
        "{err}"
    );
    assert!(!err.contains("no georeferencing"), "{err}");
    let want_srs = src.gcp_spatial_ref().unwrap();
    for p in [map.clone(), t.path().join("map.confidence.tif")] {
        let ds = Dataset::open(&p).unwrap();
        assert!(
            ds.geo_transform().is_err(),
            "{}: no geotransform",
            p.display()
        );
        let got: Vec<(f64, f64, f64, f64)> = ds
            .gcps()
            .iter()
            .map(|g| (g.pixel(), g.line(), g.x(), g.y()))
            .collect();
        assert_eq!(got, points.to_vec(), "{}", p.display());
        let srs = ds.gcp_spatial_ref().expect("GCP CRS");
        assert_eq!(srs.auth_code().ok(), want_srs.auth_code().ok());
        assert_eq!(srs.auth_code().ok(), Some(32632));
    }
    assert_eq!(read_map(&map).width, 100);

    // split into parts and merged: the same points, in scene lines
    let parts = t.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    for i in 0..2 {
        ok(&infer_argv(
            &gcp,
            &parts.join("map.tif"),
            &m,
            &["--quiet", "--part", &format!("{i}/2")],
        ));
    }
    let merged = t.path().join("merged.tif");
    ok(&["merge", s(&parts), "-o", s(&merged)]);
    let ds = Dataset::open(&merged).unwrap();
    let got: Vec<(f64, f64, f64, f64)> = ds
        .gcps()
        .iter()
        .map(|g| (g.pixel(), g.line(), g.x(), g.y()))
        .collect();
    assert_eq!(got, points.to_vec(), "merged");
    assert_eq!(read_map(&merged).data, read_map(&map).data);
}

/// A one-band paletted copy of a scene: its indices, and a colour table
/// that maps each index to a colour unlike the index (so indices read as
/// values give another map).
fn paletted(dir: &Path, scene: &Path) -> PathBuf {
    let src = Dataset::open(scene).unwrap();
    let (w, h) = src.raster_size();
    let idx = src
        .rasterband(1)
        .unwrap()
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .unwrap()
        .data()
        .to_vec();
    let p = dir.join("paletted.tif");
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = drv.create_with_band_type::<u8, _>(&p, w, h, 1).unwrap();
    ds.set_geo_transform(&src.geo_transform().unwrap()).unwrap();
    ds.set_spatial_ref(&src.spatial_ref().unwrap()).unwrap();
    let mut band = ds.rasterband(1).unwrap();
    let mut ct = ColorTable::new(PaletteInterpretation::Rgba);
    for v in 0..=255u16 {
        let c = |k: u16| ((v * k + 40) % 256) as i16;
        ct.set_color_entry(v, &ColorEntry::rgba(255 - v as i16, c(7), c(13), 200));
    }
    band.set_color_table(&ct);
    band.write((0, 0), (w, h), &mut Buffer::new((w, h), idx))
        .unwrap();
    p
}

/// A paletted scene is read as its RGB colours, as QGIS shows it and as
/// `gdal_translate -expand rgb` makes it: the map equals the map of that
/// expanded copy pixel for pixel (it was fed the indices, or refused).
#[test]
fn a_paletted_scene_is_read_as_its_rgb_colours() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 200, 150, 4).join("image.tif");
    let pal = paletted(t.path(), &scene);
    let rgb = t.path().join("expanded.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-expand", "rgb", s(&pal), s(&rgb)],
    );
    assert_eq!(Dataset::open(&rgb).unwrap().raster_count(), 3);

    let map_pal = t.path().join("map_pal.tif");
    let out = rstile(&infer_argv(&pal, &map_pal, &m, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "is a paletted raster (256 colours): the model reads its red, green and blue colours"
        ),
        "{err}"
    );
    let map_rgb = t.path().join("map_rgb.tif");
    ok(&infer_argv(&rgb, &map_rgb, &m, &["--quiet"]));
    check_map_files(&map_pal, &pal);
    let (a, b) = (read_map(&map_pal).data, read_map(&map_rgb).data);
    assert_eq!(a.len(), 200 * 150);
    assert!(
        a == b,
        "the paletted scene's map differs from its RGB copy's"
    );
    // and the indices as values would have given another map
    let grey = t.path().join("indices.tif");
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-b",
            "1",
            "-b",
            "1",
            "-b",
            "1",
            "-colorinterp",
            "gray,gray,gray",
            s(&pal),
            s(&grey),
        ],
    );
    let map_grey = t.path().join("map_grey.tif");
    ok(&infer_argv(&grey, &map_grey, &m, &["--quiet"]));
    assert!(
        read_map(&map_grey).data != a,
        "the test cannot tell indices from colours"
    );

    // the palette's nodata index stays nodata (gdal_translate -expand rgb
    // alone would colour it)
    let idx = Dataset::open(&pal)
        .unwrap()
        .rasterband(1)
        .unwrap()
        .read_as::<u8>((0, 0), (200, 150), (200, 150), None)
        .unwrap()
        .data()
        .to_vec();
    let nd = idx[75 * 200 + 100];
    let holes = idx.iter().filter(|&&v| v == nd).count();
    assert!(holes > 0 && holes < idx.len() / 2, "{holes}");
    let pal_nd = t.path().join("paletted_nodata.tif");
    std::fs::copy(&pal, &pal_nd).unwrap();
    gdal_tool("gdal_edit.py", &["-a_nodata", &nd.to_string(), s(&pal_nd)]);
    let map_nd = t.path().join("map_nd.tif");
    ok(&infer_argv(&pal_nd, &map_nd, &m, &["--quiet"]));
    let got = read_map(&map_nd).data;
    for (i, (&v, &c)) in idx.iter().zip(&got).enumerate() {
        assert_eq!(c == 255, v == nd, "pixel {i}: index {v}, map {c}");
    }
}

/// A paletted scene for a model that does not take three bands is refused
/// in one line naming the file and why, and leaves nothing.
#[test]
fn a_paletted_scene_for_a_model_of_other_bands_is_refused() {
    let t = tmp();
    let m = model(t.path(), "tiny", 1, 64);
    let scene = synth(t.path(), 80, 60, 5).join("image.tif");
    let pal = paletted(t.path(), &scene);
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let map = out_dir.join("map.tif");
    let err = fails(
        &infer_argv(&pal, &map, &m, &[]),
        "is a paletted raster (its band holds indices into a colour table of 256 entries, not measurements)",
    );
    assert!(
        err.contains(&format!("error: {}: ", pal.display())),
        "{err}"
    );
    assert!(err.contains("the model takes 1 band(s)"), "{err}");
    assert_eq!(names(&out_dir), Vec::<String>::new(), "nothing left");
}

/// f64 pixels beyond f32's range (1e300), infinities and NaN that the
/// scene does not declare nodata become nodata in the map, and the run
/// says how many, each pixel counted once (the bad pixels sit on window
/// overlaps and on a column-chunk border).
#[test]
fn non_finite_and_huge_pixels_are_counted_in_the_summary() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 1100, 120, 6).join("image.tif");
    let f64_scene = t.path().join("f64.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-ot", "Float64", s(&scene), s(&f64_scene)],
    );
    // 10 x 10 px of 1e300 across the chunk border at x = 512, 3 px of
    // -inf in band 3 and 2 px of NaN in band 1 near a window overlap
    let mut bad = Vec::new();
    {
        let ds = Dataset::open_ex(
            &f64_scene,
            gdal::DatasetOptions {
                open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE,
                ..Default::default()
            },
        )
        .unwrap();
        let mut put = |b: usize, x: usize, y: usize, v: f64| {
            let mut band = ds.rasterband(b).unwrap();
            band.write(
                (x as isize, y as isize),
                (1, 1),
                &mut Buffer::new((1, 1), vec![v]),
            )
            .unwrap();
            if !bad.contains(&(x, y)) {
                bad.push((x, y));
            }
        };
        for y in 40..50 {
            for x in 507..517 {
                put(2, x, y, 1e300);
            }
        }
        for x in [60, 61, 62] {
            put(3, x, 24, f64::NEG_INFINITY);
        }
        put(1, 100, 47, f64::NAN);
        put(1, 101, 48, f64::NAN);
    }
    assert_eq!(bad.len(), 105);
    let map = t.path().join("map.tif");
    let out = rstile(&infer_argv(
        &f64_scene,
        &map,
        &m,
        &["--quiet", "--chunk", "512"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let want = format!(
        "rstile: warning: 105 pixel(s) of {} were not finite or out of float range",
        f64_scene.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("were mapped as nodata"), "{err}");
    let mm = read_map(&map);
    let holes: Vec<(usize, usize)> = (0..mm.data.len())
        .filter(|&i| mm.data[i] == 255)
        .map(|i| (i % mm.width, i / mm.width))
        .collect();
    let mut want_holes = bad.clone();
    want_holes.sort_by_key(|&(x, y)| (y, x));
    assert_eq!(holes, want_holes, "exactly the bad pixels are nodata");

    // the finite scene says nothing
    let out = rstile(&infer_argv(
        &scene,
        &t.path().join("clean.tif"),
        &m,
        &["--quiet"],
    ));
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
