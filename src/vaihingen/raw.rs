//! The memory-mappable copy of a prepared split: `vaihingen_<split>.bin`
//! with a JSON header `vaihingen_<split>.bin.json`.
//!
//! The `.bin` file holds, little-endian, with no padding between patches:
//! `images` f32 `(n, 5, p, p)` (normalised, as in the HDF5 file), `labels`
//! u8 `(n, p, p)`, `masks` u8 `(n, p, p)`, `area` u16 `(n)` and `offset`
//! u32 `(n, 2)`; each section starts at the byte offset the header gives
//! (aligned to its element size). A reader maps the file once and reads any
//! patch without a copy or a library call ([`RawPatches`]), which suits
//! worker threads drawing shuffled patches.

use crate::error::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `.bin.json` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawHeader {
    pub format: String,
    pub n: usize,
    pub patch: usize,
    pub bands: usize,
    pub channels: Vec<String>,
    pub images_offset: u64,
    pub labels_offset: u64,
    pub masks_offset: u64,
    pub area_offset: u64,
    pub offset_offset: u64,
    pub total_bytes: u64,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

const FORMAT: &str = "rstile-vaihingen-raw-1 (little-endian)";

fn header_path(bin: &Path) -> PathBuf {
    let mut s = bin.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn layout(n: usize, patch: usize, mean: &[f32], std: &[f32]) -> RawHeader {
    let pp = (patch * patch) as u64;
    let n64 = n as u64;
    let images_offset = 0;
    let labels_offset = images_offset + n64 * 5 * pp * 4;
    let masks_offset = labels_offset + n64 * pp;
    let area_offset = (masks_offset + n64 * pp).next_multiple_of(2);
    let offset_offset = (area_offset + n64 * 2).next_multiple_of(4);
    RawHeader {
        format: FORMAT.into(),
        n,
        patch,
        bands: 5,
        channels: ["NIR", "R", "G", "nDSM", "NDVI"].map(String::from).to_vec(),
        images_offset,
        labels_offset,
        masks_offset,
        area_offset,
        offset_offset,
        total_bytes: offset_offset + n64 * 8,
        mean: mean.to_vec(),
        std: std.to_vec(),
    }
}

/// A `.bin` file being written patch by patch: a hidden `.partial` file of
/// its final size, renamed into place (after its header) by
/// [`RawWriter::finish`], removed when dropped unfinished.
pub(crate) struct RawWriter {
    bin: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    header: RawHeader,
}

impl RawWriter {
    pub(crate) fn create(
        bin: &Path,
        n: usize,
        patch: usize,
        mean: &[f32; 5],
        std: &[f32; 5],
    ) -> Result<RawWriter> {
        let header = layout(n, patch, mean, std);
        let tmp = crate::raster::sibling(bin, ".", ".partial");
        let fail = |e: std::io::Error| Error::file(bin, format!("cannot write: {e}"));
        let file = std::fs::File::create(&tmp).map_err(fail)?;
        let w = RawWriter {
            bin: bin.to_path_buf(),
            tmp,
            file: Some(file),
            header,
        };
        // the gaps between sections stay zero, as the format says
        if let Some(f) = &w.file {
            f.set_len(w.header.total_bytes).map_err(fail)?;
        }
        Ok(w)
    }

    /// Writes patches `i0 ..` (`images` normalised, `(k, 5, p, p)`).
    pub(crate) fn put(
        &mut self,
        i0: usize,
        images: &[f32],
        labels: &[u8],
        masks: &[u8],
        area: &[u16],
        offset: &[u32],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.file else {
            return Err(Error::file(&self.bin, "the file is closed"));
        };
        let h = &self.header;
        let (i0, pp) = (i0 as u64, (h.patch * h.patch) as u64);
        let bytes = |v: &[u8]| v.to_vec();
        let mut img = Vec::with_capacity(images.len() * 4);
        for v in images {
            img.extend_from_slice(&v.to_le_bytes());
        }
        let mut ar = Vec::with_capacity(area.len() * 2);
        for v in area {
            ar.extend_from_slice(&v.to_le_bytes());
        }
        let mut off = Vec::with_capacity(offset.len() * 4);
        for v in offset {
            off.extend_from_slice(&v.to_le_bytes());
        }
        for (at, data) in [
            (h.images_offset + i0 * 5 * pp * 4, img),
            (h.labels_offset + i0 * pp, bytes(labels)),
            (h.masks_offset + i0 * pp, bytes(masks)),
            (h.area_offset + i0 * 2, ar),
            (h.offset_offset + i0 * 8, off),
        ] {
            f.write_all_at(&data, at)
                .map_err(|e| Error::file(&self.bin, format!("cannot write: {e}")))?;
        }
        Ok(())
    }

    /// Writes the header and renames the file into place.
    pub(crate) fn finish(mut self) -> Result<()> {
        let result = (|| -> Result<()> {
            drop(self.file.take());
            let hp = header_path(&self.bin);
            let json =
                serde_json::to_string_pretty(&self.header).map_err(|e| Error::file(&hp, e))?;
            std::fs::write(&hp, json).map_err(|e| Error::file(&hp, e))?;
            std::fs::rename(&self.tmp, &self.bin).map_err(|e| Error::file(&self.bin, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A mapped `vaihingen_<split>.bin`.
pub struct RawPatches {
    pub header: RawHeader,
    map: Mmap,
}

impl RawPatches {
    /// Maps `bin` and checks it against its header.
    pub fn open(bin: &Path) -> Result<RawPatches> {
        if cfg!(target_endian = "big") {
            return Err(Error::Config(
                "the raw patch files are little-endian".into(),
            ));
        }
        let hp = header_path(bin);
        let text = std::fs::read_to_string(&hp).map_err(|e| Error::file(&hp, e))?;
        let header: RawHeader = serde_json::from_str(&text)
            .map_err(|e| Error::file(&hp, format!("not a raw patch header: {e}")))?;
        let expect = layout(header.n, header.patch, &header.mean, &header.std);
        if header.format != FORMAT || header != expect {
            return Err(Error::file(&hp, "unknown format or inconsistent offsets"));
        }
        let f = std::fs::File::open(bin).map_err(|e| Error::file(bin, e))?;
        // SAFETY: the file is opened read-only; a concurrent writer would be
        // a misuse (prepare writes a .partial file and renames it).
        let map =
            unsafe { Mmap::map(&f) }.map_err(|e| Error::file(bin, format!("cannot map: {e}")))?;
        if map.len() as u64 != header.total_bytes {
            return Err(Error::file(
                bin,
                format!(
                    "{} bytes, {} expected from its header",
                    map.len(),
                    header.total_bytes
                ),
            ));
        }
        Ok(RawPatches { header, map })
    }

    /// Number of patches.
    pub fn len(&self) -> usize {
        self.header.n
    }

    /// True when there is no patch.
    pub fn is_empty(&self) -> bool {
        self.header.n == 0
    }

    fn section<T>(&self, offset: u64, index: usize, count: usize) -> &[T] {
        let start = offset as usize + index * count * std::mem::size_of::<T>();
        let bytes = &self.map[start..start + count * std::mem::size_of::<T>()];
        assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: in bounds (checked by the slice above), aligned (asserted;
        // the map is page-aligned and every section offset is a multiple of
        // the element size), little-endian target, and T is a plain number.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, count) }
    }

    /// Patch `i`: `5 x p x p` normalised features.
    pub fn image(&self, i: usize) -> &[f32] {
        let pp = self.header.patch * self.header.patch;
        self.section::<f32>(self.header.images_offset, i, 5 * pp)
    }

    /// Patch `i`'s class ids.
    pub fn labels(&self, i: usize) -> &[u8] {
        let pp = self.header.patch * self.header.patch;
        self.section::<u8>(self.header.labels_offset, i, pp)
    }

    /// Patch `i`'s boundary mask.
    pub fn masks(&self, i: usize) -> &[u8] {
        let pp = self.header.patch * self.header.patch;
        self.section::<u8>(self.header.masks_offset, i, pp)
    }

    /// Patch `i`'s area.
    pub fn area(&self, i: usize) -> u16 {
        self.section::<u16>(self.header.area_offset, i, 1)[0]
    }

    /// Patch `i`'s (row, column) in its area.
    pub fn offset(&self, i: usize) -> [u32; 2] {
        let s = self.section::<u32>(self.header.offset_offset, i, 2);
        [s[0], s[1]]
    }
}
