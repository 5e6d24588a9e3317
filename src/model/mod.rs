//! The model family: [`Model`], a network with its description.
//!
//! - [`file`](mod@file): the self-describing file format ([`ModelMeta`], [`read_meta`]);
//! - [`arch`]: the architectures ([`Arch`]), their registry and the
//!   [`Network`] trait every network implements;
//! - one file per network, each implementing [`Network`]: `fcn.rs` (the
//!   ResNet FCNs, on the backbone in `resnet.rs`), `tiny.rs`, `linear.rs`;
//! - `init.rs`: seeded random initialisation;
//! - [`ops`]: host-side softmax;
//! - [`conv`], [`norm`]: the candle ops over the CPU kernels; [`bench`](mod@bench),
//!   [`ledger`]: timing.
//!
//! Networks are built through a [`VarMap`], so the same construction code
//! serves random initialisation, loading and training.
//!
//! Nothing here knows about GDAL or the command line: the model sees
//! normalised `f32` tensors and returns tensors.

pub mod arch;
pub mod bench;
pub mod conv;
pub mod export;
pub mod facts;
mod fcn;
pub mod file;
mod identity;
pub mod import;
pub mod imported;
mod init;
pub mod ledger;
mod linear;
pub mod norm;
pub mod npy;
pub mod onnx;
pub mod ops;
mod resnet;
mod tiny;
mod unet;
mod upcat;

pub use crate::classes::ClassTable;
pub use arch::{Arch, Net, NetSpec, Network};
pub use fcn::resize_bilinear;
pub use file::{read_meta, ModelMeta, FORMAT, META_KEY};
pub use ops::{exp_neg, softmax_channels, softmax_run};

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use file::{ModelFile, RawF32};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A network with its description, ready for inference (and training).
pub struct Model {
    /// The description written to, and read from, the model file.
    pub meta: ModelMeta,
    net: Box<dyn Network>,
    device: Device,
    varmap: VarMap,
    /// (arch, bands, classes) the network was built for; `meta` is public
    /// and could be edited, so `save` checks it still agrees.
    built_for: (Net, usize, usize),
    /// Seed of the next dropout mask (FCN heads in train mode).
    dropout_seed: Arc<AtomicU64>,
    /// For a model brought from elsewhere (ONNX): what it was resolved with.
    imported: Option<imported::Imported>,
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
        let varmap = VarMap::new();
        let backend = init::SeededBackend {
            varmap: varmap.clone(),
            seed,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let spec = NetSpec {
            bands: meta.bands,
            classes: meta.num_classes(),
            dropout_seed: Arc::new(AtomicU64::new(0)),
        };
        let Some(arch) = meta.arch.arch() else {
            return Err(Error::Config(
                "an ONNX graph is loaded from its file, not built".into(),
            ));
        };
        let net = arch.build(&spec, vb)?;
        Ok(Model {
            built_for: (meta.arch, meta.bands, meta.num_classes()),
            meta,
            net,
            device: device.clone(),
            varmap,
            dropout_seed: spec.dropout_seed,
            imported: None,
        })
    }

    /// Opens any model rstile runs: an ONNX graph (`.onnx`, its map facts
    /// from `flags`, its metadata and sidecars, see [`facts`]) or one of
    /// rstile's own files ([`Model::load`], with the legend and
    /// normalisation of `flags` replacing the file's). Every error names
    /// the file.
    pub fn open(path: &Path, device: &Device, flags: &facts::Overrides) -> Result<Model> {
        if imported::is_onnx(path) {
            return imported::open_onnx(path, device, flags);
        }
        // the description first: it names a directory, another kind of
        // file or a damaged header as such
        read_meta(path)?;
        let mut model = Model::load(path, device)?;
        facts::override_meta(&mut model.meta, flags, path)?;
        Ok(model)
    }

    /// For a model from elsewhere (ONNX): its facts and their origins.
    pub fn imported(&self) -> Option<&imported::Imported> {
        self.imported.as_ref()
    }

