//! rstile never destroys input or foreign files: every file it writes
//! refuses to replace an existing one without `--overwrite`, never replaces
//! an input (by path, symlink or hard link), never replaces what is not a
//! regular file, and one output has one writer at a time. Each case runs the
//! real binary and checks the exit code, the one-line error, that the inputs
//! are unchanged, and what is left on disk.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Case {
    t: tempfile::TempDir,
    model: PathBuf,
    scene_dir: PathBuf,
    image: PathBuf,
}

fn setup() -> Case {
    let t = tmp();
    let model = model(t.path(), "tiny", 3, 64);
    let scene_dir = synth(t.path(), 300, 200, 1);
    let image = scene_dir.join("image.tif");
    Case {
        t,
        model,
        scene_dir,
        image,
    }
}

/// The bytes of a file, to prove it was not touched.
fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn preview_never_replaces_a_file_without_overwrite() {
    let c = setup();
    let before = bytes(&c.image);
    let map = c.t.path().join("map.tif");
    // the preview aimed at the input scene: refused before any work
    fails(
        &infer_argv(&c.image, &map, &c.model, &["--preview", s(&c.image)]),
        "is an input",
    );
    assert_eq!(bytes(&c.image), before, "the scene was modified");
    assert!(
        !map.exists(),
        "a map was written although the run was refused"
    );
    // even with --overwrite, an input is never an output
    fails(
        &infer_argv(
            &c.image,
            &map,
            &c.model,
            &["--preview", s(&c.image), "--overwrite"],
        ),
        "is an input",
    );
    assert_eq!(bytes(&c.image), before, "the scene was modified");
    // the preview aimed at an existing map
    ok(&infer_argv(&c.image, &map, &c.model, &["--quiet"]));
    let map_before = bytes(&map);
    let other = c.t.path().join("other.tif");
    fails(
        &infer_argv(&c.image, &other, &c.model, &["--preview", s(&map)]),
        "already exists",
    );
    assert_eq!(bytes(&map), map_before, "the map was turned into a PNG");
    assert!(!other.exists());
    // an existing PNG is replaced only with --overwrite
    let png = c.t.path().join("p.png");
    std::fs::write(&png, b"not mine").unwrap();
    fails(
        &infer_argv(&c.image, &other, &c.model, &["--preview", s(&png)]),
        "already exists",
    );
    assert_eq!(bytes(&png), b"not mine");
    ok(&infer_argv(
        &c.image,
        &other,
        &c.model,
        &["--preview", s(&png), "--overwrite", "--quiet"],
    ));
    assert_eq!(&bytes(&png)[1..4], b"PNG");
}

#[test]
fn an_input_is_never_an_output() {
    let c = setup();
    let before = bytes(&c.image);
    let listing = names(&c.scene_dir);
    // -o the scene itself
    fails(
        &infer_argv(&c.image, &c.image, &c.model, &["--overwrite"]),
        "is an input",
    );
    // the model as output
    fails(
        &infer_argv(&c.image, &c.model, &c.model, &["--overwrite"]),
        "is an input",
    );
    // through a symlink and a hard link
    let sym = c.t.path().join("sym.tif");
    std::os::unix::fs::symlink(&c.image, &sym).unwrap();
    fails(
        &infer_argv(&c.image, &sym, &c.model, &["--overwrite"]),
        "is an input",
    );
    let hard = c.t.path().join("hard.tif");
    std::fs::hard_link(&c.image, &hard).unwrap();
    fails(
        &infer_argv(&c.image, &hard, &c.model, &["--overwrite"]),
        "is an input",
    );
    // --out-dir pointing at the scenes' own folder
    fails(
        &[
            "infer",
            s(&c.image),
            "--out-dir",
            s(&c.scene_dir),
            "--model",
            s(&c.model),
            "--overwrite",
        ],
        "is an input",
    );
    assert_eq!(bytes(&c.image), before, "the scene was modified");
    assert_eq!(
        names(&c.scene_dir),
        listing,
        "files appeared beside the scene"
    );
}

