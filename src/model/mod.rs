//! The model family and its self-describing file format.
//!
//! A model file is a plain safetensors file whose header metadata carries,
//! under the key `"rstile"`, everything needed to use the weights: the
//! architecture, the input bands and their normalisation, the class table
//! and the default window geometry. One file is therefore enough to run
//! inference and to write a legend, and a file whose weights do not fit its
//! description is refused at load time rather than producing a wrong map.
//!
//! Networks are built through a [`VarMap`], so the same construction code
//! serves random initialisation, loading and (later) training; random
//! initialisation uses a seeded generator of our own because candle's CPU
//! `set_seed` has no effect, and a seed must reproduce a model exactly.
//!
//! Nothing here knows about GDAL or the command line: the model sees
//! normalised `f32` tensors and returns tensors.

pub mod bench;
pub mod conv;
mod fcn;
pub mod ledger;
pub mod norm;
mod resnet;

pub use crate::classes::ClassTable;
pub use fcn::resize_bilinear;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Version of the metadata layout written by this library.
pub const FORMAT: u32 = 1;

/// Key of the model description in the safetensors header metadata.
pub const META_KEY: &str = "rstile";

/// The architecture names accepted in model files and on the command line.
pub const ARCHS: &[&str] = &[
    "resnet50-fcn",
    "resnet50-fcn8s",
    "resnet18-fcn",
    "resnet18-fcn8s",
    "resnet34-fcn",
    "resnet34-fcn8s",
    "tiny",
    "linear",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Fcn { depth: resnet::Depth, fcn8s: bool },
    Tiny,
    Linear,
}

impl Arch {
    fn parse(name: &str) -> Option<Arch> {
        use resnet::Depth::*;
        let fcn = |depth, fcn8s| Some(Arch::Fcn { depth, fcn8s });
        match name {
            "resnet18-fcn" => fcn(R18, false),
            "resnet18-fcn8s" => fcn(R18, true),
            "resnet34-fcn" => fcn(R34, false),
            "resnet34-fcn8s" => fcn(R34, true),
            "resnet50-fcn" => fcn(R50, false),
            "resnet50-fcn8s" => fcn(R50, true),
            "tiny" => Some(Arch::Tiny),
            "linear" => Some(Arch::Linear),
            _ => None,
        }
    }
}

/// The description stored in every model file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    /// Layout version, [`FORMAT`].
    pub format: u32,
    /// One of [`ARCHS`].
    pub arch: String,
    /// Number of input bands.
    pub bands: usize,
    /// Names of the input bands (e.g. `["nir", "red", "green"]`); may be empty.
    pub band_names: Vec<String>,
    /// Per-band mean, in raw input units, subtracted before inference.
    pub mean: Vec<f32>,
    /// Per-band standard deviation, in raw input units.
    pub std: Vec<f32>,
    /// The legend; output channel `k` is `classes.classes[k]`.
    pub classes: ClassTable,
    /// Default window size, in pixels.
    pub window: usize,
    /// Default overlap between windows, as a fraction of the window.
    pub overlap: f64,
}

impl ModelMeta {
    /// A description with identity normalisation (mean 0, std 1), no band
    /// names, 512 px windows and 25 % overlap.
    pub fn new(arch: &str, bands: usize, classes: ClassTable) -> Self {
        ModelMeta {
            format: FORMAT,
            arch: arch.to_string(),
            bands,
            band_names: Vec::new(),
            mean: vec![0.0; bands],
            std: vec![1.0; bands],
            classes,
            window: 512,
            overlap: 0.25,
        }
    }

