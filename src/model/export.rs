//! `rstile model export`: a model of the family as one ONNX file (opset 17)
//! that QGIS's Deepness plugin, onnxruntime and `rstile infer` run.
//!
//! The graph is written from the model's weights, layer by layer, under the
//! same torchvision names (`backbone.layer1.0.conv1.weight`, ...), in
//! inference form: batch norm as `BatchNormalization` with its running
//! statistics, dropout left out, PyTorch's bilinear resize as `Resize`
//! (`linear`, `half_pixel`: the same weights as `align_corners = False` when
//! upsampling). The input is `[batch, bands, window, window]` with a
//! dynamic batch; the output `probabilities` `[batch, classes, window,
//! window]` ends in a `Softmax` over the classes.
//!
//! The file carries Deepness' `metadata_props` (`model_type` "Segmentor",
//! `class_names`, `tiles_size`, `tiles_overlap` in percent, and
//! `standardization_mean`/`_std` divided by 255, since Deepness scales 8-bit
//! input to 0..1 before standardising, and `resolution` in cm per pixel when
//! the model knows its training pixel size); [`stac_mlm`] writes the STAC
//! MLM sidecar with bands, normalisation, classes and their colours (and
//! `gsd`, the pixel size in metres, when known), which `rstile infer` reads
//! back.

use super::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::resnet::{layer_plan, Dilate, DILATE_NONE, DILATE_OS8};
use super::{Arch, Model};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The opset written.
pub const OPSET: i64 = 17;

/// An attribute value.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

/// Builds the graph: nodes in order, initialisers from the model's variables.
struct Builder {
    vars: HashMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
}

impl Builder {
    fn var(&mut self, name: &str) -> Result<(String, Vec<usize>)> {
        let t = self
            .vars
            .get(name)
            .ok_or_else(|| Error::Config(format!("internal: the model has no variable '{name}'")))?
            .to_dtype(DType::F32)?;
        let dims = t.dims().to_vec();
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        let mut raw = Vec::with_capacity(data.len() * 4);
        for v in data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok((name.to_string(), dims))
    }

    fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    fn int64s(&mut self, name: &str, v: &[i64]) -> String {
        self.inits.push(TensorProto {
            dims: vec![v.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.to_string()),
            int64_data: v.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.next += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.next);
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: Some(name.to_string()),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.r#type = Some(AttributeType::Int as i32);
                        p.i = Some(i);
                    }
                    Attr::Ints(v) => {
                        p.r#type = Some(AttributeType::Ints as i32);
                        p.ints = v;
                    }
                    Attr::Float(f) => {
                        p.r#type = Some(AttributeType::Float as i32);
                        p.f = Some(f);
                    }
                    Attr::Str(s) => {
                        p.r#type = Some(AttributeType::String as i32);
                        p.s = Some(s.as_bytes().to_vec());
                    }
                }
                p
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        });
        out
    }

    /// `prefix.weight` (and `prefix.bias` if the model has it) as a Conv;
    /// returns the output and its spatial size.
    fn conv(
        &mut self,
        x: &str,
        prefix: &str,
        stride: usize,
        pad: usize,
        hw: (usize, usize),
    ) -> Result<(String, (usize, usize))> {
        self.conv_dilated(x, prefix, stride, pad, 1, hw)
    }

    /// [`Self::conv`] with a dilation (written as `dilations` unless 1, the
    /// ONNX default).
    fn conv_dilated(
        &mut self,
        x: &str,
        prefix: &str,
        stride: usize,
        pad: usize,
        dilation: usize,
        hw: (usize, usize),
    ) -> Result<(String, (usize, usize))> {
        let (w, dims) = self.var(&format!("{prefix}.weight"))?;
        let k = dims[2];
        let bias = format!("{prefix}.bias");
        let mut inputs = vec![x.to_string(), w];
        if self.has(&bias) {
            inputs.push(self.var(&bias)?.0);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let p = pad as i64;
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
            ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ];
        if dilation != 1 {
            let d = dilation as i64;
            attrs.push(("dilations", Attr::Ints(vec![d, d])));
        }
        let y = self.node("Conv", &refs, attrs);
        let out = |n: usize| (n + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
        Ok((y, (out(hw.0), out(hw.1))))
    }

    fn bn(&mut self, x: &str, prefix: &str) -> Result<String> {
        let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|p| self.var(&format!("{prefix}.{p}")).map(|v| v.0))
            .collect::<Result<_>>()?;
        let mut inputs = vec![x];
        inputs.extend(names.iter().map(String::as_str));
        Ok(self.node(
            "BatchNormalization",
            &inputs,
            vec![("epsilon", Attr::Float(1e-5))],
        ))
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// conv → bn (→ relu).
    fn conv_bn(
        &mut self,
        x: &str,
        names: (&str, &str),
        stride: usize,
        pad: usize,
        hw: (usize, usize),
        relu: bool,
    ) -> Result<(String, (usize, usize))> {
        self.conv_bn_dilated(x, names, (stride, pad, 1), hw, relu)
    }

    /// conv (stride, padding, dilation) → bn (→ relu).
    fn conv_bn_dilated(
        &mut self,
        x: &str,
        (conv, bn): (&str, &str),
        (stride, pad, dilation): (usize, usize, usize),
        hw: (usize, usize),
        relu: bool,
    ) -> Result<(String, (usize, usize))> {
        let (y, hw) = self.conv_dilated(x, conv, stride, pad, dilation, hw)?;
        let y = self.bn(&y, bn)?;
        Ok((if relu { self.relu(&y) } else { y }, hw))
    }

    /// PyTorch's bilinear resize (align_corners = False) of `channels`
    /// channels to `h x w`.
    fn resize(&mut self, x: &str, batch_of: &str, channels: usize, h: usize, w: usize) -> String {
        self.resize_mode(x, batch_of, channels, (h, w), false)
    }

    /// A resize to `h x w`: bilinear as PyTorch's `align_corners = False`,
    /// or `nearest` as PyTorch's (source index `floor(dst * in / out)`).
    fn resize_mode(
        &mut self,
        x: &str,
        batch_of: &str,
        channels: usize,
        (h, w): (usize, usize),
        nearest: bool,
    ) -> String {
        // the batch is dynamic: sizes = [N, K, h, w] from the input's shape
        let shape = self.node("Shape", &[batch_of], vec![]);
        self.next += 1;
        let zero = self.int64s(&format!("slice_start_{}", self.next), &[0]);
        let one = self.int64s(&format!("slice_end_{}", self.next), &[1]);
        let n = self.node("Slice", &[&shape, &zero, &one], vec![]);
        let rest = self.int64s(
            &format!("sizes_{}", self.next),
            &[channels as i64, h as i64, w as i64],
        );
        let sizes = self.node("Concat", &[&n, &rest], vec![("axis", Attr::Int(0))]);
        let attrs = if nearest {
            vec![
                ("mode", Attr::Str("nearest")),
                ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                ("nearest_mode", Attr::Str("floor")),
            ]
        } else {
            vec![
                ("mode", Attr::Str("linear")),
                ("coordinate_transformation_mode", Attr::Str("half_pixel")),
            ]
        };
        self.node("Resize", &[x, "", "", &sizes], attrs)
    }
}

