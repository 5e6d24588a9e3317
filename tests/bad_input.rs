//! Bad input: each case ends with one error line that names the file and
//! the problem, a non-zero exit, and no output file.

mod common;
use common::*;
use gdal::Metadata;
use std::path::Path;

fn no_output(map: &Path) {
    no_visible_output(map);
    for e in std::fs::read_dir(map.parent().unwrap()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.contains(".partial"), "temporary {n} left behind");
    }
}

/// Nothing that looks like a map; a hidden `.partial` kept for `--resume`
/// is allowed.
fn no_visible_output(map: &Path) {
    assert!(!map.exists(), "{} was left behind", map.display());
    let dir = map.parent().unwrap();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!n.starts_with("map"), "{n} left behind");
        }
    }
}

struct Case {
    t: tempfile::TempDir,
    model: std::path::PathBuf,
    image: std::path::PathBuf,
    out: std::path::PathBuf,
}

fn setup() -> Case {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let image = synth(t.path(), 300, 200, 1).join("image.tif");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Case {
        t,
        model,
        image,
        out,
    }
}

fn infer_fails(c: &Case, scene: &Path, model: &Path, needle: &str) {
    let map = c.out.join("map.tif");
    fails(
        &["infer", s(scene), "-o", s(&map), "--model", s(model)],
        needle,
    );
    no_output(&map);
}

#[test]
fn missing_empty_truncated_and_non_raster_scenes() {
    let c = setup();
    let missing = c.t.path().join("nope.tif");
    infer_fails(&c, &missing, &c.model, "nope.tif: no such file");
    let empty = c.t.path().join("empty.tif");
    std::fs::write(&empty, b"").unwrap();
    infer_fails(&c, &empty, &c.model, "empty.tif: empty file");
    let text = c.t.path().join("notes.txt");
    std::fs::write(&text, "just some words\n").unwrap();
    infer_fails(&c, &text, &c.model, "notes.txt: not a raster");
    // a truncated GeoTIFF: the header survives, the tiles do not
    let bytes = std::fs::read(&c.image).unwrap();
    let trunc = c.t.path().join("truncated.tif");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    infer_fails(&c, &trunc, &c.model, "truncated.tif");
}

/// Files GDAL cannot open: the error carries GDAL's own reason, after the
/// file and rstile's words, never empty parentheses.
#[test]
fn unreadable_files_give_gdal_reason() {
    let c = setup();
    let text = c.t.path().join("notes.txt");
    std::fs::write(&text, "just some words\n").unwrap();
    let err = fails(
        &infer_argv(&text, &c.out.join("map.tif"), &c.model, &[]),
        "notes.txt: not a raster GDAL can open: ",
    );
    assert!(
        err.contains("not recognized as a supported file format"),
        "GDAL's reason: {err}"
    );
    assert!(!err.contains("()"), "{err}");
    // a TIFF header whose first directory is garbage
    let bad = c.t.path().join("header.tif");
    std::fs::write(&bad, b"II*\x00\x08\x00\x00\x00garbage, not a directory").unwrap();
    let err = fails(
        &infer_argv(&bad, &c.out.join("map.tif"), &c.model, &[]),
        "header.tif: not a raster GDAL can open: ",
    );
    let reason = err
        .trim_end()
        .split_once("not a raster GDAL can open: ")
        .unwrap()
        .1;
    assert!(reason.len() > 10, "GDAL's reason is there: {err}");
    assert!(!err.contains("()"), "{err}");
    no_output(&c.out.join("map.tif"));
    // an area of interest that is no vector file
    let aoi = c.t.path().join("aoi.txt");
    std::fs::write(&aoi, "hello").unwrap();
    let err = fails(
        &infer_argv(
            &c.image,
            &c.out.join("map.tif"),
            &c.model,
            &["--aoi", s(&aoi)],
        ),
        "aoi.txt: not a vector file GDAL can open",
    );
    assert!(
        err.contains("not recognized as a supported file format"),
        "GDAL's reason: {err}"
    );
}