    /// Number of classes, i.e. of output channels.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Checks that the description is usable; the error says what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("model metadata: {msg}")));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads format {FORMAT})",
                self.format
            ));
        }
        if Arch::parse(&self.arch).is_none() {
            return bad(format!(
                "unknown architecture '{}' (known: {})",
                self.arch,
                ARCHS.join(", ")
            ));
        }
        if self.bands == 0 {
            return bad("bands must be at least 1".into());
        }
        if !self.band_names.is_empty() && self.band_names.len() != self.bands {
            return bad(format!(
                "{} band names for {} bands",
                self.band_names.len(),
                self.bands
            ));
        }
        if self.mean.len() != self.bands || self.std.len() != self.bands {
            return bad(format!(
                "mean has {} values and std {} for {} bands",
                self.mean.len(),
                self.std.len(),
                self.bands
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad(format!("mean {m} is not finite"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std {s} is not a positive number"));
        }
        if self.window < 8 {
            return bad(format!("window {} is smaller than 8 px", self.window));
        }
        if !(0.0..0.95).contains(&self.overlap) {
            return bad(format!("overlap {} is outside [0, 0.95)", self.overlap));
        }
        if let Err(msg) = self.classes.validate() {
            return bad(msg);
        }
        Ok(())
    }
}

/// The network behind a [`Model`].
#[derive(Debug, Clone)]
enum Net {
    Fcn(fcn::Fcn),
    Tiny(fcn::Tiny),
    Linear(fcn::Linear),
}

impl Net {
    fn new(
        arch: Arch,
        bands: usize,
        classes: usize,
        vb: VarBuilder,
        dropout_seed: Arc<AtomicU64>,
    ) -> candle_core::Result<Net> {
        Ok(match arch {
            Arch::Fcn { depth, fcn8s } => Net::Fcn(fcn::Fcn::new(
                depth,
                fcn8s,
                bands,
                classes,
                vb,
                dropout_seed,
            )?),
            Arch::Tiny => Net::Tiny(fcn::Tiny::new(bands, classes, vb)?),
            Arch::Linear => Net::Linear(fcn::Linear::new(bands, classes, vb)?),
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Net::Fcn(n) => n.forward_t(x, train),
            Net::Tiny(n) => n.forward_t(x, train),
            Net::Linear(n) => n.forward_t(x, train),
        }
    }
}

/// A network with its description, ready for inference (and training).
pub struct Model {
    /// The description written to, and read from, the model file.
    pub meta: ModelMeta,
    net: Net,
    device: Device,
    varmap: VarMap,
    /// (arch, bands, classes) the network was built for; `meta` is public
    /// and could be edited, so `save` checks it still agrees.
    built_for: (String, usize, usize),
    /// Seed of the next dropout mask (FCN heads in train mode).
    dropout_seed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("meta", &self.meta)
            .field("device", &self.device)
            .field("params", &self.num_params())
            .finish()
    }
}

impl Model {
    /// Randomly initialised like torchvision (Kaiming-normal fan-out
    /// convolutions in the backbone, PyTorch's default init in the heads,
    /// BN weight 1, bias 0, running mean 0, running var 1). The same seed
    /// gives the same weights on every platform: each tensor is drawn from
    /// its own generator, seeded by `seed` and the tensor's name.
    pub fn new_random(meta: ModelMeta, seed: u64, device: &Device) -> Result<Model> {
        Model::build(meta, Some(seed), device)
    }

    fn build(meta: ModelMeta, seed: Option<u64>, device: &Device) -> Result<Model> {
        meta.validate()?;
        let arch = Arch::parse(&meta.arch).expect("validated");
        let varmap = VarMap::new();
        let backend = SeededBackend {
            varmap: varmap.clone(),
            seed,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let dropout_seed = Arc::new(AtomicU64::new(0));
        let net = Net::new(
            arch,
            meta.bands,
            meta.num_classes(),
            vb,
            dropout_seed.clone(),
        )?;
        let built_for = (meta.arch.clone(), meta.bands, meta.num_classes());
        Ok(Model {
            meta,
            net,
            device: device.clone(),
            varmap,
            built_for,
            dropout_seed,
        })
    }

    /// Loads a model file written by [`Model::save`]. Every error names the
    /// file.
    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::file(path, format!("cannot read model file: {e}")))?;
        let corrupt = |e: safetensors::SafeTensorError| {
            Error::file(
                path,
                format!("not a safetensors model file, or truncated/corrupt: {e}"),
            )
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        let meta =
            meta_from_header(header.metadata().as_ref()).map_err(|m| Error::file(path, m))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(corrupt)?;
        let what = format!(
            "architecture '{}' with {} bands and {} classes",
            meta.arch,
            meta.bands,
            meta.num_classes()
        );
        let model = Model::build(meta, None, device).map_err(|e| Error::file(path, e))?;
        {
            let vars = model.varmap.data().lock().expect("varmap lock");
            let mut extra: Vec<&str> = st
                .names()
                .into_iter()
                .filter(|n| !vars.contains_key(*n))
                .collect();
            if !extra.is_empty() {
                extra.sort_unstable();
                return Err(Error::file(
                    path,
                    format!("tensor '{}' is not part of {what}", extra[0]),
                ));
            }
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort_unstable();
            for name in names {
                let view = st.tensor(name).map_err(|_| {
                    Error::file(path, format!("tensor '{name}' is missing ({what})"))
                })?;
                let var = &vars[name];
                if view.shape() != var.dims() {
                    return Err(Error::file(
                        path,
                        format!(
                            "tensor '{name}' has shape {:?}, {what} needs {:?}",
                            view.shape(),
                            var.dims()
                        ),
                    ));
                }
                if view.dtype() != safetensors::Dtype::F32 {
                    return Err(Error::file(
                        path,
                        format!("tensor '{name}' is {:?}, expected F32", view.dtype()),
                    ));
                }
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let t = Tensor::from_vec(values, view.shape(), device)?;
                var.set(&t)?;
            }
        }
        Ok(model)
    }

    /// Writes the weights and the description. The file appears complete
    /// or not at all (written to a temporary name, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.meta.validate()?;
        let now = (
            self.meta.arch.clone(),
            self.meta.bands,
            self.meta.num_classes(),
        );
        if now != self.built_for {
            return Err(Error::Config(format!(
                "model metadata (arch '{}', {} bands, {} classes) no longer matches the network \
                 (arch '{}', {} bands, {} classes)",
                now.0, now.1, now.2, self.built_for.0, self.built_for.1, self.built_for.2
            )));
        }
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| Error::Config(format!("cannot serialise model metadata: {e}")))?;
        let mut tensors = Vec::new();
        {
            let vars = self.varmap.data().lock().expect("varmap lock");
            for (name, var) in vars.iter() {
                let t = var
                    .as_tensor()
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?;
                let data: Vec<u8> = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                tensors.push((
                    name.clone(),
                    RawF32 {
                        shape: t.dims().to_vec(),
                        data,
                    },
                ));
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::file(path, "not a file path"))?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
        let metadata = HashMap::from([(META_KEY.to_string(), json)]);
        let written = safetensors::serialize_to_file(tensors, Some(metadata), &tmp)
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
        if let Err(msg) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::file(path, format!("cannot write model file: {msg}")));
        }
        Ok(())
    }

    /// Class probabilities (softmax over dim 1), `(B, K, H, W)`, in eval
    /// mode, for a normalised `f32` input `(B, bands, H, W)`.
    pub fn forward_probs(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.forward_t(x, false)?;
        Ok(candle_nn::ops::softmax(&logits, 1)?)
    }

    /// Class probabilities as a host vector `[B][K][H][W]`. On the CPU the
    /// softmax over the class axis runs on the plain buffer, pixel by pixel:
    /// candle's softmax over a non-last axis costs more than a small model.
    pub fn predict_probs(&self, x: &Tensor) -> Result<Vec<f32>> {
        if !self.device().is_cpu() {
            let p = self.forward_probs(x)?.to_device(&Device::Cpu)?;
            return Ok(p.flatten_all()?.to_vec1::<f32>()?);
        }
        let logits = self.forward_t(x, false)?;
        let (b, k, h, w) = logits.dims4()?;
        let mut v = logits.flatten_all()?.to_vec1::<f32>()?;
        softmax_channels(&mut v, b, k, h * w);
        Ok(v)
    }

    /// Seeds the dropout masks of the following train-mode passes (each pass
    /// advances the seed), so that a training run, and its resume, draw the
    /// same masks. Set it from the run's seed and step before each step.
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.store(seed, Ordering::Relaxed);
    }

    /// Logits `(B, K, H, W)`. With `train`, batch norm uses (and updates)
    /// batch statistics and the FCN heads apply dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.meta.bands || x.dtype() != DType::F32 {
            return Err(Error::Config(format!(
                "the model expects f32 input of shape (batch, {}, height, width), got {:?} {:?}",
                self.meta.bands,
                x.dtype(),
                dims
            )));
        }
        Ok(self.net.forward_t(x, train)?)
    }

    /// All variables: the trainable parameters and the batch-norm running
    /// statistics (which receive no gradient, so optimisers skip them).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable parameters only (no batch-norm running statistics),
    /// sorted by name.
    pub fn trainable_vars(&self) -> Vec<Var> {
        let vars = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(&String, &Var)> = vars.iter().filter(|(n, _)| is_trainable(n)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, var)| var.clone()).collect()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Convolution FLOPs (multiply-adds times two) of one forward pass on
    /// `batch` windows of `height x width`: more than 99 % of the work of
    /// every architecture here.
    pub fn forward_flops(&self, batch: usize, height: usize, width: usize) -> Result<u64> {
        if batch == 0 || height < 2 || width < 2 {
            return Err(Error::Config(format!(
                "cannot count FLOPs for {batch} x {height} x {width}"
            )));
        }
        Ok(match &self.net {
            Net::Fcn(n) => n.flops(batch, height, width),
            Net::Tiny(n) => n.flops(batch, height, width),
            Net::Linear(n) => n.flops(batch, height, width),
        })
    }

    /// Number of trainable parameters (batch-norm running statistics are
    /// not counted, as in PyTorch's `parameters()`).
    pub fn num_params(&self) -> usize {
        let vars = self.varmap.data().lock().expect("varmap lock");
        vars.iter()
            .filter(|(n, _)| is_trainable(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

fn is_trainable(name: &str) -> bool {
    !(name.ends_with(".running_mean") || name.ends_with(".running_var"))
}

/// `e^x` for `x <= 0`, branch-free so that the softmax loop vectorises:
/// Cody-Waite reduction `x = k ln2 + r`, a degree-6 polynomial for `e^r`
/// on `|r| <= ln2 / 2`, and `2^k` built in the exponent bits. Relative
/// error below 1e-6 (tested against `f32::exp`); underflows to 0 below -87.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    f32::from_bits(((k as i32 + 127) as u32) << 23) * p
}

/// In-place softmax over the channel axis of `[b][k][n]` data, with the
/// usual max subtraction.
pub fn softmax_channels(v: &mut [f32], b: usize, k: usize, n: usize) {
    let mut mx = vec![0f32; n];
    let mut sum = vec![0f32; n];
    for s in v.chunks_mut(k * n).take(b) {
        mx.copy_from_slice(&s[..n]);
        for c in 1..k {
            for (m, &x) in mx.iter_mut().zip(&s[c * n..(c + 1) * n]) {
                *m = m.max(x);
            }
        }
        sum.fill(0.0);
        for c in 0..k {
            for ((x, &m), acc) in s[c * n..(c + 1) * n]
                .iter_mut()
                .zip(&mx)
                .zip(sum.iter_mut())
            {
                *x = exp_neg(*x - m);
                *acc += *x;
            }
        }
        for c in 0..k {
            for (x, &t) in s[c * n..(c + 1) * n].iter_mut().zip(&sum) {
                *x /= t;
            }
        }
    }
}

/// Reads only the description of a model file (the header), without
/// reading the weights.
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    let corrupt = |msg: String| {
        Error::file(
            path,
            format!("not a safetensors model file, or truncated/corrupt: {msg}"),
        )
    };
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::file(path, format!("cannot read model file: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot read model file: {e}")))?
        .len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| corrupt("shorter than the 8-byte header size".into()))?;
    let n = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB.
    if n > 100_000_000 || 8 + n > file_len {
        return Err(corrupt(format!("header size {n} does not fit the file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::file(path, format!("cannot read model file: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    // The header must describe exactly the bytes that follow it, as
    // safetensors itself checks, so that a truncated file is caught here too.
    let mut end = 0u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
            .ok_or_else(|| corrupt(format!("tensor '{name}' has no data offsets")))?;
        end = end.max(offsets);
    }
    let described = (8 + n).saturating_add(end);
    if described != file_len {
        return Err(corrupt(format!(
            "header describes {described} bytes, the file has {file_len}"
        )));
    }
    let metadata: Option<HashMap<String, String>> = match header.get("__metadata__") {
        None => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| corrupt(format!("header metadata: {e}")))?,
        ),
    };
    meta_from_header(metadata.as_ref()).map_err(|m| Error::file(path, m))
}

