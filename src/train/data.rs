//! Training data: where samples come from, and the worker threads that
//! prepare them.
//!
//! A [`DataSource`] describes a data set and is shared by all worker
//! threads; each worker [`DataSource::open`]s its own [`Dataset`] (so a
//! scene source gives every worker its own GDAL handles, as `rstile infer`'s
//! readers have). [`run_epoch`] runs the workers: a dispatcher hands out
//! sample positions, workers read and augment, and the consumer (the model
//! thread) receives the samples **in order** through bounded channels
//! (each job carries a one-shot reply channel whose receiver is queued in
//! order, the gzp idea also used by `rstile infer`). Batches are therefore
//! identical for any number of workers, and the model only waits when the
//! workers cannot keep up (the wait is measured and reported).
//!
//! Sources:
//! * [`SceneSource`]: pairs of image and label rasters (anything GDAL
//!   opens, VRTs included) on the same grid. Training windows are random
//!   crops read on the fly ([`Sampling::Random`]); validation tiles each
//!   scene without double-counting a pixel ([`Sampling::Grid`]). Nothing is
//!   cut to disk first.
//! * [`MemorySource`]: samples already in memory (tests, small sets).
//! * [`super::patches::PatchSource`]: the patches of `rstile prepare
//!   vaihingen` (its memory-mapped `.bin` copy or its HDF5 file).

use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::read::{GdalReader, Normalize, WindowSource};
use crate::infer::window::{Size, Window, WindowGrid};
use crate::raster::{open_raster, open_scene, SceneInfo};
use crate::train::augment::{augment, derive_seed, AugmentConfig, Sample, SplitMix64, IGNORE};
use crate::train::loss::weights::ClassFrequency;
use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's own view of a data set.
pub trait Dataset {
    /// Number of samples (per epoch for random sources).
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `i`; random sources draw from `rng` (seeded per sample).
    fn get(&mut self, i: usize, rng: &mut SplitMix64) -> Result<Sample>;
}

/// A data set that worker threads can open, each for itself.
pub trait DataSource: Send + Sync {
    /// Number of samples per epoch.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of image bands of every sample.
    fn bands(&self) -> usize;
    /// A handle for one worker thread.
    fn open(&self) -> Result<Box<dyn Dataset + '_>>;
    /// How often each of `k` classes occurs in the labels, for
    /// `class_weights = "median-frequency"`. By default every sample is one
    /// label image (right for fixed sets such as patches).
    fn class_frequency(&self, k: usize) -> Result<ClassFrequency> {
        let mut f = ClassFrequency::new(k);
        let mut d = self.open()?;
        let mut rng = SplitMix64::new(0);
        for i in 0..d.len() {
            f.add_image(&d.get(i, &mut rng)?.label);
        }
        Ok(f)
    }
}

/// Samples held in memory.
#[derive(Debug, Clone)]
pub struct MemorySource {
    pub samples: Arc<Vec<Sample>>,
}

impl DataSource for MemorySource {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn bands(&self) -> usize {
        self.samples.first().map_or(0, |s| s.bands)
    }
    fn open(&self) -> Result<Box<dyn Dataset + '_>> {
        Ok(Box::new(MemoryDataset(self.samples.clone())))
    }
}

struct MemoryDataset(Arc<Vec<Sample>>);

impl Dataset for MemoryDataset {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&mut self, i: usize, _: &mut SplitMix64) -> Result<Sample> {
        Ok(self.0[i].clone())
    }
}

/// An image raster and its label raster (class ids, same grid).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScenePair {
    pub image: PathBuf,
    pub label: PathBuf,
}

/// How a [`SceneSource`] picks its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// `samples` random `size x size` windows per epoch, each scene chosen
    /// with probability proportional to its area.
    Random { samples: usize, size: usize },
    /// Every scene tiled by `size x size` windows; the last row and column
    /// are shifted inside the scene and their pixels already covered are
    /// labelled [`IGNORE`], so each pixel is scored once.
    Grid { size: usize },
}

#[derive(Debug, Clone)]
struct SceneMeta {
    pair: ScenePair,
    size: Size,
}

#[derive(Debug, Clone, Copy)]
struct GridWindow {
    scene: usize,
    x: i64,
    y: i64,
    /// Columns / rows of the window before these are already covered.
    own_x: usize,
    own_y: usize,
}

