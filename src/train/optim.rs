//! SGD with momentum and AdamW, with per-parameter-group learning rates and
//! a state that can be saved and restored exactly.
//!
//! candle_nn's `SGD` has no momentum and its `AdamW` keeps its moment
//! buffers private, so a resumed run could not continue exactly; both are
//! written here, with the same arithmetic as PyTorch:
//!
//! * SGD: `g ← g + wd·θ`; `buf ← g` on the first step, then
//!   `buf ← μ·buf + g`; `θ ← θ − lr·buf`.
//! * AdamW (decoupled weight decay, as candle_nn's and PyTorch's):
//!   `θ ← θ·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
//!   `θ ← θ − lr · (m / (1−β₁ᵗ)) / (sqrt(v / (1−β₂ᵗ)) + ε)`, with a step
//!   count `t` per parameter (a frozen parameter does not advance).

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Which optimiser, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimConfig {
    Sgd {
        momentum: f64,
        weight_decay: f64,
    },
    Adamw {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// A parameter with its name and group (0: head, 1: encoder).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub group: usize,
}

/// The optimiser; `step` takes one learning rate per group, `None` to
/// freeze the group for that step.
pub struct Optimizer {
    pub config: OptimConfig,
    params: Vec<Param>,
    /// Per parameter: momentum buffer (SGD) or (m, v) (AdamW).
    bufs: Vec<Vec<Tensor>>,
    /// Per parameter: number of updates applied.
    steps: Vec<u64>,
}

impl Optimizer {
    pub fn new(config: OptimConfig, params: Vec<Param>) -> Self {
        let n = params.len();
        Optimizer {
            config,
            params,
            bufs: vec![Vec::new(); n],
            steps: vec![0; n],
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Applies one update from `grads`; `lrs[group]`, `None` = frozen.
    pub fn step(&mut self, grads: &GradStore, lrs: &[Option<f64>]) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            let Some(lr) = lrs.get(p.group).copied().flatten() else {
                continue;
            };
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let theta = p.var.as_tensor();
            self.steps[i] += 1;
            let t = self.steps[i];
            match self.config {
                OptimConfig::Sgd {
                    momentum,
                    weight_decay,
                } => {
                    let g = if weight_decay != 0.0 {
                        (g + (theta * weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let d = if momentum != 0.0 {
                        let buf = match self.bufs[i].first() {
                            None => g,
                            Some(b) => ((b * momentum)? + g)?,
                        };
                        self.bufs[i] = vec![buf.clone()];
                        buf
                    } else {
                        g
                    };
                    p.var.set(&(theta - (d * lr)?)?)?;
                }
                OptimConfig::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let (m, v) = match self.bufs[i].as_slice() {
                        [m, v] => (
                            ((m * beta1)? + (g * (1.0 - beta1))?)?,
                            ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        ),
                        _ => ((g * (1.0 - beta1))?, (g.sqr()? * (1.0 - beta2))?),
                    };
                    let m_hat = (&m * (1.0 / (1.0 - beta1.powi(t as i32))))?;
                    let v_hat = (&v * (1.0 / (1.0 - beta2.powi(t as i32))))?;
                    let next = (theta * (1.0 - lr * weight_decay))?;
                    let upd = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    p.var.set(&(next - (upd * lr)?)?)?;
                    self.bufs[i] = vec![m, v];
                }
            }
        }
        Ok(())
    }

    /// Writes the buffers to `path` (safetensors, `NAME.0` = momentum or
    /// first moment, `NAME.1` = second moment) and returns the per-parameter
    /// step counts, which the caller keeps in its state file.
    pub fn save(&self, path: &Path) -> Result<Vec<u64>> {
        let mut map = HashMap::new();
        for (p, bufs) in self.params.iter().zip(&self.bufs) {
            for (j, b) in bufs.iter().enumerate() {
                map.insert(format!("{}.{j}", p.name), b.to_device(&Device::Cpu)?);
            }
        }
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::file(path, format!("cannot write optimiser state: {e}")))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::file(path, format!("cannot write optimiser state: {e}")))?;
        Ok(self.steps.clone())
    }

    /// Restores what [`Optimizer::save`] wrote.
    pub fn load(&mut self, path: &Path, steps: &[u64]) -> Result<()> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::file(path, format!("cannot read optimiser state: {e}")))?;
        if steps.len() != self.params.len() {
            return Err(Error::file(
                path,
                format!(
                    "optimiser state for {} parameters, the model has {}",
                    steps.len(),
                    self.params.len()
                ),
            ));
        }
        let per = match self.config {
            OptimConfig::Sgd { .. } => 1,
            OptimConfig::Adamw { .. } => 2,
        };
        for (i, p) in self.params.iter().enumerate() {
            let mut bufs = Vec::new();
            for j in 0..per {
                if let Some(t) = map.get(&format!("{}.{j}", p.name)) {
                    if t.dims() != p.var.dims() {
                        return Err(Error::file(
                            path,
                            format!("optimiser buffer of '{}' has the wrong shape", p.name),
                        ));
                    }
                    bufs.push(t.to_device(p.var.device())?);
                }
            }
            if !(bufs.is_empty() || bufs.len() == per) {
                return Err(Error::file(
                    path,
                    format!("optimiser state of '{}' is incomplete", p.name),
                ));
            }
            self.bufs[i] = bufs;
            self.steps[i] = steps[i];
        }
        Ok(())
    }
}
