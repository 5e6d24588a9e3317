//! `TensorProto` to candle [`Tensor`]: raw bytes, the typed fields
//! (`float_data`, `int32_data`, `int64_data`, `double_data`,
//! `uint64_data`) and external data (a file beside the model, named by the
//! `location` entry, read from `offset` for `length` bytes).
//!
//! Narrow integers widen to `i64`, bool and `u8` are `u8`, floats keep
//! their type (f16, bf16, f32, f64).

use super::ops::dtype_of_onnx;
use super::proto::{tensor_proto::DataLocation, TensorProto};
use candle_core::{DType, Device, Tensor};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

fn onnx_type_name(code: i32) -> &'static str {
    match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        _ => "an unknown type",
    }
}

/// Element size in bytes of raw data of ONNX type `code`.
fn raw_size(code: i32) -> Option<usize> {
    Some(match code {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 => 8,
        _ => return None,
    })
}

/// Reads the external data of `t` from the file beside the model (`dir`).
fn external(t: &TensorProto, dir: &Path) -> Result<Vec<u8>, String> {
    let (mut loc, mut offset, mut length) = (None, 0u64, None);
    for e in &t.external_data {
        match e.key() {
            "location" => loc = Some(e.value().to_string()),
            "offset" => offset = e.value().parse().map_err(|_| "bad external data offset")?,
            "length" => {
                length = Some(
                    e.value()
                        .parse::<u64>()
                        .map_err(|_| "bad external data length")?,
                )
            }
            _ => {}
        }
    }
    let loc = loc.ok_or("external data without a location")?;
    let file = dir.join(&loc);
    let mut f = std::fs::File::open(&file).map_err(|e| {
        format!(
            "external data file {} cannot be opened: {e}",
            file.display()
        )
    })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let length = match length {
        Some(l) => l,
        None => size.saturating_sub(offset),
    };
    if offset + length > size {
        return Err(format!(
            "external data file {} holds {size} bytes, the tensor needs bytes {offset}..{}",
            file.display(),
            offset + length
        ));
    }
    let mut buf = vec![0u8; length as usize];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("external data file {} cannot be read: {e}", file.display()))?;
    Ok(buf)
}

/// The tensor, on the CPU. `dir`: the model's folder, for external data.
pub(crate) fn read(t: &TensorProto, dir: &Path) -> Result<Tensor, String> {
    let code = t.data_type();
    let name = t.name();
    let what = || format!("tensor '{name}'");
    let dtype = dtype_of_onnx(code).ok_or_else(|| {
        format!(
            "{} is of type {} (ONNX data type {code}), which rstile does not read",
            what(),
            onnx_type_name(code)
        )
    })?;
    if t.dims.iter().any(|&d| d < 0) {
        return Err(format!("{} has a negative dimension {:?}", what(), t.dims));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = dims.iter().product();
    let dev = &Device::Cpu;
    let raw = if t.data_location() == DataLocation::External {
        Some(external(t, dir).map_err(|e| format!("{}: {e}", what()))?)
    } else if !t.raw_data().is_empty() || (n == 0 && t.float_data.is_empty()) {
        Some(t.raw_data().to_vec())
    } else {
        None
    };
    let err = |e: candle_core::Error| format!("{}: {e}", what());
    let count = |got: usize| -> Result<(), String> {
        if got == n {
            Ok(())
        } else {
            Err(format!(
                "{} has {got} values for its shape {dims:?} ({n} values)",
                what()
            ))
        }
    };
    if let Some(raw) = raw {
        let size = raw_size(code).expect("a dtype rstile reads has a size");
        count(raw.len() / size)?;
        if raw.len() % size != 0 {
            return Err(format!("{} has a partial value in its raw data", what()));
        }
        let ints =
            |f: &dyn Fn(&[u8]) -> i64| -> Vec<i64> { raw.chunks_exact(size).map(f).collect() };
        let t = match code {
            1 | 2 | 9 | 10 | 11 | 16 | 7 => {
                let st = match code {
                    1 => DType::F32,
                    10 => DType::F16,
                    16 => DType::BF16,
                    11 => DType::F64,
                    7 => DType::I64,
                    _ => DType::U8,
                };
                let t = Tensor::from_raw_buffer(&raw, st, &dims, dev).map_err(err)?;
                if code == 9 {
                    t.ne(0u8).map_err(err)?
                } else {
                    t
                }
            }
            3 => Tensor::from_vec(ints(&|b| b[0] as i8 as i64), dims, dev).map_err(err)?,
            4 => Tensor::from_vec(
                ints(&|b| u16::from_le_bytes([b[0], b[1]]) as i64),
                dims,
                dev,
            )
            .map_err(err)?,
            5 => Tensor::from_vec(
                ints(&|b| i16::from_le_bytes([b[0], b[1]]) as i64),
                dims,
                dev,
            )
            .map_err(err)?,
            6 => Tensor::from_vec(
                ints(&|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64),
                dims,
                dev,
            )
            .map_err(err)?,
            12 => Tensor::from_vec(
                ints(&|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as i64),
                dims,
                dev,
            )
            .map_err(err)?,
            _ => unreachable!("dtype_of_onnx covers these"),
        };
        return Ok(t);
    }
    let t = match code {
        1 => {
            count(t.float_data.len())?;
            Tensor::from_vec(t.float_data.clone(), dims, dev)
        }
        11 => {
            count(t.double_data.len())?;
            Tensor::from_vec(t.double_data.clone(), dims, dev)
        }
        7 => {
            count(t.int64_data.len())?;
            Tensor::from_vec(t.int64_data.clone(), dims, dev)
        }
        12 => {
            count(t.uint64_data.len())?;
            Tensor::from_vec(
                t.uint64_data.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                dims,
                dev,
            )
        }
        10 | 16 => {
            count(t.int32_data.len())?;
            let bytes: Vec<u8> = t
                .int32_data
                .iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect();
            Tensor::from_raw_buffer(&bytes, dtype, &dims, dev)
        }
        2 | 9 => {
            count(t.int32_data.len())?;
            let v: Vec<u8> = t
                .int32_data
                .iter()
                .map(|&v| if code == 9 { (v != 0) as u8 } else { v as u8 })
                .collect();
            Tensor::from_vec(v, dims, dev)
        }
        _ => {
            count(t.int32_data.len())?;
            Tensor::from_vec(
                t.int32_data.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                dims,
                dev,
            )
        }
    };
    t.map_err(err)
}
