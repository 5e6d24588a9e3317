//! `rstile prepare vaihingen` on generated data in both input layouts.
//!
//! The patch-count test writes the ISPRS archive's layout with `rstile
//! synth --isprs` (all 33 areas at their official sizes) and checks the
//! course's counts, 2083 training and 368 validation patches, and the area
//! assignment.

mod common;

use gdal::raster::Buffer;
use gdal::Dataset;
use rstile::synth::isprs::{write_area, IsprsArea};
use rstile::synth::{synth, SynthConfig};
use rstile::vaihingen::raw::RawPatches;
use rstile::vaihingen::source::{official_paths, ISPRS_COLOURS};
use rstile::vaihingen::{official_size, prepare, PatchSet, PrepareOptions, Split, OFFICIAL_SIZES};
use std::path::{Path, PathBuf};
use std::process::Command;

fn read_u8(path: &Path) -> (usize, usize, Vec<u8>) {
    let ds = Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let b = ds.rasterband(1).unwrap();
    let buf = b.read_as::<u8>((0, 0), (w, h), (w, h), None).unwrap();
    (w, h, buf.data().to_vec())
}

/// Writes area `n` at `w x h` in the official layout (seed `n`).
fn make_official_area(root: &Path, n: u16, w: usize, h: usize) {
    let a = IsprsArea {
        area: n,
        width: w,
        height: h,
    };
    write_area(root, &a, 0).unwrap();
}

fn h5_u16(path: &Path, name: &str) -> Vec<u16> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .read_raw()
        .unwrap()
}