#[test]
fn band_count_and_type_that_do_not_fit() {
    let c = setup();
    let one = c.t.path().join("one_band.tif");
    gdal_tool("gdal_translate", &["-q", "-b", "1", s(&c.image), s(&one)]);
    infer_fails(
        &c,
        &one,
        &c.model,
        "one_band.tif: has 1 band(s) but the model needs 3",
    );
    let map = c.out.join("map.tif");
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--bands", "1,2,9"]),
        "has no band 9",
    );
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--bands", "1,2"]),
        "--bands selects 2",
    );
    let cplx = c.t.path().join("complex.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-ot", "CInt16", s(&c.image), s(&cplx)],
    );
    infer_fails(&c, &cplx, &c.model, "complex.tif: band 1 is of type CInt16");
    let int64 = c.t.path().join("int64.tif");
    gdal_tool(
        "gdal_translate",
        &["-q", "-ot", "Int64", s(&c.image), s(&int64)],
    );
    let err = fails(
        &infer_argv(&int64, &map, &c.model, &[]),
        "int64.tif: band 1 is of type Int64",
    );
    assert!(
        !err.contains("GdalTypeDescriptor") && !err.contains("Unknown"),
        "{err}"
    );
    no_output(&map);
}

#[test]
fn missing_corrupt_and_metadata_free_models() {
    let c = setup();
    infer_fails(
        &c,
        &c.image,
        &c.t.path().join("none.safetensors"),
        "none.safetensors",
    );
    let corrupt = c.t.path().join("corrupt.safetensors");
    let bytes = std::fs::read(&c.model).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    infer_fails(&c, &c.image, &corrupt, "corrupt.safetensors");
    let garbage = c.t.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    infer_fails(&c, &c.image, &garbage, "garbage.safetensors");
    // valid safetensors, but no rstile metadata
    let bare = c.t.path().join("bare.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&1f32.to_le_bytes());
    std::fs::write(&bare, f).unwrap();
    infer_fails(&c, &c.image, &bare, "bare.safetensors");
    // what is given as --model by mistake is named, not parsed
    infer_fails(&c, &c.image, c.t.path(), "is a directory");
    infer_fails(&c, &c.image, &c.image, "is a TIFF image");
}

#[test]
fn outputs_that_cannot_be_written() {
    let c = setup();
    // a folder
    fails(
        &infer_argv(&c.image, &c.out, &c.model, &[]),
        "is a directory",
    );
    // a folder that does not exist
    let deep = c.t.path().join("no/such/dir/map.tif");
    fails(
        &infer_argv(&c.image, &deep, &c.model, &[]),
        "does not exist",
    );
    // a read-only place (even root cannot create files in /proc)
    fails(
        &[
            "infer",
            s(&c.image),
            "-o",
            "/proc/map.tif",
            "--model",
            s(&c.model),
        ],
        "/proc/map.tif",
    );
    assert!(!Path::new("/proc/map.tif").exists());
}

#[test]
fn corrupt_tile_in_the_middle_names_the_block() {
    let c = setup();
    let scene = synth(c.t.path(), 1024, 1024, 2).join("image.tif");
    // an uncompressed-offset-known copy: 256 px tiles, DEFLATE
    let tiled = c.t.path().join("tiled.tif");
    gdal_tool(
        "gdal_translate",
        &[
            "-q",
            "-co",
            "TILED=YES",
            "-co",
            "BLOCKXSIZE=256",
            "-co",
            "BLOCKYSIZE=256",
            "-co",
            "COMPRESS=DEFLATE",
            s(&scene),
            s(&tiled),
        ],
    );
    // find tile offsets with gdalinfo's block metadata
    let ds = gdal::Dataset::open(&tiled).unwrap();
    let (off, size): (u64, u64) = {
        let band = ds.rasterband(1).unwrap();
        let item = |k: &str| {
            band.metadata_item(k, "TIFF")
                .expect("block metadata")
                .parse()
                .unwrap()
        };
        (item("BLOCK_OFFSET_2_2"), item("BLOCK_SIZE_2_2"))
    };
    drop(ds);
    let mut bytes = std::fs::read(&tiled).unwrap();
    for b in &mut bytes[off as usize..(off + size) as usize] {
        *b = 0xA5;
    }
    std::fs::write(&tiled, bytes).unwrap();
    infer_fails(&c, &tiled, &c.model, "block (col 2, row 2)");
}

#[test]
fn full_disk_leaves_nothing() {
    let c = setup();
    let mnt = c.t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32k", "tmpfs", s(&mnt)])
        .status();
    if !st.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none() || std::env::var_os("RSTILE_NO_MOUNT").is_some(),
            "cannot mount a tmpfs in CI"
        );
        println!("SKIP full disk: cannot mount a small tmpfs here");
        return;
    }
    let scene = synth(c.t.path(), 2000, 2000, 3).join("image.tif");
    let m = model(c.t.path(), "linear", 3, 256);
    let map = mnt.join("map.tif");
    // uncompressed, so that the pixels themselves do not fit
    let out = rstile(&infer_argv(
        &scene,
        &map,
        &m,
        &["--quiet", "--co", "COMPRESS=NONE"],
    ));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let listing = || -> Vec<_> {
        std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let left = listing();
    // a preview that does not fit (the disk filled up first): an error, and
    // no .partial left
    {
        use std::io::Write;
        let mut fill = std::fs::File::create(mnt.join("fill")).unwrap();
        while fill
            .write_all(&[0u8; 1024])
            .and_then(|_| fill.sync_all())
            .is_ok()
        {}
    }
    let png = mnt.join("map.png");
    let preview = rstile(&infer_argv(
        &scene,
        &c.out.join("map.tif"),
        &m,
        &["--quiet", "--preview", s(&png)],
    ));
    let preview_err = String::from_utf8_lossy(&preview.stderr).to_string();
    let left_by_preview = listing();
    let _ = std::process::Command::new("umount").arg(s(&mnt)).status();
    assert!(
        !preview.status.success(),
        "a preview on a full disk must fail"
    );
    assert!(preview_err.contains("map.png"), "{preview_err}");
    assert_eq!(
        left_by_preview,
        [std::ffi::OsString::from("fill")],
        "the preview left files on the full disk"
    );
    assert!(!out.status.success(), "a full disk must fail");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("small/map.tif"),
        "the error names the map: {err}"
    );
    assert!(left.is_empty(), "left {left:?} on the full disk");
}

