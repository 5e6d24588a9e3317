//! The ISPRS Vaihingen benchmark: `rstile prepare vaihingen`.
//!
//! Reads either input layout (see [`Layout`]), builds the five input
//! features NIR, R, G, nDSM, NDVI ([`features`]), cuts square patches with
//! the course's placement rule, and writes `vaihingen_train.hdf5` and
//! `vaihingen_val.hdf5` plus `vaihingen_meta.json`.
//!
//! # The patch-placement rule (reproduces the course's counts)
//!
//! The course's tool (`semseg_vaihingen/dataset/make_dataset.py` of the
//! DEEP-Hybrid-DataCloud `semseg_vaihingen` project, `image_to_dataset`)
//! names its parameter `overlap_factor` but uses it as the *stride* as a
//! fraction of the patch: "< 1 means overlap, = 1 means no overlap, > 1 empty
//! space in between". With `overlap = 0.6` and 256 px patches the stride is
//! `int(256 * 0.6) = 153` px (patches overlap by 103 px, 40 %), and along
//! each axis of length `L` the origins are
//!
//! ```text
//! k = 0; while k + 256 < L { emit k; k += 153 }     // strict <, no border patch
//! ```
//!
//! i.e. `ceil((L - 256) / 153)` origins (0 when `L <= 256`); rows and
//! columns multiply. The last `L - 256 - 153 (n - 1)` px (1 to 153) of each
//! tile's right and bottom edges are never in a patch — exactly as in the
//! course. rstile's `--overlap` is that same factor, so `--overlap 0.6`
//! gives the course's patches ([`patch_origins`], [`stride`]).
//!
//! # Official tile sizes (width x height)
//!
//! [`OFFICIAL_SIZES`] holds all 33 areas, from the benchmark's data
//! description (the course material lists the same). With the course's rule
//! they give its counts exactly: 2083 training patches (areas 1, 3, 5, 7,
//! 11, 13, 17, 21, 26, 28, 34, 37) and 368 validation patches (30, 32).
//! `rstile synth --isprs DIR` writes generated areas of these sizes in the
//! archive's layout.
//!
//! # Output
//!
//! Each `vaihingen_<split>.hdf5` holds, for `N` patches of `P x P` px:
//!
//! * `images` `(N, 5, P, P)` f32, channels NIR, R, G, nDSM, NDVI,
//!   **normalised**: `(x - mean[c]) / std[c]`;
//! * `mean`, `std` `(5)` f32: the per-channel statistics over every pixel
//!   of the *training* areas (the same in both files);
//! * `labels` `(N, P, P)` u8: class ids 0..=5 of
//!   [`crate::classes::ClassTable::isprs`] from the full reference, 255 = no
//!   label;
//! * `masks` `(N, P, P)` u8: 1 on the pixels the eroded reference ignores
//!   (black, the class boundaries), else 0;
//! * `area` `(N)` u16 and `offset` `(N, 2)` u32 (row, column of the
//!   patch's top-left pixel in its area);
//! * attributes `patch`, `stride` (u32), `overlap` (f64), `ground_radius`
//!   (u32).
//!
//! With `--raw`, [`raw`] also writes `vaihingen_<split>.bin` + `.bin.json`,
//! the same arrays uncompressed for `memmap2` ([`raw::RawPatches`]). Measured
//! on 528 training patches (page cache warm, this 2-core machine): reading
//! the whole HDF5 file into memory takes 0.45-0.8 s before the first patch
//! (650-1170 patches/s), shuffled batches of 16 from the map take 0.09-0.16 s
//! (3000-6200 patches/s) with no up-front copy and no extra memory per worker
//! (`read_speed_hdf5_vs_mmap` in `tests/vaihingen_prepare.rs`, ignored by
//! default).
//!
//! # Memory
//!
//! `prepare` streams: the patch counts come from the areas' sizes (image
//! headers), the files are created at their final size, the training
//! areas are read once for the statistics and again to cut their patches,
//! and each row of patches is written by hyperslab ([`ndarray`] views into
//! the hdf5 crate's `write_slice`). Memory holds one area (its features are
//! `5 x 4` bytes per pixel, 195 MB for area 38) and one row of patches. On
//! the full official layout (generated, `rstile synth --isprs`) the course
//! split peaks at 0.5 GB instead of 3.1 GB, with the same datasets bit for
//! bit, for 25% more time (the second read of the training areas); see
//! `benches/RESULTS.md`. Both splits' files appear together at the end.
//!
//! [`eval`] scores a model on whole areas through the streaming infer
//! pipeline (`rstile eval`).
//!
//! The nDSM is the DSM minus its morphological opening with a square of
//! radius `ground_radius` px (default [`DEFAULT_GROUND_RADIUS`] = 250 px =
//! 22.5 m at 9 cm; a window of 45 m, wider than Vaihingen's buildings), in
//! O(1) per pixel whatever the radius (van Herk / Gil-Werman).

