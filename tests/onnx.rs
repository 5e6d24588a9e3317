//! ONNX models through the real binary: `rstile model run` on every
//! fixture (real exports from PyTorch, with onnxruntime's output beside
//! each), and bad models, each refused with one line naming the file and
//! no output left behind.
//!
//! Fixtures: `tests/fixtures/onnx/` (smp and torchvision networks, made by
//! `scripts/onnx-fixtures.py`) and `tests/fixtures/onnx-ops/` (small
//! networks that use the rarer ops and attributes, made by
//! `scripts/onnx-op-fixtures.py`): `NAME.onnx`, `NAME.input.npy`,
//! `NAME.output.npy`.
//!
//! The error measure is `max |rstile - onnxruntime| / max |onnxruntime|`
//! over the whole output, below 1e-4.

mod common;
use common::*;
use prost::Message;
use rstile::model::onnx::proto::{
    self, tensor_proto::DataLocation, tensor_shape_proto, type_proto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v = vec![];
    for dir in ["onnx", "onnx-ops"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let input = p.with_file_name(format!("{stem}.input.npy"));
            if p.extension().is_some_and(|x| x == "onnx") && input.exists() {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// `max |a - b| / max |b|`.
fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

#[test]
fn every_fixture_matches_onnxruntime() {
    let all = fixtures();
    assert!(
        !all.is_empty(),
        "no ONNX fixtures found under tests/fixtures"
    );
    let dir = tmp();
    let mut report = vec![];
    for model in &all {
        let stem = model.file_stem().unwrap().to_str().unwrap();
        let input = model.with_file_name(format!("{stem}.input.npy"));
        let want = model.with_file_name(format!("{stem}.output.npy"));
        let out = dir.path().join(format!("{stem}.npy"));
        ok(&[
            "model",
            "run",
            s(model),
            "--input",
            s(&input),
            "-o",
            s(&out),
            "--threads",
            "2",
        ]);
        let (gd, got) = read_npy(&out);
        let (wd, want) = read_npy(&want);
        assert_eq!(gd, wd, "{stem}: output shape");
        let e = rel_error(&got, &want);
        report.push(format!("{stem}: {e:.2e}"));
        assert!(e < TOLERANCE, "{stem}: relative error {e:.3e}");
    }
    eprintln!("{}", report.join("\n"));
}

fn tensor_type(dims: &[i64]) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(1),
            shape: Some(TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|&d| tensor_shape_proto::Dimension {
                        value: Some(if d < 0 {
                            tensor_shape_proto::dimension::Value::DimParam("batch".into())
                        } else {
                            tensor_shape_proto::dimension::Value::DimValue(d)
                        }),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(tensor_type(dims)),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn weights(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, init: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("rstile tests".into()),
        metadata_props: vec![StringStringEntryProto {
            key: Some("model_type".into()),
            value: Some("\"Segmentor\"".into()),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: vec![value("y", &[-1, 2, 8, 8])],
            initializer: init,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A 3 → 2 channel 3x3 convolution with a ReLU, inputs `[B, 3, 8, 8]`.
fn conv_model() -> ModelProto {
    let w: Vec<f32> = (0..54).map(|i| (i as f32 - 27.0) / 50.0).collect();
    let mut conv = node("Conv", "conv0", &["x", "w", "b"], &["c"]);
    conv.attribute.push(proto::AttributeProto {
        name: Some("pads".into()),
        r#type: Some(proto::attribute_proto::AttributeType::Ints as i32),
        ints: vec![1, 1, 1, 1],
        ..Default::default()
    });
    model(
        vec![conv, node("Relu", "relu0", &["c"], &["y"])],
        vec![value("x", &[-1, 3, 8, 8])],
        vec![
            weights("w", &[2, 3, 3, 3], &w),
            weights("b", &[2], &[0.5, -0.25]),
        ],
    )
}

fn write(p: &Path, m: &ModelProto) {
    std::fs::write(p, m.encode_to_vec()).unwrap();
}

fn input_npy(dir: &Path, dims: &[usize]) -> PathBuf {
    let n: usize = dims.iter().product();
    let t = candle_core::Tensor::from_vec(
        (0..n)
            .map(|i| ((i * 37) % 17) as f32 / 17.0 - 0.5)
            .collect::<Vec<f32>>(),
        dims,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let p = dir.join("x.npy");
    rstile::model::npy::write_f32(&p, &t).unwrap();
    p
}

/// Runs `model run` on a bad model: one error line naming the model file
/// and mentioning `needle`, and no output file.
fn refused(model: &Path, input: &Path, needle: &str) -> String {
    let out = model.with_extension("out.npy");
    let err = fails(
        &["model", "run", s(model), "--input", s(input), "-o", s(&out)],
        needle,
    );
    assert!(err.contains(s(model)), "the error names the file: {err}");
    assert!(!out.exists(), "no output after: {err}");
    let dir = out.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.contains("out.npy"), "left behind: {name}");
    }
    err
}

#[test]
fn a_crafted_model_runs_and_matches_a_direct_computation() {
    let dir = tmp();
    let m = dir.path().join("conv.onnx");
    write(&m, &conv_model());
    let x = input_npy(dir.path(), &[2, 3, 8, 8]);
    let out = dir.path().join("y.npy");
    ok(&["model", "run", s(&m), "--input", s(&x), "-o", s(&out)]);
    let (dims, y) = read_npy(&out);
    assert_eq!(dims, [2, 2, 8, 8]);
    // the same convolution by candle, then ReLU
    let (_, xv) = read_npy(&x);
    let dev = candle_core::Device::Cpu;
    let xt = candle_core::Tensor::from_vec(xv, (2, 3, 8, 8), &dev).unwrap();
    let w: Vec<f32> = (0..54).map(|i| (i as f32 - 27.0) / 50.0).collect();
    let wt = candle_core::Tensor::from_vec(w, (2, 3, 3, 3), &dev).unwrap();
    let b = candle_core::Tensor::from_vec(vec![0.5f32, -0.25], (1, 2, 1, 1), &dev).unwrap();
    let want = xt
        .conv2d(&wt, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .relu()
        .unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(rel_error(&y, &want) < 1e-6);
}

#[test]
fn a_truncated_model_is_refused() {
    let dir = tmp();
    let bytes = conv_model().encode_to_vec();
    let x = input_npy(dir.path(), &[1, 3, 8, 8]);
    // cut inside the weights, and at a few other places
    for cut in [bytes.len() / 2, bytes.len() - 3, 40] {
        let m = dir.path().join(format!("cut{cut}.onnx"));
        std::fs::write(&m, &bytes[..cut]).unwrap();
        refused(&m, &x, "not an ONNX model");
    }
}

#[test]
fn a_file_that_is_not_protobuf_is_refused() {
    let dir = tmp();
    let x = input_npy(dir.path(), &[1, 3, 8, 8]);
    let m = dir.path().join("text.onnx");
    std::fs::write(&m, "this is a text file, not a model\n".repeat(20)).unwrap();
    refused(&m, &x, "not an ONNX model");
    let m = dir.path().join("png.onnx");
    std::fs::write(&m, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10").unwrap();
    refused(&m, &x, "not an ONNX model");
}

#[test]
fn missing_external_data_is_refused() {
    let dir = tmp();
    let x = input_npy(dir.path(), &[1, 3, 8, 8]);
    let mut m = conv_model();
    let g = m.graph.as_mut().unwrap();
    let w = &mut g.initializer[0];
    let raw = w.raw_data.take().unwrap();
    w.data_location = Some(DataLocation::External as i32);
    let entry = |k: &str, v: &str| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    w.external_data = vec![
        entry("location", "conv.onnx.data"),
        entry("offset", "0"),
        entry("length", &raw.len().to_string()),
    ];
    let p = dir.path().join("conv.onnx");
    write(&p, &m);
    let err = refused(&p, &x, "conv.onnx.data");
    assert!(err.contains("'w'"), "names the tensor: {err}");
    // with the data beside it, the model runs
    std::fs::write(dir.path().join("conv.onnx.data"), &raw).unwrap();
    let out = dir.path().join("y.npy");
    ok(&["model", "run", s(&p), "--input", s(&x), "-o", s(&out)]);
    // too short a data file
    std::fs::write(dir.path().join("conv.onnx.data"), &raw[..10]).unwrap();
    refused(&p, &x, "holds 10 bytes");
}

#[test]
fn two_image_inputs_are_refused() {
    let dir = tmp();
    let x = input_npy(dir.path(), &[1, 2, 8, 8]);
    let m = model(
        vec![node("Add", "add0", &["a", "b"], &["y"])],
        vec![value("a", &[-1, 2, 8, 8]), value("b", &[-1, 2, 8, 8])],
        vec![],
    );
    let p = dir.path().join("two.onnx");
    write(&p, &m);
    let err = refused(&p, &x, "2 inputs");
    assert!(err.contains("'a'") && err.contains("'b'"), "{err}");
}

#[test]
fn an_unsupported_op_or_attribute_is_refused_naming_op_and_node() {
    let dir = tmp();
    let x = input_npy(dir.path(), &[1, 3, 8, 8]);
    let mut m = conv_model();
    m.graph.as_mut().unwrap().node[1] = node("NonMaxSuppression", "nms_7", &["c"], &["y"]);
    let p = dir.path().join("nms.onnx");
    write(&p, &m);
    let err = refused(
        &p,
        &x,
        "op NonMaxSuppression (node 'nms_7') is not supported",
    );
    assert!(!err.contains('\n'.to_string().as_str().repeat(2).as_str()));
    // a known op with a value it does not handle
    let mut m = conv_model();
    let mut r = node("Resize", "up_3", &["c", "", "s"], &["y"]);
    r.attribute.push(proto::AttributeProto {
        name: Some("mode".into()),
        r#type: Some(proto::attribute_proto::AttributeType::String as i32),
        s: Some(b"cubic".to_vec()),
        ..Default::default()
    });
    let g = m.graph.as_mut().unwrap();
    g.node[1] = r;
    g.initializer
        .push(weights("s", &[4], &[1.0, 1.0, 2.0, 2.0]));
    let p = dir.path().join("cubic.onnx");
    write(&p, &m);
    refused(
        &p,
        &x,
        "op Resize (node 'up_3'): mode 'cubic' is not supported",
    );
    // an attribute it does not know
    let mut m = conv_model();
    m.graph.as_mut().unwrap().node[1]
        .attribute
        .push(proto::AttributeProto {
            name: Some("frobnicate".into()),
            r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
            i: Some(1),
            ..Default::default()
        });
    let p = dir.path().join("attr.onnx");
    write(&p, &m);
    refused(
        &p,
        &x,
        "op Relu (node 'relu0'): attribute 'frobnicate' is not supported",
    );
    // several: one line lists every node rstile cannot run
    let mut m = conv_model();
    let g = m.graph.as_mut().unwrap();
    g.node[1] = node("NonMaxSuppression", "nms_7", &["c"], &["y"]);
    g.node[0].attribute.push(proto::AttributeProto {
        name: Some("frobnicate".into()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(1),
        ..Default::default()
    });
    let p = dir.path().join("two.onnx");
    write(&p, &m);
    let err = refused(&p, &x, "2 nodes rstile cannot run: op Conv (node 'conv0'): attribute 'frobnicate' is not supported; op NonMaxSuppression (node 'nms_7') is not supported");
    assert!(err.contains("two.onnx"), "{err}");
    let err = String::from_utf8_lossy(&rstile(&["model", "info", s(&p)]).stderr).to_string();
    assert!(
        err.contains("nms_7") && err.contains("conv0"),
        "model info: {err}"
    );
}

#[test]
fn an_input_that_does_not_fit_is_refused() {
    let dir = tmp();
    let p = dir.path().join("conv.onnx");
    write(&p, &conv_model());
    let x = input_npy(dir.path(), &[1, 4, 8, 8]);
    refused(&p, &x, "the graph's input is [batch, 3, 8, 8]");
}

#[test]
fn the_broken_fixtures_are_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    let dir = tmp();
    let x = input_npy(dir.path(), &[1, 3, 32, 32]);
    for (name, needle) in [
        (
            "bad_missing_external_data",
            "bad_missing_external_data.onnx.data",
        ),
        ("bad_two_inputs", "2 inputs ('a', 'b')"),
        (
            "bad_unsupported_op",
            "op GridSample (node '/GridSample') is not supported",
        ),
    ] {
        // a copy, so that the output lands in the temporary folder
        let m = dir.path().join(format!("{name}.onnx"));
        std::fs::copy(root.join(format!("{name}.onnx")), &m).unwrap();
        refused(&m, &x, needle);
    }
}