/// The [`ModelMeta`] in a safetensors header's metadata, validated.
fn meta_from_header(
    metadata: Option<&HashMap<String, String>>,
) -> std::result::Result<ModelMeta, String> {
    let json = metadata.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
        format!(
            "no \"{META_KEY}\" metadata in the header: a safetensors file, but not an rstile model"
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid \"{META_KEY}\" metadata: {e}"))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == FORMAT as u64 => {}
        Some(f) => {
            return Err(format!(
                "model format {f} is not supported (this build reads format {FORMAT})"
            ))
        }
        None => return Err(format!("invalid \"{META_KEY}\" metadata: no format number")),
    }
    let meta: ModelMeta = serde_json::from_value(value)
        .map_err(|e| format!("invalid \"{META_KEY}\" metadata: {e}"))?;
    meta.validate().map_err(|e| e.to_string())?;
    Ok(meta)
}

/// A tensor's bytes, as safetensors wants them.
struct RawF32 {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for RawF32 {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A `VarMap` backend that creates missing variables from the
/// initialisation hints with a seeded generator (or as zeros when no seed is
/// given, for variables that are about to be loaded).
struct SeededBackend {
    varmap: VarMap,
    seed: Option<u64>,
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let values = match self.seed {
            None => vec![0f32; s.elem_count()],
            Some(seed) => sample(h, &s, seed, name),
        };
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("variable {name} requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// Values for a tensor of shape `s` following the hint `h`, from a
/// generator seeded by `seed` and the tensor's `name`.
fn sample(h: Init, s: &Shape, seed: u64, name: &str) -> Vec<f32> {
    use candle_nn::init::NormalOrUniform;
    let n = s.elem_count();
    let mut rng = SplitMix64::new(seed ^ fnv1a(name.as_bytes()));
    let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
            .collect()
    };
    let normal = |rng: &mut SplitMix64, mean: f64, std: f64| -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (a, b) = rng.next_normal_pair();
            v.push((mean + std * a) as f32);
            v.push((mean + std * b) as f32);
        }
        v.truncate(n);
        v
    };
    match h {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(s) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Steele, Lea & Flood's SplitMix64: tiny, fast, and good enough to draw
/// initial weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Two independent standard normals (Box-Muller).
    fn next_normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        (r * t.cos(), r * t.sin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn meta(arch: &str, bands: usize) -> ModelMeta {
        ModelMeta::new(arch, bands, ClassTable::isprs())
    }

    #[test]
    fn dropout_is_seeded() {
        let x = Tensor::ones((2, 8, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let v = |seed| {
            fcn::seeded_dropout(&x, 0.1, seed)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(v(7), v(7));
        assert_ne!(v(7), v(8));
        let kept = v(7).iter().filter(|&&y| y > 0.0).count() as f64 / 4096.0;
        assert!((kept - 0.9).abs() < 0.03, "kept {kept}");
        assert!(v(7)
            .iter()
            .all(|&y| y == 0.0 || (y - 1.0 / 0.9).abs() < 1e-6));
    }

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (a, b) = (exp_neg(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "exp({x}): {a} vs {b}");
            x -= 0.0137;
        }
        assert!(exp_neg(-1000.0) < 1e-37 && exp_neg(-1000.0) >= 0.0);
    }

    #[test]
    fn host_softmax_matches_candle() {
        let m = Model::new_random(meta("tiny", 3), 5, &Device::Cpu).unwrap();
        let x = input(2, 3, 37, 29, 9);
        let a = m
            .forward_probs(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = m.predict_probs(&x).unwrap();
        assert_eq!(a.len(), b.len());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
    }

    fn input(b: usize, bands: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let v = sample(
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from((b, bands, h, w)),
            seed,
            "input",
        );
        Tensor::from_vec(v, (b, bands, h, w), &Device::Cpu).unwrap()
    }

    fn all_vars(m: &Model) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let vars = m.varmap().data().lock().unwrap();
        let mut v: Vec<_> = vars
            .iter()
            .map(|(n, t)| {
                let t = t.as_tensor();
                (
                    n.clone(),
                    t.dims().to_vec(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn shape_of(m: &Model, name: &str) -> Vec<usize> {
        let vars = m.varmap().data().lock().unwrap();
        vars.get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .dims()
            .to_vec()
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_probs(p: &Tensor, dims: &[usize]) {
        assert_eq!(p.dims(), dims);
        let s = p.sum(1).unwrap();
        let dev = (s - 1.0).unwrap().abs().unwrap().max_all().unwrap();
        let dev = dev.to_scalar::<f32>().unwrap();
        assert!(dev < 1e-5, "probabilities sum to 1 ± {dev}");
        let min = p.min_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(min >= 0.0);
    }

    #[test]
    fn every_arch_builds_and_keeps_the_input_size() {
        for &arch in ARCHS {
            for bands in [3, 5] {
                let m = Model::new_random(meta(arch, bands), 7, &Device::Cpu).unwrap();
                let p = m.forward_probs(&input(2, bands, 64, 64, 1)).unwrap();
                assert_probs(&p, &[2, 6, 64, 64]);
                let p = m.forward_probs(&input(1, bands, 67, 45, 2)).unwrap();
                assert_probs(&p, &[1, 6, 67, 45]);
                let logits = m.forward_t(&input(1, bands, 33, 8, 3), false).unwrap();
                assert_eq!(logits.dims(), &[1, 6, 33, 8], "{arch}");
            }
        }
    }

    #[test]
    fn parameter_names_and_shapes_follow_torchvision() {
        let m = Model::new_random(meta("resnet50-fcn", 5), 0, &Device::Cpu).unwrap();
        assert_eq!(
            shape_of(&m, "backbone.layer3.5.conv3.weight"),
            [1024, 256, 1, 1]
        );
        assert_eq!(shape_of(&m, "backbone.conv1.weight"), [64, 5, 7, 7]);
        assert_eq!(
            shape_of(&m, "backbone.layer1.0.downsample.0.weight"),
            [256, 64, 1, 1]
        );
        assert_eq!(
            shape_of(&m, "backbone.layer4.0.conv2.weight"),
            [512, 512, 3, 3]
        );
        for bn in ["weight", "bias", "running_mean", "running_var"] {
            assert_eq!(shape_of(&m, &format!("backbone.bn1.{bn}")), [64]);
            assert_eq!(
                shape_of(&m, &format!("backbone.layer2.0.downsample.1.{bn}")),
                [512]
            );
        }
        assert_eq!(shape_of(&m, "classifier.0.weight"), [512, 2048, 3, 3]);
        assert_eq!(shape_of(&m, "classifier.1.running_var"), [512]);
        assert_eq!(shape_of(&m, "classifier.4.weight"), [6, 512, 1, 1]);
        assert_eq!(shape_of(&m, "classifier.4.bias"), [6]);

        let m = Model::new_random(meta("resnet18-fcn8s", 3), 0, &Device::Cpu).unwrap();
        assert_eq!(
            shape_of(&m, "backbone.layer1.1.conv2.weight"),
            [64, 64, 3, 3]
        );
        assert_eq!(
            shape_of(&m, "backbone.layer2.0.downsample.0.weight"),
            [128, 64, 1, 1]
        );
        assert_eq!(shape_of(&m, "score16.weight"), [6, 256, 1, 1]);
        assert_eq!(shape_of(&m, "score8.weight"), [6, 128, 1, 1]);
        assert_eq!(shape_of(&m, "classifier.0.weight"), [128, 512, 3, 3]);

        let m = Model::new_random(meta("tiny", 4), 0, &Device::Cpu).unwrap();
        assert_eq!(shape_of(&m, "enc.0.conv.weight"), [16, 4, 3, 3]);
        assert_eq!(shape_of(&m, "enc.1.bn.running_mean"), [32]);
        assert_eq!(shape_of(&m, "cls.weight"), [6, 32, 1, 1]);
        let m = Model::new_random(meta("linear", 4), 0, &Device::Cpu).unwrap();
        assert_eq!(m.num_params(), 6 * 4 + 6);
    }

    #[test]
    fn backbone_parameter_counts_match_torchvision() {
        // torchvision's resnet{18,34,50} parameter counts, minus `fc`
        // (512·1000 + 1000 resp. 2048·1000 + 1000).
        for (arch, want) in [
            ("resnet18-fcn", 11_689_512 - 513_000),
            ("resnet34-fcn", 21_797_672 - 513_000),
            ("resnet50-fcn", 25_557_032 - 2_049_000),
        ] {
            let m = Model::new_random(meta(arch, 3), 0, &Device::Cpu).unwrap();
            let vars = m.varmap().data().lock().unwrap();
            let n: usize = vars
                .iter()
                .filter(|(n, _)| n.starts_with("backbone.") && is_trainable(n))
                .map(|(_, v)| v.elem_count())
                .sum();
            assert_eq!(n, want, "{arch}");
        }
        // FCN head on resnet18: conv 512→128 3x3, BN(128), conv 128→6 + bias.
        let m = Model::new_random(meta("resnet18-fcn", 3), 0, &Device::Cpu).unwrap();
        assert_eq!(
            m.num_params(),
            11_176_512 + 512 * 128 * 9 + 256 + 128 * 6 + 6
        );
    }

    #[test]
    fn random_init_is_seeded() {
        let a = Model::new_random(meta("resnet18-fcn8s", 3), 42, &Device::Cpu).unwrap();
        let b = Model::new_random(meta("resnet18-fcn8s", 3), 42, &Device::Cpu).unwrap();
        let c = Model::new_random(meta("resnet18-fcn8s", 3), 43, &Device::Cpu).unwrap();
        let (va, vb, vc) = (all_vars(&a), all_vars(&b), all_vars(&c));
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        for ((name, _, x), (_, _, y)) in va.iter().zip(&vc) {
            let random = name.ends_with("conv1.weight") || name.ends_with(".4.bias");
            if random {
                assert_ne!(x, y, "{name}");
            }
        }
        // Init statistics like torchvision: conv1 std = sqrt(2 / fan_out).
        let w = &va
            .iter()
            .find(|v| v.0 == "backbone.conv1.weight")
            .unwrap()
            .2;
        let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64;
        let want = 2.0 / (64.0 * 49.0);
        assert!((var / want - 1.0).abs() < 0.05, "{var} vs {want}");
        let bnw = &va.iter().find(|v| v.0 == "backbone.bn1.weight").unwrap().2;
        assert!(bnw.iter().all(|x| *x == 1.0));
        let rv = &va
            .iter()
            .find(|v| v.0 == "backbone.bn1.running_var")
            .unwrap()
            .2;
        assert!(rv.iter().all(|x| *x == 1.0));
        let b4 = &va.iter().find(|v| v.0 == "classifier.4.bias").unwrap().2;
        let bound = 1.0 / 128f32.sqrt();
        assert!(b4.iter().all(|x| x.abs() <= bound));
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for arch in ["tiny", "resnet18-fcn8s"] {
            let mut md = meta(arch, 4);
            md.band_names = vec!["nir".into(), "red".into(), "green".into(), "blue".into()];
            md.mean = vec![100.0, 90.5, 80.0, 70.0];
            md.std = vec![30.0, 20.0, 10.0, 5.0];
            md.window = 256;
            md.overlap = 0.5;
            let m = Model::new_random(md.clone(), 3, &Device::Cpu).unwrap();
            let path = dir.path().join(format!("{arch}.safetensors"));
            m.save(&path).unwrap();
            assert_eq!(read_meta(&path).unwrap(), md);
            let l = Model::load(&path, &Device::Cpu).unwrap();
            assert_eq!(l.meta, md);
            assert_eq!(all_vars(&l), all_vars(&m));
            let x = input(2, 4, 40, 52, 9);
            let (p, q) = (m.forward_probs(&x).unwrap(), l.forward_probs(&x).unwrap());
            assert_eq!(to_vec(&p), to_vec(&q));
        }
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2);
    }

    /// Writes a safetensors file with the given tensors and metadata.
    fn write_raw(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>, md: Option<String>) {
        let t = tensors.into_iter().map(|(n, shape, v)| {
            let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n, RawF32 { shape, data })
        });
        let md = md.map(|s| HashMap::from([(META_KEY.to_string(), s)]));
        safetensors::serialize_to_file(t, md, path).unwrap();
    }

    fn err_of<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn bad_files_give_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::new_random(meta("tiny", 3), 1, &Device::Cpu).unwrap();
        let good = dir.path().join("good.safetensors");
        m.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let json = serde_json::to_string(&m.meta).unwrap();
        let dev = Device::Cpu;

        let missing = dir.path().join("missing.safetensors");
        for e in [
            err_of(Model::load(&missing, &dev)),
            err_of(read_meta(&missing)),
        ] {
            assert!(
                e.contains("missing.safetensors") && e.contains("cannot read"),
                "{e}"
            );
        }

        // Truncated in the data, in the header, and before the header size.
        for (i, len) in [bytes.len() - 10, 40, 5].into_iter().enumerate() {
            let p = dir.path().join(format!("truncated{i}.safetensors"));
            std::fs::write(&p, &bytes[..len]).unwrap();
            for e in [err_of(Model::load(&p, &dev)), err_of(read_meta(&p))] {
                assert!(e.contains(&format!("truncated{i}.safetensors")), "{e}");
                assert!(e.contains("corrupt"), "{e}");
            }
        }

        let text = dir.path().join("text.safetensors");
        std::fs::write(&text, "this is not a model at all, just some text").unwrap();
        assert!(err_of(Model::load(&text, &dev)).contains("text.safetensors"));
        assert!(err_of(read_meta(&text)).contains("text.safetensors"));

        let tensors = all_vars(&m);
        let plain = dir.path().join("plain.safetensors");
        write_raw(&plain, tensors.clone(), None);
        for e in [err_of(Model::load(&plain, &dev)), err_of(read_meta(&plain))] {
            assert!(
                e.contains("plain.safetensors") && e.contains("\"rstile\""),
                "{e}"
            );
        }

        let badmeta = dir.path().join("badmeta.safetensors");
        let mut md = m.meta.clone();
        md.std[1] = 0.0;
        write_raw(
            &badmeta,
            tensors.clone(),
            Some(serde_json::to_string(&md).unwrap()),
        );
        for e in [
            err_of(Model::load(&badmeta, &dev)),
            err_of(read_meta(&badmeta)),
        ] {
            assert!(
                e.contains("badmeta.safetensors") && e.contains("std"),
                "{e}"
            );
        }
        let future = dir.path().join("future.safetensors");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["format"] = 2.into();
        write_raw(&future, tensors.clone(), Some(v.to_string()));
        let e = err_of(Model::load(&future, &dev));
        assert!(
            e.contains("future.safetensors") && e.contains("format 2"),
            "{e}"
        );

        let lacking = dir.path().join("lacking.safetensors");
        let fewer: Vec<_> = tensors
            .iter()
            .filter(|t| t.0 != "enc.1.bn.running_var")
            .cloned()
            .collect();
        write_raw(&lacking, fewer, Some(json.clone()));
        let e = err_of(Model::load(&lacking, &dev));
        assert!(
            e.contains("lacking.safetensors") && e.contains("'enc.1.bn.running_var' is missing"),
            "{e}"
        );

        let misshaped = dir.path().join("misshaped.safetensors");
        let mut other = tensors.clone();
        let cls = other.iter_mut().find(|t| t.0 == "cls.weight").unwrap();
        cls.1 = vec![5, 32, 1, 1];
        cls.2.truncate(5 * 32);
        write_raw(&misshaped, other, Some(json.clone()));
        let e = err_of(Model::load(&misshaped, &dev));
        assert!(
            e.contains("misshaped.safetensors")
                && e.contains("'cls.weight' has shape [5, 32, 1, 1]"),
            "{e}"
        );

        let extra = dir.path().join("extra.safetensors");
        let mut more = tensors.clone();
        more.push(("score8.weight".into(), vec![6, 1], vec![0.0; 6]));
        write_raw(&extra, more, Some(json.clone()));
        let e = err_of(Model::load(&extra, &dev));
        assert!(
            e.contains("extra.safetensors") && e.contains("'score8.weight'"),
            "{e}"
        );
    }

    #[test]
    fn metadata_validation() {
        let ok = meta("resnet18-fcn", 3);
        ok.validate().unwrap();
        type Edit = fn(&mut ModelMeta);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.arch = "vgg16".into(), "unknown architecture"),
            (|m| m.bands = 0, "bands"),
            (|m| m.mean.push(0.0), "mean"),
            (|m| m.std = vec![1.0, -1.0, 1.0], "std"),
            (|m| m.std[0] = f32::NAN, "std"),
            (|m| m.band_names = vec!["a".into()], "band names"),
            (|m| m.window = 4, "window"),
            (|m| m.overlap = 0.95, "overlap"),
            (|m| m.overlap = -0.1, "overlap"),
            (|m| m.format = 2, "format"),
            (|m| m.classes.classes.clear(), "empty"),
            (|m| m.classes.classes[1].id = 0, "twice"),
        ];
        for (f, want) in cases {
            let mut m = ok.clone();
            f(&mut m);
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(Model::new_random(m, 0, &Device::Cpu).is_err());
        }
        // save refuses metadata edited out of agreement with the network.
        let mut m = Model::new_random(meta("linear", 3), 0, &Device::Cpu).unwrap();
        m.meta.arch = "tiny".into();
        let dir = tempfile::tempdir().unwrap();
        assert!(m.save(&dir.path().join("x.safetensors")).is_err());
    }

    #[test]
    fn input_is_checked() {
        let m = Model::new_random(meta("linear", 3), 0, &Device::Cpu).unwrap();
        assert!(m.forward_probs(&input(1, 4, 8, 8, 0)).is_err());
        assert!(m
            .forward_probs(&input(1, 3, 8, 8, 0).to_dtype(DType::F64).unwrap())
            .is_err());
        assert!(m
            .forward_probs(&input(1, 3, 8, 8, 0).squeeze(0).unwrap())
            .is_err());
    }

    #[test]
    fn forward_is_batch_invariant() {
        for arch in ["tiny", "linear", "resnet18-fcn", "resnet18-fcn8s"] {
            let m = Model::new_random(meta(arch, 3), 5, &Device::Cpu).unwrap();
            let x = input(3, 3, 96, 71, 11);
            let all = m.forward_probs(&x).unwrap();
            for i in 0..3 {
                let one = m.forward_probs(&x.narrow(0, i, 1).unwrap()).unwrap();
                let part = all.narrow(0, i, 1).unwrap();
                let (a, b) = (to_vec(&one), to_vec(&part));
                let differ = a
                    .iter()
                    .zip(&b)
                    .filter(|(p, q)| p.to_bits() != q.to_bits())
                    .count();
                assert_eq!(differ, 0, "{arch}: sample {i}: {differ} values differ");
            }
        }
    }

    #[test]
    fn gradient_flows_through_fcn8s_and_bn_tracks_statistics() {
        let m = Model::new_random(meta("resnet18-fcn8s", 3), 0, &Device::Cpu).unwrap();
        let x = input(2, 3, 64, 64, 4);
        let logits = m.forward_t(&x, true).unwrap();
        assert_eq!(logits.dims(), &[2, 6, 64, 64]);
        let target = input(2, 6, 64, 64, 5);
        let loss = (logits * target).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = m.varmap().data().lock().unwrap();
        for name in [
            "classifier.4.weight",
            "classifier.4.bias",
            "classifier.0.weight",
            "score16.weight",
            "score8.weight",
            "score8.bias",
            "backbone.layer4.1.bn2.weight",
            "backbone.layer1.0.conv1.weight",
            "backbone.conv1.weight",
        ] {
            let g = grads
                .get(vars[name].as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g = to_vec(g);
            assert!(g.iter().all(|v| v.is_finite()), "{name}");
            assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        }
        // Running statistics were updated by the training-mode forward, in
        // the VarMap itself (so they are saved), and get no gradient.
        let rm = vars["backbone.bn1.running_mean"].as_tensor();
        assert!(to_vec(rm).iter().any(|v| *v != 0.0));
        assert!(grads.get(rm).is_none());
        let rv = to_vec(vars["backbone.layer4.1.bn2.running_var"].as_tensor());
        assert!(rv.iter().any(|v| *v != 1.0));
        drop(vars);
        assert!(m.trainable_vars().len() < m.varmap().all_vars().len());
    }

    #[test]
    fn model_is_send() {
        fn is_send<T: Send + 'static>() {}
        is_send::<Model>();
    }

    /// `cargo test --lib model::tests::timings -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timings() {
        let x = input(1, 3, 256, 256, 0);
        for &arch in ARCHS {
            let m = Model::new_random(meta(arch, 3), 0, &Device::Cpu).unwrap();
            m.forward_probs(&x).unwrap();
            // The minimum of a few runs: robust to other load on the machine.
            let ms = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    m.forward_probs(&x).unwrap();
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .fold(f64::INFINITY, f64::min);
            println!("{arch:16} {ms:8.1} ms  ({} params)", m.num_params());
        }
    }
}
