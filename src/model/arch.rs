//! The architectures: their names, what each costs, and how each is built.
//!
//! [`Arch`] names an architecture; [`REGISTRY`] holds its name in files
//! and on the command line, its activation footprint and its constructor.
//! Both are declared by one `registry!` line per architecture, below. Every
//! network implements [`Network`]; [`super::Model`] holds a
//! `Box<dyn Network>` and never matches on the architecture.
//!
//! Adding an architecture is a new file under `src/model/` (the network, its
//! `impl Network` and a [`Build`] function), its `mod` line in
//! `model/mod.rs`, and one `registry!` line here (README, "Adding an
//! architecture").

use super::resnet::Depth::{R18, R34, R50};
use crate::error::{Error, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A network: logits from normalised input, and its cost.
///
/// Networks are built from a [`VarBuilder`] (see [`Build`]), which owns the
/// variables: the parameter count, saving and loading go through the
/// `VarMap` behind it, not through the network.
pub trait Network: std::fmt::Debug + Send + Sync {
    /// Logits `(B, classes, H, W)` for a normalised input `(B, bands, H, W)`
    /// of any size (at least 2 x 2). With `train`, batch norm uses (and
    /// updates) batch statistics and dropout is applied; without, the
    /// output of a sample must not depend on the rest of the batch.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;

    /// Convolution FLOPs (multiply-adds times two) of one forward pass on
    /// `batch` windows of `height x width`.
    fn flops(&self, batch: usize, height: usize, width: usize) -> u64;

    /// The encoder's deepest features at inference (a torchvision ResNet's
    /// `layer4` output, stride 32, or 8 for a dilated one) for a normalised input; `None` for a
    /// network without such an encoder. For checking imported weights
    /// against PyTorch.
    fn encoder(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _ = x;
        Ok(None)
    }
}

/// What a constructor needs besides its variables.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// Input bands.
    pub bands: usize,
    /// Output channels (classes).
    pub classes: usize,
    /// Seed of the next dropout mask: a network with dropout draws its
    /// train-mode masks from it and advances it (see
    /// [`super::Model::set_dropout_seed`]).
    pub dropout_seed: Arc<AtomicU64>,
}

/// A constructor: the network of a [`NetSpec`], its variables created (or
/// fetched) through the builder under torchvision-style names.
pub type Build = fn(&NetSpec, VarBuilder) -> candle_core::Result<Box<dyn Network>>;

/// One architecture's line in [`REGISTRY`].
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub arch: Arch,
    /// The name in model files and on the command line.
    pub name: &'static str,
    /// Measured activation memory per input pixel at inference, in bytes:
    /// the growth of peak RSS from batch 1 to batch 5 (README, "Memory").
    pub activation_bytes_per_px: u64,
    pub build: Build,
}

/// Declares [`Arch`] and [`REGISTRY`] from one line per architecture, so
/// that the two cannot disagree: `REGISTRY[a as usize].arch == a`.
macro_rules! registry {
    ($($variant:ident = $name:literal, $bytes:literal, $build:expr;)*) => {
        /// An architecture. On disk and on the command line it is its name
        /// ([`Arch::name`], via `Display` / `FromStr` and serde).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Arch {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        /// Every architecture, in the order of [`Arch`]'s variants (and of
        /// the list in error messages).
        pub const REGISTRY: &[Entry] = &[$(Entry {
            arch: Arch::$variant,
            name: $name,
            activation_bytes_per_px: $bytes,
            build: $build,
        },)*];
    };
}

