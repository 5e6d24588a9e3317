//! Cutting one area's patches and streaming them into a split's files.
//!
//! A split's datasets are created at their final size (the patch count is
//! known from the areas' sizes before any pixel is read), then filled one
//! row of patches at a time by hyperslab: memory holds one area and one row
//! of its patches, whatever the split's size.

use super::raw::RawWriter;
use super::{patch_origins, Area};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One row of patches, cut and normalised.
#[derive(Default)]
pub(crate) struct PatchRow {
    /// `(k, 5, patch, patch)` f32, normalised.
    pub(crate) images: Vec<f32>,
    pub(crate) labels: Vec<u8>,
    pub(crate) masks: Vec<u8>,
    pub(crate) area: Vec<u16>,
    /// `(k, 2)`: row, column.
    pub(crate) offset: Vec<u32>,
}

impl PatchRow {
    fn len(&self) -> usize {
        self.area.len()
    }

    /// Cuts the patches whose top row is `r` at columns `cols`, normalising
    /// each value as `(v - mean[c]) / std[c]`.
    fn cut(
        &mut self,
        a: &Area,
        r: usize,
        cols: &[usize],
        patch: usize,
        mean: &[f32; 5],
        std: &[f32; 5],
    ) {
        *self = PatchRow::default();
        let npix = a.width * a.height;
        for &c in cols {
            for ch in 0..5 {
                let plane = &a.features[ch * npix..(ch + 1) * npix];
                for y in r..r + patch {
                    let row = &plane[y * a.width + c..y * a.width + c + patch];
                    self.images
                        .extend(row.iter().map(|&v| (v - mean[ch]) / std[ch]));
                }
            }
            for y in r..r + patch {
                self.labels
                    .extend_from_slice(&a.labels[y * a.width + c..y * a.width + c + patch]);
                self.masks
                    .extend_from_slice(&a.mask[y * a.width + c..y * a.width + c + patch]);
            }
            self.area.push(a.id);
            self.offset.extend_from_slice(&[r as u32, c as u32]);
        }
    }
}

fn h5err<'a>(path: &'a Path, what: &str) -> impl Fn(hdf5::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::file(path, format!("{what}: {e}"))
}

/// The settings a split's file records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitParams {
    pub(crate) patch: usize,
    pub(crate) stride: usize,
    pub(crate) overlap: f64,
    pub(crate) ground_radius: usize,
    pub(crate) mean: [f32; 5],
    pub(crate) std: [f32; 5],
}

/// A split being written: `vaihingen_<split>.hdf5` (and the raw copy) as
/// hidden `.partial` files, renamed into place by [`SplitWriter::finish`]
/// and removed when dropped unfinished.
pub(crate) struct SplitWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<hdf5::File>,
    sets: Option<Sets>,
    raw: Option<RawWriter>,
    p: SplitParams,
    n: usize,
    next: usize,
}

