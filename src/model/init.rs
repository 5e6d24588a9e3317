//! Seeded random initialisation.
//!
//! candle's CPU `set_seed` has no effect, and a seed must reproduce a model
//! exactly, so variables are created by a `VarMap` backend of our own: each
//! tensor is drawn from its own [`SplitMix64`] stream, seeded by the model
//! seed and the FNV-1a hash of the tensor's name. The weights therefore do
//! not depend on the order in which a network creates its variables, and
//! are the same on every platform.

use crate::hash::fnv1a;
use crate::rng::SplitMix64;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};

/// A `VarMap` backend that returns the variables already in the map and
/// creates missing ones from the initialisation hints with a seeded
/// generator, or as zeros when no seed is given (for variables that are
/// about to be loaded).
pub(super) struct SeededBackend {
    pub(super) varmap: VarMap,
    pub(super) seed: Option<u64>,
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let values = match self.seed {
            None => vec![0f32; s.elem_count()],
            Some(seed) => sample(h, &s, seed, name),
        };
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("variable {name} requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// Values for a tensor of shape `s` following the hint `h`, from a
/// generator seeded by `seed` and the tensor's `name`. Normal values are
/// drawn in Box-Muller pairs.
pub(super) fn sample(h: Init, s: &Shape, seed: u64, name: &str) -> Vec<f32> {
    let n = s.elem_count();
    let mut rng = SplitMix64::new(seed ^ fnv1a(name.as_bytes()));
    let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| rng.range(lo, up) as f32).collect()
    };
    let normal = |rng: &mut SplitMix64, mean: f64, std: f64| -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (a, b) = rng.normal_pair();
            v.push((mean + std * a) as f32);
            v.push((mean + std * b) as f32);
        }
        v.truncate(n);
        v
    };
    match h {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(s) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
            }
        }
    }
}
