//! Learning-rate schedules, as functions of the global step.

use serde::{Deserialize, Serialize};

/// How the learning rate decays from `lr` over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// `lr` throughout.
    Constant,
    /// `lr · (1 − step/total)^power` (the "poly" policy of DeepLab).
    Poly,
    /// `min_lr + (lr − min_lr) · (1 + cos(π·step/total)) / 2`.
    Cosine,
}

/// The learning rate at `step` of `total` (0-based), after `warmup` linear
/// warm-up steps from `lr / warmup`.
pub fn lr_at(
    s: Schedule,
    lr: f64,
    min_lr: f64,
    power: f64,
    warmup: u64,
    step: u64,
    total: u64,
) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let total = total.max(1);
    let p = (step.min(total) as f64 / total as f64).clamp(0.0, 1.0);
    match s {
        Schedule::Constant => lr,
        Schedule::Poly => min_lr + (lr - min_lr) * (1.0 - p).powf(power),
        Schedule::Cosine => min_lr + (lr - min_lr) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let f = |s, step| lr_at(s, 0.1, 0.0, 0.9, 0, step, 100);
        assert_eq!(f(Schedule::Constant, 50), 0.1);
        assert!((f(Schedule::Poly, 0) - 0.1).abs() < 1e-12);
        assert!((f(Schedule::Poly, 50) - 0.1 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert!((f(Schedule::Cosine, 50) - 0.05).abs() < 1e-12);
        assert!(f(Schedule::Cosine, 100).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 0.1, 0.0, 0.9, 10, 4, 100) - 0.05).abs() < 1e-12);
    }
}