/// Windows read from pairs of image and label rasters.
#[derive(Debug, Clone)]
pub struct SceneSource {
    scenes: Vec<SceneMeta>,
    bands: Vec<usize>,
    norm: Normalize,
    /// Label raster value → class channel, [`IGNORE`] for unknown values.
    lut: Vec<u8>,
    sampling: Sampling,
    grid: Vec<GridWindow>,
    cum_area: Vec<u64>,
}

fn check_bands(count: usize, path: &std::path::Path, bands: &[usize]) -> Result<()> {
    for &b in bands {
        if b == 0 || b > count {
            return Err(Error::file(
                path,
                format!("has {count} band(s), band {b} was asked for"),
            ));
        }
    }
    Ok(())
}

/// The class channel of label value `v`: [`IGNORE`] for the label
/// raster's nodata, values that are not whole numbers in 0..=254, and
/// values that are no class id (`lut`).
fn label_class(v: f64, nodata: Option<f64>, lut: &[u8]) -> u8 {
    if Some(v) == nodata || !(0.0..=254.0).contains(&v) || v.fract() != 0.0 {
        IGNORE
    } else {
        lut[v as usize]
    }
}

/// Whether band 1 of the label raster `path` holds at least one pixel
/// that is a class of `lut` (read in strips; stops at the first one).
fn has_labelled_pixel(path: &std::path::Path, lut: &[u8]) -> Result<bool> {
    let mut found = false;
    label_strips(path, lut, &mut |classes| {
        found = classes.iter().any(|&c| c != IGNORE);
        !found
    })?;
    Ok(found)
}

