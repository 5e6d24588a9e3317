//! `rstile model import`: a PyTorch checkpoint as an rstile model, to
//! fine-tune with `rstile train` or map with `rstile infer`.
//!
//! * `--from smp`: segmentation_models_pytorch's `Unet` on
//!   `resnet18`/`34`/`50` becomes `unet-resnet18`/`34`/`50` (rstile's
//!   U-Nets carry smp's module names).
//! * `--from torchvision`: torchvision's `fcn_resnet50` (layer3 and layer4
//!   dilated, output stride 8) becomes `resnet50-fcn-os8`, whose
//!   `backbone.*` and `classifier.*` are torchvision's; the auxiliary
//!   classifier of `aux_loss=True` (`aux_classifier.*`, a training-time
//!   head on layer3) is skipped.
//!
//! The state dict loads as it is, once a Lightning wrapper's `model.`
//! prefix is removed (see [`crate::train::pretrained::read_checkpoint`]:
//! `.pth`/`.pt` state dicts, Lightning `.ckpt` files, `.safetensors`).
//! Batch-norm counters (`num_batches_tracked`) are skipped. Every other key
//! must be a variable of the architecture with the same shape, and every
//! variable must be there: the first missing, unexpected or mis-shaped key
//! is the error.

use super::{Arch, Model, ModelMeta};
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::train::pretrained::{read_checkpoint, read_hyper_parameters};
use candle_core::{DType, Device};
use std::collections::HashSet;
use std::path::Path;

/// Where a checkpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// segmentation_models_pytorch.
    Smp,
    /// torchvision's segmentation models.
    Torchvision,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "smp" => Ok(Source::Smp),
            "torchvision" => Ok(Source::Torchvision),
            _ => Err(format!("'{s}': expected smp or torchvision")),
        }
    }
}

/// What a source's checkpoints hold: the keys that give the band and class
/// counts, the keys skipped, and what the source names.
struct Layout {
    /// The first convolution, `(c_out, bands, k, k)`.
    conv1: &'static str,
    /// The last convolution, `(classes, ...)`.
    head: &'static str,
    /// Key prefixes that are not part of the architecture.
    skipped: &'static [&'static str],
    /// The network the source's checkpoints hold, for messages.
    what: &'static str,
}

impl Source {
    /// The layout of this source's checkpoints for `arch`, or the one-line
    /// refusal listing what the source imports into.
    fn layout(self, arch: Arch) -> Result<Layout> {
        match self {
            Source::Smp if arch.name().starts_with("unet-") => Ok(Layout {
                conv1: "encoder.conv1.weight",
                head: "segmentation_head.0.weight",
                skipped: &[],
                what: "smp's Unet on a ResNet",
            }),
            Source::Smp => Err(Error::Config(format!(
                "--from smp imports smp's Unet into unet-resnet18, unet-resnet34 or unet-resnet50, not {arch}"
            ))),
            Source::Torchvision if arch == Arch::Resnet50FcnOs8 => Ok(Layout {
                conv1: "backbone.conv1.weight",
                head: "classifier.4.weight",
                skipped: &["aux_classifier."],
                what: "torchvision's fcn_resnet50",
            }),
            Source::Torchvision => Err(Error::Config(format!(
                "--from torchvision imports torchvision's fcn_resnet50 into resnet50-fcn-os8 \
                 (layer3 and layer4 dilated, output stride 8), not {arch}"
            ))),
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
    /// The training imagery's pixel size in metres, when known.
    pub pixel_size: Option<f64>,
}

/// ImageNet's per-channel mean and std, in 8-bit units.
pub const IMAGENET_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
pub const IMAGENET_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Reads `checkpoint` into a new model of `o.arch`; errors name the file
/// and the first key that does not fit.
pub fn import(checkpoint: &Path, o: &ImportOptions) -> Result<Model> {
    let layout = o.source.layout(o.arch)?;
    let tensors = read_checkpoint(checkpoint)?;
    let bad = |why: String| Error::file(checkpoint, why);
    if tensors.is_empty() {
        return Err(bad(
            "holds no tensor: not a state dict (a Lightning checkpoint keeps its weights under 'state_dict')"
                .into(),
        ));
    }
    // a TorchGeo/geoai Lightning checkpoint says what it holds
    let hp = read_hyper_parameters(checkpoint);
    let text = |k: &str| hp.get(k).and_then(|v| v.as_str()).map(str::to_lowercase);
    if let (Source::Smp, Some(model), Some(backbone)) = (o.source, text("model"), text("backbone"))
    {
        let named = format!("{model}-{backbone}");
        if named != o.arch.name() {
            return Err(bad(format!(
                "its hyper_parameters say model '{model}' on backbone '{backbone}', not --arch {}{}",
                o.arch,
                if model == "unet" && Arch::ALL.iter().any(|a| a.name() == named) {
                    format!(" (use --arch {named})")
                } else {
                    " (rstile imports smp's Unet on resnet18, resnet34 or resnet50)".to_string()
                }
            )));
        }
    }
    let numbers = |k: &str| -> Option<Vec<f32>> {
        hp.get(k)?
            .as_array()?
            .iter()
            .map(|v| v.as_f64().map(|v| v as f32))
            .collect()
    };
    let find = |name: &str| tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t);
    let conv1 = find(layout.conv1).ok_or_else(|| {
        bad(format!(
            "no tensor '{}': not a state dict of {} ({} tensors{})",
            layout.conv1,
            layout.what,
            tensors.len(),
            tensors
                .first()
                .map(|(k, _)| format!(", the first '{k}'"))
                .unwrap_or_default()
        ))
    })?;
    let bands = conv1.dims().get(1).copied().unwrap_or(0);
    let head = find(layout.head).ok_or_else(|| bad(format!("no tensor '{}'", layout.head)))?;
    let classes = head.dims().first().copied().unwrap_or(0);
    if classes != o.classes.len() {
        return Err(bad(format!(
            "the checkpoint's head has {classes} classes, --classes lists {}",
            o.classes.len()
        )));
    }
    let (mean, std) = match (&o.mean, &o.std) {
        (Some(m), Some(s)) => (m.clone(), s.clone()),
        (None, None) if numbers("mean").is_some() || numbers("std").is_some() => {
            match (numbers("mean"), numbers("std")) {
                (Some(m), Some(s)) if m.len() == bands && s.len() == bands => (m, s),
                (m, s) => {
                    return Err(bad(format!(
                        "its hyper_parameters hold mean {m:?} and std {s:?}, not {bands} values each for the model's {bands} bands; give --mean and --std"
                    )))
                }
            }
        }
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
        pixel_size: o.pixel_size,
        ..ModelMeta::new(o.arch, bands, o.classes.clone())
    };
    meta.validate()?;
    let model = Model::new_random(meta, 0, &Device::Cpu)?;
    {
        let vars = model.varmap().data().lock().expect("varmap lock");
        let mut seen = HashSet::new();
        for (name, t) in &tensors {
            if name.ends_with("num_batches_tracked")
                || layout.skipped.iter().any(|p| name.starts_with(p))
            {
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
