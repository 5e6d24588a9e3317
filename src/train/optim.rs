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
                    if let Some((next, m, v)) = adamw_cpu(
                        theta,
                        g,
                        self.bufs[i].as_slice(),
                        AdamwStep {
                            lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                            t,
                        },
                    )? {
                        p.var.set(&next)?;
                        self.bufs[i] = vec![m, v];
                        continue;
                    }
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

/// One AdamW update's scalars.
#[derive(Debug, Clone, Copy)]
struct AdamwStep {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u64,
}

/// The AdamW update in one pass over plain `f32` buffers: `(θ', m', v')`,
/// or `None` off the CPU. The arithmetic is the tensor path's, element by
/// element; composed from candle ops it made fourteen passes over every
/// parameter, each allocating its result.
fn adamw_cpu(
    theta: &Tensor,
    g: &Tensor,
    bufs: &[Tensor],
    a: AdamwStep,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    use crate::model::conv::with_f32;
    use candle_core::DType;
    use rayon::prelude::*;
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(f32_cpu(theta) && f32_cpu(g) && bufs.iter().all(f32_cpu)) {
        return Ok(None);
    }
    let (b1, b2) = (a.beta1 as f32, a.beta2 as f32);
    let c1 = (1.0 / (1.0 - a.beta1.powi(a.t as i32))) as f32;
    let c2 = (1.0 / (1.0 - a.beta2.powi(a.t as i32))) as f32;
    let decay = (1.0 - a.lr * a.weight_decay) as f32;
    let (lr, eps) = (a.lr as f32, a.eps as f32);
    const CHUNK: usize = 1 << 14;
    let n = theta.elem_count();
    // written in full below, so not zeroed first (a third of the update's
    // memory traffic)
    let (mut th, mut m, mut v) = (
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
    );
    let zeros;
    let (m0, v0) = match bufs {
        [m, v] => (m.contiguous()?, v.contiguous()?),
        _ => {
            zeros = theta.zeros_like()?;
            (zeros.clone(), zeros)
        }
    };
    // read the inputs where they are, write the three results once
    with_f32(&theta.contiguous()?, |t0| {
        with_f32(&g.contiguous()?, |gv| {
            with_f32(&m0, |m0| {
                with_f32(&v0, |v0| {
                    th.spare_capacity_mut()[..n]
                        .par_chunks_mut(CHUNK)
                        .zip(m.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                        .zip(v.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, ((th, m), v))| {
                            let at = c * CHUNK;
                            for i in 0..th.len() {
                                let gi = gv[at + i];
                                let mi = m0[at + i] * b1 + gi * (1.0 - b1);
                                let vi = v0[at + i] * b2 + gi * gi * (1.0 - b2);
                                let upd = (mi * c1) / ((vi * c2).sqrt() + eps);
                                th[i].write(t0[at + i] * decay - upd * lr);
                                m[i].write(mi);
                                v[i].write(vi);
                            }
                        });
                    Ok(())
                })
            })
        })
    })?;
    // SAFETY: the chunks above cover 0..n of all three and wrote each value
    unsafe {
        th.set_len(n);
        m.set_len(n);
        v.set_len(n);
    }
    let (shape, dev) = (theta.shape(), theta.device());
    Ok(Some((
        Tensor::from_vec(th, shape, dev)?,
        Tensor::from_vec(m, shape, dev)?,
        Tensor::from_vec(v, shape, dev)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps, fused CPU path against PyTorch's formula written
    /// out in f64.
    #[test]
    fn fused_adamw_follows_pytorch() {
        let dev = Device::Cpu;
        let theta0 = [0.5f32, -1.0, 2.0, 0.0];
        let grads = [[0.1f32, -0.2, 0.0, 3.0], [-0.3, 0.2, 1.0, 3.0]];
        let (b1, b2, eps, wd, lr) = (0.9, 0.999, 1e-8, 0.01, 1e-2);
        let mut theta = Tensor::new(&theta0, &dev).unwrap();
        let mut bufs: Vec<Tensor> = Vec::new();
        let (mut th, mut m, mut v) = (theta0.map(|x| x as f64), [0f64; 4], [0f64; 4]);
        for (t, g) in grads.iter().enumerate() {
            let step = AdamwStep {
                lr,
                beta1: b1,
                beta2: b2,
                eps,
                weight_decay: wd,
                t: t as u64 + 1,
            };
            let gt = Tensor::new(g, &dev).unwrap();
            let (next, m1, v1) = adamw_cpu(&theta, &gt, &bufs, step).unwrap().unwrap();
            theta = next;
            bufs = vec![m1, v1];
            for i in 0..4 {
                let gi = g[i] as f64;
                th[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let mh = m[i] / (1.0 - b1.powi(t as i32 + 1));
                let vh = v[i] / (1.0 - b2.powi(t as i32 + 1));
                th[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        let got = theta.to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(th) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
