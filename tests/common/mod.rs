//! Helpers shared by the integration tests: they run the real `rstile`
//! binary on scenes it generates itself.
#![allow(dead_code)]

use gdal::Dataset;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rstile")
}

pub fn rstile(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run rstile")
}

/// `infer SCENE -o MAP --model MODEL EXTRA...`, the argv most tests run.
pub fn infer_argv<'a>(
    scene: &'a Path,
    map: &'a Path,
    model: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec!["infer", s(scene), "-o", s(map), "--model", s(model)];
    v.extend_from_slice(extra);
    v
}

/// Runs rstile and panics with its stderr if it fails.
pub fn ok(args: &[&str]) -> String {
    let out = rstile(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rstile {args:?} failed:\n{err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs rstile, expects failure with a one-line error mentioning `needle`.
pub fn fails(args: &[&str], needle: &str) -> String {
    let out = rstile(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "rstile {args:?} should fail");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("rstile: error"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(
        err.lines().all(|l| l.starts_with("rstile: ")),
        "stray output on stderr:\n{err}"
    );
    assert!(lines[0].starts_with("rstile: error: "), "{err}");
    assert!(
        lines[0].contains(needle),
        "error should mention {needle:?}: {err}"
    );
    err
}

pub fn tmp() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A generated scene; returns the folder with image.tif, dsm.tif, gt.tif.
pub fn synth(dir: &Path, w: usize, h: usize, seed: u64) -> PathBuf {
    let out = dir.join(format!("scene_{w}x{h}_{seed}"));
    ok(&[
        "synth",
        "--size",
        &format!("{w}x{h}"),
        "--seed",
        &seed.to_string(),
        "-o",
        s(&out),
        "--quiet",
    ]);
    out
}

/// A randomly initialised model file.
pub fn model(dir: &Path, arch: &str, bands: usize, window: usize) -> PathBuf {
    let p = dir.join(format!("{arch}_{bands}_{window}.safetensors"));
    if !p.exists() {
        let classes = ISPRS_CLASSES;
        ok(&[
            "model",
            "new",
            "--arch",
            arch,
            "--bands",
            &bands.to_string(),
            "--classes",
            classes,
            "-o",
            s(&p),
            "--window",
            &window.to_string(),
            "--seed",
            "3",
        ]);
    }
    p
}

/// Map pixels and grid.
pub struct Map {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    pub gt: Option<[f64; 6]>,
    pub wkt: Option<String>,
    pub nodata: Option<f64>,
    pub bands: usize,
    pub overviews: i32,
    pub palette: usize,
}

pub fn read_map(p: &Path) -> Map {
    let ds = Dataset::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (w, h) = ds.raster_size();
    let b = ds.rasterband(1).unwrap();
    let data = b
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .unwrap()
        .data()
        .to_vec();
    Map {
        width: w,
        height: h,
        data,
        gt: ds.geo_transform().ok(),
        wkt: ds.spatial_ref().ok().and_then(|s| s.to_wkt().ok()),
        nodata: b.no_data_value(),
        bands: ds.raster_count(),
        overviews: b.overview_count().unwrap(),
        palette: b.color_table().map(|c| c.entry_count()).unwrap_or(0),
    }
}

pub fn grid_of(p: &Path) -> (usize, usize, Option<[f64; 6]>, Option<String>) {
    let ds = Dataset::open(p).unwrap();
    let (w, h) = ds.raster_size();
    (
        w,
        h,
        ds.geo_transform().ok(),
        ds.spatial_ref().ok().and_then(|s| s.to_wkt().ok()),
    )
}

/// Runs a GDAL command-line tool.
pub fn gdal_tool(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks a finished map against its scene and the ISPRS classes.
pub fn check_map_files(map: &Path, scene: &Path) {
    let m = read_map(map);
    let (w, h, gt, wkt) = grid_of(scene);
    assert_eq!((m.width, m.height), (w, h), "size carries over");
    assert_eq!(m.gt, gt, "geotransform carries over exactly");
    assert_eq!(m.wkt, wkt, "CRS carries over");
    assert_eq!(m.bands, 1);
    assert_eq!(m.nodata, Some(255.0));
    assert!(m.overviews >= 1, "overviews built");
    assert!(m.palette >= 6, "palette present");
    assert!(
        m.data.iter().all(|&v| v <= 5 || v == 255),
        "only class ids and nodata"
    );
    let aux = std::fs::read_to_string(format!("{}.aux.xml", map.display()))
        .expect("aux.xml with category names");
    assert!(
        aux.contains("<Category>building</Category>"),
        "category names in aux.xml: {aux}"
    );
    let qml = std::fs::read_to_string(map.with_extension("qml")).expect("qml");
    for name in [
        "impervious surfaces",
        "building",
        "low vegetation",
        "tree",
        "car",
        "clutter",
    ] {
        assert!(
            qml.contains(&format!("label=\"{name}\"")),
            "qml lists {name}"
        );
    }
    assert_eq!(qml.matches("<paletteEntry").count(), 6);
    // no temporary leftovers
    let dir = map.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.ends_with(".partial"), "left a temporary file {n}");
    }
}

/// The real samples folder, or None with a skip line.
pub fn real_data(what: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/real");
    if p.is_dir() {
        Some(p)
    } else {
        println!("SKIP {what}: ../shared/data/real is absent");
        None
    }
}

/// The names in `dir`, sorted (none when it cannot be read).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The largest peak resident set (KiB) of any child process this test
/// binary has waited for so far (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_peak_rss_kib() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    ru.ru_maxrss as u64
}

/// A Python with torch and torchvision: `RSTILE_TORCH_PYTHON`, else the
/// venv of `scripts/onnx-fixtures.sh` or of `benches/cpu_vs_torch.sh`
/// (checked by importing both); `None` when there is none.
pub fn torch_python() -> Option<String> {
    let candidates = std::env::var("RSTILE_TORCH_PYTHON").ok().into_iter().chain(
        [
            "target/onnx-venv/bin/python",
            "target/torch-venv/bin/python",
        ]
        .iter()
        .map(|p| format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))),
    );
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import torch, torchvision"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

/// Every band of a raster as u8, band-sequential, and the band count.
pub fn read_bands(p: &Path) -> (usize, Vec<u8>) {
    let ds = Dataset::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (w, h) = ds.raster_size();
    let mut out = Vec::new();
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).unwrap();
        out.extend_from_slice(
            band.read_as::<u8>((0, 0), (w, h), (w, h), None)
                .unwrap()
                .data(),
        );
    }
    (ds.raster_count(), out)
}