// One line per architecture: variant = name in files and on the command
// line, activation bytes per input pixel, constructor (a `Build`, usually
// `super::<file>::build`).
registry! {
    // ResNet-50 FCNs: peak RSS grew 322 (fcn) and 297 (fcn8s) B per input
    // pixel from batch 1 to 5 at 512 px, and 275 (fcn) from batch 1 to 3
    // at 1024 px (rstile infer, 2 cores, 2026-12-08; 6144 was measured
    // before rstile's own kernels); registered with 3.2x headroom
    Resnet50Fcn   = "resnet50-fcn",   1024, |s, vb| super::fcn::build(R50, false, s, vb);
    Resnet50Fcn8s = "resnet50-fcn8s", 1024, |s, vb| super::fcn::build(R50, true, s, vb);
    Resnet18Fcn   = "resnet18-fcn",   1600, |s, vb| super::fcn::build(R18, false, s, vb);
    Resnet18Fcn8s = "resnet18-fcn8s", 1600, |s, vb| super::fcn::build(R18, true, s, vb);
    Resnet34Fcn   = "resnet34-fcn",   1600, |s, vb| super::fcn::build(R34, false, s, vb);
    Resnet34Fcn8s = "resnet34-fcn8s", 1600, |s, vb| super::fcn::build(R34, true, s, vb);
    // U-Nets: peak RSS grew 411 (resnet18) and 551 (resnet50) B per input
    // pixel from batch 1 to 5 at 512 px (rstile infer, 2 cores, 2026-12-07);
    // registered with 2.5-2.9x headroom, as the decoder's full-resolution
    // blocks depend on the window more than the FCNs' heads do
    UnetResnet18  = "unet-resnet18",  1024, |s, vb| super::unet::build(R18, s, vb);
    UnetResnet34  = "unet-resnet34",  1024, |s, vb| super::unet::build(R34, s, vb);
    UnetResnet50  = "unet-resnet50",  1600, |s, vb| super::unet::build(R50, s, vb);
    Tiny          = "tiny",            320, super::tiny::build;
    Linear        = "linear",          256, super::linear::build;
    // torchvision's fcn_resnet50 (layer3 and layer4 dilated, output stride
    // 8): peak RSS grew 622 B per input pixel from batch 1 to 5 at 512 px
    // and 700 at 256 px (rstile infer, 2 cores, 2026-12-07; resnet50-fcn
    // grew 292 at 512 px the same way); registered with 2.9x headroom, as
    // the U-Nets are
    Resnet50FcnOs8 = "resnet50-fcn-os8", 2048, super::fcn::build_os8;
    // no weights: the output (K f32 per pixel) and the gathered copy
    Identity      = "identity",         64, super::identity::build;
}

impl Arch {
    /// Every architecture, in registry order.
    pub const ALL: [Arch; REGISTRY.len()] = {
        let mut all = [REGISTRY[0].arch; REGISTRY.len()];
        let mut i = 0;
        while i < REGISTRY.len() {
            all[i] = REGISTRY[i].arch;
            i += 1;
        }
        all
    };

