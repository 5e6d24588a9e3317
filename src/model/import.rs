//! `rstile model import`: a segmentation_models_pytorch checkpoint as an
//! rstile model, to fine-tune with `rstile train` or map with `rstile
//! infer`.
//!
//! smp's `Unet` on `resnet18`/`34`/`50` becomes `unet-resnet18`/`34`/`50`:
//! rstile's U-Nets carry smp's module names, so the state dict loads as it
//! is, once a Lightning wrapper's `model.` prefix is removed (see
//! [`crate::train::pretrained::read_checkpoint`]: `.pth`/`.pt` state dicts,
//! Lightning `.ckpt` files, `.safetensors`). Batch-norm counters
//! (`num_batches_tracked`) are skipped. Every other key must be a variable
//! of the architecture with the same shape, and every variable must be
//! there: the first missing, unexpected or mis-shaped key is the error.

use super::{Arch, Model, ModelMeta};
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::train::pretrained::read_checkpoint;
use candle_core::{DType, Device};
use std::collections::HashSet;
use std::path::Path;

/// Where a checkpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// segmentation_models_pytorch.
    Smp,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "smp" => Ok(Source::Smp),
            "torchvision" => Err(
                "torchvision's fcn_resnet50 uses dilated layer3 and layer4 (output stride 8), \
                 which rstile's resnet50-fcn (stride 32) does not have yet; only --from smp is supported"
                    .into(),
            ),
            _ => Err(format!("'{s}': expected smp")),
        }
    }
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: Source,
    pub arch: Arch,
    pub classes: ClassTable,
    /// Per-band mean and std in the raster's units; `None`: ImageNet's
    /// (x 255, for 8-bit RGB), which smp's pretrained encoders expect.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub window: usize,
    pub overlap: f64,
}

/// ImageNet's per-channel mean and std, in 8-bit units.
pub const IMAGENET_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
pub const IMAGENET_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Reads `checkpoint` into a new model of `o.arch`; errors name the file
/// and the first key that does not fit.
pub fn import(checkpoint: &Path, o: &ImportOptions) -> Result<Model> {
    let Source::Smp = o.source;
    if !o.arch.name().starts_with("unet-") {
        return Err(Error::Config(format!(
            "--from smp imports smp's Unet into unet-resnet18, unet-resnet34 or unet-resnet50, not {}",
            o.arch
        )));
    }
    let tensors = read_checkpoint(checkpoint)?;
    let bad = |why: String| Error::file(checkpoint, why);
    if tensors.is_empty() {
        return Err(bad(
            "holds no tensor: not a state dict (a Lightning checkpoint keeps its weights under 'state_dict')"
                .into(),
        ));
    }
    let find = |name: &str| tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t);
    let conv1 = find("encoder.conv1.weight").ok_or_else(|| {
        bad(format!(
            "no tensor 'encoder.conv1.weight': not a state dict of smp's Unet on a ResNet ({} tensors{})",
            tensors.len(),
            tensors
                .first()
                .map(|(k, _)| format!(", the first '{k}'"))
                .unwrap_or_default()
        ))
    })?;
    let bands = conv1.dims().get(1).copied().unwrap_or(0);
    let head = find("segmentation_head.0.weight")
        .ok_or_else(|| bad("no tensor 'segmentation_head.0.weight'".into()))?;
    let classes = head.dims().first().copied().unwrap_or(0);
    if classes != o.classes.len() {
        return Err(bad(format!(
            "the checkpoint's head has {classes} classes, --classes lists {}",
            o.classes.len()
        )));
    }
    let (mean, std) = match (&o.mean, &o.std) {
        (Some(m), Some(s)) => (m.clone(), s.clone()),
        (None, None) if bands == 3 => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
        (None, None) => {
            return Err(bad(format!(
                "the model takes {bands} bands; give --mean and --std ({bands} values each, in the raster's units)"
            )))
        }
        _ => return Err(Error::Config("--mean and --std go together".into())),
    };
    let meta = ModelMeta {
        mean,
        std,
        window: o.window,
        overlap: o.overlap,
        ..ModelMeta::new(o.arch, bands, o.classes.clone())
    };
    meta.validate()?;
    let model = Model::new_random(meta, 0, &Device::Cpu)?;
    {
        let vars = model.varmap().data().lock().expect("varmap lock");
        let mut seen = HashSet::new();
        for (name, t) in &tensors {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let var = vars.get(name).ok_or_else(|| {
                bad(format!(
                    "unexpected tensor '{name}': not a variable of {} (another architecture or encoder depth?)",
                    o.arch
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "tensor '{name}' has shape {:?}, {} needs {:?}",
                    t.dims(),
                    o.arch,
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
            seen.insert(name.as_str());
        }
        let mut missing: Vec<&String> =
            vars.keys().filter(|k| !seen.contains(k.as_str())).collect();
        missing.sort();
        if let Some(m) = missing.first() {
            return Err(bad(format!(
                "tensor '{m}' of {} is missing ({} missing in all)",
                o.arch,
                missing.len()
            )));
        }
    }
    Ok(model)
}
