//! The training configuration file (TOML).
//!
//! ```toml
//! [model]
//! arch = "tiny"                       # any of rstile::model::Arch::ALL
//! classes = "configs/classes/isprs.toml"
//! bands = [1, 2, 3]                   # 1-based bands of the image rasters
//! band_names = ["nir", "red", "green"]
//! # mean = [...], std = [...]         # default: measured on the training scenes
//! window = 256                        # default inference window stored in the model
//! overlap = 0.25
//! # pixel_size = 0.09                 # metres; default: the training scenes' own
//!
//! [data]
//! # either scenes (below) or prepared patches:
//! # train_patches = "prepared/vaihingen_train.bin"   # or .hdf5
//! # val_patches = "prepared/vaihingen_val.bin"
//! samples_per_epoch = 512             # random training windows per epoch (scenes)
//! val_window = 256                    # validation tiles
//! workers = 2                         # data worker threads
//! [[data.scene]]
//! image = "scenes/a/image.tif"
//! label = "scenes/a/gt.tif"
//! split = "train"                     # or "val"
//!
//! [train]
//! epochs = 10
//! batch = 8
//! crop = 256                          # even; training crops are crop x crop
//! lr = 0.001
//! optimizer = "adamw"                 # or "sgd"
//! schedule = "poly"                   # "poly", "cosine" or "constant"
//! seed = 0
//! out_dir = "runs/tiny"
//! patience = 0                        # early stopping after N epochs without a better val mean F1; 0 = off
//! loss = "ce"                         # "ce", "dice", "focal", "lovasz" or "dice+ce"
//! focal_gamma = 2.0                   # the focal loss's γ
//! class_weights = "median-frequency"  # or one weight per class: [1.0, 2.0, ...]
//!
//! [augment]                           # see rstile::train::augment::AugmentConfig
//! flips = true
//! ```
//!
//! Relative paths are taken relative to the current directory.

use super::data::ScenePair;
pub use super::loss::LossKind;
use crate::error::{Error, Result};
use crate::train::augment::AugmentConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
    #[serde(default)]
    pub augment: AugmentConfig,
    /// The file the config was read from ([`TrainConfig::from_file`]), which
    /// errors about the config name; not part of the file.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub arch: String,
    pub classes: PathBuf,
    pub bands: Vec<usize>,
    #[serde(default)]
    pub band_names: Vec<String>,
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    #[serde(default = "d_window")]
    pub window: usize,
    #[serde(default = "d_overlap")]
    pub overlap: f64,
    /// The training imagery's pixel size in metres, recorded in the model
    /// (Deepness' `resolution` on export). Default: the training scenes'
    /// own, when they are in a projected CRS and agree; unknown for
    /// patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_size: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneEntry {
    pub image: PathBuf,
    pub label: PathBuf,
    pub split: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    #[serde(default)]
    pub scene: Vec<SceneEntry>,
    /// Patches of `rstile prepare vaihingen` (`vaihingen_train.bin` with
    /// `--raw`, or `vaihingen_train.hdf5`), instead of scenes.
    #[serde(default)]
    pub train_patches: Option<PathBuf>,
    #[serde(default)]
    pub val_patches: Option<PathBuf>,
    /// With patches: ignore the pixels of the boundary mask (the eroded
    /// reference, as ISPRS scores).
    #[serde(default = "d_true")]
    pub ignore_boundary: bool,
    #[serde(default = "d_samples")]
    pub samples_per_epoch: usize,
    #[serde(default = "d_window")]
    pub val_window: usize,
    #[serde(default = "d_workers")]
    pub workers: usize,
}

/// `train.class_weights`: one weight per class, in class-table order, or
/// `"median-frequency"`: computed from the training labels when the run
/// starts ([`crate::train::loss::weights::ClassFrequency`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ClassWeights {
    List(Vec<f32>),
    MedianFrequency,
}