    /// The registry line of this architecture.
    pub fn entry(self) -> &'static Entry {
        &REGISTRY[self as usize]
    }

    /// The name in model files and on the command line, e.g. `resnet18-fcn8s`.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// Activation memory per input pixel of a window at inference, in bytes
    /// (256 for `linear`, 320 for `tiny`, 1600 for ResNet-18/34, 1024 for
    /// the ResNet-50 FCNs, 2048 for `resnet50-fcn-os8`): the `a(arch)` of README's
    /// memory bound.
    pub fn activation_bytes_per_px(&self) -> u64 {
        self.entry().activation_bytes_per_px
    }

    /// Builds the network; its variables come from (or are created in) `vb`.
    pub fn build(self, spec: &NetSpec, vb: VarBuilder) -> candle_core::Result<Box<dyn Network>> {
        (self.entry().build)(spec, vb)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    /// Parses a name; the error lists the known ones.
    fn from_str(s: &str) -> Result<Arch> {
        match REGISTRY.iter().find(|e| e.name == s) {
            Some(e) => Ok(e.arch),
            None => Err(Error::Config(format!(
                "unknown architecture '{s}' (known: {})",
                REGISTRY
                    .iter()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What computes a model's logits: an architecture of rstile's family
/// (built from [`REGISTRY`], saved in rstile's model files), or a graph
/// loaded from an ONNX file (never saved as an rstile model file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    Arch(Arch),
    /// An ONNX graph; its activation memory per input pixel comes from the
    /// graph resolved for the window.
    Onnx {
        activation_bytes_per_px: u64,
    },
}

impl Net {
    /// The architecture of rstile's family, if it is one.
    pub fn arch(self) -> Option<Arch> {
        match self {
            Net::Arch(a) => Some(a),
            Net::Onnx { .. } => None,
        }
    }

    /// The name in model files, settings and messages (`onnx` for a graph).
    pub fn name(self) -> &'static str {
        match self {
            Net::Arch(a) => a.name(),
            Net::Onnx { .. } => "onnx",
        }
    }

    /// Activation memory per input pixel of a window at inference, in bytes.
    pub fn activation_bytes_per_px(self) -> u64 {
        match self {
            Net::Arch(a) => a.activation_bytes_per_px(),
            Net::Onnx {
                activation_bytes_per_px,
            } => activation_bytes_per_px,
        }
    }
}

impl From<Arch> for Net {
    fn from(a: Arch) -> Net {
        Net::Arch(a)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl PartialEq<Arch> for Net {
    fn eq(&self, other: &Arch) -> bool {
        *self == Net::Arch(*other)
    }
}

impl serde::Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Net {
    /// Only architectures: a model file never holds an ONNX graph.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Net, D::Error> {
        Ok(Net::Arch(Arch::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arch::*;

    #[test]
    fn registry_lines_are_the_variants_in_order_with_unique_names() {
        for (i, a) in Arch::ALL.into_iter().enumerate() {
            assert_eq!(a as usize, i);
            assert_eq!(a.entry().arch, a);
            let same = REGISTRY.iter().filter(|e| e.name == a.name()).count();
            assert_eq!(same, 1, "{a}");
            assert!(a.activation_bytes_per_px() > 0, "{a}");
        }
    }

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), a);
        }
        assert_eq!(format!("[{:>6}|{:<6}]", Tiny, Linear), "[  tiny|linear]");
        // The names in existing model files.
        for (name, a) in [
            ("resnet50-fcn", Resnet50Fcn),
            ("resnet50-fcn8s", Resnet50Fcn8s),
            ("resnet18-fcn", Resnet18Fcn),
            ("resnet18-fcn8s", Resnet18Fcn8s),
            ("resnet34-fcn", Resnet34Fcn),
            ("resnet34-fcn8s", Resnet34Fcn8s),
            ("tiny", Tiny),
            ("linear", Linear),
            ("resnet50-fcn-os8", Resnet50FcnOs8),
            ("identity", Identity),
        ] {
            assert_eq!(name.parse::<Arch>().unwrap(), a);
            assert_eq!(a.name(), name);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let e = "vgg16".parse::<Arch>().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "unknown architecture 'vgg16' (known: resnet50-fcn, resnet50-fcn8s, \
                 resnet18-fcn, resnet18-fcn8s, resnet34-fcn, resnet34-fcn8s, unet-resnet18, \
                 unet-resnet34, unet-resnet50, tiny, linear, "
            ),
            "{e}"
        );
        let known = Arch::ALL.map(|a| a.name()).join(", ");
        assert!(e.ends_with(&format!("(known: {known})")), "{e}");
        let e = serde_json::from_str::<Arch>("\"Tiny\"").unwrap_err();
        assert!(e.to_string().contains("unknown architecture 'Tiny'"), "{e}");
    }

    #[test]
    fn activation_footprints_are_the_measured_ones() {
        let bytes = |a: Arch| a.activation_bytes_per_px();
        assert_eq!(bytes(Linear), 256);
        assert_eq!(bytes(Tiny), 320);
        for a in [Resnet18Fcn, Resnet18Fcn8s, Resnet34Fcn, Resnet34Fcn8s] {
            assert_eq!(bytes(a), 1600, "{a}");
        }
        assert_eq!(bytes(Resnet50Fcn), 1024);
        assert_eq!(bytes(Resnet50Fcn8s), 1024);
        assert_eq!(bytes(Resnet50FcnOs8), 2048);
    }
}
