//! File names that are not UTF-8: a scene, a model and outputs whose names
//! are Latin-1 bytes must be read and written under exactly those names,
//! with every sidecar beside them, and give the same map as ASCII names.
#![cfg(unix)]

mod common;
use common::*;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn latin1(dir: &Path, bytes: &[u8]) -> PathBuf {
    assert!(std::str::from_utf8(bytes).is_err(), "meant to be non-UTF-8");
    dir.join(OsStr::from_bytes(bytes))
}

fn run(args: &[&OsStr]) -> Output {
    Command::new(bin()).args(args).output().expect("run rstile")
}

fn run_ok(args: &[&OsStr]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "rstile {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn names(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn scene_model_and_outputs_with_latin1_names() {
    let t = tmp();
    let image = synth(t.path(), 300, 200, 1).join("image.tif");
    let dir = latin1(t.path(), b"d\xe9p\xf4t");
    std::fs::create_dir(&dir).unwrap();
    let scene = latin1(&dir, b"sc\xe8ne.tif");
    std::fs::copy(&image, &scene).unwrap();
    let model = latin1(&dir, b"m\xf6del.safetensors");
    let classes = common::ISPRS_CLASSES;
    run_ok(&[
        os("model"),
        os("new"),
        os("--arch"),
        os("tiny"),
        os("--bands"),
        os("3"),
        os("--classes"),
        os(classes),
        os("-o"),
        model.as_os_str(),
        os("--window"),
        os("64"),
        os("--seed"),
        os("3"),
    ]);
    assert!(model.is_file(), "the model is written under its own name");

    let out = latin1(t.path(), b"sorti\xe9");
    std::fs::create_dir(&out).unwrap();
    let map = latin1(&out, b"c\xe0rte.tif");
    let png = latin1(&out, b"aper\xe7u.png");
    run_ok(&[
        os("infer"),
        scene.as_os_str(),
        os("-o"),
        map.as_os_str(),
        os("--model"),
        model.as_os_str(),
        os("--confidence"),
        os("--preview"),
        png.as_os_str(),
        os("--quiet"),
    ]);
    let want: Vec<OsString> = [
        &b"aper\xe7u.png"[..],
        b"c\xe0rte.confidence.tif",
        b"c\xe0rte.qml",
        b"c\xe0rte.tif",
        b"c\xe0rte.tif.aux.xml",
    ]
    .iter()
    .map(|b| OsStr::from_bytes(b).to_os_string())
    .collect();
    assert_eq!(names(&out), want, "the map and its sidecars, nothing else");
    let aux = std::fs::read_to_string(rstile::raster::append(&map, ".aux.xml")).unwrap();
    assert!(aux.contains("<Category>building</Category>"), "{aux}");

    // the same pixels as the same scene under an ASCII name
    let ascii = t.path().join("ascii");
    std::fs::create_dir(&ascii).unwrap();
    let ascii_model = ascii.join("model.safetensors");
    std::fs::copy(&model, &ascii_model).unwrap();
    let ascii_map = ascii.join("map.tif");
    ok(&[
        "infer",
        s(&image),
        "-o",
        s(&ascii_map),
        "--model",
        s(&ascii_model),
        "--confidence",
        "--quiet",
    ]);
    assert_eq!(
        std::fs::read(&map).unwrap(),
        std::fs::read(&ascii_map).unwrap(),
        "map bytes"
    );
    assert_eq!(
        std::fs::read(rstile::raster::stem_with(&map, ".confidence.tif")).unwrap(),
        std::fs::read(ascii.join("map.confidence.tif")).unwrap(),
        "confidence bytes"
    );
    let (w, h, _) = rstile::raster::read_u8_band(&map).unwrap();
    assert_eq!((w, h), (300, 200));
    let (pw, ph, _) = rstile::raster::read_u8_band(&png).unwrap();
    assert_eq!(pw.max(ph), 300, "the preview opens as a raster");

    // --out-dir names each map after its scene's bytes
    let many = latin1(t.path(), b"cartes\xff");
    std::fs::create_dir(&many).unwrap();
    let second = t.path().join("second.tif");
    std::fs::copy(&image, &second).unwrap();
    run_ok(&[
        os("infer"),
        scene.as_os_str(),
        second.as_os_str(),
        os("--out-dir"),
        many.as_os_str(),
        os("--model"),
        model.as_os_str(),
        os("--quiet"),
    ]);
    let got = names(&many);
    for n in [&b"sc\xe8ne.tif"[..], b"sc\xe8ne.qml", b"second.tif"] {
        assert!(
            got.contains(&OsStr::from_bytes(n).to_os_string()),
            "{:?} missing from {got:?}",
            OsStr::from_bytes(n)
        );
    }
    assert_eq!(
        std::fs::read(latin1(&many, b"sc\xe8ne.tif")).unwrap(),
        std::fs::read(&ascii_map).unwrap(),
        "--out-dir map bytes"
    );

    // a part of a split run keeps the map's bytes in its name (a scene of
    // two 512 px tile rows)
    let parts = latin1(t.path(), b"parts\xe9");
    std::fs::create_dir(&parts).unwrap();
    let tall = latin1(&parts, b"h\xe4ute.tif");
    std::fs::copy(synth(t.path(), 96, 1100, 2).join("image.tif"), &tall).unwrap();
    run_ok(&[
        os("infer"),
        tall.as_os_str(),
        os("-o"),
        latin1(&parts, b"c\xe0rte.tif").as_os_str(),
        os("--model"),
        model.as_os_str(),
        os("--part"),
        os("1/2"),
        os("--quiet"),
    ]);
    assert!(
        names(&parts).contains(&OsStr::from_bytes(b"c\xe0rte.part-1-of-2.tif").to_os_string()),
        "{:?}",
        names(&parts)
    );
}

