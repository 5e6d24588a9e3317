//! Learning on real pixels, from `../shared/data/real/` (skipped with a
//! `SKIP` line when absent): the `tiny` model is trained on the left half
//! of real tiles and scored on the right half, through the scene-based
//! training source (image and label rasters, here VRT windows of PNG and
//! TIFF files without georeferencing). Its validation mIoU must beat the
//! majority-class baseline's by a margin measured first and fixed below.
//!
//! The decoding of the RGB-coded eroded Vaihingen reference is checked in
//! `tests/vaihingen_prepare.rs` (`real_vaihingen_eroded_reference_decodes`).
//!
//! Label rasters are used as they are: the class tables give each class
//! the label raster's own value as its id (LoveDA 1..=7, the Vaihingen
//! index map 1..=6), so value 0 (no data / ignore) is no class and is
//! ignored by the loss and the scores, and class `k` of the table is
//! output channel `k` (LoveDA value `v` → channel `v - 1`).

mod common;

use rstile::classes::{Class, ClassTable};
use rstile::metrics::Confusion;
use rstile::train::{train, Quiet, RunOptions, TrainConfig, TrainReport};
use std::path::{Path, PathBuf};
use std::time::Instant;

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/real");

/// The files under `REAL`, or `None` after a `SKIP` line if one is absent.
fn real_files(test: &str, rel: &[&str]) -> Option<Vec<PathBuf>> {
    let files: Vec<PathBuf> = rel.iter().map(|r| Path::new(REAL).join(r)).collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        println!(
            "SKIP {test}: {} is absent (real samples live in ../shared/data/real/)",
            missing.display()
        );
        return None;
    }
    Some(files)
}

/// Writes a VRT of columns `x0 .. x0 + w` (all `h` rows) of `src`.
fn half_vrt(src: &Path, bands: usize, x0: usize, w: usize, h: usize, dst: &Path) {
    let src = std::fs::canonicalize(src).unwrap();
    let mut s = format!("<VRTDataset rasterXSize=\"{w}\" rasterYSize=\"{h}\">\n");
    for b in 1..=bands {
        s.push_str(&format!(
            "  <VRTRasterBand dataType=\"Byte\" band=\"{b}\">\n    <SimpleSource>\n      \
             <SourceFilename relativeToVRT=\"0\">{}</SourceFilename>\n      \
             <SourceBand>{b}</SourceBand>\n      \
             <SrcRect xOff=\"{x0}\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>\n      \
             <DstRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>\n    \
             </SimpleSource>\n  </VRTRasterBand>\n",
            src.display()
        ));
    }
    s.push_str("</VRTDataset>\n");
    std::fs::write(dst, s).unwrap();
}

fn read_band1(path: &Path) -> (usize, usize, Vec<u8>) {
    let ds = gdal::Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let buf = ds
        .rasterband(1)
        .unwrap()
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .unwrap();
    (w, h, buf.data().to_vec())
}

fn table(classes: &[(u8, &str, &str)]) -> ClassTable {
    ClassTable {
        classes: classes
            .iter()
            .map(|&(id, name, color)| Class {
                id,
                name: name.into(),
                color: color.into(),
            })
            .collect(),
    }
}

/// LoveDA's classes with their label values as ids and the dataset's
/// usual colours.
fn loveda_classes() -> ClassTable {
    table(&[
        (1, "background", "#ffffff"),
        (2, "building", "#ff0000"),
        (3, "road", "#ffff00"),
        (4, "water", "#0000ff"),
        (5, "barren", "#9f81b7"),
        (6, "forest", "#00ff00"),
        (7, "agriculture", "#ffc37f"),
    ])
}

/// The ISPRS classes with the index map's values (1..=6) as ids.
fn vaihingen_index_classes() -> ClassTable {
    let isprs = ClassTable::isprs();
    ClassTable {
        classes: isprs
            .classes
            .into_iter()
            .map(|c| Class { id: c.id + 1, ..c })
            .collect(),
    }
}

/// Channel of each label value (255: ignored).
fn lut(classes: &ClassTable) -> [u8; 256] {
    let mut l = [255u8; 256];
    for (k, c) in classes.classes.iter().enumerate() {
        l[c.id as usize] = k as u8;
    }
    l
}

