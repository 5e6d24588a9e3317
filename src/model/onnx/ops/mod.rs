//! The ONNX ops rstile runs: [`compile`] turns a node into an [`Op`] (or
//! refuses it: an op, an attribute or an attribute value it does not
//! handle), [`Op::eval`] runs it on candle tensors.
//!
//! One file per family: [`conv`], [`pool`], [`resize`], [`norm`]
//! (normalisations, softmax, reductions), [`elementwise`], [`shape`].

pub(crate) mod attrs;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod resize;
pub(crate) mod shape;

use super::proto::NodeProto;
use attrs::{Attrs, Refusal};
use candle_core::{DType, Device, Result, Tensor};
use elementwise::{Binary, Cast, Clip, Gemm, Unary};

/// Slice's `(starts, ends, axes)` attributes (opset < 10).
pub(crate) type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

/// A compiled node.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Conv(conv::Conv),
    ConvTranspose(conv::ConvTranspose),
    Pool(pool::Pool),
    GlobalPool {
        max: bool,
    },
    Resize(resize::Resize),
    /// A nearest Resize fused into the Concat it feeds (by the graph).
    UpConcat(resize::UpConcat),
    BatchNorm {
        eps: f32,
    },
    InstanceNorm {
        eps: f32,
    },
    GroupNorm {
        eps: f32,
        groups: usize,
    },
    Softmax(norm::Softmax),
    Reduce(norm::Reduce),
    ArgMax {
        axis: i64,
        keepdims: bool,
    },
    Unary(Unary),
    Binary(Binary),
    /// Max, Min, Sum with any number of inputs.
    Variadic(Binary),
    Clip(Clip),
    Where,
    Cast(Cast),
    CastLike,
    MatMul,
    Gemm(Gemm),
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Size,
    Gather {
        axis: i64,
    },
    /// Opset < 10: starts, ends and axes are attributes.
    Slice(Option<SliceAttrs>),
    Concat {
        axis: i64,
    },
    /// Axes from the attribute (opset < 13), else from input 1.
    Unsqueeze(Option<Vec<i64>>),
    Squeeze(Option<Vec<i64>>),
    Reshape {
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose(Option<Vec<i64>>),
    Expand,
    Tile,
    Range,
    ConstantOfShape(Option<Tensor>),
    Constant(Tensor),
    Identity,
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
    },
    Pad(shape::Pad),
}

/// Converts a `TensorProto` attribute (Constant, ConstantOfShape).
pub(crate) type TensorReader<'a> =
    &'a dyn Fn(&super::proto::TensorProto) -> std::result::Result<Tensor, String>;

