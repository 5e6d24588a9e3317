//! Elementwise ops: unary activations, broadcasting binary arithmetic and
//! comparisons, Clip, Where, Cast, and the small matrix products (MatMul,
//! Gemm).

use super::attrs::{Attrs, Refusal};
use super::{dtype_of_onnx, floats, same_device};
use candle_core::{DType, Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Neg,
    Abs,
    Sqrt,
    Reciprocal,
    Erf,
    Floor,
    Ceil,
    Not,
    Softplus,
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Gelu { tanh: bool },
}

impl Unary {
    pub fn compile(op: &str, a: &Attrs) -> std::result::Result<Unary, Refusal> {
        Ok(match op {
            "Relu" => Unary::Relu,
            "Sigmoid" => Unary::Sigmoid,
            "Tanh" => Unary::Tanh,
            "Exp" => Unary::Exp,
            "Log" => Unary::Log,
            "Neg" => Unary::Neg,
            "Abs" => Unary::Abs,
            "Sqrt" => Unary::Sqrt,
            "Reciprocal" => Unary::Reciprocal,
            "Erf" => Unary::Erf,
            "Floor" => Unary::Floor,
            "Ceil" => Unary::Ceil,
            "Not" => Unary::Not,
            "Softplus" => Unary::Softplus,
            "HardSigmoid" => Unary::HardSigmoid {
                alpha: a.float("alpha", 0.2)?,
                beta: a.float("beta", 0.5)?,
            },
            "HardSwish" => Unary::HardSwish,
            "LeakyRelu" => Unary::LeakyRelu {
                alpha: a.float("alpha", 0.01)?,
            },
            "Elu" => Unary::Elu {
                alpha: a.float("alpha", 1.0)?,
            },
            "Gelu" => Unary::Gelu {
                tanh: a.choice("approximate", &["none", "tanh"])? == "tanh",
            },
            _ => unreachable!("not a unary op: {op}"),
        })
    }

    pub fn eval(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Unary::Relu => x.relu(),
            Unary::Sigmoid => candle_nn::ops::sigmoid(x),
            Unary::Tanh => x.tanh(),
            Unary::Exp => x.exp(),
            Unary::Log => x.log(),
            Unary::Neg => x.neg(),
            Unary::Abs => x.abs(),
            Unary::Sqrt => x.sqrt(),
            Unary::Reciprocal => x.recip(),
            Unary::Erf => x.erf(),
            Unary::Floor => x.floor(),
            Unary::Ceil => x.ceil(),
            Unary::Not => x.eq(0u8),
            // log(1 + exp(x)), stable for large x
            Unary::Softplus => {
                let r = x.relu()?;
                let e = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
                r + e
            }
            Unary::HardSigmoid { alpha, beta } => hard_sigmoid(x, alpha, beta),
            Unary::HardSwish => x * hard_sigmoid(x, 1.0 / 6.0, 0.5)?,
            Unary::LeakyRelu { alpha } => {
                let neg = (x.minimum(0.0)? * alpha as f64)?;
                x.relu()? + neg
            }
            Unary::Elu { alpha } => {
                let neg = ((x.minimum(0.0)?.exp()? - 1.0)? * alpha as f64)?;
                x.relu()? + neg
            }
            Unary::Gelu { tanh: false } => x.gelu_erf(),
            Unary::Gelu { tanh: true } => x.gelu(),
        }
    }
}

fn hard_sigmoid(x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    x.affine(alpha as f64, beta as f64)?.clamp(0.0, 1.0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
}

impl Binary {
    pub fn of(op: &str) -> Option<Binary> {
        Some(match op {
            "Add" | "Sum" => Binary::Add,
            "Sub" => Binary::Sub,
            "Mul" => Binary::Mul,
            "Div" => Binary::Div,
            "Pow" => Binary::Pow,
            "Max" => Binary::Max,
            "Min" => Binary::Min,
            "Equal" => Binary::Equal,
            "Less" => Binary::Less,
            "LessOrEqual" => Binary::LessOrEqual,
            "Greater" => Binary::Greater,
            "GreaterOrEqual" => Binary::GreaterOrEqual,
            "And" => Binary::And,
            "Or" => Binary::Or,
            _ => return None,
        })
    }

    pub fn eval(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (a, b) = same_device(a, b)?;
        match self {
            Binary::Add => a.broadcast_add(&b),
            Binary::Sub => a.broadcast_sub(&b),
            Binary::Mul => a.broadcast_mul(&b),
            Binary::Div => a.broadcast_div(&b),
            Binary::Max => a.broadcast_maximum(&b),
            Binary::Min => a.broadcast_minimum(&b),
            Binary::Pow => pow(&a, &b),
            Binary::Equal => a.broadcast_eq(&b),
            Binary::Less => a.broadcast_lt(&b),
            Binary::LessOrEqual => a.broadcast_le(&b),
            Binary::Greater => a.broadcast_gt(&b),
            Binary::GreaterOrEqual => a.broadcast_ge(&b),
            Binary::And => a.ne(0u8)?.broadcast_mul(&b.ne(0u8)?),
            Binary::Or => a.ne(0u8)?.broadcast_maximum(&b.ne(0u8)?),
        }
    }
}

/// `a ^ b`; a scalar exponent (the usual case: 2, 0.5) keeps the sign of a
/// negative base right.
fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if b.elem_count() == 1 && b.rank() <= a.rank() {
        let e = floats(b)?[0];
        return match e {
            1.0 => Ok(a.clone()),
            2.0 => a.sqr(),
            0.5 => a.sqrt(),
            _ => a.powf(e as f64),
        };
    }
    let b = b.to_dtype(a.dtype())?;
    a.broadcast_pow(&b)
}