/// The majority class of the training labels (as a channel), and the mIoU
/// and overall accuracy of predicting it everywhere on the validation labels.
fn majority_baseline(
    classes: &ClassTable,
    train: &[PathBuf],
    val: &[PathBuf],
) -> (usize, f64, f64) {
    let l = lut(classes);
    let k = classes.len();
    let mut hist = vec![0u64; k];
    for p in train {
        for v in read_band1(p).2 {
            if l[v as usize] != 255 {
                hist[l[v as usize] as usize] += 1;
            }
        }
    }
    let major = (0..k).max_by_key(|&c| hist[c]).unwrap();
    let mut conf = Confusion::new(k);
    for p in val {
        let truth: Vec<u8> = read_band1(p).2.iter().map(|&v| l[v as usize]).collect();
        conf.add_slices(&truth, &vec![major as u8; truth.len()]);
    }
    (
        major,
        conf.miou().unwrap(),
        conf.overall_accuracy().unwrap(),
    )
}

struct Case<'a> {
    name: &'a str,
    arch: &'a str,
    classes: ClassTable,
    /// (image, label) of every tile, and their size.
    tiles: Vec<(PathBuf, PathBuf, usize, usize)>,
    /// `[data]` and `[train]` settings.
    samples_per_epoch: usize,
    epochs: usize,
    crop: usize,
    lr: f64,
}

/// Trains on the left halves, scores the right halves; returns the
/// majority class, the baseline's mIoU and overall accuracy, the report
/// and the seconds taken.
fn left_right(dir: &Path, c: &Case) -> (usize, f64, f64, TrainReport, f64) {
    let classes_path = dir.join("classes.toml");
    std::fs::write(&classes_path, toml::to_string(&c.classes).unwrap()).unwrap();
    let mut scenes = String::new();
    let (mut train_labels, mut val_labels) = (Vec::new(), Vec::new());
    for (i, (img, lab, w, h)) in c.tiles.iter().enumerate() {
        let half = w / 2;
        for (split, x0, width) in [("train", 0, half), ("val", half, w - half)] {
            let vi = dir.join(format!("{split}_{i}_image.vrt"));
            let vl = dir.join(format!("{split}_{i}_label.vrt"));
            half_vrt(img, 3, x0, width, *h, &vi);
            half_vrt(lab, 1, x0, width, *h, &vl);
            scenes.push_str(&format!(
                "[[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"{split}\"\n\n",
                vi.display(),
                vl.display()
            ));
            if split == "train" {
                train_labels.push(vl);
            } else {
                val_labels.push(vl);
            }
        }
    }
    let (major, base, base_oa) = majority_baseline(&c.classes, &train_labels, &val_labels);
    let text = format!(
        "[model]\narch = \"{}\"\nclasses = \"{}\"\nbands = [1, 2, 3]\nwindow = 256\noverlap = 0.25\n\n\
         [data]\nsamples_per_epoch = {}\nval_window = 256\nworkers = 2\n\n{scenes}\
         [train]\nepochs = {}\nbatch = 8\ncrop = {}\nlr = {}\noptimizer = \"adamw\"\n\
         schedule = \"cosine\"\nseed = 1\nout_dir = \"{}\"\n",
        c.arch,
        classes_path.display(),
        c.samples_per_epoch,
        c.epochs,
        c.crop,
        c.lr,
        dir.join("run").display()
    );
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    let t = Instant::now();
    let r = train(
        &cfg,
        &RunOptions {
            resume: None,
            pretrained: None,
            device: candle_core::Device::Cpu,
            max_epochs: None,
        },
        &Quiet,
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} {}: majority class {} ({}): baseline mIoU {base:.4} OA {base_oa:.4}; {} epochs x {} samples of {} px in {secs:.1} s",
        c.name,
        c.arch,
        major,
        c.classes.classes[major].name,
        r.history.len(),
        c.samples_per_epoch,
        c.crop
    );
    for m in &r.history {
        println!(
            "  epoch {} loss {:.4} val loss {:.4} val mIoU {:.4} OA {:.4} ({:.1} samples/s)",
            m.epoch,
            m.train_loss,
            m.val_loss.unwrap_or(f64::NAN),
            m.val_miou.unwrap_or(f64::NAN),
            m.val_overall_accuracy.unwrap_or(f64::NAN),
            m.samples_per_s
        );
    }
    let last = r.history.last().unwrap();
    let iou: Vec<String> = c
        .classes
        .classes
        .iter()
        .zip(&last.val_iou)
        .map(|(cl, v)| {
            format!(
                "{} {}",
                cl.name,
                v.map_or("n/a".into(), |v| format!("{v:.3}"))
            )
        })
        .collect();
    println!("  last epoch IoU: {}", iou.join(", "));
    (major, base, base_oa, r, secs)
}