#[test]
fn course_counts_on_official_sized_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("isprs");
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["synth", "--isprs", "--quiet", "-o"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "synth --isprs, 33 areas: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // every area at its official size, every file of the layout present
    for &(n, w, h) in &OFFICIAL_SIZES {
        for p in official_paths(&data, n) {
            let ds = Dataset::open(&p).unwrap();
            assert_eq!(ds.raster_size(), (w, h), "{}", p.display());
        }
    }
    // The binary, so that its peak memory can be read: prepare streams the
    // patches into the files, holding one area at a time (3.1 GB when it
    // held a whole split, under 0.5 GB streaming).
    let out = dir.path().join("out");
    let t0 = std::time::Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["prepare", "vaihingen", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let peak_kib = common::children_peak_rss_kib();
    eprintln!(
        "prepare, the course's 14 areas: {:.1} s, peak RSS of any child so far {:.0} MiB",
        t0.elapsed().as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    assert!(
        peak_kib < 1024 * 1024,
        "peak RSS {peak_kib} KiB, the bound is 1 GiB"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vaihingen_meta.json")).unwrap())
            .unwrap();
    assert_eq!(s["layout"], "isprs");
    assert_eq!(s["stride"], 153);
    let train = &s["splits"][0];
    let val = &s["splits"][1];
    assert_eq!(
        (&train["name"], &train["patches"]),
        (&"train".into(), &2083.into())
    );
    assert_eq!(
        (&val["name"], &val["patches"]),
        (&"val".into(), &368.into())
    );
    // Each area at its official size gives the rule's count.
    let areas: Vec<&serde_json::Value> = train["areas"]
        .as_array()
        .unwrap()
        .iter()
        .chain(val["areas"].as_array().unwrap())
        .collect();
    assert_eq!(areas.len(), 14);
    for a in areas {
        let n = a["area"].as_u64().unwrap() as u16;
        let (w, h) = official_size(n).unwrap();
        assert_eq!(
            (a["width"].as_u64(), a["height"].as_u64()),
            (Some(w as u64), Some(h as u64))
        );
        let rows = (h - 256).div_ceil(153);
        let cols = (w - 256).div_ceil(153);
        assert_eq!(
            a["patches"].as_u64(),
            Some((rows * cols) as u64),
            "area {n}"
        );
    }
    let train_file = out.join("vaihingen_train.hdf5");
    let val_file = out.join("vaihingen_val.hdf5");
    // Area assignment, in the file.
    let area_train = h5_u16(&train_file, "area");
    let area_val = h5_u16(&val_file, "area");
    assert_eq!(area_train.len(), 2083);
    assert_eq!(area_val.len(), 368);
    let mut tr: Vec<u16> = area_train.clone();
    tr.dedup();
    assert_eq!(tr, vec![1, 3, 5, 7, 11, 13, 17, 21, 26, 28, 34, 37]);
    let mut va = area_val.clone();
    va.dedup();
    assert_eq!(va, vec![30, 32]);
    assert_eq!(area_val.iter().filter(|&&a| a == 30).count(), 176);
    // Shapes and contents of a few patches.
    let f = hdf5::File::open(&val_file).unwrap();
    assert_eq!(f.dataset("images").unwrap().shape(), vec![368, 5, 256, 256]);
    assert_eq!(f.dataset("labels").unwrap().shape(), vec![368, 256, 256]);
    assert_eq!(f.dataset("masks").unwrap().shape(), vec![368, 256, 256]);
    assert_eq!(f.dataset("offset").unwrap().shape(), vec![368, 2]);
    let labels: Vec<u8> = f.dataset("labels").unwrap().read_raw().unwrap();
    let masks: Vec<u8> = f.dataset("masks").unwrap().read_raw().unwrap();
    assert!(labels.iter().all(|&l| l < 6));
    let boundary = masks.iter().filter(|&&m| m == 1).count();
    assert!(boundary > 0 && boundary < masks.len() / 2, "{boundary}");
    // Labels match the synth reference at the recorded offset.
    let offset: Vec<u32> = f.dataset("offset").unwrap().read_raw().unwrap();
    let (r, c) = (offset[2 * 200] as usize, offset[2 * 200 + 1] as usize);
    assert_eq!(area_val[200], 32);
    let gt = PathBuf::from(&data).join("gts_for_participants/top_mosaic_09cm_area32.tif");
    let ds = Dataset::open(&gt).unwrap();
    let blue = ds
        .rasterband(3)
        .unwrap()
        .read_as::<u8>((c as isize, r as isize), (256, 256), (256, 256), None)
        .unwrap();
    let green = ds
        .rasterband(2)
        .unwrap()
        .read_as::<u8>((c as isize, r as isize), (256, 256), (256, 256), None)
        .unwrap();
    let red = ds
        .rasterband(1)
        .unwrap()
        .read_as::<u8>((c as isize, r as isize), (256, 256), (256, 256), None)
        .unwrap();
    for i in 0..256 * 256 {
        let l = labels[200 * 256 * 256 + i] as usize;
        assert_eq!(
            ISPRS_COLOURS[l],
            [red.data()[i], green.data()[i], blue.data()[i]]
        );
    }
    // Statistics come from the training areas and the images are normalised.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vaihingen_meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["splits"][0]["patches"], 2083);
    let mean: Vec<f32> = f.dataset("mean").unwrap().read_raw().unwrap();
    assert_eq!(mean.len(), 5);
    assert!(mean[0] > 10.0 && mean[4].abs() < 1.0, "{mean:?}");
}

fn write_course_file(dir: &Path, n: u16, w: usize, h: usize, matlab: bool) {
    // Feature c at (row, col) = c * 1000 + row + col / 1000; label 1 + (row + col) % 6.
    let feat = |c: usize, row: usize, col: usize| (c * 1000 + row) as f64 + col as f64 / 1000.0;
    let f = hdf5::File::create(dir.join(format!("vaihingen_{n}.hdf5"))).unwrap();
    let (x, xshape, y, m, yshape) = if matlab {
        // MATLAB's H x W x 5 array as h5write stores it: 5 x W x H in C order.
        let mut x = Vec::with_capacity(5 * w * h);
        for c in 0..5 {
            for col in 0..w {
                for row in 0..h {
                    x.push(feat(c, row, col));
                }
            }
        }
        let mut y = Vec::new();
        let mut m = Vec::new();
        for col in 0..w {
            for row in 0..h {
                y.push((1 + (row + col) % 6) as f64);
                m.push(((row + col) % 7 == 0) as u8 as f64);
            }
        }
        (x, vec![5, w, h], y, m, vec![w, h])
    } else {
        let mut x = Vec::with_capacity(5 * w * h);
        let mut y = Vec::new();
        let mut m = Vec::new();
        for row in 0..h {
            for col in 0..w {
                for c in 0..5 {
                    x.push(feat(c, row, col));
                }
                y.push((1 + (row + col) % 6) as f64);
                m.push(((row + col) % 7 == 0) as u8 as f64);
            }
        }
        (x, vec![h, w, 5], y, m, vec![h, w])
    };
    f.new_dataset::<f64>()
        .shape(xshape)
        .create(format!("x_{n}").as_str())
        .unwrap()
        .write_raw(x.as_slice())
        .unwrap();
    f.new_dataset::<f64>()
        .shape(yshape.clone())
        .create(format!("y_{n}").as_str())
        .unwrap()
        .write_raw(y.as_slice())
        .unwrap();
    f.new_dataset::<f64>()
        .shape(yshape)
        .create(format!("m_{n}").as_str())
        .unwrap()
        .write_raw(m.as_slice())
        .unwrap();
}

#[test]
fn course_hdf5_in_matlab_and_c_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("course");
    std::fs::create_dir_all(&data).unwrap();
    // 300 x 420: one column of origins, rows 0 and 153 -> 2 patches each.
    write_course_file(&data, 1, 300, 420, true);
    write_course_file(&data, 3, 300, 420, false);
    write_course_file(&data, 30, 300, 420, true);
    let split = dir.path().join("split.toml");
    std::fs::write(&split, "train = [1, 3]\nval = [30]\n").unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["prepare", "vaihingen", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--split")
        .arg(&split)
        .arg("--raw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["Generated 4 samples!", "Generated 2 samples!"]
    );

    let t = PatchSet::read(&out.join("vaihingen_train.hdf5")).unwrap();
    assert_eq!((t.n, t.patch), (4, 256));
    assert_eq!(t.area, vec![1, 1, 3, 3]);
    assert_eq!(t.offset, vec![0, 0, 153, 0, 0, 0, 153, 0]);
    // MATLAB-ordered area 1 and C-ordered area 3 hold the same content.
    let per = 5 * 256 * 256;
    assert_eq!(t.images[..2 * per], t.images[2 * per..]);
    let pp = 256 * 256;
    for (k, row0) in [(0usize, 0usize), (1, 153)] {
        for (y, x) in [(0usize, 0usize), (10, 200), (255, 255)] {
            for c in 0..5 {
                let v = t.images[k * per + c * pp + y * 256 + x] * t.std[c] + t.mean[c];
                let want = (c * 1000 + row0 + y) as f64 + x as f64 / 1000.0;
                assert!(
                    (v as f64 - want).abs() < 1e-2 * (1.0 + want.abs() * 1e-3),
                    "c{c} ({y},{x}) {v} {want}"
                );
            }
            assert_eq!(t.labels[k * pp + y * 256 + x] as usize, (row0 + y + x) % 6);
            assert_eq!(
                t.masks[k * pp + y * 256 + x],
                ((row0 + y + x) % 7 == 0) as u8
            );
        }
    }
    let v = PatchSet::read(&out.join("vaihingen_val.hdf5")).unwrap();
    assert_eq!(v.area, vec![30, 30]);
    assert_eq!(v.mean, t.mean);

    // The memory-mappable copy holds the same patches.
    let r = RawPatches::open(&out.join("vaihingen_train.bin")).unwrap();
    assert_eq!((r.len(), r.header.patch), (4, 256));
    assert_eq!(r.header.mean, t.mean);
    for i in 0..4 {
        assert_eq!(r.image(i), &t.images[i * per..(i + 1) * per]);
        assert_eq!(r.labels(i), &t.labels[i * pp..(i + 1) * pp]);
        assert_eq!(r.masks(i), &t.masks[i * pp..(i + 1) * pp]);
        assert_eq!(r.area(i), t.area[i]);
        assert_eq!(r.offset(i), [t.offset[2 * i], t.offset[2 * i + 1]]);
    }
    // A truncated copy is refused.
    let bin = out.join("vaihingen_val.bin");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bin)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    assert!(RawPatches::open(&bin).is_err());
}

/// Read speed of a prepared split: the whole HDF5 file into memory versus
/// shuffled patches from the memory-mapped copy. Prints timings; run with
/// `cargo test --release --test vaihingen_prepare -- --ignored --nocapture`.
#[test]
#[ignore]
fn read_speed_hdf5_vs_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("isprs");
    for &(n, w, h) in &OFFICIAL_SIZES[..4] {
        make_official_area(&data, n, w, h);
    }
    let split = dir.path().join("split.toml");
    std::fs::write(&split, "train = [1, 2, 3]\nval = [4]\n").unwrap();
    let out = dir.path().join("out");
    let mut o = PrepareOptions::new(&data, &out);
    o.split = Split::parse(split.to_str().unwrap()).unwrap();
    o.raw = true;
    let t0 = std::time::Instant::now();
    let s = prepare(&o).unwrap();
    let n = s.splits[0].patches;
    eprintln!(
        "prepare (3+1 areas, {n} train patches, with raw copy): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let h5 = out.join("vaihingen_train.hdf5");
    let bin = out.join("vaihingen_train.bin");
    let mut order: Vec<usize> = (0..n).collect();
    let mut st = 7u64;
    for i in (1..n).rev() {
        st = st
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (st >> 33) as usize % (i + 1));
    }
    for round in 0..3 {
        let t = std::time::Instant::now();
        let p = PatchSet::read(&h5).unwrap();
        let mut acc = 0f32;
        let per = 5 * 256 * 256;
        for &i in &order {
            acc += p.images[i * per + 1000];
        }
        let th5 = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let r = RawPatches::open(&bin).unwrap();
        let mut batch = vec![0f32; 16 * per];
        let mut acc2 = 0f32;
        for chunk in order.chunks(16) {
            for (k, &i) in chunk.iter().enumerate() {
                batch[k * per..(k + 1) * per].copy_from_slice(r.image(i));
                acc2 += batch[k * per + 1000] + r.labels(i)[7] as f32 * 0.0;
            }
        }
        let tmm = t.elapsed().as_secs_f64();
        assert_eq!(acc, acc2);
        eprintln!(
            "round {round}: HDF5 full read {th5:.3} s ({:.0} patches/s, first patch after the whole file); \
             mmap shuffled batches of 16 {tmm:.3} s ({:.0} patches/s)",
            n as f64 / th5,
            n as f64 / tmm
        );
    }
}

fn small_official(root: &Path, areas: &[u16]) -> PathBuf {
    let data = root.join("isprs");
    for &n in areas {
        make_official_area(&data, n, 300, 300);
    }
    let split = root.join("split.toml");
    std::fs::write(
        &split,
        format!("train = [{}]\nval = [{}]\n", areas[0], areas[1]),
    )
    .unwrap();
    data
}

fn run_err(data: &Path, out: &Path, split: &Path) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["prepare", "vaihingen", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--split")
        .arg(split)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_official(dir.path(), &[1, 30]);
    let split = dir.path().join("split.toml");
    let out = dir.path().join("out");

    // It works as it is.
    let mut o = PrepareOptions::new(&data, &out);
    o.split = Split::parse(split.to_str().unwrap()).unwrap();
    let s = prepare(&o).unwrap();
    assert_eq!(s.splits[0].patches, 1);

    // A missing area.
    std::fs::write(&split, "train = [1, 5]\nval = [30]\n").unwrap();
    let e = run_err(&data, &out, &split);
    assert!(
        e.contains("top_mosaic_09cm_area5.tif") && e.contains("area 5"),
        "{e}"
    );

    // A DSM whose size differs from its image.
    std::fs::write(&split, "train = [1]\nval = [30]\n").unwrap();
    let dsm = data.join("dsm/dsm_09cm_matching_area30.tif");
    let cfg = SynthConfig {
        width: 290,
        height: 300,
        ..Default::default()
    };
    let other = synth(&cfg, &dir.path().join("other"), false, &|_, _| {}).unwrap();
    std::fs::copy(&other.dsm, &dsm).unwrap();
    let e = run_err(&data, &out, &split);
    assert!(
        e.contains("dsm_09cm_matching_area30.tif") && e.contains("290x300"),
        "{e}"
    );

    // An unknown colour in the reference names the file and the pixel.
    make_official_area(&data, 30, 300, 300);
    let gt = data.join("gts_for_participants/top_mosaic_09cm_area30.tif");
    {
        let ds = Dataset::open_ex(
            &gt,
            gdal::DatasetOptions {
                open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE,
                ..Default::default()
            },
        )
        .unwrap();
        let mut b = ds.rasterband(1).unwrap();
        b.write((7, 5), (1, 1), &mut Buffer::new((1, 1), vec![12u8]))
            .unwrap();
        let mut b = ds.rasterband(2).unwrap();
        b.write((7, 5), (1, 1), &mut Buffer::new((1, 1), vec![34u8]))
            .unwrap();
    }
    let e = run_err(&data, &out, &split);
    assert!(
        e.contains("top_mosaic_09cm_area30.tif") && e.contains("column 7, row 5"),
        "{e}"
    );

    // An unreadable file.
    std::fs::write(data.join("top/top_mosaic_09cm_area1.tif"), b"not a tiff").unwrap();
    let e = run_err(&data, &out, &split);
    assert!(e.contains("top_mosaic_09cm_area1.tif"), "{e}");

    // Neither layout.
    let e = run_err(dir.path(), &out, &split);
    assert!(e.contains("neither the ISPRS layout"), "{e}");
}

#[test]
fn eval_scores_full_tiles_through_the_infer_pipeline() {
    use rstile::classes::ClassTable;
    use rstile::model::{Arch, Model, ModelMeta};
    let dir = tempfile::tempdir().unwrap();
    let data = small_official(dir.path(), &[1, 30]);
    let mut meta = ModelMeta::new(Arch::Tiny, 5, ClassTable::isprs());
    meta.window = 128;
    meta.mean = vec![120.0, 120.0, 120.0, 2.0, 0.0];
    meta.std = vec![50.0, 50.0, 50.0, 3.0, 0.3];
    let model = dir.path().join("m.safetensors");
    Model::new_random(meta, 1, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model)
        .unwrap();
    let out = dir.path().join("eval");
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args(["--areas", "1,30", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        stdout.lines().next().unwrap(),
        "| imp surf | building | low_veg | tree | car | Overall |",
        "{stdout}"
    );
    for f in ["eval.md", "eval.json", "map_area1.tif", "map_area30.tif"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json["reference"], "eroded");
    // Scored pixels: those the eroded reference keeps.
    let mut kept = 0u64;
    for n in [1, 30] {
        let (_, _, r) = read_u8(&data.join(format!(
            "gts_eroded_for_participants/top_mosaic_09cm_area{n}_noBoundary.tif"
        )));
        let (_, _, g) = read_u8_band(
            &data.join(format!(
                "gts_eroded_for_participants/top_mosaic_09cm_area{n}_noBoundary.tif"
            )),
            2,
        );
        let (_, _, b) = read_u8_band(
            &data.join(format!(
                "gts_eroded_for_participants/top_mosaic_09cm_area{n}_noBoundary.tif"
            )),
            3,
        );
        kept += (0..r.len())
            .filter(|&i| (r[i], g[i], b[i]) != (0, 0, 0))
            .count() as u64;
    }
    assert_eq!(json["overall"]["pixels"], kept);
    assert!(json["areas"]["30"]["overall_accuracy"].is_number());

    // The full reference scores every pixel.
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["eval", "--full-reference", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args(["--areas", "30", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json["overall"]["pixels"], 300 * 300);

    // A 3-band model is refused in one line.
    let mut meta = ModelMeta::new(Arch::Tiny, 3, ClassTable::isprs());
    meta.window = 128;
    let m3 = dir.path().join("m3.safetensors");
    Model::new_random(meta, 1, &candle_core::Device::Cpu)
        .unwrap()
        .save(&m3)
        .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["eval", "--model"])
        .arg(&m3)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("3 band(s)"), "{err}");
}

fn read_u8_band(path: &Path, band: usize) -> (usize, usize, Vec<u8>) {
    let ds = Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let b = ds.rasterband(band).unwrap();
    let buf = b.read_as::<u8>((0, 0), (w, h), (w, h), None).unwrap();
    (w, h, buf.data().to_vec())
}

/// The real Vaihingen crop: the RGB-coded eroded reference decodes to the
/// shipped index map (0 ignore, 1..=6 the classes).
#[test]
fn real_vaihingen_eroded_reference_decodes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/real/vaihingen");
    let gt = dir.join("gt_eroded_area1_crop512.tif");
    let index = dir.join("label_index_area1_crop512.png");
    if !gt.exists() || !index.exists() {
        println!(
            "SKIP real_vaihingen_eroded_reference_decodes: {} is absent",
            dir.display()
        );
        return;
    }
    let (w, h, r) = read_u8_band(&gt, 1);
    let (_, _, g) = read_u8_band(&gt, 2);
    let (_, _, b) = read_u8_band(&gt, 3);
    let ids = rstile::vaihingen::source::decode_rgb(&gt, &r, &g, &b, w, true).unwrap();
    let (iw, ih, idx) = read_u8(&index);
    assert_eq!((iw, ih), (w, h));
    let want: Vec<u8> = idx
        .iter()
        .map(|&v| if v == 0 { 255 } else { v - 1 })
        .collect();
    assert_eq!(ids, want);
    let ignored = ids.iter().filter(|&&v| v == 255).count();
    assert!(ignored > 0 && ignored < ids.len() / 4, "{ignored}");
    // Without the ignore rule, black is an unknown colour, named with its pixel.
    let e = rstile::vaihingen::source::decode_rgb(&gt, &r, &g, &b, w, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gt_eroded_area1_crop512.tif") && e.contains("(0,0,0)"),
        "{e}"
    );
}