#[test]
fn a_missing_latin1_scene_is_named_in_the_error() {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let scene = latin1(t.path(), b"abs\xe9nte.tif");
    let map = t.path().join("map.tif");
    let out = run(&[
        os("infer"),
        scene.as_os_str(),
        os("-o"),
        map.as_os_str(),
        os("--model"),
        model.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("abs\u{fffd}nte.tif: no such file"), "{err}");
    assert!(!map.exists());
}

/// Names GDAL resolves itself (a file inside a zip, one directory of a
/// TIFF) are scenes like any other: rstile lets GDAL decide, and a missing
/// one gets GDAL's reason, not "no such file".
#[test]
fn gdal_virtual_paths_are_scenes() {
    let t = tmp();
    let dir = synth(t.path(), 300, 200, 5);
    let image = dir.join("image.tif");
    let model = model(t.path(), "tiny", 3, 64);
    let zip = t.path().join("scenes.zip");
    let made = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').write(sys.argv[2], 'image.tif')",
            s(&zip),
            s(&image),
        ])
        .status()
        .expect("python3");
    assert!(made.success());
    let plain = t.path().join("plain.tif");
    ok(&infer_argv(&image, &plain, &model, &["--quiet"]));
    let want = read_map(&plain).data;
    let vsizip = format!("/vsizip/{}/image.tif", zip.display());
    let gtiff_dir = format!("GTIFF_DIR:1:{}", image.display());
    for (i, scene) in [vsizip.as_str(), gtiff_dir.as_str()].iter().enumerate() {
        let map = t.path().join(format!("v{i}.tif"));
        ok(&[
            "infer",
            scene,
            "-o",
            s(&map),
            "--model",
            s(&model),
            "--quiet",
        ]);
        assert_eq!(read_map(&map).data, want, "{scene}");
    }
    // a missing member of the zip: GDAL's reason, not "no such file"
    let missing = format!("/vsizip/{}/nope.tif", zip.display());
    let err = fails(
        &[
            "infer",
            &missing,
            "-o",
            s(&t.path().join("m.tif")),
            "--model",
            s(&model),
        ],
        "nope.tif",
    );
    assert!(!err.contains("no such file"), "{err}");
}