/// Compiles `node` for `opset` (the default domain's version), or says why
/// not.
pub(crate) fn compile(
    node: &NodeProto,
    opset: i64,
    tensor: TensorReader,
) -> std::result::Result<Op, Refusal> {
    let a = Attrs::of(node);
    let t = node.op_type();
    let op = match t {
        "Conv" => Op::Conv(conv::Conv::compile(&a)?),
        "ConvTranspose" => Op::ConvTranspose(conv::ConvTranspose::compile(&a)?),
        "MaxPool" | "AveragePool" => {
            if t == "MaxPool" && node.output.len() > 1 && !node.output[1].is_empty() {
                return Err("the Indices output is not supported".into());
            }
            Op::Pool(pool::Pool::compile(&a, t == "MaxPool")?)
        }
        "GlobalAveragePool" | "GlobalMaxPool" => Op::GlobalPool {
            max: t == "GlobalMaxPool",
        },
        "Resize" | "Upsample" => Op::Resize(resize::Resize::compile(&a, t, opset)?),
        "BatchNormalization" => {
            a.ignore("momentum");
            a.require("training_mode", 0)?;
            a.require("spatial", 1)?;
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(
                    "training outputs (running mean and variance) are not supported".into(),
                );
            }
            Op::BatchNorm {
                eps: a.float("epsilon", 1e-5)?,
            }
        }
        "InstanceNormalization" => Op::InstanceNorm {
            eps: a.float("epsilon", 1e-5)?,
        },
        "GroupNormalization" => {
            a.ignore("stash_type");
            let g = a.int("num_groups", 0)?;
            if g < 1 {
                return Err("num_groups is missing".into());
            }
            Op::GroupNorm {
                eps: a.float("epsilon", 1e-5)?,
                groups: g as usize,
            }
        }
        "Softmax" | "LogSoftmax" => {
            Op::Softmax(norm::Softmax::compile(&a, opset, t == "LogSoftmax")?)
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" => {
            Op::Reduce(norm::Reduce::compile(t, &a)?)
        }
        "ArgMax" => {
            a.require("select_last_index", 0)?;
            Op::ArgMax {
                axis: a.int("axis", 0)?,
                keepdims: a.int("keepdims", 1)? != 0,
            }
        }
        "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Neg" | "Abs" | "Sqrt" | "Reciprocal"
        | "Erf" | "Floor" | "Ceil" | "Not" | "Softplus" | "HardSigmoid" | "HardSwish"
        | "LeakyRelu" | "Elu" | "Gelu" => Op::Unary(Unary::compile(t, &a)?),
        "Max" | "Min" | "Sum" => Op::Variadic(Binary::of(t).expect("binary")),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" | "And" | "Or" => {
            if opset < 7 {
                a.ignore("broadcast");
                a.ignore("axis");
            }
            Op::Binary(Binary::of(t).expect("binary"))
        }
        "Clip" => Op::Clip(Clip::compile(&a, opset)?),
        "Where" => Op::Where,
        "Cast" => Op::Cast(Cast::compile(&a)?),
        "CastLike" => {
            a.ignore("saturate");
            Op::CastLike
        }
        "MatMul" => Op::MatMul,
        "Gemm" => Op::Gemm(Gemm::compile(&a)?),
        "Shape" => Op::Shape {
            start: a.int("start", 0)?,
            end: if a.has("end") {
                Some(a.int("end", 0)?)
            } else {
                None
            },
        },
        "Size" => Op::Size,
        "Gather" => Op::Gather {
            axis: a.int("axis", 0)?,
        },
        "Slice" => {
            if opset < 10 {
                let s = a.ints("starts")?.ok_or("starts is missing")?;
                let e = a.ints("ends")?.ok_or("ends is missing")?;
                Op::Slice(Some((s, e, a.ints("axes")?)))
            } else {
                Op::Slice(None)
            }
        }
        "Concat" => Op::Concat {
            axis: a.int("axis", 0)?,
        },
        "Unsqueeze" => Op::Unsqueeze(a.ints("axes")?),
        "Squeeze" => Op::Squeeze(a.ints("axes")?),
        "Reshape" => Op::Reshape {
            allowzero: a.int("allowzero", 0)? != 0,
        },
        "Flatten" => Op::Flatten {
            axis: a.int("axis", 1)?,
        },
        "Transpose" => Op::Transpose(a.ints("perm")?),
        "Expand" => Op::Expand,
        "Tile" => Op::Tile,
        "Range" => Op::Range,
        "ConstantOfShape" => Op::ConstantOfShape(match a.tensor("value") {
            Some(t) => Some(tensor(t)?),
            None => None,
        }),
        "Constant" => {
            let c = if let Some(t) = a.tensor("value") {
                tensor(t)?
            } else if a.has("value_float") {
                Tensor::new(a.float("value_float", 0.0)?, &Device::Cpu)
                    .map_err(|e| e.to_string())?
            } else if a.has("value_int") {
                Tensor::new(a.int("value_int", 0)?, &Device::Cpu).map_err(|e| e.to_string())?
            } else if let Some(v) = a.floats("value_floats")? {
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu).map_err(|e| e.to_string())?
            } else if let Some(v) = a.ints("value_ints")? {
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu).map_err(|e| e.to_string())?
            } else {
                return Err("a Constant without a numeric value is not supported".into());
            };
            Op::Constant(c)
        }
        "Identity" => Op::Identity,
        "Dropout" => {
            a.ignore("seed");
            a.ignore("ratio");
            a.ignore("is_test");
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err("the mask output is not supported".into());
            }
            Op::Identity
        }
        "Split" => {
            let n = a.int("num_outputs", 0)?;
            let _ = n;
            Op::Split {
                axis: a.int("axis", 0)?,
                split: a.ints("split")?,
            }
        }
        "Pad" => Op::Pad(shape::Pad::compile(&a, opset)?),
        _ => return Err(String::new()),
    };
    a.finish()?;
    Ok(op)
}

/// Input `i`, which the op needs.
fn need<'a>(ins: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    match ins.get(i).copied().flatten() {
        Some(t) => Ok(t),
        None => candle_core::bail!("input {i} is missing"),
    }
}

fn opt<'a>(ins: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    ins.get(i).copied().flatten()
}