pub mod demo;
pub mod eval;
pub mod features;
mod patches;
pub mod raw;
pub mod source;
pub mod submission;

use crate::error::{Error, Result};
pub use source::{Area, Layout};
use std::path::{Path, PathBuf};

/// The course's training areas.
pub const COURSE_TRAIN: [u16; 12] = [1, 3, 5, 7, 11, 13, 17, 21, 26, 28, 34, 37];
/// The course's validation areas.
pub const COURSE_VAL: [u16; 2] = [30, 32];
/// The 16 areas whose reference the ISPRS released to participants.
pub const ISPRS_TRAIN: [u16; 16] = [1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37];
/// The 17 areas the ISPRS benchmark tests on (reference in the "COMPLETE" archive).
pub const ISPRS_TEST: [u16; 17] = [
    2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38,
];
/// Width x height in pixels of every Vaihingen area, from the benchmark's
/// data description: `(area, width, height)`.
pub const OFFICIAL_SIZES: [(u16, usize, usize); 33] = [
    (1, 1919, 2569),
    (2, 2428, 2767),
    (3, 2006, 3007),
    (4, 1887, 2557),
    (5, 1887, 2557),
    (6, 1887, 2557),
    (7, 1887, 2557),
    (8, 1887, 2557),
    (10, 1887, 2557),
    (11, 1893, 2566),
    (12, 1922, 2575),
    (13, 2818, 2558),
    (14, 1919, 2565),
    (15, 1919, 2565),
    (16, 1919, 2565),
    (17, 2336, 1281),
    (20, 1866, 2315),
    (21, 1903, 2546),
    (22, 1903, 2546),
    (23, 1903, 2546),
    (24, 1903, 2546),
    (26, 2995, 1783),
    (27, 1917, 3313),
    (28, 1917, 2567),
    (29, 1917, 2563),
    (30, 1934, 2563),
    (31, 1980, 2555),
    (32, 1980, 2555),
    (33, 1581, 2555),
    (34, 1388, 2555),
    (35, 2805, 1884),
    (37, 1996, 1995),
    (38, 3816, 2550),
];

/// The official width and height of area `n`, if it is one of the 33.
pub fn official_size(n: u16) -> Option<(usize, usize)> {
    OFFICIAL_SIZES
        .iter()
        .find(|s| s.0 == n)
        .map(|&(_, w, h)| (w, h))
}

/// Default radius of the ground estimate, px.
pub const DEFAULT_GROUND_RADIUS: usize = 250;

/// The course's stride: `int(patch * overlap)` (Python's `int` truncates).
pub fn stride(patch: usize, overlap: f64) -> usize {
    (patch as f64 * overlap) as usize
}

/// The course's patch origins along an axis of length `len`:
/// `k = 0; while k + patch < len { k; k += stride }`.
pub fn patch_origins(len: usize, patch: usize, stride: usize) -> Vec<usize> {
    assert!(stride > 0);
    let mut v = Vec::new();
    let mut k = 0;
    while k + patch < len {
        v.push(k);
        k += stride;
    }
    v
}

/// The number of patches of a `width x height` area.
pub fn patch_count(width: usize, height: usize, patch: usize, stride: usize) -> usize {
    patch_origins(width, patch, stride).len() * patch_origins(height, patch, stride).len()
}

/// Which areas go to training and which to validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub name: String,
    pub train: Vec<u16>,
    pub val: Vec<u16>,
}

