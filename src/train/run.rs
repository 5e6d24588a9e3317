//! The training loop and its run directory.
//!
//! A run directory holds:
//!
//! * `config.toml`: the configuration the run started with;
//! * `last.safetensors`: the model after the last finished epoch (a normal
//!   rstile model file, usable by `rstile infer`), `last.optim.safetensors`
//!   (the optimiser's buffers: SGD momentum or AdamW's two moments) and
//!   `state.json` (epochs done, global step, optimiser step counts, best
//!   score, the metrics history). All randomness (sample order, windows,
//!   augmentation) is derived from the seed, the epoch and the sample's
//!   position, so these files are the whole state: `--resume` continues
//!   exactly, and gives the same weights as an uninterrupted run;
//! * `best.safetensors`: the model of the epoch with the best validation
//!   mean F1;
//! * `metrics.jsonl` and `metrics.csv`: one line per epoch;
//! * `loss.png`, `val_f1.png`, `confusion.png`: the curves and the last
//!   epoch's validation confusion matrix (rows truth, columns prediction).
//!
//! Determinism: on one machine, with the same seed and thread count, runs
//! give bit-identical weights. The FCN heads' dropout (`resnet*-fcn*`) is
//! seeded from the run's seed and the step.

use super::config::ClassWeights;
use super::config::{OptimizerName, TrainConfig};
use super::data::{run_epoch, DataSource, EpochPlan, Sampling, SceneSource};
use super::loss::{cross_entropy, Loss, LossKind};
use super::optim::{OptimConfig, Optimizer, Param};
use super::patches::PatchSource;
use super::plot;
use super::pretrained::load_imagenet;
use super::schedule::lr_at;
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::batch::{describe_bad, model_non_finite};
use crate::infer::read::Normalize;
use crate::metrics::Confusion;
use crate::model::{Model, ModelMeta, Net, FORMAT};
use crate::train::augment::{derive_seed, SplitMix64};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options beside the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Continue the run in this directory.
    pub resume: Option<PathBuf>,
    /// ImageNet ResNet weights for the encoder (new runs only).
    pub pretrained: Option<PathBuf>,
    pub device: Device,
    /// Stop after this many epochs of this invocation (tests; `None`: run
    /// to `train.epochs`).
    pub max_epochs: Option<usize>,
}

/// One epoch's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// Global step at the end of the epoch.
    pub step: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_overall_accuracy: Option<f64>,
    pub val_mean_f1: Option<f64>,
    pub val_miou: Option<f64>,
    pub val_f1: Vec<Option<f64>>,
    pub val_iou: Vec<Option<f64>>,
    /// Training samples per second (data, forward, backward, update).
    pub samples_per_s: f64,
    /// Seconds the model thread waited for training data.
    pub data_wait_s: f64,
    /// Seconds for the whole epoch, validation included.
    pub seconds: f64,
    /// Share of the training windows' label pixels that the loss ignored
    /// (nodata, not a class id, outside the scene), after augmentation.
    #[serde(default)]
    pub train_ignored: Option<f64>,
    /// Training windows left out because none of their pixels is labelled.
    #[serde(default)]
    pub train_unlabelled_windows: usize,
    /// Share of the validation label pixels that were not scored.
    #[serde(default)]
    pub val_ignored: Option<f64>,
}

/// Labelled and ignored pixels of the windows of an epoch.
#[derive(Debug, Clone, Copy, Default)]
struct LabelCount {
    pixels: u64,
    ignored: u64,
    windows: usize,
    /// Windows without a labelled pixel.
    unlabelled: usize,
}

impl LabelCount {
    /// Counts the `n` windows of `labels` (class channels; `>= k` is
    /// ignored) and returns the positions of those with a labelled pixel.
    fn add(&mut self, labels: &[u8], n: usize, k: usize) -> Vec<usize> {
        let per = labels.len() / n.max(1);
        let mut keep = Vec::with_capacity(n);
        for (i, w) in labels.chunks(per.max(1)).enumerate() {
            let ignored = w.iter().filter(|&&l| l as usize >= k).count();
            self.pixels += w.len() as u64;
            self.ignored += ignored as u64;
            self.windows += 1;
            if ignored == w.len() {
                self.unlabelled += 1;
            } else {
                keep.push(i);
            }
        }
        keep
    }

