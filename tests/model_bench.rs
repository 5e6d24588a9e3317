//! `rstile model bench`: what it reports, from the real binary, and its
//! bad input.

mod common;
use common::*;

#[test]
fn reports_forward_and_training_times_with_the_flop_count() {
    let out = ok(&[
        "model",
        "bench",
        "--arch",
        "tiny",
        "--bands",
        "5",
        "--batch",
        "2",
        "--size",
        "64",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--train",
        "--threads",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["arch"], "tiny");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["threads"], 1);
    // tiny at 64 x 64: three 3x3 convolutions (5→16 /2, 16→32 /2, 32→32)
    // and the 1x1 classifier (32→6), per window:
    let per_window = 2.0
        * (16.0 * 45.0 * 32.0 * 32.0
            + 32.0 * 144.0 * 16.0 * 16.0
            + 32.0 * 288.0 * 16.0 * 16.0
            + 6.0 * 32.0 * 16.0 * 16.0);
    let gflop = v["forward_gflop"].as_f64().unwrap();
    assert!((gflop - 2.0 * per_window / 1e9).abs() < 1e-9, "{gflop}");
    for k in ["forward_min_s", "forward_median_s", "train_step_min_s"] {
        let t = v[k].as_f64().unwrap();
        assert!(t > 0.0 && t < 60.0, "{k} = {t}");
    }
    assert!(v["forward_min_s"].as_f64() <= v["forward_median_s"].as_f64());
    let ph = &v["train_phases_s"];
    assert!(ph["backward"].as_f64().unwrap() > 0.0);
    // rstile's own ops, timed inside the same step: tiny has convolutions
    // and batch norms (no max pool), each within its phase
    let ops = &v["train_ops_s"];
    let op = |k: &str| ops[k].as_f64().unwrap_or_else(|| panic!("no {k} in {ops}"));
    for k in [
        "conv_forward",
        "conv_backward",
        "batch_norm_forward",
        "batch_norm_backward",
    ] {
        assert!(op(k) > 0.0, "{k} = {}", op(k));
    }
    assert_eq!(op("max_pool_forward"), 0.0);
    let (f, b) = (
        ph["forward"].as_f64().unwrap(),
        ph["backward"].as_f64().unwrap(),
    );
    assert!(
        op("conv_forward") + op("batch_norm_forward") <= f,
        "{ops} vs forward {f}"
    );
    assert!(
        op("conv_backward") + op("batch_norm_backward") <= b,
        "{ops} vs backward {b}"
    );
}

#[test]
fn bad_arguments_get_one_line_errors() {
    fails(&["model", "bench", "--batch", "0"], "--batch");
    fails(&["model", "bench", "--arch", "resnet99"], "resnet99");
    fails(
        &["model", "bench", "--model", "/nonexistent/m.safetensors"],
        "/nonexistent/m.safetensors",
    );
    fails(&["model", "bench", "--device", "cuda:0"], "cuda:0");
}

/// `--profile` on a real export (smp's Unet, as the fixtures hold it):
/// every node is timed once per forward, the decoder's Resize feeding a
/// Concat is fused, the Convs carry their FLOPs; on rstile's own model it
/// is refused.
#[test]
fn profile_times_each_node_of_an_onnx_graph() {
    let model = format!(
        "{}/tests/fixtures/onnx/smp_unet_resnet18_3b_ts13.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    let args = [
        "model",
        "bench",
        "--model",
        &model,
        "--batch",
        "1",
        "--size",
        "64",
        "--iters",
        "2",
        "--threads",
        "1",
        "--profile",
    ];
    let out = ok(&[&args[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let nodes = v["profile"].as_array().expect("a profile");
    let kind = |k: &str| nodes.iter().filter(|n| n["kind"] == k).count();
    // four decoder blocks join a skip; the last one only upsamples
    assert_eq!(kind("Resize+Concat"), 4, "{nodes:?}");
    assert_eq!((kind("Resize"), kind("Concat")), (1, 0), "{nodes:?}");
    assert!(kind("Conv+Relu") > 5);
    let secs: Vec<f64> = nodes
        .iter()
        .map(|n| n["seconds"].as_f64().unwrap())
        .collect();
    assert!(
        secs.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {secs:?}"
    );
    // the Convs' FLOPs add up to the forward's
    let gflop: f64 = nodes.iter().map(|n| n["gflop"].as_f64().unwrap()).sum();
    let forward = v["forward_gflop"].as_f64().unwrap();
    assert!(
        (gflop - forward).abs() < 1e-6 * forward,
        "{gflop} vs {forward}"
    );
    let text = ok(&args);
    assert!(text.contains("per forward, by node kind"), "{text}");
    assert!(text.contains("the slowest nodes:"), "{text}");
    fails(
        &[
            "model",
            "bench",
            "--arch",
            "tiny",
            "--size",
            "64",
            "--profile",
        ],
        "--profile",
    );
}