/// Starts `infer --chunk 512 EXTRA`, waits until its journal records a
/// band, kills it (SIGKILL) and returns the journal's path.
pub fn kill_after_a_band(scene: &Path, model: &Path, map: &Path, extra: &[&str]) -> PathBuf {
    let mut argv = vec!["--quiet", "--chunk", "512"];
    argv.extend_from_slice(extra);
    let mut child = Command::new(bin())
        .args(infer_argv(scene, map, model, &argv))
        .spawn()
        .unwrap();
    let name = map.file_name().unwrap().to_str().unwrap();
    let journal = map.with_file_name(format!(".{name}.partial.resume.json"));
    for _ in 0..400 {
        if std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"rows_done\":{\"")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(journal.exists(), "no resume journal");
    assert!(!map.exists(), "the run finished before it was killed");
    journal
}

/// The ISPRS class table shipped in `configs/classes/`.
pub const ISPRS_CLASSES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/classes/isprs.toml");

/// An `.npy` file (f32, any shape): its shape and its values.
pub fn read_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = rstile::model::npy::read_f32(p).unwrap();
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
}

/// `rstile model import CHECKPOINT --from FROM --arch ARCH --classes CLASSES
/// -o OUT` (the source at index 4).
pub fn import_argv<'a>(
    checkpoint: &'a str,
    from: &'a str,
    arch: &'a str,
    classes: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "model",
        "import",
        checkpoint,
        "--from",
        from,
        "--arch",
        arch,
        "--classes",
        classes,
        "-o",
        out,
    ]
}

/// Runs `scripts/SCRIPT` with `python` and `args` (a fixture maker);
/// panics with its stderr when it fails.
pub fn run_fixture_script(python: &str, script: &str, args: &[&std::ffi::OsStr]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let run = Command::new(python).arg(path).args(args).output().unwrap();
    assert!(
        run.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}