    /// The ignored share, `None` without pixels.
    fn share(&self) -> Option<f64> {
        (self.pixels > 0).then(|| self.ignored as f64 / self.pixels as f64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: u32,
    epochs_done: usize,
    step: u64,
    seed: u64,
    optim_steps: Vec<u64>,
    best_mean_f1: Option<f64>,
    best_epoch: Option<usize>,
    stopped_early: bool,
    history: Vec<EpochMetrics>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub run_dir: PathBuf,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: Option<usize>,
    pub best_mean_f1: Option<f64>,
    pub stopped_early: bool,
}

/// Feedback while training (a progress bar in the CLI).
pub trait TrainProgress {
    fn epoch_start(&self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn step(&self, _step: usize, _loss: f64, _samples_per_s: f64) {}
    fn validating(&self) {}
    fn epoch_end(&self, _m: &EpochMetrics) {}
    fn message(&self, _msg: &str) {}
}

/// No feedback.
pub struct Quiet;
impl TrainProgress for Quiet {}

/// File names inside a run directory.
pub const LAST: &str = "last.safetensors";
pub const LAST_OPTIM: &str = "last.optim.safetensors";
pub const BEST: &str = "best.safetensors";
pub const STATE: &str = "state.json";
pub const CONFIG: &str = "config.toml";

/// Every file a run writes into its directory.
pub const RUN_FILES: [&str; 10] = [
    CONFIG,
    STATE,
    LAST,
    LAST_OPTIM,
    BEST,
    "metrics.jsonl",
    "metrics.csv",
    "loss.png",
    "val_f1.png",
    "confusion.png",
];

/// The output rule (src/output.rs) for a new run's directory: none of the
/// files the run writes may exist already (a new run never mixes with
/// another run's files, or with the user's), be one of the run's inputs
/// (the config, the class table, scenes, labels, patches, pretrained
/// weights), or be something other than a regular file. Checked before
/// the directory is created or anything is written.
fn check_new_run_dir(run_dir: &Path, cfg: &TrainConfig, opts: &RunOptions) -> Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    if !run_dir.is_dir() {
        return Err(Error::file(
            run_dir,
            "the out_dir exists and is not a folder; choose another out_dir",
        ));
    }
    let mut inputs = crate::output::Inputs::new();
    for p in cfg.path.iter().chain([&cfg.model.classes]) {
        inputs.add(p);
    }
    for s in &cfg.data.scene {
        inputs.add(&s.image);
        inputs.add(&s.label);
    }
    for p in cfg
        .data
        .train_patches
        .iter()
        .chain(&cfg.data.val_patches)
        .chain(&opts.pretrained)
    {
        inputs.add(p);
    }
    for name in RUN_FILES {
        let path = run_dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        // an input, a folder or a FIFO: the rule's own words
        crate::output::check(&path, true, &inputs)?;
        return Err(Error::file(
            &path,
            "already exists, from another run or not rstile's; a new run starts in an out_dir \
             without its files: choose another out_dir, or remove the file",
        ));
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

/// The trainable parameters, sorted by name, grouped: 1 = encoder
/// (`backbone.*`), 0 = the rest.
pub fn params_of(model: &Model) -> Vec<Param> {
    let vars = model.varmap().data().lock().expect("varmap lock");
    let mut v: Vec<Param> = vars
        .iter()
        .filter(|(n, _)| !(n.ends_with(".running_mean") || n.ends_with(".running_var")))
        .map(|(n, var)| Param {
            name: n.clone(),
            var: var.clone(),
            group: n.starts_with("backbone.") as usize,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn optim_config(cfg: &TrainConfig) -> OptimConfig {
    let t = &cfg.train;
    match t.optimizer {
        OptimizerName::Sgd => OptimConfig::Sgd {
            momentum: t.momentum,
            weight_decay: t.weight_decay,
        },
        OptimizerName::Adamw => OptimConfig::Adamw {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
    }
}

/// The training scenes' common pixel size in metres: `None` (with a
/// message when it matters) when one has none or they differ by more than
/// 1 %.
fn scenes_pixel_size(
    pairs: &[super::ScenePair],
    progress: &dyn TrainProgress,
) -> Result<Option<f64>> {
    let mut sizes = Vec::with_capacity(pairs.len());
    for p in pairs {
        match crate::raster::SceneInfo::probe(&p.image)?.pixel_size_m() {
            Some(m) => sizes.push(m),
            None => return Ok(None),
        }
    }
    let lo = sizes.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sizes.iter().copied().fold(0.0, f64::max);
    if hi > lo * 1.01 {
        progress.message(&format!(
            "the training scenes' pixels range from {lo} m to {hi} m: the model records no pixel size (set model.pixel_size)"
        ));
        return Ok(None);
    }
    Ok(Some(sizes[0]))
}

/// Runs (or resumes) a training run; see the module documentation.
pub fn train(
    cfg: &TrainConfig,
    opts: &RunOptions,
    progress: &dyn TrainProgress,
) -> Result<TrainReport> {
    // Every check of the config comes before the run directory is made, so
    // a config error leaves nothing behind; config errors name the file.
    cfg.validate().map_err(|e| cfg.error(e))?;
    let t = &cfg.train;
    let classes = ClassTable::from_toml_file(&cfg.model.classes)?;
    let k = classes.len();
    if let Some(ClassWeights::List(w)) = &t.class_weights {
        if w.len() != k {
            return Err(cfg.error(format!(
                "train.class_weights has {} values but the class table has {k} classes",
                w.len()
            )));
        }
    }
    let f1_classes: Vec<usize> = t.f1_classes.clone().unwrap_or_else(|| (0..k).collect());
    if let Some(c) = f1_classes.iter().find(|&&c| c >= k) {
        return Err(cfg.error(format!(
            "train.f1_classes: class {c} of {k} (channels count from 0)"
        )));
    }
    let patches = match (&cfg.data.train_patches, &cfg.data.val_patches) {
        (Some(t), Some(v)) => {
            let ib = cfg.data.ignore_boundary;
            let (t, v) = (
                PatchSource::open(t, &classes, ib)?,
                PatchSource::open(v, &classes, ib)?,
            );
            if t.bands() != cfg.model.bands.len() || v.bands() != t.bands() {
                return Err(cfg.error(format!(
                    "the patches have {} bands (validation: {}), model.bands lists {}",
                    t.bands(),
                    v.bands(),
                    cfg.model.bands.len()
                )));
            }
            Some((t, v))
        }
        _ => None,
    };
    let train_pairs = cfg.scenes("train");
    let val_pairs = cfg.scenes("val");
    if patches.is_none() && (train_pairs.is_empty() || val_pairs.is_empty()) {
        return Err(cfg.error(
            "data: at least one [[data.scene]] with split = \"train\" and one with split = \"val\" are needed",
        ));
    }

    // run directory and state
    let run_dir = opts.resume.clone().unwrap_or_else(|| t.out_dir.clone());
    let (model, mut state) = if let Some(dir) = &opts.resume {
        let sp = dir.join(STATE);
        let text = std::fs::read_to_string(&sp)
            .map_err(|e| Error::file(&sp, format!("not a run directory to resume: {e}")))?;
        let state: RunState = serde_json::from_str(&text)
            .map_err(|e| Error::file(&sp, format!("corrupt run state: {e}")))?;
        let model = Model::load(&dir.join(LAST), &opts.device)?;
        let bad = model_non_finite(&model)?;
        if !bad.is_empty() {
            return Err(Error::NonFinite(format!(
                "{}: the run's weights are not finite ({}); it cannot be continued",
                dir.join(LAST).display(),
                describe_bad(&bad)
            )));
        }
        if model.meta.arch.name() != cfg.model.arch || model.meta.classes != classes {
            return Err(Error::file(
                dir,
                "the run's model does not match the config (architecture or classes differ)",
            ));
        }
        if opts.pretrained.is_some() {
            progress.message("--pretrained is ignored when resuming: the run's weights are used");
        }
        (model, state)
    } else {
        if run_dir.join(STATE).exists() {
            return Err(Error::file(
                &run_dir,
                "already holds a run; pass --resume to continue it, or choose another out_dir",
            ));
        }
        let nb = cfg.model.bands.len();
        let norm = match (&cfg.model.mean, &cfg.model.std, &patches) {
            // prepared patches are normalised already: keep their statistics
            (_, _, Some((t, _))) => Normalize {
                mean: t.mean.clone(),
                std: t.std.clone(),
            },
            (Some(m), Some(s), None) => Normalize {
                mean: m.clone(),
                std: s.clone(),
            },
            (None, None, None) => SceneSource::band_stats(&train_pairs, &cfg.model.bands, 1024)?,
            _ => return Err(cfg.error("model.mean and model.std go together")),
        };
        let meta = ModelMeta {
            format: FORMAT,
            arch: Net::Arch(cfg.model.arch.parse()?),
            bands: nb,
            band_names: cfg.model.band_names.clone(),
            mean: norm.mean,
            std: norm.std,
            classes: classes.clone(),
            window: cfg.model.window,
            overlap: cfg.model.overlap,
            pixel_size: match cfg.model.pixel_size {
                Some(p) => Some(p),
                None if patches.is_none() => scenes_pixel_size(&train_pairs, progress)?,
                None => None,
            },
        };
        meta.validate().map_err(|e| cfg.error(e))?;
        let model = Model::new_random(meta, t.seed, &opts.device)?;
        if let Some(p) = &opts.pretrained {
            let r = load_imagenet(&model, p)?;
            let bad = model_non_finite(&model)?;
            if !bad.is_empty() {
                return Err(Error::NonFinite(format!(
                    "{}: the pretrained weights are not finite ({})",
                    p.display(),
                    describe_bad(&bad)
                )));
            }
            progress.message(&format!(
                "loaded {} ImageNet tensors from {} (first convolution {} -> {} bands)",
                r.loaded,
                p.display(),
                r.first_conv.0,
                r.first_conv.1
            ));
        }
        let state = RunState {
            format: 1,
            epochs_done: 0,
            step: 0,
            seed: t.seed,
            optim_steps: Vec::new(),
            best_mean_f1: None,
            best_epoch: None,
            stopped_early: false,
            history: Vec::new(),
        };
        (model, state)
    };
    let norm = Normalize {
        mean: model.meta.mean.clone(),
        std: model.meta.std.clone(),
    };
    type Src = Box<dyn DataSource>;
    let (train_src, val_src): (Src, Src) = match patches {
        Some((t, v)) => (Box::new(t), Box::new(v)),
        None => (
            Box::new({
                let src = SceneSource::new(
                    &train_pairs,
                    &cfg.model.bands,
                    norm.clone(),
                    &classes,
                    Sampling::Random {
                        samples: cfg.data.samples_per_epoch,
                        size: cfg.augment.source_size(t.crop),
                    },
                )?;
                // a crop larger than a scene is mostly padding: refuse it
                for (pair, size) in src.scene_sizes() {
                    if t.crop > size.width || t.crop > size.height {
                        return Err(cfg.error(format!(
                            "train.crop {} px is larger than the training scene {} ({}x{} px); choose a crop of at most {} px",
                            t.crop,
                            pair.image.display(),
                            size.width,
                            size.height,
                            size.width.min(size.height) / 2 * 2
                        )));
                    }
                }
                src
            }),
            Box::new(SceneSource::new(
                &val_pairs,
                &cfg.model.bands,
                norm,
                &classes,
                Sampling::Grid {
                    size: cfg.data.val_window,
                },
            )?),
        ),
    };
    let weights = match &t.class_weights {
        None => None,
        Some(ClassWeights::List(w)) => Some(w.clone()),
        Some(ClassWeights::MedianFrequency) => {
            let f = train_src.class_frequency(k)?;
            let w = f.median_frequency_weights().ok_or_else(|| {
                cfg.error("train.class_weights = \"median-frequency\": the training labels hold no pixel of any class")
            })?;
            let shown: Vec<String> = classes
                .classes
                .iter()
                .zip(&w)
                .zip(&f.pixels)
                .map(|((c, w), &n)| match n {
                    0 => format!("{} 0 (not in the labels)", c.name),
                    _ => format!("{} {w:.3}", c.name),
                })
                .collect();
            progress.message(&format!(
                "median-frequency class weights from {} training label images: {}",
                f.images,
                shown.join(", ")
            ));
            Some(w)
        }
    };
    let loss_fn = Loss {
        kind: t.loss,
        gamma: t.focal_gamma,
        weights,
    };
    let mut opt = Optimizer::new(optim_config(cfg), params_of(&model));
    if opts.resume.is_some() {
        opt.load(&run_dir.join(LAST_OPTIM), &state.optim_steps)?;
    } else {
        check_new_run_dir(&run_dir, cfg, opts)?;
        // everything checked: the run directory, with the config it ran
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Error::file(&run_dir, format!("cannot create the run directory: {e}")))?;
        write_atomic(&run_dir.join(CONFIG), cfg.to_toml().as_bytes())?;
    }
    // how errors that call for a smaller learning rate name it
    let lr_hint = match &cfg.path {
        Some(p) => format!("lower train.lr ({:?}) in {}", t.lr, p.display()),
        None => format!("lower train.lr ({:?})", t.lr),
    };
    let seed = state.seed;
    let steps_per_epoch = train_src.len() / t.batch;
    let total_steps = (t.epochs * steps_per_epoch) as u64;

    let mut epochs_this_call = 0;
    while state.epochs_done < t.epochs && !state.stopped_early {
        if opts.max_epochs.is_some_and(|m| epochs_this_call >= m) {
            break;
        }
        let epoch = state.epochs_done;
        let t0 = Instant::now();
        progress.epoch_start(epoch + 1, t.epochs, steps_per_epoch);
        let mut order: Vec<usize> = (0..train_src.len()).collect();
        SplitMix64::new(derive_seed(seed, &[epoch as u64, u64::MAX])).shuffle(&mut order);
        let plan = EpochPlan {
            order,
            batch: t.batch,
            workers: cfg.data.workers,
            drop_last: true,
            augment: Some((cfg.augment.clone(), t.crop)),
            seed,
            epoch: epoch as u64,
        };
        let frozen = epoch < t.freeze_encoder_epochs;
        let mut loss_sum = 0f64;
        let mut loss_n = 0usize;
        let mut lr = t.lr;
        let mut step = state.step;
        let mut in_epoch = 0;
        let mut label_px = LabelCount::default();
        let io = run_epoch(&*train_src, &plan, &opts.device, &mut |b| {
            // windows without a single labelled pixel teach nothing: they
            // are counted and left out of the batch (a batch of only such
            // windows makes no step)
            let keep = label_px.add(&b.labels, b.len, k);
            if keep.is_empty() {
                return Ok(true);
            }
            let (images, labels) = if keep.len() == b.len {
                (b.images, b.labels)
            } else {
                let per = b.labels.len() / b.len;
                let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
                let idx = candle_core::Tensor::new(idx.as_slice(), b.images.device())?;
                let labels = keep
                    .iter()
                    .flat_map(|&i| b.labels[i * per..(i + 1) * per].iter().copied())
                    .collect();
                (b.images.index_select(&idx, 0)?, labels)
            };
            lr = lr_at(
                t.schedule,
                t.lr,
                t.min_lr,
                t.poly_power,
                t.warmup_steps,
                step,
                total_steps,
            );
            let enc = if frozen {
                None
            } else {
                Some(lr * t.encoder_lr_mult)
            };
            // dropout masks follow the run's seed and the step, so a resumed
            // run draws the same ones
            model.set_dropout_seed(derive_seed(seed, &[step, 0xd5]));
            let logits = model.forward_t(&images, true)?;
            let loss = loss_fn.compute(&logits, &labels)?;
            let grads = loss.backward()?;
            opt.step(&grads, &[Some(lr), enc])?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(Error::NonFinite(format!(
                    "the training loss became {l} at epoch {} step {step}; {lr_hint}",
                    epoch + 1
                )));
            }
            loss_sum += l;
            loss_n += 1;
            step += 1;
            in_epoch += 1;
            let sps = (in_epoch * t.batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            progress.step(in_epoch, loss_sum / loss_n as f64, sps);
            Ok(true)
        })?;
        let train_secs = t0.elapsed().as_secs_f64();
        if loss_n == 0 && io.samples > 0 {
            let labels: Vec<String> = train_pairs
                .iter()
                .map(|p| p.label.display().to_string())
                .collect();
            let what = if labels.is_empty() {
                "the training patches".to_string()
            } else {
                labels.join(", ")
            };
            return Err(Error::Config(format!(
                "{what}: none of the {} training windows of epoch {} holds a labelled pixel (all are nodata or not a class id where the windows fell); label more of the scene{}",
                label_px.windows,
                epoch + 1,
                match &cfg.path {
                    Some(p) => format!(" or check the class ids of {}", p.display()),
                    None => String::new(),
                }
            )));
        }
        // the last step's update is seen by no loss: check the weights
        // themselves, so that a non-finite model is never validated or saved
        let bad = model_non_finite(&model)?;
        if !bad.is_empty() {
            return Err(Error::NonFinite(format!(
                "the model's weights became NaN or infinite at epoch {} step {step} ({}); {lr_hint}",
                epoch + 1,
                describe_bad(&bad)
            )));
        }

        // validation
        progress.validating();
        let mut conf = Confusion::new(k);
        let mut vloss = 0f64;
        let mut vn = 0usize;
        let mut val_px = LabelCount::default();
        let vplan = EpochPlan {
            order: (0..val_src.len()).collect(),
            batch: t.batch,
            workers: cfg.data.workers,
            drop_last: false,
            augment: None,
            seed,
            epoch: epoch as u64,
        };
        run_epoch(&*val_src, &vplan, &opts.device, &mut |b| {
            let logits = model.forward_t(&b.images, false)?;
            val_px.add(&b.labels, b.len, k);
            let valid = b.labels.iter().filter(|&&l| (l as usize) < k).count();
            if valid > 0 {
                let l = cross_entropy(&logits, &b.labels, None)?.to_scalar::<f32>()? as f64;
                vloss += l * valid as f64;
                vn += valid;
            }
            let pred: Vec<u8> = logits
                .argmax(1)?
                .to_dtype(DType::U32)?
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|v| v as u8)
                .collect();
            conf.add_slices(&b.labels, &pred);
            Ok(true)
        })?;
        if vn > 0 && !vloss.is_finite() {
            return Err(Error::NonFinite(format!(
                "the validation loss became {} at epoch {} step {step}; {lr_hint}",
                vloss / vn as f64,
                epoch + 1
            )));
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            step,
            lr,
            train_loss: if loss_n > 0 {
                loss_sum / loss_n as f64
            } else {
                f64::NAN
            },
            val_loss: (vn > 0).then(|| vloss / vn as f64),
            val_overall_accuracy: conf.overall_accuracy(),
            val_mean_f1: conf.mean_f1(&f1_classes),
            val_miou: conf.miou(),
            val_f1: (0..k).map(|c| conf.f1(c)).collect(),
            val_iou: (0..k).map(|c| conf.iou(c)).collect(),
            samples_per_s: io.samples as f64 / train_secs.max(1e-9),
            data_wait_s: io.wait.as_secs_f64(),
            seconds: t0.elapsed().as_secs_f64(),
            train_ignored: label_px.share(),
            train_unlabelled_windows: label_px.unlabelled,
            val_ignored: val_px.share(),
        };
        state.step = step;
        state.epochs_done = epoch + 1;
        let score = m.val_mean_f1.unwrap_or(0.0);
        let improved = state.best_mean_f1.is_none_or(|b| score > b);
        if improved {
            state.best_mean_f1 = Some(score);
            state.best_epoch = Some(epoch + 1);
        }
        if t.patience > 0 {
            let since = epoch + 1 - state.best_epoch.unwrap_or(0);
            state.stopped_early = since >= t.patience && state.epochs_done < t.epochs;
        }
        state.history.push(m.clone());

        // checkpoint: model, optimiser, then the state that points at them
        model.save(&run_dir.join(LAST))?;
        if improved {
            model.save(&run_dir.join(BEST))?;
        }
        state.optim_steps = opt.save(&run_dir.join(LAST_OPTIM))?;
        write_atomic(
            &run_dir.join(STATE),
            serde_json::to_string_pretty(&state)
                .expect("state serialises")
                .as_bytes(),
        )?;
        write_metrics(&run_dir, &state.history, &classes)?;
        write_plots(
            &run_dir,
            &state.history,
            &conf,
            &classes,
            state.best_epoch,
            &f1_classes,
            &loss_fn,
        )?;
        progress.epoch_end(&m);
        if state.stopped_early {
            progress.message(&format!(
                "early stop after epoch {}: no better validation mean F1 for {} epochs",
                epoch + 1,
                t.patience
            ));
        }
        epochs_this_call += 1;
    }
    Ok(TrainReport {
        run_dir,
        history: state.history,
        best_epoch: state.best_epoch,
        best_mean_f1: state.best_mean_f1,
        stopped_early: state.stopped_early,
    })
}

fn opt_csv(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

/// Rewrites `metrics.jsonl` and `metrics.csv` from the whole history (so a
/// resumed run never duplicates a line).
fn write_metrics(dir: &Path, history: &[EpochMetrics], classes: &ClassTable) -> Result<()> {
    let mut jsonl = String::new();
    for m in history {
        jsonl.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        jsonl.push('\n');
    }
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    let names: Vec<String> = classes
        .classes
        .iter()
        .map(|c| c.name.replace([' ', ','], "_"))
        .collect();
    let mut csv =
        String::from("epoch,step,lr,train_loss,val_loss,val_overall_accuracy,val_mean_f1,val_miou");
    for n in &names {
        csv.push_str(&format!(",f1_{n}"));
    }
    for n in &names {
        csv.push_str(&format!(",iou_{n}"));
    }
    // the timings stay last (everything before them is deterministic)
    csv.push_str(
        ",train_ignored,train_unlabelled_windows,val_ignored,samples_per_s,data_wait_s,seconds\n",
    );
    for m in history {
        csv.push_str(&format!(
            "{},{},{:.6e},{:.6},{},{},{},{}",
            m.epoch,
            m.step,
            m.lr,
            m.train_loss,
            opt_csv(m.val_loss),
            opt_csv(m.val_overall_accuracy),
            opt_csv(m.val_mean_f1),
            opt_csv(m.val_miou)
        ));
        for v in m.val_f1.iter().chain(&m.val_iou) {
            csv.push_str(&format!(",{}", opt_csv(*v)));
        }
        csv.push_str(&format!(
            ",{},{},{},{:.3},{:.3},{:.3}\n",
            opt_csv(m.train_ignored),
            m.train_unlabelled_windows,
            opt_csv(m.val_ignored),
            m.samples_per_s,
            m.data_wait_s,
            m.seconds
        ));
    }
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())
}

fn write_plots(
    dir: &Path,
    history: &[EpochMetrics],
    conf: &Confusion,
    classes: &ClassTable,
    best_epoch: Option<usize>,
    f1_classes: &[usize],
    loss: &Loss,
) -> Result<()> {
    use plot::{Series, Stroke};
    let (w, h) = (960, 540);
    let best = best_epoch.map(|b| {
        let f1 = history
            .iter()
            .find(|m| m.epoch == b)
            .and_then(|m| m.val_mean_f1)
            .map_or("n/a".into(), |v| format!("{:.1} %", v * 100.0));
        (b, format!("best epoch: {b}\nval. mean F1 {f1}"))
    });
    let line = |label: &str, values, color, stroke, width| Series {
        label: label.into(),
        values,
        color,
        stroke,
        width,
    };

    let train: Vec<Option<f64>> = history.iter().map(|m| Some(m.train_loss)).collect();
    let val: Vec<Option<f64>> = history.iter().map(|m| m.val_loss).collect();
    plot::write_curves(
        &dir.join("loss.png"),
        &plot::Curves {
            title: "Training and validation loss".into(),
            y_label: if loss.kind == LossKind::Ce && loss.weights.is_none() {
                "cross-entropy per pixel (nats)".into()
            } else {
                "loss".into()
            },
            y_range: None,
            y_scale: 1.0,
            series: vec![
                line(
                    &match (loss.kind, &loss.weights) {
                        (LossKind::Ce, None) => "train (epoch mean)".to_string(),
                        (k, None) => format!("train: {} (epoch mean)", k.name()),
                        (k, Some(_)) => format!("train: weighted {} (epoch mean)", k.name()),
                    },
                    &train,
                    plot::TRAIN_COLOR,
                    Stroke::Solid,
                    2,
                ),
                line(
                    "validation: cross-entropy",
                    &val,
                    plot::VAL_COLOR,
                    Stroke::Solid,
                    2,
                ),
            ],
            best: best.clone(),
        },
        w,
        h,
    )?;

    let k = classes.classes.len();
    let mean: Vec<Option<f64>> = history.iter().map(|m| m.val_mean_f1).collect();
    let miou: Vec<Option<f64>> = history.iter().map(|m| m.val_miou).collect();
    let per: Vec<Vec<Option<f64>>> = (0..k)
        .map(|c| {
            history
                .iter()
                .map(|m| m.val_f1.get(c).copied().flatten())
                .collect()
        })
        .collect();
    let mean_label = if f1_classes.len() == k {
        "mean F1".to_string()
    } else {
        format!("mean F1 ({} classes)", f1_classes.len())
    };
    let mut series = vec![
        line(&mean_label, &mean, [0, 0, 0], Stroke::Solid, 3),
        line("mIoU", &miou, [0, 0, 0], Stroke::Dashed, 2),
    ];
    for (c, s) in per.iter().enumerate() {
        let class = &classes.classes[c];
        let color = plot::line_color(class.rgb());
        series.push(line(
            &format!("F1 {}", class.name),
            s,
            color,
            Stroke::Solid,
            1,
        ));
    }
    plot::write_curves(
        &dir.join("val_f1.png"),
        &plot::Curves {
            title: "Validation scores".into(),
            y_label: "score (%)".into(),
            y_range: Some((0.0, 100.0)),
            y_scale: 100.0,
            series,
            best,
        },
        w,
        h,
    )?;

    let names: Vec<String> = classes.classes.iter().map(|c| c.name.clone()).collect();
    let colors: Vec<[u8; 3]> = classes.classes.iter().map(|c| c.rgb()).collect();
    let epoch = history.last().map_or(0, |m| m.epoch);
    plot::write_confusion(
        &dir.join("confusion.png"),
        conf,
        &names,
        &colors,
        &format!("Validation confusion matrix, epoch {epoch}"),
    )
}
