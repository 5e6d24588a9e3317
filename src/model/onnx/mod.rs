//! ONNX segmentation networks (as `torch.onnx.export` writes them), run on
//! candle tensors, with rstile's own CPU kernels for the convolutions.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use rstile::model::onnx::OnnxModel;
//! # fn main() -> rstile::Result<()> {
//! let model = OnnxModel::load("unet.onnx".as_ref(), &Device::Cpu)?;
//! let bands = model.bands().unwrap_or(3);
//! // checks the window against the graph and runs it once at batch 1
//! let r = model.resolve(256, 256)?;
//! println!("output {:?}, {} GFLOP per window", r.outputs[0], r.conv_flops as f64 / 1e9);
//! let x = Tensor::zeros((4, bands, 256, 256), candle_core::DType::F32, &Device::Cpu)?;
//! let y = model.run(&x)?; // (4, K, 256, 256): logits or probabilities
//! # Ok(()) }
//! ```
//!
//! - [`proto`]: ONNX's protobuf messages (generated once by prost-build and
//!   committed; no `protoc` at build time);
//! - `tensor.rs`: `TensorProto` to tensors, external data included;
//! - `graph.rs`: compiling every node (or refusing the model, naming the
//!   op, the node and the file), ordering, constant folding, Conv fusion;
//! - `ops/`: the ops, one file per family;
//! - `eval.rs`: running the graph on a batch.
//!
//! Loading refuses, with one line naming the file: a file that is not an
//! ONNX model, a truncated one, external data that is missing, any op or
//! attribute the evaluator does not handle, and a graph whose image input
//! is not exactly one `[B, C, H, W]` tensor. So a model that loads only
//! fails at run time on shapes that do not fit (see [`OnnxModel::resolve`]).

mod eval;
mod graph;

pub use eval::NodeTime;
mod ops;
pub mod proto;
mod tensor;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use prost::Message;
use proto::{type_proto, ModelProto, ValueInfoProto};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files an ONNX model consists of: the `.onnx` and the external data
/// files its initializers name (relative to its folder), each once. A file
/// that is not an ONNX model gives just itself.
pub fn model_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let Ok(bytes) = std::fs::read(path) else {
        return files;
    };
    let Ok(m) = ModelProto::decode(bytes.as_slice()) else {
        return files;
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(g) = &m.graph {
        for t in &g.initializer {
            for e in &t.external_data {
                if e.key() == "location" {
                    let f = dir.join(e.value());
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
        }
    }
    files
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Named (`dim_param`, e.g. "batch") or anonymous (empty name).
    Dynamic(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(s) if s.is_empty() => f.write_str("?"),
            Dim::Dynamic(s) => f.write_str(s),
        }
    }
}

/// A graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    /// Empty when the file gives no shape.
    pub dims: Vec<Dim>,
    /// ONNX's element type name ("float", "float16", "int64", ...).
    pub elem_type: String,
}

/// What [`OnnxModel::resolve`] found for a window size.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub height: usize,
    pub width: usize,
    /// The dims of each graph output for one window (batch 1).
    pub outputs: Vec<Vec<usize>>,
    /// Conv and ConvTranspose FLOPs (multiply-adds times two) per window.
    pub conv_flops: u64,
    /// The most bytes of activations alive at once for one window (the
    /// weights not included).
    pub peak_bytes: u64,
}

/// An ONNX model loaded, compiled and resolved, ready to run batches.
pub struct OnnxModel {
    path: PathBuf,
    graph: graph::Graph,
    device: Device,
    input: ValueInfo,
    outputs: Vec<ValueInfo>,
    metadata: Vec<(String, String)>,
    opset: i64,
    producer: String,
    params: usize,
    cache: eval::ShapeCache,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .field("opset", &self.opset)
            .finish()
    }
}

fn elem_type_name(code: i32) -> String {
    match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "double",
        16 => "bfloat16",
        _ => "other",
    }
    .to_string()
}

fn value_info(v: &ValueInfoProto) -> ValueInfo {
    let mut dims = vec![];
    let mut elem_type = String::from("unknown");
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    {
        elem_type = elem_type_name(t.elem_type());
        if let Some(s) = &t.shape {
            for d in &s.dim {
                dims.push(match &d.value {
                    Some(proto::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                        Dim::Fixed(*n as usize)
                    }
                    Some(proto::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                        Dim::Dynamic(p.clone())
                    }
                    _ => Dim::Dynamic(String::new()),
                });
            }
        }
    }
    ValueInfo {
        name: v.name().to_string(),
        dims,
        elem_type,
    }
}

