//! `rstile eval --submission`: the ISPRS benchmark's submission on the
//! generated archive (`rstile synth --isprs`), test areas at their official
//! sizes.

mod common;

use gdal::Dataset;
use rstile::classes::ClassTable;
use rstile::model::{Arch, Model, ModelMeta};
use rstile::synth::isprs::{write_area, IsprsArea};
use rstile::vaihingen::source::{decode_rgb, ISPRS_COLOURS};
use rstile::vaihingen::{official_size, ISPRS_TEST};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_isprs_model(dir: &Path) -> PathBuf {
    let mut meta = ModelMeta::new(Arch::Tiny, 5, ClassTable::isprs());
    meta.window = 128;
    meta.mean = vec![120.0, 120.0, 120.0, 2.0, 0.0];
    meta.std = vec![50.0, 50.0, 50.0, 3.0, 0.3];
    let model = dir.join("m.safetensors");
    Model::new_random(meta, 1, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model)
        .unwrap();
    model
}

fn rstile(args: &[&str], paths: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rstile"));
    c.args(args);
    for p in paths {
        c.arg(p);
    }
    c.output().unwrap()
}

fn bands(path: &Path) -> (usize, usize, Vec<Vec<u8>>) {
    let ds = Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let b = (1..=ds.raster_count())
        .map(|i| {
            ds.rasterband(i)
                .unwrap()
                .read_as::<u8>((0, 0), (w, h), (w, h), None)
                .unwrap()
                .data()
                .to_vec()
        })
        .collect();
    (w, h, b)
}

#[test]
fn submission_names_sizes_and_colours() {
    let dir = common::tmp();
    let data = dir.path().join("isprs");
    let areas: Vec<String> = ISPRS_TEST.iter().map(|n| n.to_string()).collect();
    let run = rstile(
        &[
            "synth",
            "--isprs",
            "--quiet",
            "--areas",
            &areas.join(","),
            "-o",
        ],
        &[&data],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let model = tiny_isprs_model(dir.path());
    let sub = dir.path().join("submission");
    let run = rstile(
        &["eval", "--model"],
        &[
            &model,
            Path::new("--data"),
            &data,
            Path::new("--submission"),
            &sub,
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // exactly the 17 maps and the zip, no intermediate left behind
    let mut names: Vec<String> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = ISPRS_TEST
        .iter()
        .map(|n| format!("top_mosaic_09cm_area{n}_class.tif"))
        .collect();
    want.push("submission.zip".into());
    want.sort();
    assert_eq!(names, want);
    for &n in &ISPRS_TEST {
        let p = sub.join(format!("top_mosaic_09cm_area{n}_class.tif"));
        let (w, h, rgb) = bands(&p);
        assert_eq!((w, h), official_size(n).unwrap(), "area {n}");
        assert_eq!(rgb.len(), 3);
        // every pixel in an ISPRS colour
        decode_rgb(&p, &rgb[0], &rgb[1], &rgb[2], w, false).unwrap();
    }
    // The colours are the map's classes: area 2 through `eval --out` (the
    // generated archive has its reference) gives the same classes.
    let out = dir.path().join("eval");
    let run = rstile(
        &["eval", "--areas", "2", "--model"],
        &[&model, Path::new("--data"), &data, Path::new("--out"), &out],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (w, _, map) = bands(&out.join("map_area2.tif"));
    let p = sub.join("top_mosaic_09cm_area2_class.tif");
    let (_, _, rgb) = bands(&p);
    let ids = decode_rgb(&p, &rgb[0], &rgb[1], &rgb[2], w, false).unwrap();
    assert_eq!(ids, map[0]);
    let classes: std::collections::BTreeSet<u8> = ids.iter().copied().collect();
    assert!(classes.len() >= 2, "{classes:?}");
    assert_eq!(ISPRS_COLOURS.len(), 6);
    // the zip holds the 17 maps, byte for byte
    let f = std::fs::File::open(sub.join("submission.zip")).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    assert_eq!(z.len(), 17);
    for &n in &ISPRS_TEST {
        let name = format!("top_mosaic_09cm_area{n}_class.tif");
        let mut e = z.by_name(&name).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        assert_eq!(bytes, std::fs::read(sub.join(&name)).unwrap(), "{name}");
    }
}

#[test]
fn missing_area_is_named_and_the_others_go_on() {
    let dir = common::tmp();
    let data = dir.path().join("isprs");
    for n in [2, 4, 6] {
        let a = IsprsArea {
            area: n,
            width: 300,
            height: 260,
        };
        write_area(&data, &a, 0).unwrap();
    }
    std::fs::remove_file(data.join("top/top_mosaic_09cm_area4.tif")).unwrap();
    let model = tiny_isprs_model(dir.path());
    let sub = dir.path().join("sub");
    let run = rstile(
        &["eval", "--areas", "2,4,6", "--model"],
        &[
            &model,
            Path::new("--data"),
            &data,
            Path::new("--submission"),
            &sub,
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("area 4")
            && l.contains("top_mosaic_09cm_area4.tif")
            && l.contains("no such file")),
        "{stderr}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("1 of 3 test areas failed (areas 4)"),
        "{stderr}"
    );
    assert!(sub.join("top_mosaic_09cm_area2_class.tif").exists());
    assert!(sub.join("top_mosaic_09cm_area6_class.tif").exists());
    assert!(!sub.join("top_mosaic_09cm_area4_class.tif").exists());
    assert!(!sub.join("submission.zip").exists(), "{stderr}");
    assert!(!sub.join(".rstile-work").exists());
}

#[test]
fn unwritable_submission_folder_is_one_line() {
    let dir = common::tmp();
    let data = dir.path().join("isprs");
    let a = IsprsArea {
        area: 2,
        width: 300,
        height: 260,
    };
    write_area(&data, &a, 0).unwrap();
    let model = tiny_isprs_model(dir.path());
    // a folder below a regular file cannot be created
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let sub = file.join("sub");
    let run = rstile(
        &["eval", "--areas", "2", "--model"],
        &[
            &model,
            Path::new("--data"),
            &data,
            Path::new("--submission"),
            &sub,
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&*sub.to_string_lossy())
            && stderr.contains("cannot create the submission folder"),
        "{stderr}"
    );
}