fn epochs_env(default: usize) -> usize {
    std::env::var("RSTILE_REAL_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// LoveDA: three 1024 x 1024 RGB tiles; left halves train, right halves
/// validate.
#[test]
fn tiny_learns_loveda_left_to_right() {
    let rel: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("loveda/img/{i}.png"),
                format!("loveda/label/{i}.png"),
            ]
        })
        .collect();
    let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
    let Some(files) = real_files("tiny_learns_loveda_left_to_right", &rel) else {
        return;
    };
    let dir = common::tmp();
    let tiles = files
        .chunks(2)
        .map(|p| {
            let (w, h) = gdal::Dataset::open(&p[0]).unwrap().raster_size();
            (p[0].clone(), p[1].clone(), w, h)
        })
        .collect();
    let case = Case {
        name: "LoveDA",
        arch: "tiny",
        classes: loveda_classes(),
        tiles,
        samples_per_epoch: 96,
        epochs: epochs_env(8),
        crop: 128,
        lr: 0.01,
    };
    let (_, base, _, r, _) = left_right(dir.path(), &case);
    let last = r.history.last().unwrap().val_miou.unwrap();
    println!("LoveDA: val mIoU {last:.4} vs majority baseline {base:.4} (margin {LOVEDA_MARGIN})");
    assert!(
        last > base + LOVEDA_MARGIN,
        "LoveDA val mIoU {last:.4} vs baseline {base:.4}"
    );
}

/// Margin over the majority baseline's mIoU, fixed after measuring (seed 1,
/// 8 epochs of 96 crops, 2 cores, about 50 s): the baseline (agriculture
/// everywhere) scored 0.089 on the right halves and the trained model
/// 0.245 (IoU agriculture 0.57, forest 0.51, water 0.36; building and road
/// stay near 0 for a 15k-parameter model); half of the measured gap.
const LOVEDA_MARGIN: f64 = 0.08;

/// The real Vaihingen crop (512 x 512 IR-R-G, area 1): left half trains,
/// right half validates, labels from the index map.
#[test]
fn tiny_learns_vaihingen_crop_left_to_right() {
    let Some(files) = real_files(
        "tiny_learns_vaihingen_crop_left_to_right",
        &[
            "vaihingen/top_area1_crop512.tif",
            "vaihingen/label_index_area1_crop512.png",
        ],
    ) else {
        return;
    };
    let dir = common::tmp();
    let (w, h) = gdal::Dataset::open(&files[0]).unwrap().raster_size();
    let case = Case {
        name: "Vaihingen crop",
        arch: "tiny",
        classes: vaihingen_index_classes(),
        tiles: vec![(files[0].clone(), files[1].clone(), w, h)],
        samples_per_epoch: 64,
        epochs: epochs_env(8),
        crop: 128,
        lr: 0.01,
    };
    let (_, base, _, r, _) = left_right(dir.path(), &case);
    let last = r.history.last().unwrap().val_miou.unwrap();
    println!(
        "Vaihingen crop: val mIoU {last:.4} vs majority baseline {base:.4} (margin {VAIHINGEN_MARGIN})"
    );
    assert!(
        last > base + VAIHINGEN_MARGIN,
        "Vaihingen crop val mIoU {last:.4} vs baseline {base:.4}"
    );
}

/// Margin over the majority baseline's mIoU, fixed after measuring (seed 1,
/// 8 epochs of 64 crops, about 15 s): the baseline (building everywhere)
/// scored 0.027 on the right half and the trained model 0.131 (0.130 after
/// 4 epochs, 0.164 after 12). The left half holds almost no low vegetation
/// (260 px) and no tree, which the right half has (16k and 5k px), so those
/// classes cannot be learnt from it; half of the measured gap.
const VAIHINGEN_MARGIN: f64 = 0.05;

/// The LoveDA tiles, as `(image, label, width, height)`, or `None` after a
/// SKIP line.
fn loveda_tiles(test: &str) -> Option<Vec<(PathBuf, PathBuf, usize, usize)>> {
    let rel: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("loveda/img/{i}.png"),
                format!("loveda/label/{i}.png"),
            ]
        })
        .collect();
    let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
    let files = real_files(test, &rel)?;
    Some(
        files
            .chunks(2)
            .map(|p| {
                let (w, h) = gdal::Dataset::open(&p[0]).unwrap().raster_size();
                (p[0].clone(), p[1].clone(), w, h)
            })
            .collect(),
    )
}