impl OnnxModel {
    /// Reads, compiles and resolves the model at `path`; weights go to
    /// `device`. Every error is one line that names the file (and, for a
    /// node it cannot run, the op and the node).
    pub fn load(path: &Path, device: &Device) -> Result<OnnxModel> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let m = ModelProto::decode(bytes.as_slice()).map_err(|e| {
            Error::file(
                path,
                format!("not an ONNX model (or a truncated one): protobuf: {e}"),
            )
        })?;
        drop(bytes);
        let Some(g) = &m.graph else {
            return Err(Error::file(path, "not an ONNX model: it holds no graph"));
        };
        if g.node.is_empty() {
            return Err(Error::file(
                path,
                "not an ONNX model (or a truncated one): the graph has no nodes",
            ));
        }
        let opset = m
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .unwrap_or(1);
        let init: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name()).collect();
        let images: Vec<&ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !init.contains(i.name()))
            .collect();
        let input = match images.as_slice() {
            [one] => value_info(one),
            [] => return Err(Error::file(path, "the graph has no input")),
            many => {
                let names: Vec<String> = many.iter().map(|i| format!("'{}'", i.name())).collect();
                return Err(Error::file(
                    path,
                    format!(
                        "the graph has {} inputs ({}); rstile runs graphs with one image input [B, C, H, W]",
                        many.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        if input.dims.len() != 4 {
            return Err(Error::file(
                path,
                format!(
                    "the graph's input '{}' has shape [{}]; rstile needs one image input [B, C, H, W]",
                    input.name,
                    input.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !matches!(input.elem_type.as_str(), "float" | "float16" | "double") {
            return Err(Error::file(
                path,
                format!(
                    "the graph's input '{}' is of type {}; rstile feeds floats",
                    input.name, input.elem_type
                ),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let read = |t: &proto::TensorProto| tensor::read(t, &dir);
        let params = g
            .initializer
            .iter()
            .filter(|t| matches!(t.data_type(), 1 | 10 | 11 | 16))
            .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
            .sum();
        let graph = graph::Graph::build(g, opset, &input.name, &read, device)
            .map_err(|why| Error::file(path, why))?;
        Ok(OnnxModel {
            path: path.to_path_buf(),
            device: device.clone(),
            outputs: g.output.iter().map(value_info).collect(),
            input,
            metadata: m
                .metadata_props
                .iter()
                .map(|p| (p.key().to_string(), p.value().to_string()))
                .collect(),
            opset,
            producer: format!("{} {}", m.producer_name(), m.producer_version())
                .trim()
                .to_string(),
            params,
            graph,
            cache: eval::ShapeCache::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The image input, `[B, C, H, W]`.
    pub fn input(&self) -> &ValueInfo {
        &self.input
    }

    /// The input's band count, when the graph fixes it.
    pub fn bands(&self) -> Option<usize> {
        self.input.dims[1].fixed()
    }

    /// The batch size, when the graph fixes it (then every batch must have
    /// exactly that many windows).
    pub fn fixed_batch(&self) -> Option<usize> {
        self.input.dims[0].fixed()
    }

    /// The window `(H, W)`, when the graph fixes it.
    pub fn fixed_window(&self) -> (Option<usize>, Option<usize>) {
        (self.input.dims[2].fixed(), self.input.dims[3].fixed())
    }

    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }

    /// `metadata_props` in file order (Deepness writes JSON strings).
    pub fn metadata_props(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// One `metadata_props` value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The default domain's opset version.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// `producer_name producer_version`, e.g. "pytorch 2.5.1".
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// How many nodes of each op the file holds (before folding and fusion).
    pub fn op_histogram(&self) -> &BTreeMap<String, usize> {
        &self.graph.histogram
    }

    /// Elements of the float initializers (the weights and batch-norm
    /// statistics), as stored.
    pub fn num_params(&self) -> usize {
        self.params
    }

    /// The op of the node that computes the first output (`Softmax`,
    /// `Sigmoid`, `Conv`, ...), if a node does.
    pub fn output_op(&self) -> Option<&str> {
        let out = *self.graph.outputs.first()?;
        self.graph
            .nodes
            .iter()
            .rev()
            .find(|n| n.outputs.contains(&out))
            .map(|n| n.op_type.as_str())
    }

    /// Drops the graph's final Softmax over the classes, when it has one
    /// that nothing else reads: [`OnnxModel::run`] then gives the logits,
    /// whose softmax is the graph's output. Says whether it did.
    pub fn strip_final_softmax(&mut self) -> bool {
        self.graph.strip_final_softmax()
    }

    /// The float constants (weights, folded batch norms) that hold NaN or
    /// infinite values: name, how many, of how many.
    pub fn non_finite_weights(&self) -> Vec<(String, usize, usize)> {
        let mut bad = Vec::new();
        for (id, c) in self.graph.consts.iter().enumerate() {
            let Some(t) = c else { continue };
            if !t.dtype().is_float() {
                continue;
            }
            let Ok(v) = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
            else {
                continue;
            };
            let n = v.iter().filter(|x| !x.is_finite()).count();
            if n > 0 {
                bad.push((self.graph.names[id].clone(), n, v.len()));
            }
        }
        bad
    }

    /// Nodes left to run per batch after folding and fusion.
    pub fn num_nodes(&self) -> usize {
        self.graph.nodes.len()
    }

    /// Checks a `height x width` window against the graph's input and runs
    /// the graph once on a zero window (batch 1), so that shapes that do not
    /// fit the window fail here, before any output exists. Costs one
    /// forward pass of one window.
    pub fn resolve(&self, height: usize, width: usize) -> Result<Resolved> {
        let (h, w) = self.fixed_window();
        if h.is_some_and(|h| h != height) || w.is_some_and(|w| w != width) {
            return Err(Error::file(
                &self.path,
                format!(
                    "the graph takes {}x{} windows, not {height}x{width}",
                    self.input.dims[2], self.input.dims[3]
                ),
            ));
        }
        let bands = self.bands().ok_or_else(|| {
            Error::file(&self.path, "the graph's input does not fix its band count")
        })?;
        let batch = self.fixed_batch().unwrap_or(1);
        let x = Tensor::zeros((batch, bands, height, width), DType::F32, &self.device)?;
        let mut counts = eval::Counts::default();
        let ys = self.run_inner(&x, Some(&mut counts))?;
        Ok(Resolved {
            height,
            width,
            outputs: ys
                .iter()
                .map(|y| {
                    let mut d = y.dims().to_vec();
                    if !d.is_empty() && batch > 1 {
                        d[0] /= batch;
                    }
                    d
                })
                .collect(),
            conv_flops: counts.conv_flops / batch as u64,
            peak_bytes: counts.peak_bytes / batch as u64,
        })
    }

    /// The first graph output for a batch `x` (`(B, C, H, W)`, any float
    /// type, any device: it is moved to the model's), as the graph computes
    /// it: logits or probabilities.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run_all(x)?.swap_remove(0))
    }

    /// Wall time of each node over `rounds` runs on `x` (after one untimed
    /// run), slowest first.
    pub fn profile(&self, x: &Tensor, rounds: usize) -> Result<Vec<NodeTime>> {
        self.run_inner(x, None)?;
        let mut counts = eval::Counts {
            times: Some(BTreeMap::new()),
            ..Default::default()
        };
        for _ in 0..rounds.max(1) {
            self.run_inner(x, Some(&mut counts))?;
        }
        let mut v: Vec<NodeTime> = counts.times.unwrap_or_default().into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(v)
    }

    /// Every graph output, in the file's order.
    pub fn run_all(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.run_inner(x, None)
    }

    fn run_inner(&self, x: &Tensor, counts: Option<&mut eval::Counts>) -> Result<Vec<Tensor>> {
        let dims = x.dims();
        let fits = dims.len() == 4
            && self
                .input
                .dims
                .iter()
                .zip(dims)
                .all(|(d, &n)| d.fixed().is_none_or(|f| f == n));
        if !fits {
            return Err(Error::file(
                &self.path,
                format!(
                    "the graph's input is [{}], the batch is {dims:?}",
                    self.input
                        .dims
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let want = match self.input.elem_type.as_str() {
            "float16" => DType::F16,
            "double" => DType::F64,
            _ => DType::F32,
        };
        let x = x.to_device(&self.device)?.to_dtype(want)?;
        eval::run(&self.graph, x, &self.cache, counts).map_err(|e| {
            let context = match self.graph.nodes.get(e.node) {
                Some(n) => format!("{}: node '{}' ({})", self.path.display(), n.name, n.op_type),
                None => self.path.display().to_string(),
            };
            Error::Model {
                context,
                source: Box::new(Error::Candle(e.error)),
            }
        })
    }
}