impl Op {
    /// Runs the op on its inputs (`None`: an omitted optional input);
    /// `n_out` is the node's output count.
    pub fn eval(&self, ins: &[Option<&Tensor>], n_out: usize) -> Result<Vec<Tensor>> {
        let x = || need(ins, 0);
        let one = |t: Tensor| Ok(vec![t]);
        match self {
            Op::Conv(c) => one(c.eval(x()?, need(ins, 1)?, opt(ins, 2), opt(ins, 3))?),
            Op::ConvTranspose(c) => one(c.eval(x()?, need(ins, 1)?, opt(ins, 2))?),
            Op::Pool(p) => one(p.eval(x()?)?),
            Op::GlobalPool { max } => one(pool::global_pool(x()?, *max)?),
            Op::Resize(r) => one(r.eval(x()?, &ins[1..])?),
            Op::UpConcat(u) => one(u.eval(ins)?),
            Op::BatchNorm { eps } => one(norm::batch_norm(
                x()?,
                [need(ins, 1)?, need(ins, 2)?, need(ins, 3)?, need(ins, 4)?],
                *eps,
            )?),
            Op::InstanceNorm { eps } => one(norm::instance_norm(
                x()?,
                need(ins, 1)?,
                need(ins, 2)?,
                *eps,
            )?),
            Op::GroupNorm { eps, groups } => one(norm::group_norm(
                x()?,
                need(ins, 1)?,
                need(ins, 2)?,
                *groups,
                *eps,
            )?),
            Op::Softmax(s) => one(s.eval(x()?)?),
            Op::Reduce(r) => one(r.eval(x()?, opt(ins, 1))?),
            Op::ArgMax { axis, keepdims } => one(norm::argmax(x()?, *axis, *keepdims)?),
            Op::Unary(u) => one(u.eval(x()?)?),
            Op::Binary(b) => one(b.eval(x()?, need(ins, 1)?)?),
            Op::Variadic(b) => {
                let mut y = x()?.clone();
                for t in ins.iter().skip(1).flatten() {
                    y = b.eval(&y, t)?;
                }
                one(y)
            }
            Op::Clip(c) => one(c.eval(x()?, opt(ins, 1), opt(ins, 2))?),
            Op::Where => one(elementwise::where_(x()?, need(ins, 1)?, need(ins, 2)?)?),
            Op::Cast(c) => one(c.eval(x()?)?),
            Op::CastLike => one(x()?.to_dtype(need(ins, 1)?.dtype())?),
            Op::MatMul => one(elementwise::matmul(x()?, need(ins, 1)?)?),
            Op::Gemm(g) => one(g.eval(x()?, need(ins, 1)?, opt(ins, 2))?),
            Op::Shape { start, end } => one(shape::shape(x()?, *start, *end)?),
            Op::Size => one(shape::size(x()?)?),
            Op::Gather { axis } => one(shape::gather(x()?, need(ins, 1)?, *axis)?),
            Op::Slice(attrs) => {
                let y = match attrs {
                    Some((s, e, a)) => shape::slice(x()?, s, e, a.as_deref(), None)?,
                    None => {
                        let axes = opt(ins, 3).map(ints).transpose()?;
                        let steps = opt(ins, 4).map(ints).transpose()?;
                        shape::slice(
                            x()?,
                            &ints(need(ins, 1)?)?,
                            &ints(need(ins, 2)?)?,
                            axes.as_deref(),
                            steps.as_deref(),
                        )?
                    }
                };
                one(y)
            }
            Op::Concat { axis } => {
                let xs: Vec<Tensor> = ins.iter().flatten().map(|t| (*t).clone()).collect();
                one(shape::concat(&xs, *axis)?)
            }
            Op::Unsqueeze(a) => {
                let axes = match a {
                    Some(a) => a.clone(),
                    None => ints(need(ins, 1)?)?,
                };
                one(shape::unsqueeze(x()?, &axes)?)
            }
            Op::Squeeze(a) => {
                let axes = match (a, opt(ins, 1)) {
                    (Some(a), _) => Some(a.clone()),
                    (None, Some(t)) => Some(ints(t)?),
                    (None, None) => None,
                };
                one(shape::squeeze(x()?, axes.as_deref())?)
            }
            Op::Reshape { allowzero } => {
                one(shape::reshape(x()?, &ints(need(ins, 1)?)?, *allowzero)?)
            }
            Op::Flatten { axis } => one(shape::flatten(x()?, *axis)?),
            Op::Transpose(p) => one(shape::transpose(x()?, p.as_deref())?),
            Op::Expand => one(shape::expand(x()?, &ints(need(ins, 1)?)?)?),
            Op::Tile => one(shape::tile(x()?, &ints(need(ins, 1)?)?)?),
            Op::Range => one(shape::range(x()?, need(ins, 1)?, need(ins, 2)?)?),
            Op::ConstantOfShape(v) => one(shape::constant_of_shape(v.as_ref(), &ints(x()?)?)?),
            Op::Constant(c) => one(c.clone()),
            Op::Identity => one(x()?.clone()),
            Op::Split { axis, split } => {
                let sizes = match (split, opt(ins, 1)) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(t)) => Some(ints(t)?),
                    (None, None) => None,
                };
                shape::split(x()?, *axis, sizes.as_deref(), n_out)
            }
            Op::Pad(p) => one(p.eval(x()?, opt(ins, 1), opt(ins, 2), opt(ins, 3))?),
        }
    }

    /// Whether the op is cheap bookkeeping on small tensors, safe to run
    /// when the graph is loaded if its inputs are known.
    pub fn is_shape_op(&self) -> bool {
        !matches!(
            self,
            Op::Conv(_) | Op::ConvTranspose(_) | Op::Pool(_) | Op::Resize(_) | Op::UpConcat(_)
        )
    }
}