/// The Potsdam crop with its RGB-coded eroded reference turned into an
/// index map in `dir` (1..=6 as the Vaihingen index map, 0 where black),
/// or `None` after a SKIP line.
fn potsdam_tile(test: &str, dir: &Path) -> Option<(PathBuf, PathBuf, usize, usize)> {
    let files = real_files(
        test,
        &[
            "potsdam/rgb_2_10_crop512.png",
            "potsdam/gt_eroded_2_10_crop512.tif",
        ],
    )?;
    let ds = gdal::Dataset::open(&files[1]).unwrap();
    let (w, h) = ds.raster_size();
    let band = |i: usize| {
        ds.rasterband(i)
            .unwrap()
            .read_as::<u8>((0, 0), (w, h), (w, h), None)
            .unwrap()
            .data()
            .to_vec()
    };
    let (r, g, b) = (band(1), band(2), band(3));
    let ids = rstile::vaihingen::source::decode_rgb(&files[1], &r, &g, &b, w, true).unwrap();
    let index: Vec<u8> = ids
        .iter()
        .map(|&v| if v == 255 { 0 } else { v + 1 })
        .collect();
    let label = dir.join("potsdam_index.tif");
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let out = drv.create_with_band_type::<u8, _>(&label, w, h, 1).unwrap();
    out.rasterband(1)
        .unwrap()
        .write(
            (0, 0),
            (w, h),
            &mut gdal::raster::Buffer::new((w, h), index),
        )
        .unwrap();
    drop(out);
    Some((files[0].clone(), label, w, h))
}

/// The table of `benches/RESULTS.md` ("Learning on real pixels"): `tiny`,
/// `resnet18-fcn` and `unet-resnet18` (from scratch, default augmentation: flips, 90°
/// rotations, scale 0.75-1.25, noise, jitter) on LoveDA, the Potsdam crop
/// and the Vaihingen crop, left halves training, right halves scored,
/// against predicting the training halves' majority class. Prints one
/// markdown row per run; `bash benches/real_pixels.sh`.
#[test]
#[ignore]
fn real_pixels_table() {
    let test = "real_pixels_table";
    let dir = common::tmp();
    let Some(loveda) = loveda_tiles(test) else {
        return;
    };
    let Some(potsdam) = potsdam_tile(test, dir.path()) else {
        return;
    };
    let Some(v) = real_files(
        test,
        &[
            "vaihingen/top_area1_crop512.tif",
            "vaihingen/label_index_area1_crop512.png",
        ],
    ) else {
        return;
    };
    let vaihingen = vec![(v[0].clone(), v[1].clone(), 512, 512)];
    let epochs = epochs_env(12);
    let mut rows = Vec::new();
    for (name, classes, tiles, samples) in [
        ("LoveDA (3 x 1024²)", loveda_classes(), loveda, 96),
        (
            "Potsdam (512²)",
            vaihingen_index_classes(),
            vec![potsdam],
            64,
        ),
        ("Vaihingen (512²)", vaihingen_index_classes(), vaihingen, 64),
    ] {
        for (arch, lr) in [
            ("tiny", 0.01),
            ("resnet18-fcn", 0.001),
            ("unet-resnet18", 0.001),
        ] {
            let run = dir.path().join(format!("{}_{arch}", rows.len()));
            std::fs::create_dir_all(&run).unwrap();
            let case = Case {
                name,
                arch,
                classes: classes.clone(),
                tiles: tiles.clone(),
                samples_per_epoch: samples,
                epochs,
                crop: 128,
                lr,
            };
            let (major, base, base_oa, r, secs) = left_right(&run, &case);
            let last = r.history.last().unwrap();
            rows.push(format!(
                "| {name} | {arch} | {epochs} x {samples} | {:.3} | {:.3} | {:.3} ({}) | {:.3} | {secs:.0} |",
                last.val_miou.unwrap(),
                last.val_overall_accuracy.unwrap(),
                base,
                classes.classes[major].name,
                base_oa
            ));
        }
    }
    println!("\n| data | arch | epochs x crops | val mIoU | val OA | majority mIoU (class) | majority OA | s |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
