//! GDAL's errors reach the user on one line, naming the file, with GDAL's
//! own text and none of the gdal crate's internals ("CPL error class
//! '3'", "BadArgument", "OGR_G_TransformTo returned error"): issue 13 item
//! 19. (The AOI reprojection message is tested in tests/aoi.rs.)

mod common;
use common::*;

const LEAKS: [&str; 5] = [
    "CPL error",
    "error class",
    "BadArgument",
    "returned error",
    "GdalError",
];

fn no_leaks(err: &str) {
    for leak in LEAKS {
        assert!(!err.contains(leak), "internals leak ({leak}): {err}");
    }
}

#[test]
fn a_truncated_part_is_one_line_naming_it_with_gdals_reason() {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    // three rows of 512 px tiles, so that it splits in two
    let scene = synth(t.path(), 300, 1100, 2).join("image.tif");
    let parts = t.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let map = parts.join("map.tif");
    for i in 0..2 {
        ok(&infer_argv(
            &scene,
            &map,
            &model,
            &["--part", &format!("{i}/2"), "--quiet"],
        ));
    }
    // the second part loses its tiles (a copy cut short): its header and
    // metadata still read, its pixels do not
    let part1 = parts.join("map.part-1-of-2.tif");
    let len = std::fs::metadata(&part1).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&part1)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let before: Vec<Vec<u8>> = names(&parts)
        .iter()
        .map(|n| std::fs::read(parts.join(n)).unwrap())
        .collect();
    let listing = names(&parts);
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let merged = out_dir.join("merged.tif");
    let out = rstile(&["merge", s(&parts), "-o", s(&merged), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let err = fails(
        &["merge", s(&parts), "-o", s(&merged), "--quiet"],
        "map.part-1-of-2.tif: cannot read rows 0..512 of the part: ",
    );
    // GDAL's own words are kept
    assert!(err.contains("TIFFReadEncodedTile"), "{err}");
    no_leaks(&err);
    // the parts are untouched, nothing is left in the output folder
    let after: Vec<Vec<u8>> = listing
        .iter()
        .map(|n| std::fs::read(parts.join(n)).unwrap())
        .collect();
    assert_eq!(names(&parts), listing);
    assert!(before == after, "a part was modified");
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));
}

#[test]
fn a_bad_creation_option_says_what_is_wrong_not_bad_argument() {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 200, 100, 3).join("image.tif");
    let map = t.path().join("map.tif");
    let err = fails(
        &infer_argv(&scene, &map, &model, &["--co", "A B=1"]),
        "--co A B=1: Invalid characters in name: 'A B'",
    );
    no_leaks(&err);
    let err = fails(
        &infer_argv(&scene, &map, &model, &["--co", "ZLEVEL=1\n2"]),
        "Invalid characters in value",
    );
    no_leaks(&err);
    assert!(!map.exists());
}
