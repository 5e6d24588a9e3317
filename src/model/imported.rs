//! Models brought from elsewhere: an ONNX graph ([`super::onnx`]) made a
//! [`Model`] that `infer` runs like one of rstile's own.
//!
//! The graph gives the computation; [`super::facts`] gives what the map
//! needs besides (legend, normalisation, window, overlap). The graph's
//! output may be logits, probabilities (a Softmax over the classes at the
//! end) or one Sigmoid channel (a two-class map: class 1 at or above 0.5).
//! [`OnnxNet`] turns each into logits whose softmax gives the graph's
//! probabilities, so blending works on probabilities either way.

use super::arch::{Net, Network};
use super::facts::{self, Facts, GraphFacts, Overrides, Sidecars};
use super::onnx::OnnxModel;
use super::{Model, ModelMeta, FORMAT};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What the graph's first output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Scores per class, any scale.
    Logits,
    /// Class probabilities (the graph ends in a Softmax).
    Probabilities,
    /// One channel, the probability of class 1 (the graph ends in a
    /// Sigmoid).
    Sigmoid,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Logits => "logits",
            Output::Probabilities => "probabilities (Softmax)",
            Output::Sigmoid => "one Sigmoid channel (2 classes)",
        })
    }
}

/// Smallest probability kept before the logarithm, so that a probability
/// of 0 gives a finite logit.
const TINY: f64 = 1e-30;

/// An ONNX graph as a [`Network`].
pub struct OnnxNet {
    pub graph: OnnxModel,
    pub output: Output,
    /// The graph's final Softmax was dropped ([`OnnxModel::strip_final_softmax`]):
    /// it gives the logits of [`Output::Probabilities`].
    softmax_stripped: bool,
    /// Conv FLOPs per window of `window` x `window` px.
    flops_per_window: u64,
    window: usize,
}

impl std::fmt::Debug for OnnxNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxNet")
            .field("graph", &self.graph)
            .field("output", &self.output)
            .finish()
    }
}

impl Network for OnnxNet {
    fn forward_t(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let y = self
            .graph
            .run(x)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .to_dtype(candle_core::DType::F32)?;
        match self.output {
            Output::Logits => Ok(y),
            Output::Probabilities if self.softmax_stripped => Ok(y),
            Output::Probabilities => y.clamp(TINY, 1.0)?.log(),
            Output::Sigmoid => {
                let p = y.clamp(TINY, 1.0 - 1e-7)?;
                let q = (1.0 - &p)?.clamp(TINY, 1.0)?;
                Tensor::cat(&[q.log()?, p.log()?], 1)
            }
        }
    }

    fn flops(&self, batch: usize, height: usize, width: usize) -> u64 {
        let px = (self.window * self.window).max(1) as u128;
        (self.flops_per_window as u128 * (batch * height * width) as u128 / px) as u64
    }
}