impl Split {
    /// The course's split.
    pub fn course() -> Split {
        Split {
            name: "course".into(),
            train: COURSE_TRAIN.to_vec(),
            val: COURSE_VAL.to_vec(),
        }
    }

    /// The benchmark's: the 16 released areas for training, the 17 test
    /// areas for validation (needs the complete reference).
    pub fn isprs() -> Split {
        Split {
            name: "isprs".into(),
            train: ISPRS_TRAIN.to_vec(),
            val: ISPRS_TEST.to_vec(),
        }
    }

    /// `course`, `isprs`, or a TOML file `train = [1, 3]` / `val = [30]`.
    pub fn parse(s: &str) -> Result<Split> {
        match s {
            "course" => return Ok(Split::course()),
            "isprs" => return Ok(Split::isprs()),
            _ => {}
        }
        let path = Path::new(s);
        #[derive(serde::Deserialize)]
        struct F {
            train: Vec<u16>,
            #[serde(default)]
            val: Vec<u16>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::file(
                path,
                format!("not 'course', 'isprs' or a readable split file: {e}"),
            )
        })?;
        let f: F = toml::from_str(&text).map_err(|e| {
            Error::file(
                path,
                format!(
                    "not a split file (train = [..], val = [..]): {}",
                    e.message()
                ),
            )
        })?;
        let split = Split {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            train: f.train,
            val: f.val,
        };
        split.validate().map_err(|e| Error::file(path, e))?;
        Ok(split)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.train.is_empty() {
            return Err("the split has no training area".into());
        }
        for a in &self.train {
            if self.val.contains(a) {
                return Err(format!(
                    "area {a} is in both the training and the validation areas"
                ));
            }
        }
        let mut all: Vec<u16> = self.train.iter().chain(&self.val).copied().collect();
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err("an area is listed twice".into());
        }
        Ok(())
    }
}

/// What `prepare` does.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub split: Split,
    /// The course's factor: stride = `int(patch * overlap)`.
    pub overlap: f64,
    pub patch: usize,
    pub ground_radius: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Also write the memory-mappable copy `vaihingen_<split>.bin` (+ `.bin.json`).
    pub raw: bool,
}

impl PrepareOptions {
    /// The course's settings.
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        PrepareOptions {
            data: data.into(),
            out: out.into(),
            split: Split::course(),
            overlap: 0.6,
            patch: 256,
            ground_radius: DEFAULT_GROUND_RADIUS,
            progress: false,
            raw: false,
        }
    }
}

/// One area's part of a split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AreaSummary {
    pub area: u16,
    pub width: usize,
    pub height: usize,
    pub patches: usize,
}

/// One written split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitSummary {
    /// "train" or "val".
    pub name: String,
    pub file: PathBuf,
    pub patches: usize,
    pub areas: Vec<AreaSummary>,
}

/// What `prepare` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrepareSummary {
    pub layout: String,
    pub split: String,
    pub patch: usize,
    pub stride: usize,
    pub overlap: f64,
    pub ground_radius: usize,
    pub mean: [f32; 5],
    pub std: [f32; 5],
    pub channels: [&'static str; 5],
    pub splits: Vec<SplitSummary>,
    /// Warnings (e.g. a missing eroded reference).
    pub notes: Vec<String>,
}

fn h5err<'a>(path: &'a Path, what: &str) -> impl Fn(hdf5::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::file(path, format!("{what}: {e}"))
}

