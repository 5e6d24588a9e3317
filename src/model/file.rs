//! The model file: a plain safetensors file that describes itself.
//!
//! ```text
//! ┌──────────┬──────────────────────────────────────────┬──────────────────┐
//! │ u64 LE n │ n bytes of JSON header, space-padded to 8 │ tensor data, F32 │
//! └──────────┴──────────────────────────────────────────┴──────────────────┘
//!   header = { "__metadata__": { "rstile": "<ModelMeta as JSON>" },
//!              "<tensor name>": { "dtype": "F32", "shape": [..],
//!                                 "data_offsets": [begin, end] }, ... }
//! ```
//!
//! That is the safetensors layout, so any safetensors reader (PyTorch,
//! `safetensors.torch.load_file`, candle) reads the weights. What makes it an
//! rstile model is the string under the metadata key [`META_KEY`]: a JSON
//! [`ModelMeta`] with the layout version [`FORMAT`], the architecture (its
//! name, e.g. `"resnet18-fcn8s"`), the input bands and their
//! normalisation, the class table (id, name, colour) and the default window
//! and overlap. One file is therefore enough to run inference and to write
//! a legend, and a file whose weights do not fit its description is refused
//! at load time rather than producing a wrong map.
//!
//! Tensors are little-endian `f32`, written in name order (safetensors
//! orders the data by dtype, then name), under torchvision's names:
//! `backbone.conv1.weight`, `backbone.layer1.0.conv1.weight`, ...,
//! `classifier.0.weight` for the FCN head, `score16` / `score8` for the
//! FCN-8s skips; batch-norm running statistics are stored like parameters.
//! The same weights and metadata therefore always give the same bytes.
//!
//! [`FORMAT`] changes only when an existing file would be read differently;
//! readers refuse any other number with a message that says so.

use super::arch::{Arch, Net};
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Version of the metadata layout written by this library (the `format`
/// field of [`ModelMeta`]).
pub const FORMAT: u32 = 1;

/// Key of the model description in the safetensors header metadata.
pub const META_KEY: &str = "rstile";

/// Largest header safetensors accepts, in bytes.
const MAX_HEADER: u64 = 100_000_000;

/// The description stored in every model file. Serialised as JSON in this
/// field order; `arch` as its name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    /// Layout version, [`FORMAT`].
    pub format: u32,
    /// The architecture (or, for a model loaded from ONNX, the graph).
    pub arch: Net,
    /// Number of input bands.
    pub bands: usize,
    /// Names of the input bands (e.g. `["nir", "red", "green"]`); may be empty.
    pub band_names: Vec<String>,
    /// Per-band mean, in raw input units, subtracted before inference.
    pub mean: Vec<f32>,
    /// Per-band standard deviation, in raw input units.
    pub std: Vec<f32>,
    /// The legend; output channel `k` is `classes.classes[k]`.
    pub classes: ClassTable,
    /// Default window size, in pixels.
    pub window: usize,
    /// Default overlap between windows, as a fraction of the window.
    pub overlap: f64,
    /// The ground sample distance of the training imagery, in metres per
    /// pixel, when known (written as Deepness' `resolution` on export;
    /// `rstile infer` warns when a scene's differs by more than 25 %).
    /// Absent from files that do not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_size: Option<f64>,
}

impl ModelMeta {
    /// A description with identity normalisation (mean 0, std 1), no band
    /// names, 512 px windows and 25 % overlap.
    pub fn new(arch: Arch, bands: usize, classes: ClassTable) -> Self {
        ModelMeta {
            format: FORMAT,
            arch: Net::Arch(arch),
            bands,
            band_names: Vec::new(),
            mean: vec![0.0; bands],
            std: vec![1.0; bands],
            classes,
            window: 512,
            overlap: 0.25,
            pixel_size: None,
        }
    }

