//! `rstile demo`: the whole benchmark on the built-in dataset, through the
//! real binary, with a 20 s training budget.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn raster_size(path: &Path) -> (usize, usize) {
    gdal::Dataset::open(path).unwrap().raster_size()
}

#[test]
fn demo_runs_the_benchmark_end_to_end() {
    let dir = common::tmp();
    let out = dir.path().join("demo");
    let t0 = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_rstile"))
        .args(["demo", "--seconds", "20", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}\n{stdout}");
    println!("rstile demo --seconds 20: {secs:.1} s\n{stderr}{stdout}");

    // The leaderboard table, with numbers.
    let lines: Vec<&str> = stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| *l == "| imp surf | building | low_veg | tree | car | Overall |")
        .unwrap_or_else(|| panic!("no leaderboard table:\n{stdout}"));
    assert_eq!(lines[head + 1], "|---|---|---|---|---|---|");
    let cells: Vec<&str> = lines[head + 2]
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(cells.len(), 6, "{}", lines[head + 2]);
    let values: Vec<f64> = cells
        .iter()
        .filter(|c| **c != "n/a")
        .map(|c| {
            c.parse::<f64>()
                .unwrap_or_else(|_| panic!("{c:?} in {stdout}"))
        })
        .collect();
    assert!(
        values.iter().all(|v| (0.0..=100.0).contains(v)),
        "{values:?}"
    );
    // imp surf, building, low_veg, tree and overall are never empty; a
    // trained model gets the large classes mostly right even after 20 s
    for i in [0, 1, 2, 3, 5] {
        let v: f64 = cells[i].parse().unwrap();
        assert!(v > 50.0, "column {i}: {v} in\n{stdout}");
    }

    // What it wrote.
    let area = |sub: &str, name: String| out.join(sub).join(name);
    for n in [1u16, 3, 5, 7, 30, 32] {
        for p in [
            area("isprs/top", format!("top_mosaic_09cm_area{n}.tif")),
            area("isprs/dsm", format!("dsm_09cm_matching_area{n}.tif")),
            area(
                "isprs/gts_for_participants",
                format!("top_mosaic_09cm_area{n}.tif"),
            ),
            area(
                "isprs/gts_eroded_for_participants",
                format!("top_mosaic_09cm_area{n}_noBoundary.tif"),
            ),
        ] {
            assert!(p.exists(), "{}", p.display());
        }
    }
    for f in [
        "prepared/vaihingen_train.hdf5",
        "prepared/vaihingen_val.hdf5",
        "prepared/vaihingen_meta.json",
        "train.toml",
        "run/best.safetensors",
        "run/last.safetensors",
        "run/metrics.csv",
        "run/loss.png",
        "eval/eval.md",
        "eval/eval.json",
        "eval/map_area30.tif",
        "eval/map_area32.tif",
        "infer/map_area30.tif",
        "infer/map_area30.qml",
        "infer/map_area30.png",
        "infer/map_area30.confidence.tif",
        "infer/reference_area30.png",
    ] {
        assert!(out.join(f).exists(), "{f} is missing");
        assert!(stdout.contains(&*out.join(f).parent().unwrap().to_string_lossy()));
    }
    // The map lies on the area's grid, georeferenced, with a legend.
    let top = out.join("isprs/top/top_mosaic_09cm_area30.tif");
    let map = out.join("infer/map_area30.tif");
    assert_eq!(raster_size(&map), raster_size(&top));
    let m = gdal::Dataset::open(&map).unwrap();
    let t = gdal::Dataset::open(&top).unwrap();
    assert_eq!(m.geo_transform().unwrap(), t.geo_transform().unwrap());
    assert!(m.spatial_ref().is_ok());
    let qml = std::fs::read_to_string(out.join("infer/map_area30.qml")).unwrap();
    assert!(qml.contains("building"), "{qml}");
    // The run stopped by time: at least one epoch, recorded in the run.
    let csv = std::fs::read_to_string(out.join("run/metrics.csv")).unwrap();
    assert!(csv.lines().count() >= 2, "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/eval.json")).unwrap())
            .unwrap();
    assert_eq!(json["reference"], "eroded");

    // A second run replaces its own output; a folder of other files is
    // refused in one line.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = common::fails(
        &["demo", "--seconds", "0", "--out", common::s(&other)],
        "not empty",
    );
    assert!(err.contains("--overwrite"), "{err}");
    assert!(other.join("notes.txt").exists());
    common::fails(&["demo", "--seconds=-1"], "--seconds");
}