/// A prepared split read back (for training and tests).
#[derive(Debug, Clone)]
pub struct PatchSet {
    pub n: usize,
    pub patch: usize,
    /// `(n, 5, patch, patch)`, normalised.
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub masks: Vec<u8>,
    pub area: Vec<u16>,
    /// `(n, 2)`: row, column.
    pub offset: Vec<u32>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl PatchSet {
    /// Reads a `vaihingen_<split>.hdf5` file written by [`prepare`].
    pub fn read(path: &Path) -> Result<PatchSet> {
        let f = hdf5::File::open(path).map_err(h5err(path, "not an HDF5 file"))?;
        let e = h5err(path, "cannot read");
        let images = f.dataset("images").map_err(&e)?;
        let shape = images.shape();
        if shape.len() != 4 || shape[1] != 5 || shape[2] != shape[3] {
            return Err(Error::file(
                path,
                format!("images has shape {shape:?}, (N, 5, P, P) expected"),
            ));
        }
        Ok(PatchSet {
            n: shape[0],
            patch: shape[2],
            images: images.read_raw().map_err(&e)?,
            labels: f.dataset("labels").map_err(&e)?.read_raw().map_err(&e)?,
            masks: f.dataset("masks").map_err(&e)?.read_raw().map_err(&e)?,
            area: f.dataset("area").map_err(&e)?.read_raw().map_err(&e)?,
            offset: f.dataset("offset").map_err(&e)?.read_raw().map_err(&e)?,
            mean: f.dataset("mean").map_err(&e)?.read_raw().map_err(&e)?,
            std: f.dataset("std").map_err(&e)?.read_raw().map_err(&e)?,
        })
    }
}

pub(crate) fn load(
    layout: &Layout,
    data: &Path,
    n: u16,
    radius: usize,
    notes: &mut Vec<String>,
) -> Result<Area> {
    match layout {
        Layout::Official => {
            let (a, note) = source::load_official(data, n, radius)?;
            notes.extend(note);
            Ok(a)
        }
        Layout::CourseHdf5 => source::load_course(data, n),
    }
}

/// Prepares the dataset; see the module docs.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareSummary> {
    if opts.patch == 0 {
        return Err(Error::Config("--patch must be positive".into()));
    }
    let stride = stride(opts.patch, opts.overlap);
    if !(opts.overlap.is_finite() && opts.overlap > 0.0) || stride == 0 {
        return Err(Error::Config(format!(
            "--overlap {} gives a stride of int({} * {}) = 0 px; it is the course's factor \
             (stride = patch * overlap), e.g. 0.6",
            opts.overlap, opts.patch, opts.overlap
        )));
    }
    opts.split.validate().map_err(Error::Config)?;
    let layout = Layout::detect(&opts.data)?;
    // Fail early on a missing area, before minutes of work.
    for &n in opts.split.train.iter().chain(&opts.split.val) {
        let p = match layout {
            Layout::Official => source::official_paths(&opts.data, n)[0].clone(),
            Layout::CourseHdf5 => source::course_path(&opts.data, n),
        };
        if !p.exists() {
            return Err(Error::file(
                &p,
                format!("area {n} of the '{}' split is missing", opts.split.name),
            ));
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| {
        Error::file(
            &opts.out,
            format!("cannot create the output directory: {e}"),
        )
    })?;

    let total = (opts.split.train.len() + opts.split.val.len()) as u64;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} areas {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix("prepare vaihingen");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // The patch counts, from the areas' sizes: the files are created at
    // their final size and filled area by area.
    let mut sizes = std::collections::HashMap::new();
    for &n in opts.split.train.iter().chain(&opts.split.val) {
        sizes.insert(n, source::area_size(&layout, &opts.data, n)?);
    }
    // Pass 1: the statistics of the training areas' features (each area is
    // read again in pass 2; memory holds one at a time). The archive's
    // references are not decoded here: only pass 2 needs them.
    let mut notes = Vec::new();
    let mut stats = features::Stats::default();
    for &n in &opts.split.train {
        bar.set_message(format!("statistics: area {n}"));
        let (npix, features) = match layout {
            Layout::Official => {
                let (w, h, f) = source::official_features(&opts.data, n, opts.ground_radius)?;
                (w * h, f)
            }
            Layout::CourseHdf5 => {
                let a = source::load_course(&opts.data, n)?;
                (a.width * a.height, a.features)
            }
        };
        stats.add(&features, npix);
        bar.inc(1);
    }
    bar.set_length(total + opts.split.train.len() as u64);
    let (mean, std) = stats.mean_std();
    let params = patches::SplitParams {
        patch: opts.patch,
        stride,
        overlap: opts.overlap,
        ground_radius: opts.ground_radius,
        mean,
        std,
    };
    // Pass 2: patches, streamed into the files one row of patches at a time.
    let mut summaries = Vec::new();
    let mut writers = Vec::new();
    for (name, areas) in [("train", &opts.split.train), ("val", &opts.split.val)] {
        let count: usize = areas
            .iter()
            .map(|n| {
                let (w, h) = sizes[n];
                patch_count(w, h, opts.patch, stride)
            })
            .sum();
        let file = opts.out.join(format!("vaihingen_{name}.hdf5"));
        let bin = opts.out.join(format!("vaihingen_{name}.bin"));
        let mut writer =
            patches::SplitWriter::create(&file, count, params, opts.raw.then_some(bin.as_path()))?;
        let mut per_area = Vec::new();
        let mut area_notes = Vec::new();
        for &n in areas {
            bar.set_message(format!("{name}: area {n}"));
            let a = load(&layout, &opts.data, n, opts.ground_radius, &mut area_notes)?;
            if (a.width, a.height) != sizes[&n] {
                return Err(Error::file(
                    &opts.data,
                    format!(
                        "area {n} read as {}x{} but probed as {}x{}",
                        a.width, a.height, sizes[&n].0, sizes[&n].1
                    ),
                ));
            }
            let k = writer.put_area(&a)?;
            if k == 0 {
                notes.push(format!(
                    "area {n} ({}x{}) is too small for a {} px patch",
                    a.width, a.height, opts.patch
                ));
            }
            per_area.push(AreaSummary {
                area: n,
                width: a.width,
                height: a.height,
                patches: k,
            });
            bar.inc(1);
        }
        notes.extend(area_notes);
        writers.push(writer);
        summaries.push(SplitSummary {
            name: name.into(),
            file,
            patches: count,
            areas: per_area,
        });
    }
    // Both splits appear together, or neither (an unfinished writer removes
    // its files).
    bar.set_message("closing the files");
    for w in writers {
        w.finish()?;
    }
    bar.finish_and_clear();
    let summary = PrepareSummary {
        layout: layout.name().into(),
        split: opts.split.name.clone(),
        patch: opts.patch,
        stride,
        overlap: opts.overlap,
        ground_radius: opts.ground_radius,
        mean,
        std,
        channels: ["NIR", "R", "G", "nDSM", "NDVI"],
        splits: summaries,
        notes,
    };
    let meta = opts.out.join("vaihingen_meta.json");
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::file(&meta, e))?;
    std::fs::write(&meta, json).map_err(|e| Error::file(&meta, e))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn course_rule_on_the_official_sizes() {
        let s = stride(256, 0.6);
        assert_eq!(s, 153);
        let count = |areas: &[u16]| -> usize {
            areas
                .iter()
                .map(|&a| {
                    let (w, h) = official_size(a).unwrap();
                    patch_count(w, h, 256, s)
                })
                .sum()
        };
        assert_eq!(count(&COURSE_TRAIN), 2083);
        assert_eq!(count(&COURSE_VAL), 368);
        // every released and every test area has a size, and no other
        let mut all: Vec<u16> = ISPRS_TRAIN.iter().chain(&ISPRS_TEST).copied().collect();
        all.sort_unstable();
        let listed: Vec<u16> = OFFICIAL_SIZES.iter().map(|s| s.0).collect();
        assert_eq!(all, listed);
        assert_eq!(official_size(9), None);
        assert_eq!(patch_count(2006, 3007, 256, s), 12 * 18);
        assert_eq!(patch_origins(256, 256, 153), Vec::<usize>::new());
        assert_eq!(patch_origins(257, 256, 153), vec![0]);
        assert_eq!(patch_origins(409, 256, 153), vec![0]);
        assert_eq!(patch_origins(410, 256, 153), vec![0, 153]);
    }

    #[test]
    fn split_parsing() {
        assert_eq!(Split::parse("course").unwrap().val, vec![30, 32]);
        assert_eq!(Split::parse("isprs").unwrap().train.len(), 16);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.toml");
        std::fs::write(&p, "train = [1, 3]\nval = [5]\n").unwrap();
        let s = Split::parse(p.to_str().unwrap()).unwrap();
        assert_eq!((s.train, s.val), (vec![1, 3], vec![5]));
        std::fs::write(&p, "train = [1, 3]\nval = [3]\n").unwrap();
        let e = Split::parse(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("area 3 is in both"), "{e}");
        assert!(Split::parse("/no/such/split.toml").is_err());
    }
}