/// The values of an integer (or any) tensor as `i64`, on the host.
pub(crate) fn ints(t: &Tensor) -> Result<Vec<i64>> {
    let t = t.flatten_all()?.to_device(&Device::Cpu)?;
    match t.dtype() {
        DType::I64 => t.to_vec1::<i64>(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok(t
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| v as i64)
            .collect()),
        _ => t.to_dtype(DType::I64)?.to_vec1::<i64>(),
    }
}

/// The values of a tensor as `f64`, on the host.
pub(crate) fn floats(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()
}

/// Both operands on one device: a CPU operand (a constant, a shape value)
/// moves to the other's device.
pub(crate) fn same_device(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    if a.device().same_device(b.device()) {
        return Ok((a.clone(), b.clone()));
    }
    if a.device().is_cpu() {
        Ok((a.to_device(b.device())?, b.clone()))
    } else {
        Ok((a.clone(), b.to_device(a.device())?))
    }
}

/// The candle dtype that holds an ONNX data type (`TensorProto.DataType`).
/// Narrow integers widen to `i64`, bool is `u8`.
pub(crate) fn dtype_of_onnx(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 | 9 => DType::U8,
        3 | 4 | 5 | 6 | 7 | 12 => DType::I64,
        10 => DType::F16,
        11 => DType::F64,
        16 => DType::BF16,
        _ => return None,
    })
}

/// Op semantics that are easy to get wrong, against onnxruntime 1.32's
/// values for the same nodes (opset 18).
#[cfg(test)]
mod tests {
    use super::pool::Pool;
    use super::resize::{Coord, Nearest, Resize};
    use super::*;