const MEDIAN_FREQUENCY: &str = "median-frequency";

impl Serialize for ClassWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ClassWeights::List(w) => w.serialize(s),
            ClassWeights::MedianFrequency => s.serialize_str(MEDIAN_FREQUENCY),
        }
    }
}

impl<'de> Deserialize<'de> for ClassWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ClassWeights;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a list of per-class weights or \"{MEDIAN_FREQUENCY}\"")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                if v == MEDIAN_FREQUENCY {
                    Ok(ClassWeights::MedianFrequency)
                } else {
                    Err(E::custom(format!(
                        "\"{v}\": expected \"{MEDIAN_FREQUENCY}\" or a list of per-class weights"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                Vec::<f32>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(ClassWeights::List)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Sgd,
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: usize,
    #[serde(default = "d_batch")]
    pub batch: usize,
    #[serde(default = "d_window")]
    pub crop: usize,
    pub lr: f64,
    #[serde(default = "d_optimizer")]
    pub optimizer: OptimizerName,
    /// SGD momentum.
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_eps")]
    pub eps: f64,
    #[serde(default = "d_schedule")]
    pub schedule: super::schedule::Schedule,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "d_power")]
    pub poly_power: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Early stopping: epochs without a better validation mean F1; 0 = off.
    #[serde(default)]
    pub patience: usize,
    /// The loss minimised (see [`crate::train::loss`]).
    #[serde(default)]
    pub loss: LossKind,
    /// The focusing parameter γ of `loss = "focal"`.
    #[serde(default = "d_gamma")]
    pub focal_gamma: f64,
    /// Per-class loss weights.
    #[serde(default)]
    pub class_weights: Option<ClassWeights>,
    /// Class channels averaged into the validation mean F1 (the selection
    /// metric); default all. ISPRS: `[0, 1, 2, 3, 4]` (no clutter).
    #[serde(default)]
    pub f1_classes: Option<Vec<usize>>,
    /// Encoder (`backbone.*`) learning rate = `lr · encoder_lr_mult`.
    #[serde(default = "d_one")]
    pub encoder_lr_mult: f64,
    /// The encoder is not updated during the first N epochs.
    #[serde(default)]
    pub freeze_encoder_epochs: usize,
}

fn d_window() -> usize {
    256
}
fn d_overlap() -> f64 {
    0.25
}
fn d_samples() -> usize {
    512
}
fn d_workers() -> usize {
    2
}
fn d_batch() -> usize {
    8
}
fn d_optimizer() -> OptimizerName {
    OptimizerName::Adamw
}
fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    1e-4
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_schedule() -> super::schedule::Schedule {
    super::schedule::Schedule::Poly
}
fn d_power() -> f64 {
    0.9
}
fn d_true() -> bool {
    true
}
fn d_gamma() -> f64 {
    2.0
}
fn d_one() -> f64 {
    1.0
}

impl TrainConfig {
    /// Reads and checks a config file; errors name the file.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the config: {e}")))?;
        let mut cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid training config: {}", e.message())))?;
        cfg.validate().map_err(|e| Error::file(path, e))?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// An error about the config: it names the config file when known.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        match &self.path {
            Some(p) => Error::file(p, msg),
            None => Error::Config(msg.to_string()),
        }
    }

    /// The config as TOML (stored in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        if self.model.arch == crate::model::Arch::Identity.name() {
            return Err(format!(
                "model.arch {:?} has no weights to train (it measures the pipeline)",
                self.model.arch
            ));
        }
        if t.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if t.batch < 2 {
            return Err(format!(
                "train.batch {} must be at least 2 (batch norm needs two samples)",
                t.batch
            ));
        }
        if t.crop < 16 || !t.crop.is_multiple_of(2) {
            return Err(format!(
                "train.crop {} must be even and at least 16",
                t.crop
            ));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(format!("train.lr {} must be positive", t.lr));
        }
        if !(t.encoder_lr_mult.is_finite() && t.encoder_lr_mult >= 0.0) {
            return Err(format!(
                "train.encoder_lr_mult {} must be >= 0",
                t.encoder_lr_mult
            ));
        }
        if !(t.min_lr.is_finite() && (0.0..=t.lr).contains(&t.min_lr)) {
            return Err(format!(
                "train.min_lr {} must be between 0 and train.lr {}",
                t.min_lr, t.lr
            ));
        }
        // the optimiser's settings, checked whichever optimiser is chosen
        let unit = |key: &str, v: f64| {
            if v.is_finite() && (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("train.{key} {v} must be in [0, 1)"))
            }
        };
        unit("beta1", t.beta1)?;
        unit("beta2", t.beta2)?;
        unit("momentum", t.momentum)?;
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return Err(format!("train.eps {} must be positive", t.eps));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(format!(
                "train.weight_decay {} must be >= 0",
                t.weight_decay
            ));
        }
        if !(t.poly_power.is_finite() && t.poly_power > 0.0) {
            return Err(format!(
                "train.poly_power {} must be positive",
                t.poly_power
            ));
        }
        if let Some(p) = self
            .model
            .pixel_size
            .filter(|p| !(p.is_finite() && *p > 0.0))
        {
            return Err(format!(
                "model.pixel_size {p} must be a positive number of metres"
            ));
        }
        if !(t.focal_gamma.is_finite() && t.focal_gamma >= 0.0) {
            return Err(format!(
                "train.focal_gamma {} must be a finite number >= 0",
                t.focal_gamma
            ));
        }
        if let Some(ClassWeights::List(w)) = &t.class_weights {
            if let Some(v) = w.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(format!(
                    "train.class_weights holds {v}; each weight must be a finite number >= 0"
                ));
            }
            if w.iter().all(|&v| v == 0.0) {
                return Err(
                    "train.class_weights are all zero, so no pixel would count in the loss".into(),
                );
            }
        }
        if t.f1_classes.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("train.f1_classes is empty; leave it out to score all classes".into());
        }
        crate::infer::window::check_geometry(self.model.window, self.model.overlap).map_err(
            |e| match e {
                crate::infer::window::GridError::BadOverlap(_) => format!("model.overlap: {e}"),
                _ => format!("model.window: {e}"),
            },
        )?;
        if self.model.bands.is_empty() {
            return Err("model.bands is empty".into());
        }
        if self.data.val_window < 16 || !self.data.val_window.is_multiple_of(2) {
            return Err(format!(
                "data.val_window {} must be even and at least 16",
                self.data.val_window
            ));
        }
        for e in &self.data.scene {
            if e.split != "train" && e.split != "val" {
                return Err(format!(
                    "data.scene {}: split '{}' must be \"train\" or \"val\"",
                    e.image.display(),
                    e.split
                ));
            }
        }
        if self.data.scene.is_empty() && self.data.train_patches.is_none() {
            return Err("data: no [[data.scene]] entries and no train_patches".into());
        }
        if self.data.train_patches.is_some() != self.data.val_patches.is_some() {
            return Err("data: train_patches and val_patches go together".into());
        }
        if self.data.train_patches.is_some() && !self.data.scene.is_empty() {
            return Err("data: give either [[data.scene]] entries or patches, not both".into());
        }
        if self.data.train_patches.is_none() && self.data.samples_per_epoch < t.batch {
            return Err(format!(
                "data.samples_per_epoch {} is smaller than train.batch {}",
                self.data.samples_per_epoch, t.batch
            ));
        }
        self.augment.validate()
    }

    /// The scene pairs of one split.
    pub fn scenes(&self, split: &str) -> Vec<ScenePair> {
        self.data
            .scene
            .iter()
            .filter(|s| s.split == split)
            .map(|s| ScenePair {
                image: s.image.clone(),
                label: s.label.clone(),
            })
            .collect()
    }
}
