//! ImageNet ResNet weights (torchvision key names) into a model's encoder.
//!
//! Checkpoints are torchvision `resnet18/34/50` state dicts: `conv1.weight`,
//! `bn1.*`, `layer1.0.conv1.weight`, ... without a `backbone.` prefix, as
//! `.safetensors` or as PyTorch `.pth`/`.pt` (zip pickles). `fc.*` and
//! `*.num_batches_tracked` are skipped. A Lightning `.ckpt` (as TorchGeo
//! and geoai save them) is read from its `state_dict`, the `model.` prefix
//! of its keys removed. Every other tensor must be an
//! encoder parameter of the model (`backbone.` + key for the FCNs,
//! `encoder.` + key for the U-Nets) of the same shape,
//! and every encoder parameter must be present.
//!
//! **First convolution.** ImageNet's `conv1.weight` is `(64, 3, 7, 7)` for
//! R, G, B. It is adapted to the model's `N` bands *by position*: model
//! band `i < 3` takes the RGB filter `i`, so an IR-R-G image (ISPRS
//! Vaihingen's channel order) gets IR ← R, R ← G, G ← B, exactly what an
//! ImageNet network sees when the false-colour composite is fed to it as
//! RGB (the usual practice for Vaihingen). Bands `i >= 3` (nDSM, NDVI, ...)
//! start from the mean of the three RGB filters.

use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What [`load_imagenet`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedReport {
    /// Tensors copied into the model (running statistics included).
    pub loaded: usize,
    /// Tensors skipped (`fc.*`, `num_batches_tracked`).
    pub skipped: usize,
    /// Input channels of the checkpoint's first convolution and of the model's.
    pub first_conv: (usize, usize),
}

/// Reads all tensors of a `.safetensors` or PyTorch `.pth` checkpoint.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(Error::file(path, "no such file"));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let st = || -> Result<Vec<(String, Tensor)>> {
        let m = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            Error::file(path, format!("not a readable safetensors checkpoint: {e}"))
        })?;
        Ok(m.into_iter().collect())
    };
    let pth = || -> Result<Vec<(String, Tensor)>> {
        // A Lightning checkpoint (TorchGeo, geoai) holds the weights under
        // `state_dict`, prefixed `model.`; a plain state dict has no such key.
        if let Ok(t) = candle_core::pickle::read_all_with_key(path, Some("state_dict")) {
            return Ok(strip_common_prefix(t, "model."));
        }
        candle_core::pickle::read_all(path)
            .map_err(|e| Error::file(path, format!("not a readable PyTorch checkpoint: {e}")))
    };
    match ext.as_str() {
        "safetensors" => st(),
        "pth" | "pt" | "bin" | "ckpt" => pth(),
        _ => st().or_else(|_| pth()),
    }
}

/// The `hyper_parameters` block of a Lightning checkpoint (TorchGeo's
/// `SemanticSegmentationTask` saves `model`, `backbone`, `in_channels`,
/// `num_classes`, ...), as JSON: the entries whose values are strings,
/// numbers, booleans, `None` or lists of those. Empty when `path` is no
/// such checkpoint or has no block.
pub fn read_hyper_parameters(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    use candle_core::pickle::{Object, Stack};
    use serde_json::Value;
    fn json(o: &Object) -> Option<Value> {
        Some(match o {
            Object::Int(i) => Value::from(*i),
            Object::Long(i) => Value::from(*i),
            Object::Float(f) => Value::from(*f),
            Object::Bool(b) => Value::from(*b),
            Object::Unicode(s) => Value::from(s.clone()),
            Object::None => Value::Null,
            Object::List(v) | Object::Tuple(v) => {
                Value::Array(v.iter().map(json).collect::<Option<Vec<_>>>()?)
            }
            _ => return None,
        })
    }
    let read = || -> Option<serde_json::Map<String, Value>> {
        let file = std::fs::File::open(path).ok()?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
        let name: String = (0..zip.len()).find_map(|i| {
            let f = zip.by_index(i).ok()?;
            let n = f.name().ok()?.to_string();
            n.ends_with("data.pkl").then_some(n)
        })?;
        let mut r = std::io::BufReader::new(zip.by_name(&name).ok()?);
        let mut stack = Stack::empty();
        stack.read_loop(&mut r).ok()?;
        let Object::Dict(top) = stack.finalize().ok()? else {
            return None;
        };
        let (_, hp) = top
            .iter()
            .find(|(k, _)| matches!(k, Object::Unicode(k) if k == "hyper_parameters"))?;
        let Object::Dict(hp) = hp else { return None };
        Some(
            hp.iter()
                .filter_map(|(k, v)| match k {
                    Object::Unicode(k) => Some((k.clone(), json(v)?)),
                    _ => None,
                })
                .collect(),
        )
    };
    read().unwrap_or_default()
}

