//! Training on the patches of `rstile prepare vaihingen`.
//!
//! Reads either the memory-mapped copy `vaihingen_<split>.bin` (+ `.json`,
//! written with `prepare --raw`; every worker reads its patches straight
//! from the map, no copy of the file in memory) or the HDF5 file
//! `vaihingen_<split>.hdf5` (read whole into memory: about 1.3 MB per
//! 256 px patch). The images are already normalised by prepare; their mean
//! and std go into the model file so that `rstile infer` normalises the
//! same way. Labels are class ids of the class table; pixels whose boundary
//! mask is set (the eroded reference's black pixels) are ignored when
//! `ignore_boundary` is on, as the ISPRS benchmark scores.

use super::data::{DataSource, Dataset};
use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::train::augment::{Sample, SplitMix64, IGNORE};
use crate::train::loss::weights::ClassFrequency;
use crate::vaihingen::raw::RawPatches;
use crate::vaihingen::PatchSet;
use std::path::Path;

enum Store {
    Raw(RawPatches),
    Hdf5(PatchSet),
}

/// Prepared patches as a [`DataSource`].
pub struct PatchSource {
    store: Store,
    n: usize,
    patch: usize,
    bands: usize,
    /// Normalisation prepare applied.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    lut: Vec<u8>,
    ignore_boundary: bool,
}

impl PatchSource {
    /// Opens `path`: a `.bin` raw copy or an `.hdf5` file.
    pub fn open(path: &Path, classes: &ClassTable, ignore_boundary: bool) -> Result<PatchSource> {
        if !path.exists() {
            return Err(Error::file(path, "no such file"));
        }
        let is_bin = path.extension().is_some_and(|e| e == "bin");
        let (store, n, patch, bands, mean, std) = if is_bin {
            let r = RawPatches::open(path)?;
            let h = r.header.clone();
            (Store::Raw(r), h.n, h.patch, h.bands, h.mean, h.std)
        } else {
            let p = PatchSet::read(path)?;
            let bands = if p.n > 0 {
                p.images.len() / (p.n * p.patch * p.patch)
            } else {
                5
            };
            let (m, s) = (p.mean.clone(), p.std.clone());
            (Store::Hdf5(p), 0, 0, bands, m, s)
        };
        let (n, patch) = match &store {
            Store::Raw(_) => (n, patch),
            Store::Hdf5(p) => (p.n, p.patch),
        };
        if n == 0 {
            return Err(Error::file(path, "holds no patches"));
        }
        let mut lut = vec![IGNORE; 256];
        for (k, c) in classes.classes.iter().enumerate() {
            lut[c.id as usize] = k as u8;
        }
        Ok(PatchSource {
            store,
            n,
            patch,
            bands,
            mean,
            std,
            lut,
            ignore_boundary,
        })
    }

    /// Patch `i`'s image and its class channels ([`IGNORE`] on the boundary
    /// when `ignore_boundary` is on).
    fn parts(&self, i: usize) -> (&[f32], Vec<u8>) {
        let pp = self.patch * self.patch;
        let (image, labels, masks) = match &self.store {
            Store::Raw(r) => (r.image(i), r.labels(i), r.masks(i)),
            Store::Hdf5(p) => (
                &p.images[i * self.bands * pp..(i + 1) * self.bands * pp],
                &p.labels[i * pp..(i + 1) * pp],
                &p.masks[i * pp..(i + 1) * pp],
            ),
        };
        let label = labels
            .iter()
            .zip(masks)
            .map(|(&l, &m)| {
                if self.ignore_boundary && m != 0 {
                    IGNORE
                } else {
                    self.lut[l as usize]
                }
            })
            .collect();
        (image, label)
    }

    fn sample(&self, i: usize) -> Sample {
        let (image, label) = self.parts(i);
        Sample {
            bands: self.bands,
            height: self.patch,
            width: self.patch,
            image: image.to_vec(),
            label,
        }
    }
}

impl DataSource for PatchSource {
    fn len(&self) -> usize {
        self.n
    }
    fn bands(&self) -> usize {
        self.bands
    }
    fn open(&self) -> Result<Box<dyn Dataset + '_>> {
        Ok(Box::new(PatchDataset(self)))
    }
    /// Every patch is one label image; the images are not copied.
    fn class_frequency(&self, k: usize) -> Result<ClassFrequency> {
        let mut f = ClassFrequency::new(k);
        for i in 0..self.n {
            f.add_image(&self.parts(i).1);
        }
        Ok(f)
    }
}

struct PatchDataset<'a>(&'a PatchSource);

impl Dataset for PatchDataset<'_> {
    fn len(&self) -> usize {
        self.0.n
    }
    fn get(&mut self, i: usize, _: &mut SplitMix64) -> Result<Sample> {
        Ok(self.0.sample(i))
    }
}