#[test]
fn sigint_and_sigterm_stop_cleanly() {
    let c = setup();
    let scene = synth(c.t.path(), 3000, 3000, 4).join("image.tif");
    let m = model(c.t.path(), "resnet18-fcn", 3, 256);
    for sig in ["INT", "TERM"] {
        let map = c.out.join("map.tif");
        let child = std::process::Command::new(bin())
            .args(infer_argv(&scene, &map, &m, &["--quiet"]))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "SIG{sig}: {err}");
        assert!(err.contains("interrupted"), "{err}");
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("rstile: error"))
                .count(),
            1,
            "{err}"
        );
        no_visible_output(&map);
    }
}

#[test]
fn bad_flags_and_commands() {
    let c = setup();
    let map = c.out.join("map.tif");
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--overlap", "0.97"]),
        "overlap",
    );
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--window", "4"]),
        "window",
    );
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--co", "NOEQUALS"]),
        "KEY=VALUE",
    );
    // checked against GDAL's GeoTIFF creation options, with GDAL's words
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--co", "COMPRESS=NOPE"]),
        "'NOPE' is an unexpected value for COMPRESS",
    );
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--co", "FOO=BAR"]),
        "FOO",
    );
    no_output(&map);
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--device", "cuda:0"]),
        "--device cuda:0",
    );
    fails(
        &["synth", "--size", "10by10", "-o", s(&c.out)],
        "'10by10' for '--size",
    );
    let classes = c.t.path().join("bad.toml");
    std::fs::write(
        &classes,
        "[[class]]\nid = 255\nname = \"x\"\ncolor = \"#000000\"\n",
    )
    .unwrap();
    fails(
        &[
            "model",
            "new",
            "--arch",
            "tiny",
            "--bands",
            "3",
            "--classes",
            s(&classes),
            "-o",
            s(&c.out.join("m.safetensors")),
        ],
        "bad.toml",
    );
    fails(
        &[
            "model",
            "new",
            "--arch",
            "vgg",
            "--bands",
            "3",
            "--classes",
            common::ISPRS_CLASSES,
            "-o",
            s(&c.out.join("m.safetensors")),
        ],
        "vgg",
    );
    no_output(&map);
}