impl SplitWriter {
    /// Creates the files for `n` patches.
    pub(crate) fn create(
        path: &Path,
        n: usize,
        p: SplitParams,
        raw: Option<&Path>,
    ) -> Result<SplitWriter> {
        let tmp = crate::raster::sibling(path, ".", ".partial");
        let f = hdf5::File::create(&tmp).map_err(h5err(path, "cannot create"))?;
        let guard = TmpGuard(Some(tmp.clone()));
        let e = h5err(path, "cannot write");
        let patch = p.patch;
        macro_rules! ds {
            ($t:ty, $name:expr, $shape:expr) => {
                f.new_dataset::<$t>()
                    .shape($shape)
                    .create($name)
                    .map_err(&e)?
            };
        }
        let images = ds!(f32, "images", vec![n, 5, patch, patch]);
        let labels = ds!(u8, "labels", vec![n, patch, patch]);
        let masks = ds!(u8, "masks", vec![n, patch, patch]);
        let area = ds!(u16, "area", vec![n]);
        let offset = ds!(u32, "offset", vec![n, 2]);
        ds!(f32, "mean", vec![5])
            .write_raw(&p.mean[..])
            .map_err(&e)?;
        ds!(f32, "std", vec![5]).write_raw(&p.std[..]).map_err(&e)?;
        for (name, v) in [
            ("patch", patch as u32),
            ("stride", p.stride as u32),
            ("ground_radius", p.ground_radius as u32),
        ] {
            f.new_attr::<u32>()
                .create(name)
                .map_err(&e)?
                .write_scalar(&v)
                .map_err(&e)?;
        }
        f.new_attr::<f64>()
            .create("overlap")
            .map_err(&e)?
            .write_scalar(&p.overlap)
            .map_err(&e)?;
        let raw = match raw {
            Some(bin) => Some(RawWriter::create(bin, n, patch, &p.mean, &p.std)?),
            None => None,
        };
        std::mem::forget(guard);
        Ok(SplitWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(f),
            sets: Some(Sets {
                images,
                labels,
                masks,
                area,
                offset,
            }),
            raw,
            p,
            n,
            next: 0,
        })
    }

    /// Cuts, normalises and writes every patch of `a`; returns their number.
    pub(crate) fn put_area(&mut self, a: &Area) -> Result<usize> {
        let (patch, stride) = (self.p.patch, self.p.stride);
        let rows = patch_origins(a.height, patch, stride);
        let cols = patch_origins(a.width, patch, stride);
        let mut row = PatchRow::default();
        for &r in &rows {
            row.cut(a, r, &cols, patch, &self.p.mean, &self.p.std);
            self.put(&row)?;
        }
        Ok(rows.len() * cols.len())
    }

    fn put(&mut self, row: &PatchRow) -> Result<()> {
        let (i0, k, patch) = (self.next, row.len(), self.p.patch);
        if k == 0 {
            return Ok(());
        }
        if i0 + k > self.n {
            return Err(Error::file(
                &self.path,
                format!(
                    "more patches than the {} counted from the areas' sizes",
                    self.n
                ),
            ));
        }
        let Some(sets) = &self.sets else {
            return Err(Error::file(&self.path, "the file is closed"));
        };
        let e = h5err(&self.path, "cannot write");
        let sh = |e2: ndarray::ShapeError| Error::file(&self.path, format!("patch shape: {e2}"));
        let i1 = i0 + k;
        let images =
            ndarray::ArrayView4::from_shape((k, 5, patch, patch), &row.images).map_err(sh)?;
        sets.images
            .write_slice(images, (i0..i1, .., .., ..))
            .map_err(&e)?;
        let labels = ndarray::ArrayView3::from_shape((k, patch, patch), &row.labels).map_err(sh)?;
        sets.labels
            .write_slice(labels, (i0..i1, .., ..))
            .map_err(&e)?;
        let masks = ndarray::ArrayView3::from_shape((k, patch, patch), &row.masks).map_err(sh)?;
        sets.masks
            .write_slice(masks, (i0..i1, .., ..))
            .map_err(&e)?;
        sets.area
            .write_slice(ndarray::ArrayView1::from(&row.area), i0..i1)
            .map_err(&e)?;
        let offset = ndarray::ArrayView2::from_shape((k, 2), &row.offset).map_err(sh)?;
        sets.offset.write_slice(offset, (i0..i1, ..)).map_err(&e)?;
        if let Some(raw) = &mut self.raw {
            raw.put(
                i0,
                &row.images,
                &row.labels,
                &row.masks,
                &row.area,
                &row.offset,
            )?;
        }
        self.next = i1;
        Ok(())
    }

    /// Closes the files and renames them into place.
    pub(crate) fn finish(mut self) -> Result<()> {
        if self.next != self.n {
            return Err(Error::file(
                &self.path,
                format!(
                    "{} patches written, {} counted from the areas' sizes",
                    self.next, self.n
                ),
            ));
        }
        drop(self.sets.take());
        if let Some(f) = self.file.take() {
            let closed = f.close().map_err(h5err(&self.path, "cannot write"));
            if let Err(e) = closed {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        }
        if let Some(raw) = self.raw.take() {
            if let Err(e) = raw.finish() {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::file(&self.path, e)
        })
    }
}

impl Drop for SplitWriter {
    fn drop(&mut self) {
        // unfinished: the HDF5 handle closes first, then its file goes
        drop(self.sets.take());
        if let Some(f) = self.file.take() {
            drop(f);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The per-patch datasets of a split's file.
struct Sets {
    images: hdf5::Dataset,
    labels: hdf5::Dataset,
    masks: hdf5::Dataset,
    area: hdf5::Dataset,
    offset: hdf5::Dataset,
}

/// Removes a temporary file unless forgotten.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