/// Clip: bounds from inputs (opset 11 on) or attributes (before).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clip {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

impl Clip {
    pub fn compile(a: &Attrs, opset: i64) -> std::result::Result<Clip, Refusal> {
        if opset < 11 {
            return Ok(Clip {
                min: Some(a.float("min", f32::MIN)?),
                max: Some(a.float("max", f32::MAX)?),
            });
        }
        Ok(Clip {
            min: None,
            max: None,
        })
    }

    pub fn eval(&self, x: &Tensor, min: Option<&Tensor>, max: Option<&Tensor>) -> Result<Tensor> {
        let lo = match min {
            Some(t) => Some(floats(t)?[0]),
            None => self.min.map(f64::from),
        };
        let hi = match max {
            Some(t) => Some(floats(t)?[0]),
            None => self.max.map(f64::from),
        };
        let mut y = x.clone();
        if let Some(lo) = lo {
            y = y.maximum(lo)?;
        }
        if let Some(hi) = hi {
            y = y.minimum(hi)?;
        }
        Ok(y)
    }
}

/// `Where(cond, x, y)` with broadcasting of all three.
pub(crate) fn where_(c: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (x, y) = same_device(x, y)?;
    let c = c.to_device(x.device())?;
    let shape = broadcast_shape(&[c.dims(), x.dims(), y.dims()])?;
    let c = c.ne(0u8)?.broadcast_as(shape.as_slice())?.contiguous()?;
    let x = x.broadcast_as(shape.as_slice())?.contiguous()?;
    let y = y.broadcast_as(shape.as_slice())?.contiguous()?;
    c.where_cond(&x, &y)
}

/// numpy's broadcast of several shapes.
pub(crate) fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                candle_core::bail!("shapes {shapes:?} do not broadcast");
            }
        }
    }
    Ok(out)
}

/// Cast to an ONNX data type (bool: non-zero is 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cast {
    pub to: DType,
    pub to_bool: bool,
}

impl Cast {
    pub fn compile(a: &Attrs) -> std::result::Result<Cast, Refusal> {
        a.ignore("saturate");
        let code = a.int("to", 0)? as i32;
        let to = dtype_of_onnx(code)
            .ok_or_else(|| format!("Cast to ONNX data type {code} is not supported"))?;
        Ok(Cast {
            to,
            to_bool: code == 9,
        })
    }

    pub fn eval(&self, x: &Tensor) -> Result<Tensor> {
        if self.to_bool {
            return x.ne(0u8);
        }
        if x.dtype() == self.to {
            return Ok(x.clone());
        }
        x.to_dtype(self.to)
    }
}

/// MatMul with numpy's rules (1-D operands, batch broadcasting).
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = same_device(a, b)?;
    let (a1, b1) = (a.rank() == 1, b.rank() == 1);
    let a = if a1 { a.unsqueeze(0)? } else { a };
    let b = if b1 { b.unsqueeze(1)? } else { b };
    let mut y = if a.rank() == 2 && b.rank() == 2 {
        a.contiguous()?.matmul(&b.contiguous()?)?
    } else {
        a.contiguous()?.broadcast_matmul(&b.contiguous()?)?
    };
    if a1 {
        y = y.squeeze(y.rank() - 2)?;
    }
    if b1 {
        y = y.squeeze(y.rank() - 1)?;
    }
    Ok(y)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Gemm {
    pub fn compile(a: &Attrs) -> std::result::Result<Gemm, Refusal> {
        Ok(Gemm {
            alpha: a.float("alpha", 1.0)?,
            beta: a.float("beta", 1.0)?,
            trans_a: a.int("transA", 0)? != 0,
            trans_b: a.int("transB", 0)? != 0,
        })
    }

    pub fn eval(&self, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
        let (a, b) = same_device(a, b)?;
        let a = if self.trans_a { a.t()? } else { a };
        let b = if self.trans_b { b.t()? } else { b };
        let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
        if self.alpha != 1.0 {
            y = (y * self.alpha as f64)?;
        }
        if let Some(c) = c {
            let c = c.to_device(y.device())?;
            let c = if self.beta != 1.0 {
                (c * self.beta as f64)?
            } else {
                c
            };
            y = y.broadcast_add(&c)?;
        }
        Ok(y)
    }
}