#[test]
fn outputs_that_are_not_regular_files_are_refused() {
    let c = setup();
    fails(
        &infer_argv(&c.image, Path::new("/dev/null"), &c.model, &["--overwrite"]),
        "not a regular file",
    );
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(meta.file_type().is_char_device(), "/dev/null was replaced");
    // a FIFO as preview
    let fifo = c.t.path().join("fifo.png");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let map = c.t.path().join("map.tif");
    fails(
        &infer_argv(
            &c.image,
            &map,
            &c.model,
            &["--preview", s(&fifo), "--overwrite"],
        ),
        "not a regular file",
    );
    assert!(!map.exists());
}

#[test]
fn merge_never_replaces_a_part_and_synth_never_replaces_a_scene() {
    let c = setup();
    // three rows of 512 px tiles, so that it splits in two
    let scene = synth(c.t.path(), 300, 1100, 2).join("image.tif");
    let map = c.t.path().join("parts").join("map.tif");
    std::fs::create_dir(map.parent().unwrap()).unwrap();
    for i in 0..2 {
        ok(&infer_argv(
            &scene,
            &map,
            &c.model,
            &["--part", &format!("{i}/2"), "--window", "64", "--quiet"],
        ));
    }
    let dir = map.parent().unwrap();
    let part0 = dir.join("map.part-0-of-2.tif");
    let before = bytes(&part0);
    fails(
        &["merge", s(dir), "-o", s(&part0), "--overwrite", "--quiet"],
        "is an input",
    );
    assert_eq!(bytes(&part0), before, "a part was overwritten");
    // synth into a folder that holds a scene
    let image_before = bytes(&c.image);
    fails(
        &[
            "synth",
            "--size",
            "100x100",
            "-o",
            s(&c.scene_dir),
            "--quiet",
        ],
        "already exists",
    );
    assert_eq!(bytes(&c.image), image_before, "synth replaced a scene");
    ok(&[
        "synth",
        "--size",
        "100x100",
        "-o",
        s(&c.scene_dir),
        "--overwrite",
        "--quiet",
    ]);
    assert_ne!(bytes(&c.image), image_before, "--overwrite replaces it");
}

#[test]
fn overwrite_removes_the_old_maps_sidecars() {
    let c = setup();
    let map = c.t.path().join("map.tif");
    ok(&infer_argv(
        &c.image,
        &map,
        &c.model,
        &["--confidence", "--quiet"],
    ));
    let conf = c.t.path().join("map.confidence.tif");
    assert!(conf.exists());
    ok(&infer_argv(
        &c.image,
        &map,
        &c.model,
        &["--overwrite", "--quiet"],
    ));
    assert!(
        !conf.exists(),
        "the old scene's confidence was left beside the new map"
    );
    assert!(!c.t.path().join("map.confidence.tif.aux.xml").exists());
}

#[test]
fn one_writer_per_output() {
    let c = setup();
    let big = synth(c.t.path(), 2500, 2500, 7).join("image.tif");
    let m = model(c.t.path(), "resnet18-fcn", 3, 256);
    let map = c.t.path().join("map.tif");
    let first = Command::new(bin())
        .args(infer_argv(&big, &map, &m, &["--quiet", "--threads", "1"]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the first run holds the output
    let t0 = Instant::now();
    let lock = c.t.path().join(".map.tif.lock");
    while !lock.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lock.exists(), "the first run took no lock");
    let err = fails(
        &infer_argv(&c.image, &map, &c.model, &["--overwrite", "--quiet"]),
        "is being written by another rstile",
    );
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "the error names the running process: {err}"
    );
    // resume and merge respect the lock as well
    fails(
        &infer_argv(&big, &map, &m, &["--resume", "--quiet"]),
        "is being written by another rstile",
    );
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the map is the first scene's, whole, and the lock is gone
    let m = read_map(&map);
    assert_eq!((m.width, m.height), (2500, 2500));
    assert!(m.overviews >= 1);
    assert!(!lock.exists(), "the lock file was left behind");
}
