//! `rstile model export`: rstile's own models as ONNX. The exported graph
//! must give the model's own probabilities in rstile's ONNX evaluator and
//! in onnxruntime, map a scene as the model does, and carry metadata that
//! Deepness reads.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Python with onnxruntime and numpy: `RSTILE_ORT_PYTHON`, the fixture
/// venv, or a venv made here with pip (`target/ort-venv`) when the network
/// allows it; `None` otherwise.
fn ort_python() -> Option<String> {
    let imports = |py: &str| {
        Command::new(py)
            .args(["-c", "import onnxruntime, numpy, json"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let mut candidates: Vec<String> = std::env::var("RSTILE_ORT_PYTHON").into_iter().collect();
    candidates.push(format!("{root}/target/onnx-venv/bin/python"));
    candidates.push(format!("{root}/target/ort-venv/bin/python"));
    if let Some(py) = candidates.iter().find(|p| imports(p)) {
        return Some(py.clone());
    }
    let venv = format!("{root}/target/ort-venv");
    let made = Command::new("python3")
        .args(["-m", "venv", &venv])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(format!("{venv}/bin/pip"))
            .args(["install", "-q", "onnxruntime", "numpy"])
            .status()
            .is_ok_and(|s| s.success());
    let py = format!("{venv}/bin/python");
    (made && imports(&py)).then_some(py)
}

fn new_model(dir: &Path, arch: &str, bands: usize, window: usize) -> PathBuf {
    let p = dir.join(format!("{arch}.safetensors"));
    let classes = common::ISPRS_CLASSES;
    let (mean, std) = if bands == 5 {
        ("120,120,120,2,0", "50,50,50,3,0.3")
    } else {
        ("110,115,105", "40,42,45")
    };
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
        "11",
        "--mean",
        mean,
        "--std",
        std,
    ]);
    p
}

/// Softmax over axis 1 of an NCHW array.
fn softmax(v: &[f32], dims: &[usize]) -> Vec<f32> {
    let (b, k, hw) = (dims[0], dims[1], dims[2] * dims[3]);
    let mut out = v.to_vec();
    for n in 0..b {
        for p in 0..hw {
            let at = |c: usize| n * k * hw + c * hw + p;
            let m = (0..k).map(|c| v[at(c)]).fold(f32::MIN, f32::max);
            let sum: f32 = (0..k).map(|c| (v[at(c)] - m).exp()).sum();
            for c in 0..k {
                out[at(c)] = (v[at(c)] - m).exp() / sum;
            }
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exported_models_compute_what_the_models_compute() {
    let t = tmp();
    let dir = t.path();
    // an input batch of 2, written as .npy by rstile's own writer
    let x = dir.join("x.npy");
    let xs = dir.join("x5.npy");
    for (p, bands, n) in [(&x, 3, 96), (&xs, 5, 70)] {
        let v: Vec<f32> = (0..2 * bands * n * n)
            .map(|i| ((i as f32 * 0.618).fract() - 0.5) * 4.0)
            .collect();
        let tensor =
            candle_core::Tensor::from_vec(v, (2, bands, n, n), &candle_core::Device::Cpu).unwrap();
        rstile::model::npy::write_f32(p, &tensor).unwrap();
    }
    let ort = ort_python();
    if ort.is_none() {
        println!("SKIP the onnxruntime half of exported_models_compute_what_the_models_compute: no Python with onnxruntime, and pip could not install it");
    }
    for (arch, bands, window, input) in [
        ("linear", 3, 96, &x),
        ("tiny", 3, 96, &x),
        ("resnet18-fcn", 3, 96, &x),
        ("resnet18-fcn8s", 3, 96, &x),
        ("resnet50-fcn", 5, 70, &xs),
        ("resnet50-fcn-os8", 5, 70, &xs),
        ("unet-resnet18", 3, 96, &x),
        ("unet-resnet50", 5, 70, &xs),
    ] {
        let m = new_model(dir, arch, bands, window);
        let onnx = dir.join(format!("{arch}.onnx"));
        let out = ok(&["model", "export", s(&m), "-o", s(&onnx)]);
        assert!(out.contains("opset 17"), "{out}");
        let sidecar = dir.join(format!("{arch}.stac.json"));
        assert!(sidecar.exists());
        let native = dir.join(format!("{arch}.native.npy"));
        ok(&["model", "run", s(&m), "--input", s(input), "-o", s(&native)]);
        let (dims, logits) = read_npy(&native);
        let want = softmax(&logits, &dims);
        let mine = dir.join(format!("{arch}.onnx.npy"));
        ok(&[
            "model",
            "run",
            s(&onnx),
            "--input",
            s(input),
            "-o",
            s(&mine),
        ]);
        let (d2, got) = read_npy(&mine);
        assert_eq!(d2, dims);
        // 1e-4, or, for the deep random networks whose logits reach the
        // hundreds, the f32 rounding of those logits (2e-6 of the largest):
        // a probability moves by at most half its logits' error
        let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tol = 1e-4f32.max(2e-6 * scale);
        let e = max_diff(&got, &want);
        println!("{arch}: rstile's ONNX evaluator vs the model: {e:.2e} (largest |logit| {scale:.0}, tolerance {tol:.1e})");
        assert!(e < tol, "{arch}: {e}");
        let Some(py) = &ort else { continue };
        let script = format!(
            r#"
import json, numpy as np, onnxruntime as ort
s = ort.InferenceSession({onnx:?}, providers=["CPUExecutionProvider"])
y = s.run(None, {{"image": np.load({input:?})}})[0]
np.save({out:?}, y.astype(np.float32))
# Deepness reads every metadata value with json.loads (model_base.py)
meta = s.get_modelmeta().custom_metadata_map
v = {{k: json.loads(meta[k]) for k in ["model_type", "class_names", "tiles_size",
    "tiles_overlap", "standardization_mean", "standardization_std"]}}
assert v["model_type"] == "Segmentor", v
names = [v["class_names"][str(i)] for i in range(len(v["class_names"]))]
assert isinstance(v["tiles_size"], int) and isinstance(v["tiles_overlap"], int), v
print(json.dumps({{"names": names, "size": v["tiles_size"], "overlap": v["tiles_overlap"],
    "mean": v["standardization_mean"], "std": v["standardization_std"]}}))
"#,
            onnx = s(&onnx),
            input = s(input),
            out = s(&dir.join(format!("{arch}.ort.npy")))
        );
        let run = Command::new(py).args(["-c", &script]).output().unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (_, y) = read_npy(&dir.join(format!("{arch}.ort.npy")));
        let e = max_diff(&y, &want);
        println!("{arch}: onnxruntime vs the model: {e:.2e}");
        assert!(e < tol, "{arch}: onnxruntime differs by {e}");
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).unwrap();
        assert_eq!(v["names"][1], "building");
        assert_eq!(v["size"], window);
        assert_eq!(v["overlap"], 25);
        // Deepness divides by 255 before standardising
        let mean0 = v["mean"][0].as_f64().unwrap();
        let expect = if bands == 5 { 120.0 } else { 110.0 } / 255.0;
        assert!((mean0 - expect).abs() < 1e-6, "{mean0}");
    }
}

#[test]
fn infer_with_the_exported_model_gives_the_model_s_map() {
    let t = tmp();
    let dir = t.path();
    let m = new_model(dir, "tiny", 3, 128);
    let onnx = dir.join("tiny.onnx");
    ok(&["model", "export", s(&m), "-o", s(&onnx)]);
    let scene = synth(dir, 700, 500, 12).join("image.tif");
    let a = dir.join("native.tif");
    let b = dir.join("onnx.tif");
    ok(&infer_argv(&scene, &a, &m, &["--quiet", "--probabilities"]));
    ok(&infer_argv(
        &scene,
        &b,
        &onnx,
        &["--quiet", "--probabilities"],
    ));
    let (ma, mb) = (read_map(&a), read_map(&b));
    assert_eq!((ma.width, ma.height, ma.gt), (mb.width, mb.height, mb.gt));
    let differ = ma.data.iter().zip(&mb.data).filter(|(x, y)| x != y).count();
    // the same arithmetic up to the order of float additions: a pixel may
    // only change where two classes tie to within rounding
    assert!(differ * 10_000 <= ma.data.len(), "{differ} pixels differ");
    // the legend round-trips: names from the Deepness metadata, colours
    // from the STAC sidecar
    check_map_files(&b, &scene);
    let pa = std::fs::read(dir.join("native.qml")).unwrap();
    let pb = std::fs::read(dir.join("onnx.qml")).unwrap();
    assert_eq!(pa, pb, "the QGIS styles differ");
}

#[test]
fn export_refuses_bad_input_in_one_line() {
    let t = tmp();
    let dir = t.path();
    let m = new_model(dir, "linear", 5, 64);
    // a 5-band model exports, with a warning that Deepness cannot feed it
    let run = rstile_output(&["model", "export", s(&m), "-o", s(&dir.join("five.onnx"))]);
    assert!(run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("Deepness") && err.contains("five.stac.json"),
        "{err}"
    );
    // an existing output without --overwrite, an unwritable place, an ONNX input
    fails(
        &["model", "export", s(&m), "-o", s(&dir.join("five.onnx"))],
        "five.onnx",
    );
    let file = dir.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    fails(
        &["model", "export", s(&m), "-o", s(&file.join("m.onnx"))],
        "m.onnx",
    );
    fails(
        &[
            "model",
            "export",
            s(&dir.join("five.onnx")),
            "-o",
            s(&dir.join("again.onnx")),
        ],
        "already an ONNX model",
    );
    assert!(!dir.join("again.onnx").exists());
}

fn rstile_output(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// The pixel size a model knows travels into the export (Deepness'
/// `resolution` in cm, the MLM sidecar's `gsd` in metres), and `infer`
/// warns on a scene whose pixels differ by more than 25 %, for the native
/// model and its ONNX alike; a model that does not know it exports
/// neither.
#[test]
fn pixel_size_becomes_the_deepness_resolution_and_infer_warns() {
    let t = tmp();
    let dir = t.path();
    let classes = common::ISPRS_CLASSES;
    let m = dir.join("px.safetensors");
    ok(&[
        "model",
        "new",
        "--arch",
        "tiny",
        "--bands",
        "3",
        "--classes",
        classes,
        "--pixel-size",
        "0.3",
        "-o",
        s(&m),
    ]);
    let onnx = dir.join("px.onnx");
    ok(&["model", "export", s(&m), "-o", s(&onnx)]);
    let info = ok(&["model", "info", s(&onnx)]);
    assert!(info.contains("metadata  resolution = 30"), "{info}");
    assert!(info.contains("pixel     30 cm (from Deepness"), "{info}");
    let stac: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("px.stac.json")).unwrap()).unwrap();
    assert_eq!(stac["properties"]["gsd"], 0.3);
    // synth scenes have 9 cm pixels
    let scene = synth(dir, 300, 200, 3).join("image.tif");
    for (model, map) in [(&m, "a.tif"), (&onnx, "b.tif")] {
        let run = rstile_output(&infer_argv(&scene, &dir.join(map), model, &[]));
        assert!(run.status.success());
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("the scene's pixels are 9.0 cm, the model was made for 30.0 cm"),
            "{err}"
        );
    }
    // without a pixel size: no resolution, no gsd, no warning
    let plain = new_model(dir, "tiny", 3, 128);
    let onnx = dir.join("plain.onnx");
    ok(&["model", "export", s(&plain), "-o", s(&onnx)]);
    assert!(!ok(&["model", "info", s(&onnx)]).contains("resolution"));
    let stac: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("plain.stac.json")).unwrap()).unwrap();
    assert!(stac["properties"].get("gsd").is_none());
    let run = rstile_output(&infer_argv(&scene, &dir.join("c.tif"), &plain, &[]));
    assert!(!String::from_utf8_lossy(&run.stderr).contains("made for"));
}
