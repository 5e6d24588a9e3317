//! Batch norm for the network: candle's `BatchNorm` for other devices and
//! for inference (where [`super::conv::ConvBn`] folds it into the
//! convolution), and a fused training-mode path on the CPU.
//!
//! The fused path is one custom op, `relu?(bn(x) + residual?)`, whose
//! backward pass is [`crate::kernels::batch_norm_train_backward`]. `gamma`
//! and `beta` enter it stacked as one `2 x C` tensor, so that the op has at
//! most three inputs (candle's limit) while their gradients still reach
//! both parameters through the stack's own backward pass. The running
//! statistics are updated exactly as candle (and PyTorch) do: momentum 0.1,
//! unbiased variance.

use super::conv::{f32_slice, with_f32};
use super::ledger::{self, Op};
use crate::kernels::{self, BatchStats, NormShape};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};
use std::sync::{Arc, Mutex};

/// torchvision's `BatchNorm2d` parameters and buffers (`weight`, `bias`,
/// `running_mean`, `running_var`), eps 1e-5, momentum 0.1.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    reference: candle_nn::BatchNorm,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

/// Reads (or, for a fresh `VarMap`, creates) a batch norm under `vb`.
pub fn batch_norm2d(vb: VarBuilder, channels: usize) -> Result<BatchNorm2d> {
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
    BatchNorm2d::new(running_mean, running_var, weight, bias, 1e-5)
}

impl BatchNorm2d {
    /// The running statistics become variables (shared with the tensors
    /// given when those already are variables, as with a `VarMap`).
    pub fn new(
        running_mean: Tensor,
        running_var: Tensor,
        gamma: Tensor,
        beta: Tensor,
        eps: f64,
    ) -> Result<Self> {
        let running_mean = Var::from_tensor(&running_mean)?;
        let running_var = Var::from_tensor(&running_var)?;
        let reference = candle_nn::BatchNorm::new_with_momentum(
            gamma.dim(0)?,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            gamma.clone(),
            beta.clone(),
            eps,
            0.1,
        )?;
        Ok(Self {
            reference,
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
            momentum: 0.1,
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// The inference map as `(scale, shift)` per channel:
    /// `gamma / sqrt(var + eps)` and `beta - mean · scale`.
    pub fn affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let f = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (mean, var) = (f(self.running_mean())?, f(self.running_var())?);
        let (gamma, beta) = (f(&self.gamma)?, f(&self.beta)?);
        let eps = self.eps as f32;
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok((scale, shift))
    }

    fn is_fast(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && self.gamma.dtype() == DType::F32
    }

    /// `relu?(bn(x) + residual?)`; in training, with batch statistics that
    /// also update the running ones.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        train: bool,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if !(train && self.is_fast(x)) {
            let mut y = self.reference.forward_t(x, train)?;
            if let Some(r) = residual {
                y = (y + r)?;
            }
            return if relu { y.relu() } else { Ok(y) };
        }
        let (b, _, h, w) = x.dims4()?;
        let gb = Tensor::stack(&[&self.gamma, &self.beta], 0)?;
        let op = BnTrain {
            eps: self.eps as f32,
            relu,
            stats: Arc::new(Mutex::new(None)),
        };
        let stats = op.stats.clone();
        let x = x.contiguous()?;
        let y = match residual {
            Some(r) => x.apply_op3(&r.contiguous()?, &gb, op)?,
            None => x.apply_op2(&gb, op)?,
        };
        let st = stats.lock().expect("stats lock").clone();
        let Some(st) = st else {
            candle_core::bail!("batch norm: no statistics from the forward pass");
        };
        self.update_running(&st, b * h * w)?;
        Ok(y)
    }

    fn update_running(&self, st: &BatchStats, n: usize) -> Result<()> {
        let m = self.momentum as f32;
        let unbias = if n > 1 {
            n as f32 / (n - 1) as f32
        } else {
            1.0
        };
        let blend = |running: &Var, batch: &[f32], k: f32| -> Result<()> {
            let old = running.as_tensor().to_vec1::<f32>()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(o, b)| (1.0 - m) * o + m * k * b)
                .collect();
            running.set(&Tensor::from_vec(new, old.len(), running.device())?)
        };
        blend(&self.running_mean, &st.mean, 1.0)?;
        blend(&self.running_var, &st.var, unbias)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, train, None, false)
    }
}

/// The fused training-mode op; `stats` carries the batch statistics from
/// the forward pass to the caller (running statistics) and to `bwd`.
struct BnTrain {
    eps: f32,
    relu: bool,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

fn norm_shape(l: &Layout) -> Result<NormShape> {
    let (batch, channels, h, w) = l.shape().dims4()?;
    Ok(NormShape {
        batch,
        channels,
        plane: h * w,
    })
}

impl BnTrain {
    fn fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        r: Option<(&CpuStorage, &Layout)>,
        gb: &CpuStorage,
        lgb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = norm_shape(lx)?;
        let gb = f32_slice(gb, lgb)?;
        let res = match r {
            Some((r, l)) => Some(f32_slice(r, l)?),
            None => None,
        };
        let x = f32_slice(x, lx)?;
        let (y, st) = ledger::timed(Op::NormForward, || {
            kernels::batch_norm_train(
                &s,
                x,
                &gb[..s.channels],
                &gb[s.channels..],
                self.eps,
                res,
                self.relu,
            )
        });
        // read by the caller (running statistics) and by bwd
        *self.stats.lock().expect("stats lock") = Some(st);
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    /// `(dx, dr, dgb)`.
    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        want_residual: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let (b, c, h, w) = x.dims4()?;
        let s = NormShape {
            batch: b,
            channels: c,
            plane: h * w,
        };
        let st = self.saved_stats()?;
        let dy = dy.contiguous()?;
        let g = with_f32(x, |xs| {
            with_f32(y, |ys| {
                with_f32(&dy, |ds| {
                    with_f32(&gb.contiguous()?, |gbs| {
                        Ok(ledger::timed(Op::NormBackward, || {
                            kernels::batch_norm_train_backward(
                                &s,
                                xs,
                                ys,
                                ds,
                                &gbs[..c],
                                &gbs[c..],
                                &st,
                                self.eps,
                                self.relu,
                                want_residual,
                            )
                        }))
                    })
                })
            })
        })?;
        let dev = x.device();
        let dx = Tensor::from_vec(g.input, (b, c, h, w), dev)?;
        let dr = match g.residual {
            Some(v) => Some(Tensor::from_vec(v, (b, c, h, w), dev)?),
            None => None,
        };
        let mut dgb = g.gamma;
        dgb.extend(g.beta);
        Ok((dx, dr, Tensor::from_vec(dgb, (2, c), dev)?))
    }

    fn saved_stats(&self) -> Result<BatchStats> {
        match &*self.stats.lock().expect("stats lock") {
            Some(s) => Ok(s.clone()),
            None => candle_core::bail!("batch norm backward before forward"),
        }
    }
}

impl CustomOp2 for BnTrain {
    fn name(&self) -> &'static str {
        "rstile-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(s1, l1, None, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, _, dgb) = BnTrain::bwd(self, x, gb, y, dy, false)?;
        Ok((Some(dx), Some(dgb)))
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "rstile-batch-norm-train-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(s1, l1, Some((s2, l2)), s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _r: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dr, dgb) = BnTrain::bwd(self, x, gb, y, dy, true)?;
        Ok((Some(dx), dr, Some(dgb)))
    }
}
