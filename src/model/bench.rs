//! The network alone, timed: forward passes and training steps on generated
//! input.
//!
//! Every end-to-end figure of rstile is bounded by these two numbers, and
//! they are what a user compares with a PyTorch script, so they are
//! measured the way such a script would be: the same batch of random input
//! each time, eval mode for the forward pass (logits, no softmax), and for a
//! step the full forward in train mode, cross-entropy, backward and an
//! AdamW update with PyTorch's defaults. The first `warmup` runs are
//! dropped; the rest are reported as minimum and median, because the
//! machines this runs on are shared and noisy.

use crate::error::Result;
use crate::model::{ledger, Model};
use crate::train::loss::cross_entropy;
use crate::train::optim::{OptimConfig, Optimizer};
use crate::train::run::params_of;
use candle_core::Tensor;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct SpeedConfig {
    pub batch: usize,
    /// Height and width of each input window.
    pub size: usize,
    /// Timed runs of each kind.
    pub iters: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Also time training steps.
    pub train: bool,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        Self {
            batch: 4,
            size: 256,
            iters: 3,
            warmup: 1,
            train: false,
        }
    }
}

/// Seconds per call, over the timed runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub min_s: f64,
    pub median_s: f64,
}

impl Timing {
    fn of(mut v: Vec<f64>) -> Timing {
        v.sort_by(f64::total_cmp);
        Timing {
            min_s: v[0],
            median_s: v[v.len() / 2],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Speed {
    pub forward: Timing,
    pub train_step: Option<Timing>,
    /// Of the fastest training step: seconds in the forward pass with the
    /// loss, in the backward pass, and in the optimiser update.
    pub train_phases: Option<[f64; 3]>,
    /// Of the same step: seconds in each of rstile's own ops, in
    /// [`ledger::Op::ALL`] order.
    pub train_ops: Option<ledger::OpTimes>,
    /// Forward FLOPs of one batch (convolutions only, which are >99 %).
    pub forward_flops: u64,
}

fn time(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Times `model` as described in the module docs.
pub fn measure(model: &Model, cfg: &SpeedConfig) -> Result<Speed> {
    let dev = model.device().clone();
    let bands = model.meta.bands;
    let (b, s) = (cfg.batch, cfg.size);
    let x = Tensor::randn(0f32, 1f32, (b, bands, s, s), &dev)?;
    let sync = |t: &Tensor| -> Result<()> {
        // a read of one value waits for queued GPU work; free on the CPU
        t.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        Ok(())
    };
    let fwd = || -> Result<()> { sync(&model.forward_t(&x, false)?) };
    let mut fwd = fwd;
    time(cfg.warmup, &mut fwd)?;
    let forward = Timing::of(time(cfg.iters.max(1), &mut fwd)?);
    let (train_step, train_phases, train_ops) = if cfg.train {
        let classes = model.meta.classes.len();
        let labels: Vec<u8> = (0..b * s * s).map(|i| (i * 7 % classes) as u8).collect();
        let mut opt = Optimizer::new(
            OptimConfig::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            params_of(model),
        );
        let mut phases = Vec::new();
        let mut step = || -> Result<()> {
            let ops0 = ledger::snapshot();
            let t0 = Instant::now();
            let logits = model.forward_t(&x, true)?;
            let loss = cross_entropy(&logits, &labels, None)?;
            sync(&loss)?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&grads, &[Some(1e-4), Some(1e-4)])?;
            sync(&loss)?;
            let t3 = Instant::now();
            let ops1 = ledger::snapshot();
            phases.push((
                [t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64()),
                std::array::from_fn(|i| ops1[i] - ops0[i]),
            ));
            Ok(())
        };
        time(cfg.warmup, &mut step)?;
        let t = time(cfg.iters.max(1), &mut step)?;
        let fastest: Option<([f64; 3], ledger::OpTimes)> = phases[cfg.warmup..]
            .iter()
            .min_by(|a, b| a.0.iter().sum::<f64>().total_cmp(&b.0.iter().sum::<f64>()))
            .copied();
        (
            Some(Timing::of(t)),
            fastest.map(|f| f.0),
            fastest.map(|f| f.1),
        )
    } else {
        (None, None, None)
    };
    Ok(Speed {
        forward,
        train_step,
        train_phases,
        train_ops,
        forward_flops: model.forward_flops(b, s, s)?,
    })
}