    fn t(v: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    fn resize(linear: bool, coord: Coord, nearest: Nearest) -> Resize {
        Resize {
            linear,
            coord,
            nearest,
            axes: None,
            scales_only: false,
        }
    }

    #[test]
    fn resize_coordinate_modes_and_nearest_modes() {
        let x = t(vec![0., 1., 4., 9.], &[1, 1, 1, 4]);
        let sizes = Tensor::from_vec(vec![1i64, 1, 1, 7], 4, &Device::Cpu).unwrap();
        let run = |r: Resize| vals(&r.eval(&x, &[None, None, Some(&sizes)]).unwrap());
        let half = [
            0.0,
            0.357_142_87,
            0.928_571_46,
            2.5,
            4.357_142_4,
            7.214_285,
            9.0,
        ];
        for c in [
            Coord::HalfPixel,
            Coord::PytorchHalfPixel,
            Coord::HalfPixelSymmetric,
        ] {
            close(&run(resize(true, c, Nearest::Floor)), &half);
        }
        close(
            &run(resize(true, Coord::AlignCorners, Nearest::Floor)),
            &[0.0, 0.5, 1.0, 2.5, 4.0, 6.5, 9.0],
        );
        close(
            &run(resize(true, Coord::Asymmetric, Nearest::Floor)),
            &[
                0.0,
                0.571_428_6,
                1.428_571_6,
                3.142_857,
                5.428_571_7,
                8.285_715,
                9.0,
            ],
        );
        for (m, want) in [
            (Nearest::RoundPreferFloor, [0., 0., 1., 1., 4., 9., 9.]),
            (Nearest::RoundPreferCeil, [0., 0., 1., 4., 4., 9., 9.]),
            (Nearest::Floor, [0., 0., 0., 1., 4., 4., 9.]),
            (Nearest::Ceil, [0., 1., 1., 4., 9., 9., 9.]),
        ] {
            close(&run(resize(false, Coord::HalfPixel, m)), &want);
        }
        // scales: out = floor(in · scale)
        let scales = t(vec![1., 1., 1., 0.6], &[4]);
        let y = resize(false, Coord::Asymmetric, Nearest::Floor)
            .eval(&x, &[None, Some(&scales), None])
            .unwrap();
        close(&vals(&y), &[0., 1.]);
    }

    fn pool(max: bool, k: usize, pads: usize, count_include_pad: bool) -> Pool {
        Pool {
            max,
            kernel: [k, k],
            stride: [2, 2],
            pads: [pads; 4],
            ceil_mode: true,
            count_include_pad,
            same: None,
        }
    }

    #[test]
    fn pools_with_ceil_mode() {
        let x = t((0..25).map(|v| v as f32).collect(), &[1, 1, 5, 5]);
        let want_max = [6., 8., 9., 16., 18., 19., 21., 23., 24.];
        for p in [pool(true, 2, 0, false), pool(true, 3, 1, false)] {
            let y = p.eval(&x).unwrap();
            assert_eq!(y.dims(), &[1, 1, 3, 3]);
            close(&vals(&y), &want_max);
        }
        let y = pool(false, 3, 1, true).eval(&x).unwrap();
        close(
            &vals(&y),
            &[
                1.333_333_4,
                3.0,
                2.666_666_7,
                7.0,
                12.0,
                9.0,
                8.0,
                13.0,
                9.333_333,
            ],
        );
        let y = pool(false, 3, 1, false).eval(&x).unwrap();
        close(
            &vals(&y),
            &[3.0, 4.5, 6.0, 10.5, 12.0, 13.5, 18.0, 19.5, 21.0],
        );
    }

    #[test]
    fn the_stem_pool_on_rstile_s_kernel_gives_candle_s_maxima() {
        let p = Pool {
            ceil_mode: false,
            ..pool(true, 3, 1, false)
        };
        for (h, w) in [(8, 8), (7, 9), (2, 3)] {
            let v: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| ((i * 7919) % 97) as f32 - 40.0)
                .collect();
            let x = t(v, &[2, 3, h, w]);
            let fast = p.eval(&x).unwrap();
            // f64 takes candle's padded max pool
            let slow = p.eval(&x.to_dtype(DType::F64).unwrap()).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            assert_eq!(vals(&fast), vals(&slow.to_dtype(DType::F32).unwrap()));
        }
    }

    #[test]
    fn conv_transpose_with_pads_and_output_padding() {
        let x = t(vec![1., 2., 3., 4.], &[1, 1, 2, 2]);
        let w = t((1..10).map(|v| v as f32).collect(), &[1, 1, 3, 3]);
        let c = conv::ConvTranspose {
            stride: 2,
            dilation: 1,
            pads: [1; 4],
            output_padding: [1, 1],
            group: 1,
        };
        let y = c.eval(&x, &w, None).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        close(
            &vals(&y),
            &[
                5., 14., 10., 12., 14., 36., 24., 30., 15., 34., 20., 24., 24., 55., 32., 36.,
            ],
        );
    }

