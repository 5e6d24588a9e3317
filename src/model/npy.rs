//! `.npy` arrays in and out of tensors (through `npyz`), for checking a
//! model against PyTorch or onnxruntime.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use npyz::WriterBuilder;
use std::io::Write;
use std::path::Path;

/// Reads a C-ordered `.npy` of `f32` (or `f64`, `f16`: converted) into an
/// `f32` tensor on the CPU.
pub fn read_f32(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let npy = npyz::NpyFile::new(bytes.as_slice())
        .map_err(|e| Error::file(path, format!("not a .npy array: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(Error::file(
            path,
            "a Fortran-ordered array; save it C-ordered",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype();
    let descr = dtype
        .descr()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let values: Vec<f32> = match descr.as_str() {
        "<f4" => npy.into_vec::<f32>(),
        "<f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
        _ => {
            return Err(Error::file(
                path,
                format!("an array of {descr}; rstile reads float32 (or float64) arrays"),
            ))
        }
    }
    .map_err(|e| Error::file(path, format!("cannot read the array: {e}")))?;
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Writes `t` as a `float32` `.npy`. The file appears complete or not at
/// all (written to a temporary name beside it, then renamed).
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let values = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let shape: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut f)
                .begin_nd()?;
            w.extend(values)?;
            w.finish()?;
        }
        f.flush()?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::arange(0f32, 24f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3, 4))
            .unwrap();
        write_f32(&p, &t).unwrap();
        let u = read_f32(&p).unwrap();
        assert_eq!(u.dims(), &[1, 2, 3, 4]);
        assert_eq!(
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        std::fs::write(&p, b"not numpy").unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
    }
}