    /// Number of classes, i.e. of output channels.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Checks that the description is usable; the error says what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("model metadata: {msg}")));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads format {FORMAT})",
                self.format
            ));
        }
        if self.bands == 0 {
            return bad("bands must be at least 1".into());
        }
        if !self.band_names.is_empty() && self.band_names.len() != self.bands {
            return bad(format!(
                "{} band names for {} bands",
                self.band_names.len(),
                self.bands
            ));
        }
        if self.mean.len() != self.bands || self.std.len() != self.bands {
            return bad(format!(
                "mean has {} values and std {} for {} bands",
                self.mean.len(),
                self.std.len(),
                self.bands
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad(format!("mean {m} is not finite"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std {s} is not a positive number"));
        }
        if let Some(p) = self.pixel_size.filter(|p| !(p.is_finite() && *p > 0.0)) {
            return bad(format!("pixel_size {p} is not a positive number"));
        }
        // the rule infer applies, so a model file never holds a default
        // window geometry that infer would refuse
        if let Err(e) = crate::infer::window::check_geometry(self.window, self.overlap) {
            return bad(e.to_string());
        }
        if let Err(msg) = self.classes.validate() {
            return bad(msg);
        }
        Ok(())
    }
}

/// The error for a file that is not a readable safetensors file.
fn corrupt(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::file(
        path,
        format!("not a safetensors model file, or truncated/corrupt: {msg}"),
    )
}

/// The error for a file that cannot be read at all.
fn unreadable(path: &Path, e: std::io::Error) -> Error {
    Error::file(path, format!("cannot read model file: {e}"))
}

/// Reads only the description of a model file (the header), without
/// reading the weights.
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    let corrupt = |msg: String| corrupt(path, msg);
    let mut f = std::fs::File::open(path).map_err(|e| unreadable(path, e))?;
    let meta = f.metadata().map_err(|e| unreadable(path, e))?;
    if meta.is_dir() {
        return Err(Error::file(
            path,
            "is a directory; give a model file (.safetensors)",
        ));
    }
    let file_len = meta.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| corrupt("shorter than the 8-byte header size".into()))?;
    // what users pass by mistake: name it rather than parse it
    let magic: &[(&[u8], &str)] = &[
        (b"II*\0", "a TIFF image (a scene or a map?)"),
        (b"MM\0*", "a TIFF image (a scene or a map?)"),
        (b"\x89PNG", "a PNG image"),
        (
            b"PK\x03\x04",
            "a zip archive (a PyTorch .pth/.pt checkpoint?)",
        ),
        (b"\x89HDF", "an HDF5 file"),
    ];
    if let Some((_, what)) = magic.iter().find(|(m, _)| n.starts_with(m)) {
        return Err(Error::file(
            path,
            format!("is {what}, not an rstile model file (.safetensors)"),
        ));
    }
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(corrupt(format!("header size {n} does not fit the file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| unreadable(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    // The header must describe exactly the bytes that follow it, as
    // safetensors itself checks, so that a truncated file is caught here too.
    let mut end = 0u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
            .ok_or_else(|| corrupt(format!("tensor '{name}' has no data offsets")))?;
        end = end.max(offsets);
    }
    let described = (8 + n).saturating_add(end);
    if described != file_len {
        return Err(corrupt(format!(
            "header describes {described} bytes, the file has {file_len}"
        )));
    }
    let metadata: Option<HashMap<String, String>> = match header.get("__metadata__") {
        None => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| corrupt(format!("header metadata: {e}")))?,
        ),
    };
    meta_from_header(metadata.as_ref()).map_err(|m| Error::file(path, m))
}

/// A whole model file in memory: its bytes, then [`ModelFile::parse`].
pub(super) struct ModelFile {
    pub(super) bytes: Vec<u8>,
}

impl ModelFile {
    pub(super) fn read(path: &Path) -> Result<ModelFile> {
        let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
        Ok(ModelFile { bytes })
    }

    /// The validated description and the tensors.
    pub(super) fn parse(&self, path: &Path) -> Result<(ModelMeta, safetensors::SafeTensors<'_>)> {
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&self.bytes).map_err(|e| corrupt(path, e))?;
        let meta =
            meta_from_header(header.metadata().as_ref()).map_err(|m| Error::file(path, m))?;
        let st =
            safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| corrupt(path, e))?;
        Ok((meta, st))
    }
}

/// The values of an `F32` tensor in the file.
pub(super) fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The [`ModelMeta`] in a safetensors header's metadata, validated.
fn meta_from_header(
    metadata: Option<&HashMap<String, String>>,
) -> std::result::Result<ModelMeta, String> {
    let json = metadata.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
        format!(
            "no \"{META_KEY}\" metadata in the header: a safetensors file, but not an rstile model"
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid \"{META_KEY}\" metadata: {e}"))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == FORMAT as u64 => {}
        Some(f) => {
            return Err(format!(
                "model format {f} is not supported (this build reads format {FORMAT})"
            ))
        }
        None => return Err(format!("invalid \"{META_KEY}\" metadata: no format number")),
    }
    let meta: ModelMeta = serde_json::from_value(value)
        .map_err(|e| format!("invalid \"{META_KEY}\" metadata: {e}"))?;
    meta.validate().map_err(|e| e.to_string())?;
    Ok(meta)
}

/// A tensor's bytes, as safetensors wants them: little-endian `f32`.
pub(super) struct RawF32 {
    pub(super) shape: Vec<usize>,
    pub(super) data: Vec<u8>,
}

impl RawF32 {
    pub(super) fn new(shape: Vec<usize>, values: &[f32]) -> RawF32 {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawF32 { shape, data }
    }
}

impl safetensors::View for RawF32 {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` and `meta` as a model file. The file appears complete
/// or not at all (written to a temporary name, then renamed).
pub(super) fn write(
    path: &Path,
    meta: &ModelMeta,
    mut tensors: Vec<(String, RawF32)>,
) -> Result<()> {
    let json = serde_json::to_string(meta)
        .map_err(|e| Error::Config(format!("cannot serialise model metadata: {e}")))?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    let written = safetensors::serialize_to_file(tensors, Some(metadata), &tmp)
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(msg) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write model file: {msg}")));
    }
    Ok(())
}