/// The model's graph as an ONNX model with `metadata` (key, value) pairs.
pub fn to_onnx(model: &Model, metadata: &[(String, String)]) -> Result<ModelProto> {
    let meta = &model.meta;
    let vars: HashMap<String, Tensor> = model
        .varmap()
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let mut b = Builder {
        vars,
        nodes: Vec::new(),
        inits: Vec::new(),
        next: 0,
    };
    let win = meta.window;
    let k = meta.classes.len();
    let x = "image";
    let hw = (win, win);
    let Some(arch) = meta.arch.arch() else {
        return Err(Error::Config(
            "the model is an ONNX graph already; export takes rstile's own models".into(),
        ));
    };
    let logits = match arch {
        Arch::Linear => b.conv(x, "cls", 1, 0, hw)?.0,
        Arch::Identity => {
            let bands = meta.bands;
            let idx: Vec<i64> = super::identity::Identity::band_of_class(bands, k)
                .into_iter()
                .map(i64::from)
                .collect();
            let idx = b.int64s("band_of_class", &idx);
            b.node("Gather", &[x, &idx], vec![("axis", Attr::Int(1))])
        }
        Arch::Tiny => {
            let mut y = (x.to_string(), hw);
            for (i, s) in super::tiny::TINY_STRIDES.iter().enumerate() {
                y = b.conv_bn(
                    &y.0,
                    (&format!("enc.{i}.conv"), &format!("enc.{i}.bn")),
                    *s,
                    1,
                    y.1,
                    true,
                )?;
            }
            let (s, _) = b.conv(&y.0, "cls", 1, 0, y.1)?;
            b.resize(&s, x, k, win, win)
        }
        Arch::UnetResnet18 | Arch::UnetResnet34 | Arch::UnetResnet50 => unet(&mut b, x, hw)?,
        Arch::Resnet50FcnOs8 => resnet_fcn(&mut b, x, hw, k, DILATE_OS8)?,
        _ => resnet_fcn(&mut b, x, hw, k, DILATE_NONE)?,
    };
    let probs = b.node("Softmax", &[&logits], vec![("axis", Attr::Int(1))]);
    // the last node's output is the graph's output
    if let Some(last) = b.nodes.last_mut() {
        last.output = vec!["probabilities".into()];
    }
    let _ = probs;
    let tensor_type = |dims: Vec<dimension::Value>| TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(DataType::Float as i32),
            shape: Some(TensorShapeProto {
                dim: dims
                    .into_iter()
                    .map(|v| super::onnx::proto::tensor_shape_proto::Dimension {
                        value: Some(v),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let io = |name: &str, c: usize| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(tensor_type(vec![
            dimension::Value::DimParam("batch".into()),
            dimension::Value::DimValue(c as i64),
            dimension::Value::DimValue(win as i64),
            dimension::Value::DimValue(win as i64),
        ])),
        ..Default::default()
    };
    let graph = GraphProto {
        node: b.nodes,
        name: Some(meta.arch.to_string()),
        initializer: b.inits,
        input: vec![io(x, meta.bands)],
        output: vec![io("probabilities", k)],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("rstile".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    })
}

/// An output and its channels and spatial size.
type Feature = (String, usize, (usize, usize));

/// A torchvision ResNet under `prefix` (its structure read from the
/// variables' names, its strides and dilations from `dilate`): the stem's
/// output and layer1..layer4's.
fn resnet(
    b: &mut Builder,
    x: &str,
    prefix: &str,
    hw: (usize, usize),
    dilate: Dilate,
) -> Result<(Feature, Vec<Feature>)> {
    let plan = layer_plan(dilate);
    let (mut y, mut s) = b.conv_bn(
        x,
        (&format!("{prefix}.conv1"), &format!("{prefix}.bn1")),
        2,
        3,
        hw,
        true,
    )?;
    let stem = (y.clone(), 64, s);
    y = b.node(
        "MaxPool",
        &[&y],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    s = ((s.0 - 1) / 2 + 1, (s.1 - 1) / 2 + 1);
    let mut feats = Vec::new();
    for l in 1..=4 {
        let mut i = 0;
        let mut channels = 0;
        while b.has(&format!("{prefix}.layer{l}.{i}.conv1.weight")) {
            let p = format!("{prefix}.layer{l}.{i}");
            let last = if b.has(&format!("{p}.conv3.weight")) {
                "conv3"
            } else {
                "conv2"
            };
            channels = b.vars[&format!("{p}.{last}.weight")].dims()[0];
            let (first_stride, first_dilation, dilation) = plan[l - 1];
            let (stride, d) = if i == 0 {
                (first_stride, first_dilation)
            } else {
                (1, dilation)
            };
            let bottleneck = b.has(&format!("{p}.conv3.weight"));
            let (mut z, mut zs);
            if bottleneck {
                (z, zs) = b.conv_bn(
                    &y,
                    (&format!("{p}.conv1"), &format!("{p}.bn1")),
                    1,
                    0,
                    s,
                    true,
                )?;
                (z, zs) = b.conv_bn_dilated(
                    &z,
                    (&format!("{p}.conv2"), &format!("{p}.bn2")),
                    (stride, d, d),
                    zs,
                    true,
                )?;
                (z, zs) = b.conv_bn(
                    &z,
                    (&format!("{p}.conv3"), &format!("{p}.bn3")),
                    1,
                    0,
                    zs,
                    false,
                )?;
            } else {
                (z, zs) = b.conv_bn(
                    &y,
                    (&format!("{p}.conv1"), &format!("{p}.bn1")),
                    stride,
                    1,
                    s,
                    true,
                )?;
                (z, zs) = b.conv_bn(
                    &z,
                    (&format!("{p}.conv2"), &format!("{p}.bn2")),
                    1,
                    1,
                    zs,
                    false,
                )?;
            }
            let identity = if b.has(&format!("{p}.downsample.0.weight")) {
                b.conv_bn(
                    &y,
                    (&format!("{p}.downsample.0"), &format!("{p}.downsample.1")),
                    stride,
                    0,
                    s,
                    false,
                )?
                .0
            } else {
                y.clone()
            };
            let sum = b.node("Add", &[&z, &identity], vec![]);
            y = b.relu(&sum);
            s = zs;
            i += 1;
        }
        feats.push((y.clone(), channels, s));
    }
    Ok((stem, feats))
}

/// A torchvision ResNet (dilated as `dilate` says) with rstile's FCN head,
/// and the FCN-8s skips when the model has them.
fn resnet_fcn(
    b: &mut Builder,
    x: &str,
    hw: (usize, usize),
    k: usize,
    dilate: Dilate,
) -> Result<String> {
    let (_, feats) = resnet(b, x, "backbone", hw, dilate)?;
    let (y, _, s) = feats[3].clone();
    let (h, _) = b.conv_bn(&y, ("classifier.0", "classifier.1"), 1, 1, s, true)?;
    let (mut out, _) = b.conv(&h, "classifier.4", 1, 0, s)?;
    if b.has("score16.weight") {
        for (name, f) in [("score16", 2), ("score8", 1)] {
            let (fy, _, fs) = feats[f].clone();
            let (sc, _) = b.conv(&fy, name, 1, 0, fs)?;
            let up = b.resize(&out, x, k, fs.0, fs.1);
            out = b.node("Add", &[&up, &sc], vec![]);
        }
    }
    Ok(b.resize(&out, x, k, hw.0, hw.1))
}

/// smp's Unet: the encoder, five decoder blocks (nearest x2 to the skip's
/// size, concatenation, two conv-BN-ReLU units), the 3x3 head.
fn unet(b: &mut Builder, x: &str, hw: (usize, usize)) -> Result<String> {
    let (stem, feats) = resnet(b, x, "encoder", hw, DILATE_NONE)?;
    let skips = [
        Some(feats[2].clone()),
        Some(feats[1].clone()),
        Some(feats[0].clone()),
        Some(stem),
        None,
    ];
    let (mut y, mut c, _) = feats[3].clone();
    for (i, skip) in skips.into_iter().enumerate() {
        let target = skip.as_ref().map_or(hw, |s| s.2);
        let up = b.resize_mode(&y, x, c, target, true);
        let cat = match &skip {
            Some((sk, _, _)) => b.node("Concat", &[&up, sk], vec![("axis", Attr::Int(1))]),
            None => up,
        };
        let p = format!("decoder.blocks.{i}");
        let (z, _) = b.conv_bn(
            &cat,
            (&format!("{p}.conv1.0"), &format!("{p}.conv1.1")),
            1,
            1,
            target,
            true,
        )?;
        let (z, _) = b.conv_bn(
            &z,
            (&format!("{p}.conv2.0"), &format!("{p}.conv2.1")),
            1,
            1,
            target,
            true,
        )?;
        c = b.vars[&format!("{p}.conv2.0.weight")].dims()[0];
        y = z;
    }
    Ok(b.conv(&y, "segmentation_head.0", 1, 1, hw)?.0)
}

/// Deepness' `metadata_props` for `model` (see the module documentation).
pub fn deepness_metadata(model: &Model) -> Vec<(String, String)> {
    let m = &model.meta;
    let names: serde_json::Map<String, serde_json::Value> = m
        .classes
        .classes
        .iter()
        .enumerate()
        .map(|(c, class)| (c.to_string(), class.name.clone().into()))
        .collect();
    let scaled = |v: &[f32]| -> String {
        serde_json::to_string(&v.iter().map(|x| x / 255.0).collect::<Vec<f32>>())
            .expect("floats serialise")
    };
    vec![
        ("model_type".into(), "\"Segmentor\"".into()),
        (
            "class_names".into(),
            serde_json::Value::Object(names).to_string(),
        ),
        ("tiles_size".into(), m.window.to_string()),
        (
            "tiles_overlap".into(),
            ((m.overlap * 100.0).round() as i64).to_string(),
        ),
        ("standardization_mean".into(), scaled(&m.mean)),
        ("standardization_std".into(), scaled(&m.std)),
    ]
    .into_iter()
    .chain(m.pixel_size.map(|p| {
        // Deepness: cm per pixel
        let cm = (p * 100.0 * 1e6).round() / 1e6;
        ("resolution".into(), serde_json::Value::from(cm).to_string())
    }))
    .collect()
}

/// The STAC item (Machine Learning Model extension) that describes the
/// exported model: its input (bands, normalisation, shape), its output
/// (classes with colours), the framework.
pub fn stac_mlm(model: &Model, onnx_name: &str) -> serde_json::Value {
    let m = &model.meta;
    let bands: Vec<String> = if m.band_names.len() == m.bands {
        m.band_names.clone()
    } else {
        (1..=m.bands).map(|b| format!("band {b}")).collect()
    };
    let classes: Vec<serde_json::Value> = m
        .classes
        .classes
        .iter()
        .enumerate()
        .map(|(c, class)| {
            serde_json::json!({
                "value": c,
                "name": class.name,
                "color_hint": class.color.trim_start_matches('#').to_uppercase(),
            })
        })
        .collect();
    let scaling: Vec<serde_json::Value> = m
        .mean
        .iter()
        .zip(&m.std)
        .map(|(mean, std)| serde_json::json!({"type": "z-score", "mean": mean, "stddev": std}))
        .collect();
    let mut item = serde_json::json!({
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
            "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
        ],
        "id": onnx_name,
        "geometry": null,
        "properties": {
            "datetime": null,
            "mlm:name": onnx_name,
            "mlm:architecture": m.arch.to_string(),
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:framework": "ONNX (exported by rstile)",
            "mlm:framework_version": env!("CARGO_PKG_VERSION"),
            "mlm:input": [{
                "name": "image",
                "bands": bands,
                "input": {
                    "shape": [-1, m.bands, m.window, m.window],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32"
                },
                "value_scaling": scaling
            }],
            "mlm:output": [{
                "name": "probabilities",
                "tasks": ["semantic-segmentation"],
                "result": {
                    "shape": [-1, m.classes.len(), m.window, m.window],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32"
                },
                "classification:classes": classes
            }]
        },
        "assets": {"model": {"href": onnx_name, "type": "application/octet-stream; framework=onnx", "roles": ["mlm:model"]}}
    });
    if let Some(p) = m.pixel_size {
        // STAC common metadata: ground sample distance in metres
        item["properties"]["gsd"] = p.into();
    }
    item
}

/// Whether Deepness can feed the model: 3 (RGB) or 4 (RGBA) 8-bit bands.
pub fn deepness_can_feed(model: &Model) -> bool {
    matches!(model.meta.bands, 3 | 4)
}

/// Writes `model` as ONNX to `out` (through a hidden `.partial` file) and
/// its STAC MLM sidecar `STEM.stac.json`.
pub fn export(model: &Model, out: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    use prost::Message;
    let proto = to_onnx(model, &deepness_metadata(model))?;
    let bytes = proto.encode_to_vec();
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sidecar = crate::raster::stem_with(out, ".stac.json");
    let json = serde_json::to_string_pretty(&stac_mlm(model, &name)).expect("JSON serialises");
    for (path, data) in [
        (out.to_path_buf(), bytes),
        (sidecar.clone(), json.into_bytes()),
    ] {
        let tmp = crate::raster::sibling(&path, ".", ".partial");
        if let Err(e) = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::file(&path, format!("cannot write: {e}")));
        }
    }
    Ok((out.to_path_buf(), sidecar))
}