/// Removes `prefix` from every name when every name has it.
fn strip_common_prefix(t: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
    if t.is_empty() || !t.iter().all(|(k, _)| k.starts_with(prefix)) {
        return t;
    }
    t.into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

/// The first-convolution filters for `bands` inputs from ImageNet's RGB
/// ones (see the module documentation for the mapping).
pub fn adapt_first_conv(w: &Tensor, bands: usize) -> Result<Tensor> {
    let (_, c, _, _) = w.dims4()?;
    let mean = w.mean_keepdim(1)?;
    let parts: Vec<Tensor> = (0..bands)
        .map(|i| {
            if i < c {
                w.narrow(1, i, 1)
            } else {
                Ok(mean.clone())
            }
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&parts, 1)?.contiguous()?)
}

/// Loads an ImageNet ResNet checkpoint into the encoder of `model` (a
/// `resnet*-fcn*` architecture). Errors name the file and the tensor.
pub fn load_imagenet(model: &Model, path: &Path) -> Result<PretrainedReport> {
    let tensors = read_checkpoint(path)?;
    let vars = model.varmap().data().lock().expect("varmap lock");
    // the FCNs' encoder is `backbone.`, the U-Nets' (smp's names) `encoder.`
    let prefix = ["backbone.", "encoder."]
        .into_iter()
        .find(|p| vars.contains_key(&format!("{p}conv1.weight")))
        .unwrap_or("backbone.");
    if !vars.contains_key(&format!("{prefix}conv1.weight")) {
        return Err(Error::file(
            path,
            format!(
                "the '{}' architecture has no ResNet encoder to load ImageNet weights into",
                model.meta.arch
            ),
        ));
    }
    let arch = &model.meta.arch;
    let mut done: HashMap<String, ()> = HashMap::new();
    let mut report = PretrainedReport {
        loaded: 0,
        skipped: 0,
        first_conv: (0, model.meta.bands),
    };
    for (name, t) in tensors {
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            report.skipped += 1;
            continue;
        }
        let key = format!("{prefix}{name}");
        let Some(var) = vars.get(&key) else {
            return Err(Error::file(
                path,
                format!("tensor '{name}' is not part of the {arch} encoder (a different ResNet depth, or not a torchvision ResNet state dict?)"),
            ));
        };
        let t = t.to_dtype(DType::F32)?;
        let t = if name == "conv1.weight" && t.rank() == 4 && t.dims() != var.dims() {
            let d = t.dims();
            let v = var.dims();
            if d[0] != v[0] || d[2..] != v[2..] {
                return Err(Error::file(
                    path,
                    format!(
                        "tensor 'conv1.weight' has shape {d:?}, the {arch} encoder needs {v:?}"
                    ),
                ));
            }
            report.first_conv.0 = d[1];
            adapt_first_conv(&t, v[1])?
        } else {
            if name == "conv1.weight" {
                report.first_conv.0 = t.dims().get(1).copied().unwrap_or(0);
            }
            t
        };
        if t.dims() != var.dims() {
            return Err(Error::file(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, the {arch} encoder needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_device(var.device())?)?;
        done.insert(key, ());
        report.loaded += 1;
    }
    let mut missing: Vec<&String> = vars
        .keys()
        .filter(|k| k.starts_with(prefix) && !done.contains_key(*k))
        .collect();
    missing.sort();
    if let Some(m) = missing.first() {
        return Err(Error::file(
            path,
            format!(
                "tensor '{}' of the {arch} encoder is missing ({} missing in all)",
                m.trim_start_matches(prefix),
                missing.len()
            ),
        ));
    }
    Ok(report)
}