/// Reads band 1 of the label raster `path` in strips of about a million
/// pixels, as class channels of `lut` ([`IGNORE`] for the others), until
/// `each` returns false.
fn label_strips(
    path: &std::path::Path,
    lut: &[u8],
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<()> {
    let ds = open_raster(path)?;
    let (w, h) = ds.raster_size();
    let band = ds.rasterband(1).map_err(Error::on(path))?;
    let nodata = band.no_data_value();
    let rows = (1 << 20) / w.max(1) + 1;
    let mut y = 0;
    while y < h {
        let n = rows.min(h - y);
        let buf = band
            .read_as::<f64>((0, y as isize), (w, n), (w, n), None)
            .map_err(|e| Error::gdal_file(path, format!("cannot read labels at row {y}"), e))?;
        let classes: Vec<u8> = buf
            .data()
            .iter()
            .map(|&v| label_class(v, nodata, lut))
            .collect();
        if !each(&classes) {
            break;
        }
        y += n;
    }
    Ok(())
}

fn grid_starts(n: usize, size: usize) -> Vec<(i64, usize)> {
    if n <= size {
        return vec![(0, 0)];
    }
    let mut v = Vec::new();
    let mut x = 0;
    while x + size < n {
        v.push((x as i64, 0));
        x += size;
    }
    // last window flush with the edge; its first `x - (n - size)` px are
    // covered by the previous one
    let last = n - size;
    v.push((last as i64, x - last));
    v
}

impl SceneSource {
    /// Checks the pairs (they open, the image has the bands, the label has
    /// one band and the image's size) and plans the windows. `bands` are
    /// 1-based; `norm` is applied to the image; label values are class ids
    /// of `classes`, anything else (and the label raster's nodata) is
    /// ignored.
    pub fn new(
        pairs: &[ScenePair],
        bands: &[usize],
        norm: Normalize,
        classes: &ClassTable,
        sampling: Sampling,
    ) -> Result<SceneSource> {
        if pairs.is_empty() {
            return Err(Error::Config("no scenes given".into()));
        }
        let size = match sampling {
            Sampling::Random { size, .. } | Sampling::Grid { size } => size,
        };
        if size < 8 {
            return Err(Error::Config(format!("window size {size} is below 8 px")));
        }
        let mut scenes = Vec::new();
        for p in pairs {
            let img = SceneInfo::probe(&p.image)?;
            let (w, h) = (img.size.width, img.size.height);
            check_bands(img.band_count, &p.image, bands)?;
            img.check_palette(bands.len())?;
            // labels as they are: a paletted label raster's indices are
            // its class ids
            let lab = SceneInfo::of(&open_raster(&p.label)?, &p.label)?;
            // a DSM or an image given as labels would train on garbage
            use gdal::raster::GdalDataType::{Float32, Float64, Unknown};
            if matches!(lab.band_types.first(), Some(Float32 | Float64 | Unknown)) {
                let name = lab
                    .band_type_names
                    .first()
                    .map_or("unknown", String::as_str);
                return Err(Error::file(
                    &p.label,
                    format!(
                        "label band 1 is of type {name}; labels must be integer class ids (is this a DSM or an image?)"
                    ),
                ));
            }
            if (lab.size.width, lab.size.height) != (w, h) {
                let (lw, lh) = (lab.size.width, lab.size.height);
                return Err(Error::file(
                    &p.label,
                    format!(
                        "label raster is {lw}x{lh} px, its image {} is {w}x{h} px",
                        p.image.display()
                    ),
                ));
            }
            scenes.push(SceneMeta {
                pair: p.clone(),
                size: Size {
                    width: w,
                    height: h,
                },
            });
        }
        let mut lut = vec![IGNORE; 256];
        for (k, c) in classes.classes.iter().enumerate() {
            lut[c.id as usize] = k as u8;
        }
        // a label raster with no class id at all would train (or score)
        // nothing, with a loss of 0
        for s in &scenes {
            if !has_labelled_pixel(&s.pair.label, &lut)? {
                let ids: Vec<String> = classes.classes.iter().map(|c| c.id.to_string()).collect();
                return Err(Error::file(
                    &s.pair.label,
                    format!(
                        "no pixel of the label raster is a class id of the class table ({}); every pixel is nodata or another value, so there is nothing to learn from",
                        ids.join(", ")
                    ),
                ));
            }
        }
        let mut grid = Vec::new();
        if let Sampling::Grid { size } = sampling {
            for (si, s) in scenes.iter().enumerate() {
                for &(y, own_y) in &grid_starts(s.size.height, size) {
                    for &(x, own_x) in &grid_starts(s.size.width, size) {
                        grid.push(GridWindow {
                            scene: si,
                            x,
                            y,
                            own_x,
                            own_y,
                        });
                    }
                }
            }
        }
        let mut cum_area = Vec::new();
        let mut a = 0u64;
        for s in &scenes {
            a += (s.size.width * s.size.height) as u64;
            cum_area.push(a);
        }
        Ok(SceneSource {
            scenes,
            bands: bands.to_vec(),
            norm,
            lut,
            sampling,
            grid,
            cum_area,
        })
    }

    /// Per-band mean and standard deviation of the images, over valid,
    /// finite pixels, from a decimated read (at most `max_side` px per side
    /// of each scene).
    pub fn band_stats(pairs: &[ScenePair], bands: &[usize], max_side: usize) -> Result<Normalize> {
        let mut sum = vec![0f64; bands.len()];
        let mut sq = vec![0f64; bands.len()];
        let mut n = vec![0f64; bands.len()];
        for p in pairs {
            let scene = open_scene(&p.image)?;
            let ds = &scene.ds;
            check_bands(ds.raster_count(), &p.image, bands)?;
            let (w, h) = ds.raster_size();
            let f = (w.max(h) as f64 / max_side as f64).max(1.0);
            let (bw, bh) = (
                ((w as f64 / f) as usize).max(1),
                ((h as f64 / f) as usize).max(1),
            );
            for (i, &b) in bands.iter().enumerate() {
                let band = ds.rasterband(b).map_err(Error::on(&p.image))?;
                let nodata = band.no_data_value();
                let buf = band
                    .read_as::<f64>((0, 0), (w, h), (bw, bh), None)
                    .map_err(|e| Error::gdal_file(&p.image, format!("cannot read band {b}"), e))?;
                for &v in buf.data() {
                    if v.is_finite() && Some(v) != nodata {
                        sum[i] += v;
                        sq[i] += v * v;
                        n[i] += 1.0;
                    }
                }
            }
        }
        let mut mean = Vec::new();
        let mut std = Vec::new();
        for i in 0..bands.len() {
            let m = if n[i] > 0.0 { sum[i] / n[i] } else { 0.0 };
            let var = if n[i] > 0.0 {
                sq[i] / n[i] - m * m
            } else {
                1.0
            };
            mean.push(m as f32);
            std.push((var.max(0.0).sqrt() as f32).max(1e-3));
        }
        Ok(Normalize { mean, std })
    }

    /// The image raster and size of each scene.
    pub fn scene_sizes(&self) -> impl Iterator<Item = (&ScenePair, Size)> + '_ {
        self.scenes.iter().map(|s| (&s.pair, s.size))
    }

    /// Number of scenes.
    pub fn scene_count(&self) -> usize {
        self.scenes.len()
    }
}