    /// Loads a model file written by [`Model::save`]. Every error names the
    /// file.
    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        let file = ModelFile::read(path)?;
        let (meta, st) = file.parse(path)?;
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
                let t = Tensor::from_vec(file::f32_values(&view), view.shape(), device)?;
                var.set(&t)?;
            }
        }
        Ok(model)
    }

    /// Writes the weights and the description. The file appears complete
    /// or not at all (written to a temporary name, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.imported.is_some() {
            return Err(Error::Config(
                "a model loaded from ONNX is not saved as an rstile model file".into(),
            ));
        }
        self.meta.validate()?;
        let now = (self.meta.arch, self.meta.bands, self.meta.num_classes());
        if now != self.built_for {
            return Err(Error::Config(format!(
                "model metadata (arch '{}', {} bands, {} classes) no longer matches the network \
                 (arch '{}', {} bands, {} classes)",
                now.0, now.1, now.2, self.built_for.0, self.built_for.1, self.built_for.2
            )));
        }
        let mut tensors = Vec::new();
        {
            let vars = self.varmap.data().lock().expect("varmap lock");
            for (name, var) in vars.iter() {
                let t = var
                    .as_tensor()
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?;
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                tensors.push((name.clone(), RawF32::new(t.dims().to_vec(), &values)));
            }
        }
        file::write(path, &self.meta, tensors)
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
        self.check_input(x)?;
        Ok(self.net.forward_t(x, train)?)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.meta.bands || x.dtype() != DType::F32 {
            return Err(Error::Config(format!(
                "the model expects f32 input of shape (batch, {}, height, width), got {:?} {:?}",
                self.meta.bands,
                x.dtype(),
                dims
            )));
        }
        Ok(())
    }

    /// The encoder's deepest features at inference (see
    /// [`Network::encoder`]); `None` for an architecture without a ResNet
    /// encoder.
    pub fn encoder(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_input(x)?;
        Ok(self.net.encoder(x)?)
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
        Ok(self.net.flops(batch, height, width))
    }

    /// Number of trainable parameters (batch-norm running statistics are
    /// not counted, as in PyTorch's `parameters()`).
    pub fn num_params(&self) -> usize {
        if let Some(i) = &self.imported {
            return i.params;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Shape;
    use candle_nn::Init;
    use std::collections::HashMap;
    use std::time::Instant;

    fn meta(arch: &str, bands: usize) -> ModelMeta {
        ModelMeta::new(arch.parse().unwrap(), bands, ClassTable::isprs())
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
        let v = init::sample(
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
        for arch in Arch::ALL {
            for bands in [3, 5] {
                let m = Model::new_random(meta(arch.name(), bands), 7, &Device::Cpu).unwrap();
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
    fn os8_is_resnet50_fcn_dilated() {
        // the same variables as resnet50-fcn (torchvision's fcn_resnet50 keys)
        let a = Model::new_random(meta("resnet50-fcn", 3), 0, &Device::Cpu).unwrap();
        let b = Model::new_random(meta("resnet50-fcn-os8", 3), 0, &Device::Cpu).unwrap();
        let shapes = |m: &Model| {
            let vars = m.varmap().data().lock().unwrap();
            let mut v: Vec<_> = vars
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&a), shapes(&b));
        // conv FLOPs as counted on torchvision's fcn_resnet50 (forward hooks
        // on every Conv2d but aux_classifier's, 2 x MACs) at 1x3x512x512
        assert_eq!(b.forward_flops(1, 512, 512).unwrap(), 276_673_069_056);
        // layer4 at stride 8 (rounded up), 2048 channels
        let x = input(1, 3, 75, 53, 4);
        let f = b.encoder(&x).unwrap().unwrap();
        assert_eq!(f.dims(), &[1, 2048, 10, 7]);
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
        let t = tensors
            .into_iter()
            .map(|(n, shape, v)| (n, RawF32::new(shape, &v)));
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
        let unknown = dir.path().join("unknown.safetensors");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["arch"] = "vgg16".into();
        write_raw(&unknown, tensors.clone(), Some(v.to_string()));
        for e in [
            err_of(Model::load(&unknown, &dev)),
            err_of(read_meta(&unknown)),
        ] {
            assert!(
                e.contains("unknown.safetensors") && e.contains("unknown architecture 'vgg16'"),
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
        m.meta.arch = Net::Arch(Arch::Tiny);
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
        for arch in Arch::ALL {
            let m = Model::new_random(meta(arch.name(), 3), 0, &Device::Cpu).unwrap();
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
