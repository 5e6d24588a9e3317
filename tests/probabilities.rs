//! `rstile infer --probabilities`: `MAP.probabilities.tif`, one u8 band
//! per class, whose first largest band is the map's class at every pixel,
//! on the map's grid, unchanged by threads and batch, through parts and
//! merge, and through a resume after SIGKILL.

mod common;
use common::*;
use gdal::{Dataset, Metadata};
use std::path::{Path, PathBuf};

use common::read_bands as bands;

fn probs_path(map: &Path) -> PathBuf {
    map.with_file_name(format!(
        "{}.probabilities.tif",
        map.file_stem().unwrap().to_str().unwrap()
    ))
}

/// A 4-class `tiny` model whose class ids are not 0..3, so that a band
/// index taken for a class id shows.
fn four_class_model(dir: &Path) -> PathBuf {
    let classes = dir.join("classes.toml");
    std::fs::write(
        &classes,
        "[[class]]\nid = 10\nname = \"water\"\ncolor = \"#0000ff\"\n\n\
         [[class]]\nid = 3\nname = \"forest\"\ncolor = \"#00ff00\"\n\n\
         [[class]]\nid = 7\nname = \"field\"\ncolor = \"#ffff00\"\n\n\
         [[class]]\nid = 20\nname = \"built-up\"\ncolor = \"#ff0000\"\n",
    )
    .unwrap();
    let m = dir.join("m4.safetensors");
    ok(&[
        "model",
        "new",
        "--arch",
        "tiny",
        "--bands",
        "3",
        "--classes",
        s(&classes),
        "-o",
        s(&m),
        "--window",
        "128",
        "--seed",
        "5",
    ]);
    m
}

const IDS: [u8; 4] = [10, 3, 7, 20];
const NAMES: [&str; 4] = ["water", "forest", "field", "built-up"];

/// The first largest band of every pixel is the map's class; nodata
/// (255 in every band) exactly where the map has none.
fn check_argmax(map: &Path) -> usize {
    let m = read_map(map);
    let (k, p) = bands(&probs_path(map));
    assert_eq!(k, 4);
    let npx = m.width * m.height;
    let mut ties = 0;
    for i in 0..npx {
        let q: Vec<u8> = (0..k).map(|c| p[c * npx + i]).collect();
        if m.data[i] == 255 {
            assert!(q.iter().all(|&v| v == 255), "pixel {i}: {q:?}");
            continue;
        }
        let mut best = 0;
        for c in 1..k {
            if q[c] > q[best] {
                best = c;
            }
        }
        // ties on the largest value (broken, as the map breaks them, by
        // the lowest band) are counted, to show the test meets some
        ties += (q.iter().filter(|&&v| v + 1 >= q[best]).count() > 1) as usize;
        assert_eq!(IDS[best], m.data[i], "pixel {i}: {q:?}");
        let sum: u32 = q.iter().map(|&v| v as u32).sum();
        assert!((248..=257).contains(&sum), "pixel {i}: {q:?} sums to {sum}");
    }
    ties
}

#[test]
fn probabilities_match_the_map_and_do_not_depend_on_threads_or_batch() {
    let t = tmp();
    let m = four_class_model(t.path());
    let scene = synth(t.path(), 1300, 1100, 4).join("image.tif");
    let a = t.path().join("a.tif");
    ok(&infer_argv(
        &scene,
        &a,
        &m,
        &[
            "--quiet",
            "--probabilities",
            "--threads",
            "1",
            "--batch",
            "1",
        ],
    ));
    let near_ties = check_argmax(&a);
    println!("{near_ties} pixels with two bands within one step of the largest");
    assert!(near_ties > 0, "the scene has no near tie to check");
    // the map's grid, tiling, compression, overviews; bands named after
    // the classes, nodata 255
    let pds = Dataset::open(probs_path(&a)).unwrap();
    let mds = Dataset::open(&a).unwrap();
    assert_eq!(pds.raster_size(), mds.raster_size());
    assert_eq!(pds.geo_transform().unwrap(), mds.geo_transform().unwrap());
    assert_eq!(
        pds.spatial_ref().unwrap().to_wkt().unwrap(),
        mds.spatial_ref().unwrap().to_wkt().unwrap()
    );
    let mb = mds.rasterband(1).unwrap();
    for (c, name) in NAMES.iter().enumerate() {
        let b = pds.rasterband(c + 1).unwrap();
        assert_eq!(b.description().unwrap(), *name);
        assert_eq!(b.no_data_value(), Some(255.0));
        assert_eq!(b.block_size(), mb.block_size());
        assert_eq!(b.overview_count().unwrap(), mb.overview_count().unwrap());
    }
    assert_eq!(
        pds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE"),
        mds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE")
    );
    // threads and batch change nothing
    let b = t.path().join("b.tif");
    ok(&infer_argv(
        &scene,
        &b,
        &m,
        &[
            "--quiet",
            "--probabilities",
            "--threads",
            "2",
            "--batch",
            "5",
        ],
    ));
    assert!(
        bands(&probs_path(&a)).1 == bands(&probs_path(&b)).1,
        "probabilities differ"
    );
    assert!(read_map(&a).data == read_map(&b).data);
}

#[test]
fn probabilities_through_parts_merge_and_resume() {
    let t = tmp();
    let m = four_class_model(t.path());
    let scene = synth(t.path(), 1400, 1600, 9).join("image.tif");
    let single = t.path().join("single.tif");
    let argv = |map: &Path, extra: &[&str]| -> Vec<String> {
        let mut e = vec!["--quiet", "--probabilities", "--chunk", "512"];
        e.extend_from_slice(extra);
        infer_argv(&scene, map, &m, &e)
            .into_iter()
            .map(String::from)
            .collect()
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    run(argv(&single, &[]));
    let want = bands(&probs_path(&single)).1;
    // parts and merge
    let parts = t.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    for i in 0..3 {
        run(argv(&parts.join("map.tif"), &["--part", &format!("{i}/3")]));
        assert!(parts
            .join(format!("map.part-{i}-of-3.probabilities.tif"))
            .exists());
    }
    let merged = t.path().join("merged.tif");
    ok(&["merge", s(&parts), "-o", s(&merged)]);
    assert!(read_map(&merged).data == read_map(&single).data);
    assert!(
        bands(&probs_path(&merged)).1 == want,
        "merged probabilities differ"
    );
    check_argmax(&merged);
    // SIGKILL after the first band, then --resume
    let map = t.path().join("resumed.tif");
    let journal = kill_after_a_band(&scene, &m, &map, &["--probabilities"]);
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("prob_hash"));
    let out = run(argv(&map, &["--resume"]));
    assert!(read_map(&map).data == read_map(&single).data, "{out}");
    assert!(
        bands(&probs_path(&map)).1 == want,
        "resumed probabilities differ"
    );
    // nothing of the unfinished run is left
    let left: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".resumed"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