impl DataSource for SceneSource {
    fn len(&self) -> usize {
        match self.sampling {
            Sampling::Random { samples, .. } => samples,
            Sampling::Grid { .. } => self.grid.len(),
        }
    }
    fn bands(&self) -> usize {
        self.bands.len()
    }
    /// Every label raster is one image, read in strips.
    fn class_frequency(&self, k: usize) -> Result<ClassFrequency> {
        let mut f = ClassFrequency::new(k);
        for s in &self.scenes {
            let mut counts = vec![0u64; k];
            label_strips(&s.pair.label, &self.lut, &mut |classes| {
                for &c in classes {
                    if let Some(n) = counts.get_mut(c as usize) {
                        *n += 1;
                    }
                }
                true
            })?;
            f.add_counts(&counts);
        }
        Ok(f)
    }
    fn open(&self) -> Result<Box<dyn Dataset + '_>> {
        Ok(Box::new(SceneDataset {
            src: self,
            handles: (0..self.scenes.len()).map(|_| None).collect(),
        }))
    }
}

struct SceneDataset<'a> {
    src: &'a SceneSource,
    /// Opened on first use: (image windows, label raster).
    handles: Vec<Option<(Box<dyn WindowSource>, gdal::Dataset)>>,
}

impl SceneDataset<'_> {
    fn read(&mut self, scene: usize, x: i64, y: i64, size: usize) -> Result<Sample> {
        let meta = &self.src.scenes[scene];
        if self.handles[scene].is_none() {
            let grid = WindowGrid::new(meta.size, size, 0.0)
                .map_err(|e| Error::file(&meta.pair.image, e))?;
            let reader = Box::new(GdalReader::open(
                &meta.pair.image,
                &self.src.bands,
                self.src.norm.clone(),
                grid,
                None,
            )?);
            let label = open_raster(&meta.pair.label)?;
            self.handles[scene] = Some((reader, label));
        }
        let (reader, label_ds) = self.handles[scene].as_mut().expect("opened");
        let w = Window {
            col: 0,
            row: 0,
            x,
            y,
            size,
        };
        let data = reader.read_window(&w)?;
        // labels: inside the raster only; outside stays ignored
        let mut label = vec![IGNORE; size * size];
        let (sw, sh) = (meta.size.width as i64, meta.size.height as i64);
        let (x0, y0) = (x.max(0), y.max(0));
        let (x1, y1) = ((x + size as i64).min(sw), (y + size as i64).min(sh));
        if x1 > x0 && y1 > y0 {
            let (cw, ch) = ((x1 - x0) as usize, (y1 - y0) as usize);
            let band = label_ds
                .rasterband(1)
                .map_err(Error::on(&meta.pair.label))?;
            let nodata = band.no_data_value();
            let buf = band
                .read_as::<f64>((x0 as isize, y0 as isize), (cw, ch), (cw, ch), None)
                .map_err(|e| {
                    Error::gdal_file(
                        &meta.pair.label,
                        format!("cannot read labels at ({x0}, {y0})"),
                        e,
                    )
                })?;
            let vals = buf.data();
            for r in 0..ch {
                for c in 0..cw {
                    let v = vals[r * cw + c];
                    let k = label_class(v, nodata, &self.src.lut);
                    let (ox, oy) = ((x0 - x) as usize + c, (y0 - y) as usize + r);
                    label[oy * size + ox] = k;
                }
            }
        }
        for (l, &v) in label.iter_mut().zip(&data.valid) {
            if v == 0 {
                *l = IGNORE;
            }
        }
        Ok(Sample {
            bands: self.src.bands.len(),
            height: size,
            width: size,
            image: data.input,
            label,
        })
    }
}

impl Dataset for SceneDataset<'_> {
    fn len(&self) -> usize {
        self.src.len()
    }
    fn get(&mut self, i: usize, rng: &mut SplitMix64) -> Result<Sample> {
        match self.src.sampling {
            Sampling::Random { size, .. } => {
                let total = *self.src.cum_area.last().expect("scenes");
                let a = rng.below(total);
                let scene = self.src.cum_area.partition_point(|&c| c <= a);
                let s = self.src.scenes[scene].size;
                let pick = |rng: &mut SplitMix64, n: usize| {
                    if n > size {
                        rng.below((n - size + 1) as u64) as i64
                    } else {
                        0
                    }
                };
                let x = pick(rng, s.width);
                let y = pick(rng, s.height);
                self.read(scene, x, y, size)
            }
            Sampling::Grid { size } => {
                let g = self.src.grid[i];
                let mut s = self.read(g.scene, g.x, g.y, size)?;
                for r in 0..size {
                    for c in 0..size {
                        if r < g.own_y || c < g.own_x {
                            s.label[r * size + c] = IGNORE;
                        }
                    }
                }
                Ok(s)
            }
        }
    }
}