/// Whether `path` names an ONNX model (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads the ONNX graph at `path` and resolves what the map needs
/// ([`facts::resolve`]); the graph is checked on one window of the
/// resolved size, so a model that loads runs.
pub fn open_onnx(path: &Path, device: &Device, flags: &Overrides) -> Result<Model> {
    let mut graph = OnnxModel::load(path, device)?;
    // a NaN weight can hide behind a ReLU and give a finite, wrong map
    if let Some((name, n, len)) = graph.non_finite_weights().into_iter().next() {
        return Err(Error::NonFinite(format!(
            "{}: the model's weights are not finite: '{name}' holds {n} NaN or infinite \
             value(s) of {len}; the file is damaged or comes from a training run that diverged",
            path.display()
        )));
    }
    let bands = graph.bands().ok_or_else(|| {
        Error::file(
            path,
            "the graph's input does not fix its band count (dim 1)",
        )
    })?;
    let fixed = match graph.fixed_window() {
        (Some(h), Some(w)) if h != w => {
            return Err(Error::file(
                path,
                format!("the graph takes {h} x {w} px windows; rstile cuts square windows"),
            ))
        }
        (Some(h), _) | (_, Some(h)) => Some(h),
        (None, None) => None,
    };
    let channels = graph
        .outputs()
        .first()
        .and_then(|o| o.dims.get(1))
        .and_then(|d| d.fixed());
    let sidecars = Sidecars::find(path)?;
    // the output channels are known from the file or, when the file leaves
    // them open, from a run at the resolved window; resolve twice at most
    let mut gf = GraphFacts {
        bands,
        channels: channels.unwrap_or(0),
        fixed_window: fixed,
        metadata: graph.metadata_props().to_vec(),
    };
    let facts = match channels {
        Some(_) => facts::resolve(path, &gf, flags, &sidecars)?,
        None => {
            // find the window first with any class count, then the classes
            let probe = Overrides {
                classes: None,
                ..flags.clone()
            };
            let window = window_of(path, &gf, &probe, &sidecars)?;
            let r = graph.resolve(window, window)?;
            gf.channels = r
                .outputs
                .first()
                .and_then(|d| d.get(1))
                .copied()
                .unwrap_or(0);
            facts::resolve(path, &gf, flags, &sidecars)?
        }
    };
    let window = facts.window.value;
    let resolved = graph.resolve(window, window)?;
    let out = resolved.outputs.first().cloned().unwrap_or_default();
    if out.len() != 4 || out[2] != window || out[3] != window {
        return Err(Error::file(
            path,
            format!(
                "the graph's output for a {window} x {window} window is {out:?}; rstile needs \
                 [1, classes, {window}, {window}] (class scores at the input's resolution)"
            ),
        ));
    }
    let output = match (graph.output_op(), out[1]) {
        (Some("Sigmoid"), 1) => Output::Sigmoid,
        (_, 1) => {
            return Err(Error::file(
                path,
                "the graph outputs one channel that is not a Sigmoid; rstile maps classes",
            ))
        }
        (Some("Softmax"), _) => Output::Probabilities,
        _ => Output::Logits,
    };
    // the map takes the softmax of logits: a final Softmax would only be
    // undone by a logarithm
    let softmax_stripped = output == Output::Probabilities && graph.strip_final_softmax();
    let window_px = (window * window) as u64;
    let meta = ModelMeta {
        format: FORMAT,
        arch: Net::Onnx {
            activation_bytes_per_px: resolved.peak_bytes.div_ceil(window_px.max(1)),
        },
        bands,
        band_names: Vec::new(),
        mean: facts.mean.value.clone(),
        std: facts.std.value.clone(),
        classes: facts.classes.value.clone(),
        window,
        overlap: facts.overlap.value,
        pixel_size: facts.resolution_cm.as_ref().map(|r| r.value / 100.0),
    };
    meta.validate().map_err(|e| Error::file(path, e))?;
    let params = graph.num_params();
    let net = OnnxNet {
        graph,
        output,
        softmax_stripped,
        flops_per_window: resolved.conv_flops,
        window,
    };
    Ok(Model {
        built_for: (meta.arch, meta.bands, meta.num_classes()),
        meta,
        net: Box::new(net),
        device: device.clone(),
        varmap: VarMap::new(),
        dropout_seed: Arc::new(AtomicU64::new(0)),
        imported: Some(Imported {
            facts,
            output,
            params,
        }),
    })
}

/// The window the facts give, whatever the class count.
fn window_of(path: &Path, gf: &GraphFacts, flags: &Overrides, side: &Sidecars) -> Result<usize> {
    if let Some(w) = flags.window.or(gf.fixed_window) {
        return Ok(w);
    }
    // the classes do not decide the window: resolve with a stand-in legend
    let mut g = gf.clone();
    g.channels = 2;
    let f = Overrides {
        classes: Some(facts::named_classes(&["a".into(), "b".into()])),
        mean: Some(vec![0.0; gf.bands]),
        std: Some(vec![1.0; gf.bands]),
        ..flags.clone()
    };
    Ok(facts::resolve(path, &g, &f, side)?.window.value)
}

/// What a model from elsewhere was resolved with.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Each fact and where it came from.
    pub facts: Facts,
    pub output: Output,
    /// Elements of the graph's float initializers.
    pub params: usize,
}