    #[test]
    fn concat_on_rstile_s_copies_gives_candle_s_cat() {
        let a = Tensor::arange(0f32, 2. * 3. * 4. * 5., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        let b = (a.narrow(1, 0, 2).unwrap() * -1.0).unwrap(); // not contiguous before
        for (ax, other) in [
            (1, b.clone()),
            (-1, a.narrow(3, 1, 2).unwrap()),
            (0, a.clone()),
        ] {
            let y = shape::concat(&[a.clone(), other.clone()], ax).unwrap();
            let want = Tensor::cat(&[&a, &other], shape::axis(ax, 4).unwrap()).unwrap();
            assert_eq!(y.dims(), want.dims());
            assert_eq!(vals(&y), vals(&want));
        }
    }

    /// Deterministic values in about [-1.5, 1.5].
    fn filled(dims: &[usize], seed: usize) -> Tensor {
        let n: usize = dims.iter().product();
        let v = (0..n)
            .map(|i| (((i + seed) * 7919) % 31) as f32 / 10.0 - 1.5)
            .collect();
        t(v, dims)
    }

    fn agree(fast: &Tensor, slow: &Tensor, what: &str) {
        assert_eq!(fast.dims(), slow.dims(), "{what}");
        let (a, b) = (vals(fast), vals(&slow.to_dtype(DType::F32).unwrap()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_transpose_on_rstile_s_kernels_agrees_with_candle() {
        // (c_in, c_out per group, groups, k, stride, dilation, pads, output_padding)
        let cases = [
            (4, 3, 1, 2, 2, 1, [0; 4], [0, 0]),
            (4, 3, 1, 4, 2, 1, [1; 4], [0, 0]),
            (2, 2, 1, 3, 2, 1, [1, 0, 0, 1], [1, 1]),
            (3, 2, 1, 3, 1, 1, [1; 4], [0, 0]),
            (4, 2, 2, 3, 2, 2, [0, 1, 2, 1], [1, 0]),
        ];
        for (ci, cog, group, k, stride, dilation, pads, op) in cases {
            let x = filled(&[2, ci, 5, 6], 1);
            let w = filled(&[ci, cog, k, k], 2);
            let b = filled(&[cog * group], 3);
            let c = conv::ConvTranspose {
                stride,
                dilation,
                pads,
                output_padding: op,
                group,
            };
            let fast = c.eval(&x, &w, Some(&b)).unwrap();
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let slow = c.eval(&f64s(&x), &f64s(&w), Some(&f64s(&b))).unwrap();
            agree(&fast, &slow, &format!("{c:?}"));
        }
    }

    #[test]
    fn grouped_conv_on_rstile_s_kernels_agrees_with_candle() {
        // (c_in, c_out, groups, k, stride, dilation, pad)
        for (ci, co, group, k, stride, dilation, pad) in [
            (4, 4, 4, 3, 1, 1, 1),
            (4, 8, 4, 3, 2, 1, 1),
            (6, 4, 2, 3, 1, 2, 2),
        ] {
            let x = filled(&[2, ci, 7, 5], 1);
            let w = filled(&[co, ci / group, k, k], 2);
            let b = filled(&[co], 3);
            let r = filled(
                &[
                    2,
                    co,
                    (7 + 2 * pad - dilation * (k - 1) - 1) / stride + 1,
                    (5 + 2 * pad - dilation * (k - 1) - 1) / stride + 1,
                ],
                4,
            );
            let c = conv::Conv {
                stride,
                dilation,
                pads: [pad; 4],
                same: None,
                group,
                relu: true,
                residual: true,
            };
            let fast = c.eval(&x, &w, Some(&b), Some(&r)).unwrap();
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let slow = c
                .eval(&f64s(&x), &f64s(&w), Some(&f64s(&b)), Some(&f64s(&r)))
                .unwrap();
            agree(&fast, &slow, &format!("{c:?}"));
        }
    }

    #[test]
    fn a_fused_resize_and_concat_gives_the_two_ops_values() {
        let x = filled(&[2, 3, 4, 5], 1);
        let skip = filled(&[2, 2, 8, 10], 2);
        let scales = t(vec![1., 1., 2., 2.], &[4]);
        for part in [0, 1] {
            let u = resize::UpConcat {
                resize: resize(false, Coord::Asymmetric, Nearest::Floor),
                axis: 1,
                part,
                parts: 2,
            };
            let mut ins = vec![Some(&skip), Some(&skip)];
            ins[part] = Some(&x);
            ins.extend([None, Some(&scales)]);
            let fused = u.eval(&ins).unwrap();
            let up = u.resize.eval(&x, &[None, Some(&scales)]).unwrap();
            let mut parts = vec![skip.clone(), skip.clone()];
            parts[part] = up;
            let want = Tensor::cat(&parts, 1).unwrap();
            assert_eq!(fused.dims(), &[2, 5, 8, 10]);
            assert_eq!(vals(&fused), vals(&want));
        }
    }

    #[test]
    fn slice_clamps_and_steps_like_onnx() {
        let x = t((0..6).map(|v| v as f32).collect(), &[6]);
        let s = |a, b, step| vals(&shape::slice(&x, &[a], &[b], None, Some(&[step])).unwrap());
        close(&s(1, i64::MAX, 1), &[1., 2., 3., 4., 5.]);
        close(&s(-2, 100, 1), &[4., 5.]);
        close(&s(0, 6, 2), &[0., 2., 4.]);
        close(&s(-1, i64::MIN, -1), &[5., 4., 3., 2., 1., 0.]);
        close(&s(4, 1, -2), &[4., 2.]);
    }
}