/// A batch ready for the model.
pub struct Batch {
    /// `(B, C, H, W)` on the device.
    pub images: Tensor,
    /// `B·H·W` labels.
    pub labels: Vec<u8>,
    /// Number of samples.
    pub len: usize,
    /// Positions (in the epoch) of its samples.
    pub first: usize,
}

/// How an epoch's samples are made.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    /// Sample indices in the order they are used.
    pub order: Vec<usize>,
    pub batch: usize,
    pub workers: usize,
    /// Drop a final batch smaller than `batch`.
    pub drop_last: bool,
    /// Augmentation (`None`: samples are used as read, no crop).
    pub augment: Option<(AugmentConfig, usize)>,
    /// Seed of sample `p` is `derive_seed(seed, [epoch, p])`.
    pub seed: u64,
    pub epoch: u64,
}

/// What [`run_epoch`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochIo {
    /// Time the consumer waited for samples.
    pub wait: Duration,
    pub samples: usize,
}

type Reply = Receiver<Result<Sample>>;

/// Runs one epoch's data through worker threads and calls `consume` with
/// each batch, in order. Stops early (without error) when `consume` returns
/// `Ok(false)`.
pub fn run_epoch(
    source: &dyn DataSource,
    plan: &EpochPlan,
    device: &Device,
    consume: &mut dyn FnMut(Batch) -> Result<bool>,
) -> Result<EpochIo> {
    let workers = plan.workers.max(1);
    let batch = plan.batch.max(1);
    let n = if plan.drop_last {
        plan.order.len() / batch * batch
    } else {
        plan.order.len()
    };
    let mut io = EpochIo::default();
    std::thread::scope(|scope| -> Result<()> {
        let (job_tx, job_rx) = bounded::<(usize, usize, Sender<Result<Sample>>)>(2 * workers);
        let (order_tx, order_rx) = bounded::<Reply>(2 * batch + 2 * workers);
        let order = &plan.order;
        scope.spawn(move || {
            for (pos, &idx) in order.iter().enumerate().take(n) {
                let (tx, rx) = bounded(1);
                if order_tx.send(rx).is_err() || job_tx.send((pos, idx, tx)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            scope.spawn(move || {
                let mut ds = match source.open() {
                    Ok(ds) => Some(ds),
                    Err(e) => {
                        let msg = e.to_string();
                        for (_, _, tx) in job_rx.iter() {
                            let _ = tx.send(Err(Error::Config(msg.clone())));
                        }
                        None
                    }
                };
                if let Some(ds) = ds.as_mut() {
                    for (pos, idx, tx) in job_rx.iter() {
                        let mut rng =
                            SplitMix64::new(derive_seed(plan.seed, &[plan.epoch, pos as u64]));
                        let r = ds.get(idx, &mut rng).and_then(|s| {
                            s.check().map_err(Error::Config)?;
                            Ok(match &plan.augment {
                                Some((cfg, crop)) => augment(&s, *crop, cfg, &mut rng),
                                None => s,
                            })
                        });
                        let _ = tx.send(r);
                    }
                }
            });
        }
        drop(job_rx);
        let mut pos = 0;
        while pos < n {
            let take = batch.min(n - pos);
            let mut samples = Vec::with_capacity(take);
            let t = Instant::now();
            for _ in 0..take {
                let rx = order_rx.recv().expect("dispatcher queues every position");
                let s = rx
                    .recv()
                    .map_err(|_| Error::Config("a data worker stopped".into()))??;
                samples.push(s);
            }
            io.wait += t.elapsed();
            let (c, h, w) = (samples[0].bands, samples[0].height, samples[0].width);
            let mut img = Vec::with_capacity(take * c * h * w);
            let mut lab = Vec::with_capacity(take * h * w);
            for s in &samples {
                if (s.bands, s.height, s.width) != (c, h, w) {
                    return Err(Error::Config(format!(
                        "samples of one batch differ in shape: {}x{}x{} and {}x{}x{}",
                        c, h, w, s.bands, s.height, s.width
                    )));
                }
                img.extend_from_slice(&s.image);
                lab.extend_from_slice(&s.label);
            }
            let images = Tensor::from_vec(img, (take, c, h, w), device)?;
            io.samples += take;
            let more = consume(Batch {
                images,
                labels: lab,
                len: take,
                first: pos,
            })?;
            pos += take;
            if !more {
                break;
            }
        }
        // dropping the queue stops the dispatcher, which stops the workers
        drop(order_rx);
        Ok(())
    })?;
    Ok(io)
}
