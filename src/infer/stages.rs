//! The stage threads of a run, one named function each: `dispatch`, `read`
//! (one thread per reader), `model`, `stitch` and `write` (on the calling
//! thread), methods of [`Stages`], which holds what they share (the plan,
//! the stop flags, the first error, the counters). [`Stages::run`] makes the
//! bounded crossbeam channels between them (`Channels`, sized from the
//! plan), starts the threads and joins them.
//!
//! Order without a reorder buffer (the gzp idea): the dispatcher walks the
//! windows in the stitcher's order and, for each, sends the job to the
//! readers and a one-shot receiver to the stitcher, in that order. Readers
//! and the model may finish windows in any order and batch them in any
//! composition; the stitcher simply waits on the receivers in submission
//! order. Because the model is batch-invariant and the stitcher sums in grid
//! order, the map is identical for any thread count or batch size.
//!
//! In-flight data is bounded by the channel capacities: at most
//! [`InferPlan::queue_len`] windows are between the dispatcher and the
//! stitcher, so at most that many inputs or predictions exist at once.
//!
//! Stopping. A stage that fails records its error (the first one recorded
//! wins, with its type: a reader's GDAL or file error, the model's
//! [`Error::Model`] or [`Error::NonFinite`], the writer's error) and raises the shared abort flag,
//! *then* drops what it holds. The dispatcher stops at the flag, so the
//! channels close one after another and every thread ends; a stage that
//! finds its neighbour gone stops quietly, and the stitcher, finding a
//! window's reply dropped, stops with [`Error::Pipeline`], which is reported
//! only when no stage recorded a cause. Cancellation (SIGINT, SIGTERM) is a
//! flag of the caller's, checked by every loop (the dispatcher before each
//! window, the readers before each read, the model before each batch, the
//! stitcher before each window), so a stop waits for at most one read and
//! one forward pass; it wins over any error. Threads are joined in turn and a stage's panic is raised
//! again on the joining thread.

use crate::error::{Error, Result};
use crate::infer::batch::{run_batch_device, run_batch_tta, NonFiniteWindow, WindowProbs};
use crate::infer::plan::InferPlan;
use crate::infer::profile::Profile;
use crate::infer::read::{CellLattice, Pixels, WindowData, WindowSource};
use crate::infer::stitch::{Band, ChunkStitcher, Prediction, Region};
use crate::infer::stitch_device::{DevicePrediction, DeviceStitcher};
use crate::infer::window::{Rect, Window, WindowGrid};
use crate::infer::write::{MapWriter, TILE};
use crate::infer::Progress;
use crate::model::Model;
use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the model waits for more windows before running a short batch.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// How often a stage blocked on a reply checks whether the run is stopping.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What became of a window: skipped (all nodata, or outside the AOI), or
/// its class probabilities `[classes][n][n]` and validity `[n][n]`: on the
/// host, or left on the model's device (views into the batch's tensors)
/// when the post-processing runs there.
enum Slot {
    Skipped,
    Done { probs: WindowProbs, valid: Vec<u8> },
    OnDevice { probs: Tensor, valid: Tensor },
}

/// The current region's stitcher: on the host, or on the model's device.
enum Stitcher {
    Host(ChunkStitcher),
    Device(DeviceStitcher),
}

impl Stitcher {
    /// Adds a window's result; a result of the other kind than the
    /// stitcher (which the model stage never sends) is an error.
    fn add(&mut self, w: &Window, slot: Slot) -> Result<()> {
        match (self, slot) {
            (Stitcher::Host(s), Slot::Skipped) => s.add(w, None),
            (Stitcher::Device(s), Slot::Skipped) => s.add(w, None).map_err(post_error)?,
            (Stitcher::Host(s), Slot::Done { probs, valid }) => probs
                .with(|scores| {
                    s.add(
                        w,
                        Some(Prediction {
                            probs: scores,
                            logits: probs.is_logits(),
                            valid: &valid,
                        }),
                    )
                })
                .map_err(|e| Error::Model {
                    context: "reading a window's logits".into(),
                    source: Box::new(e.into()),
                })?,
            (Stitcher::Device(s), Slot::OnDevice { probs, valid }) => s
                .add(
                    w,
                    Some(DevicePrediction {
                        probs: &probs,
                        valid: &valid,
                    }),
                )
                .map_err(post_error)?,
            _ => {
                return Err(Error::Pipeline(
                    "a window's prediction is not where the stitcher runs".into(),
                ))
            }
        }
        Ok(())
    }

    fn end_row(&mut self, r: usize) -> Result<Vec<Band>> {
        match self {
            Stitcher::Host(s) => Ok(s.end_row(r)),
            Stitcher::Device(s) => s.end_row(r).map_err(post_error),
        }
    }

    fn finish(self) -> Result<Vec<Band>> {
        match self {
            Stitcher::Host(s) => Ok(s.finish()),
            Stitcher::Device(s) => s.finish().map_err(post_error),
        }
    }
}

/// A failure of the post-processing on the device.
fn post_error(e: candle_core::Error) -> Error {
    Error::Model {
        context: "post-processing on the model's device failed".into(),
        source: Box::new(e.into()),
    }
}

/// The stitcher's work, in grid order.
enum Order {
    /// A window and the one-shot receiver its result will arrive on.
    Window(Window, Receiver<Slot>),
    /// All windows of grid row `r` have been sent.
    EndRow(usize),
    /// The current region is complete.
    EndChunk,
}

/// Work for a reader, in the order the dispatcher sent it.
enum Job {
    /// Decode a cell, for the windows sent after it.
    Decode(Decode),
    /// Cut a window from its cells.
    Window(WindowJob),
}

/// A window for a reader to cut.
struct WindowJob {
    window: Window,
    /// The region the window is read for (a window at a chunk border is
    /// read once for each chunk).
    region: Region,
    /// The cells that cover its source rectangle, each sent to be decoded
    /// before this job (so a reader waiting for one waits for a reader that
    /// already took its decoding).
    cells: Vec<Arc<Cell>>,
    reply: Sender<Slot>,
}

/// A cell of the region's [`CellLattice`]: decoded by one reader, cut from
/// by any; `None` once its decoding failed or was abandoned.
struct Cell {
    rect: Rect,
    pixels: OnceLock<Option<Pixels>>,
}

/// A cell to decode. Dropped undecoded (its reader stopped, failed or
/// panicked, or the run ended with it in the channel), it marks the cell
/// failed, so no reader waits for it forever.
struct Decode(Arc<Cell>);

impl Drop for Decode {
    fn drop(&mut self) {
        let _ = self.0.pixels.set(None);
    }
}

/// A read window for the model.
struct ModelJob {
    window: Window,
    data: WindowData,
    reply: Sender<Slot>,
}

/// The bounded channels between the stages, sized from the plan: these
/// capacities are what [`MemoryBound`](crate::infer::MemoryBound) counts.
struct Channels {
    /// dispatcher → readers: `2R` jobs.
    jobs: (Sender<Job>, Receiver<Job>),
    /// readers → model: `2B` windows.
    windows: (Sender<ModelJob>, Receiver<ModelJob>),
    /// dispatcher → stitcher: [`InferPlan::queue_len`] orders.
    orders: (Sender<Order>, Receiver<Order>),
    /// stitcher → writer: 2 bands of 512 rows.
    bands: (Sender<Band>, Receiver<Band>),
}

impl Channels {
    /// The channels for `plan`.
    fn new(plan: &InferPlan) -> Channels {
        Channels {
            jobs: bounded(2 * plan.readers),
            windows: bounded(2 * plan.batch),
            orders: bounded(plan.queue_len()),
            bands: bounded(2),
        }
    }
}

/// What the stages share: the plan, the regions to stitch, the flags that
/// stop them, the first error and the counters.
pub struct Stages<'a> {
    plan: &'a InferPlan,
    grid: WindowGrid,
    regions: &'a [Region],
    /// Class id of each model output channel.
    class_ids: Vec<u8>,
    /// The model's device, where softmax, blending and argmax run
    /// ([`InferPlan::post_on_device`]); `None`: on the host.
    post: Option<Device>,
    progress: &'a dyn Progress,
    /// Set by the caller to stop the run (the work done is kept for resume).
    cancel: &'a AtomicBool,
    /// Set by a stage that failed.
    abort: AtomicBool,
    /// The first error a stage recorded.
    failure: Mutex<Option<Error>>,
    skipped: AtomicU64,
    outside: AtomicU64,
    non_finite: AtomicU64,
    /// Where the time goes, stage by stage.
    profile: Profile,
}

impl<'a> Stages<'a> {
    /// The stages of a run of `plan` over `regions` of `grid`.
    pub fn new(
        plan: &'a InferPlan,
        grid: WindowGrid,
        regions: &'a [Region],
        class_ids: Vec<u8>,
        cancel: &'a AtomicBool,
        progress: &'a dyn Progress,
    ) -> Stages<'a> {
        Stages {
            plan,
            grid,
            regions,
            class_ids,
            post: None,
            progress,
            cancel,
            abort: AtomicBool::new(false),
            failure: Mutex::new(None),
            skipped: AtomicU64::new(0),
            outside: AtomicU64::new(0),
            non_finite: AtomicU64::new(0),
            profile: Profile::default(),
        }
    }

    /// Runs softmax, blending and argmax on `device` (the model's), with
    /// the [`DeviceStitcher`]; by default they run on the host.
    pub fn with_post_on(mut self, device: Device) -> Self {
        self.post = Some(device);
        self
    }

    /// The stages' clocks (complete once [`Stages::run`] returned).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Windows skipped because all their pixels are nodata.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Windows not computed because they miss the AOI.
    pub fn outside_aoi(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }

    /// Pixels of the scene that its masks call valid but whose value is
    /// not finite (NaN, infinite, beyond f32's range): mapped as nodata.
    pub fn non_finite_pixels(&self) -> u64 {
        self.non_finite.load(Ordering::Relaxed)
    }

    /// Counts the non-finite pixels of a read window once: those in the
    /// window's centre ([`WindowGrid::centre`]) and in its job's region.
    fn count_non_finite(&self, job: &WindowJob, data: &WindowData) {
        if data.non_finite.is_empty() {
            return;
        }
        let (w, r) = (&job.window, &job.region);
        let k = self.grid.centre(w);
        let (x0, x1) = (k.x.max(r.x0), (k.x + k.width).min(r.x1));
        let (y0, y1) = (k.y.max(r.y0), (k.y + k.height).min(r.y1));
        let mut count = 0u64;
        for y in y0..y1.max(y0) {
            let j = (y as i64 - w.y) as usize;
            for x in x0..x1.max(x0) {
                let k = j * w.size + (x as i64 - w.x) as usize;
                count += (data.non_finite[k / 64] >> (k % 64)) & 1;
            }
        }
        self.non_finite.fetch_add(count, Ordering::Relaxed);
    }

    /// Runs every stage, one thread each (the writer on this one), until the
    /// last region is written to `writer` or the run stops. Returns
    /// [`Error::Interrupted`] when cancelled, else the first error a stage
    /// recorded. `writer` is left unfinished either way.
    pub fn run(
        &self,
        readers: Vec<Box<dyn WindowSource>>,
        model: Model,
        writer: &mut MapWriter,
    ) -> Result<()> {
        let Channels {
            jobs: (job_tx, job_rx),
            windows: (window_tx, window_rx),
            orders: (order_tx, order_rx),
            bands: (band_tx, band_rx),
        } = Channels::new(self.plan);
        std::thread::scope(|s| {
            let dispatcher = spawn(s, "rstile-dispatch", move || {
                self.dispatch(job_tx, order_tx)
            });
            let readers: Vec<_> = readers
                .into_iter()
                .map(|reader| {
                    let (jobs, windows) = (job_rx.clone(), window_tx.clone());
                    spawn(s, "rstile-read", move || self.read(reader, jobs, windows))
                })
                .collect();
            // the readers hold the only ends left, so the channels close
            // when they are done
            drop((job_rx, window_tx));
            let model = spawn(s, "rstile-model", move || self.model(model, window_rx));
            let stitcher = spawn(s, "rstile-stitch", move || self.stitch(order_rx, band_tx));
            self.write(writer, band_rx);
            join(stitcher);
            join(dispatcher);
            for h in readers {
                join(h);
            }
            join(model);
        });
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records `e` unless an earlier error was recorded, and stops the
    /// dispatcher. Call it before dropping what the stage holds, so the
    /// error that caused a stop is recorded before the stops it causes.
    fn fail(&self, e: Error) {
        self.abort.store(true, Ordering::Relaxed);
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn stopping(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    /// The dispatcher: walks the windows of each region in grid order,
    /// sending each window's one-shot receiver to the stitcher and its job
    /// to the readers (a window outside the AOI is answered at once).
    fn dispatch(&self, jobs: Sender<Job>, orders: Sender<Order>) {
        let t0 = Instant::now();
        self.dispatch_windows(jobs, orders);
        let p = &self.profile;
        let waited = Duration::from_secs_f64(p.dispatch_wait_out.secs());
        p.dispatch_busy.add(t0.elapsed().saturating_sub(waited));
    }

    fn dispatch_windows(&self, jobs: Sender<Job>, orders: Sender<Order>) {
        let wait = &self.profile.dispatch_wait_out;
        let grid = &self.grid;
        let aoi = self.plan.aoi.as_deref();
        let block = self.plan.scene.block;
        for reg in self.regions {
            let (rows, cols) = (
                grid.rows_touching(reg.y0, reg.y1),
                grid.cols_touching(reg.x0, reg.x1),
            );
            let bounds = source_bounds(grid, rows.clone(), cols.clone());
            let lattice = CellLattice::new((block.width, block.height), bounds);
            // the cells decoded for windows sent, until no later window of
            // the region needs them
            let mut cells: BTreeMap<(usize, usize), Arc<Cell>> = BTreeMap::new();
            for r in rows.clone() {
                for c in cols.clone() {
                    if self.stopping() {
                        return;
                    }
                    let (tx, rx) = bounded(1);
                    let w = grid.window(c, r);
                    if wait.time(|| orders.send(Order::Window(w, rx))).is_err() {
                        return;
                    }
                    if aoi.is_some_and(|a| !a.touches(&grid.clip(&w))) {
                        self.outside.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Slot::Skipped);
                        continue;
                    }
                    let mut covering = Vec::new();
                    for key in lattice.cells_of(&grid.source_rect(&w)) {
                        if let Some(cell) = cells.get(&key) {
                            covering.push(cell.clone());
                            continue;
                        }
                        let cell = Arc::new(Cell {
                            rect: lattice.rect(key),
                            pixels: OnceLock::new(),
                        });
                        cells.insert(key, cell.clone());
                        covering.push(cell.clone());
                        if wait.time(|| jobs.send(Job::Decode(Decode(cell)))).is_err() {
                            return;
                        }
                    }
                    let job = WindowJob {
                        window: w,
                        region: *reg,
                        cells: covering,
                        reply: tx,
                    };
                    if wait.time(|| jobs.send(Job::Window(job))).is_err() {
                        return;
                    }
                }
                // cells above the next row's source rectangle are done with
                // (source rectangles only move down, row by row)
                if r + 1 < rows.end {
                    let top = grid.source_rect(&grid.window(cols.start, r + 1)).y;
                    cells.retain(|_, c| c.rect.y + c.rect.height > top);
                }
                if wait.time(|| orders.send(Order::EndRow(r))).is_err() {
                    return;
                }
            }
            if wait.time(|| orders.send(Order::EndChunk)).is_err() {
                return;
            }
        }
    }

    /// A reader: decodes the cells it is sent with its own GDAL handle, and
    /// cuts, pads, normalises and masks windows from the decoded cells;
    /// all-nodata windows are answered as skipped, the others go to the
    /// model.
    fn read(
        &self,
        mut reader: Box<dyn WindowSource>,
        jobs: Receiver<Job>,
        windows: Sender<ModelJob>,
    ) {
        let p = &self.profile;
        while let Ok(job) = p.read_wait_in.time(|| jobs.recv()) {
            if self.stopping() {
                return;
            }
            let job = match job {
                Job::Decode(d) => match p.read_decode.time(|| reader.decode(&d.0.rect)) {
                    Ok(px) => {
                        let _ = d.0.pixels.set(Some(px));
                        continue;
                    }
                    Err(e) => return self.fail(e),
                },
                Job::Window(job) => job,
            };
            let mut cells = Vec::with_capacity(job.cells.len());
            for c in &job.cells {
                match p.read_wait_in.time(|| c.pixels.wait()) {
                    Some(px) => cells.push(px),
                    // its decoder failed (and said why) or stopped
                    None => return,
                }
            }
            let data = p.read.time(|| reader.cut(&job.window, &cells));
            drop(cells);
            self.count_non_finite(&job, &data);
            if !data.any_valid {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Slot::Skipped);
                continue;
            }
            let job = ModelJob {
                window: job.window,
                data,
                reply: job.reply,
            };
            if p.read_wait_out.time(|| windows.send(job).is_err()) {
                return;
            }
        }
    }

    /// The model: gathers up to `batch` windows (waiting at most
    /// [`BATCH_WAIT`] for each after the first), runs one forward pass and
    /// answers each window with its prediction. A window whose output is
    /// not finite stops the run with [`Error::NonFinite`] naming it; a run
    /// that is stopping computes no further batch.
    fn model(&self, model: Model, windows: Receiver<ModelJob>) {
        let batch = self.plan.batch;
        let (bands, n) = (self.plan.bands.len(), self.plan.window);
        let mut jobs: Vec<ModelJob> = Vec::with_capacity(batch);
        let p = &self.profile;
        loop {
            jobs.clear();
            match p.model_wait_in.time(|| windows.recv()) {
                Ok(j) => jobs.push(j),
                Err(_) => return,
            }
            while jobs.len() < batch {
                match p.model_wait_in.time(|| windows.recv_timeout(BATCH_WAIT)) {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if self.stopping() {
                return;
            }
            let inputs: Vec<&[f32]> = jobs.iter().map(|j| j.data.input.as_slice()).collect();
            if self.post.is_some() {
                let valid: Vec<&[u8]> = jobs.iter().map(|j| j.data.valid.as_slice()).collect();
                match run_batch_device(&model, &inputs, &valid, bands, n, p) {
                    Ok(Err(bad)) => {
                        let w = jobs[bad.index].window;
                        return self.fail(self.non_finite(&w, bad));
                    }
                    Ok(Ok(out)) => {
                        for (i, job) in jobs.drain(..).enumerate() {
                            let slot = out.probs.get(i).and_then(|probs| {
                                Ok(Slot::OnDevice {
                                    probs,
                                    valid: out.valid.get(i)?,
                                })
                            });
                            match slot {
                                Ok(slot) => {
                                    let _ = job.reply.send(slot);
                                }
                                Err(e) => return self.fail(post_error(e)),
                            }
                        }
                    }
                    Err(e) => {
                        return self.fail(Error::Model {
                            context: format!(
                                "model forward failed on a batch of {} window(s) of {n} px",
                                inputs.len()
                            ),
                            source: Box::new(e),
                        })
                    }
                }
                continue;
            }
            match run_batch_tta(&model, &inputs, bands, n, self.plan.tta, p) {
                Ok(Err(bad)) => {
                    let w = jobs[bad.index].window;
                    return self.fail(self.non_finite(&w, bad));
                }
                Ok(Ok(outs)) => {
                    for (job, probs) in jobs.drain(..).zip(outs) {
                        let valid = job.data.valid;
                        let _ = job.reply.send(Slot::Done { probs, valid });
                    }
                }
                Err(e) => {
                    self.fail(Error::Model {
                        context: format!(
                            "model forward failed on a batch of {} window(s) of {n} px",
                            inputs.len()
                        ),
                        source: Box::new(e),
                    });
                    return;
                }
            }
        }
    }

    /// The error for a window whose model output is not finite: its pixel
    /// rectangle in the scene, the class and the value.
    fn non_finite(&self, w: &Window, bad: NonFiniteWindow) -> Error {
        let r = self.grid.clip(w);
        let id = self.class_ids.get(bad.channel).copied().unwrap_or(0);
        Error::NonFinite(format!(
            "the model's output is not finite in the window x {}..{}, y {}..{} px \
             (grid column {}, row {}): {} for class id {id} ({} value(s)); the model's \
             weights are NaN or infinite, or so large that its arithmetic overflows, \
             so it cannot map this scene",
            r.x,
            r.x + r.width,
            r.y,
            r.y + r.height,
            w.col,
            w.row,
            bad.value,
            bad.count
        ))
    }

    /// The stitcher: takes the windows' results in grid order, blends them
    /// into the current region's strip, and hands finished 512-row bands to
    /// the writer. It stops at cancellation, and with [`Error::Pipeline`]
    /// when a window's reply was dropped (a stage before it stopped).
    fn stitch(&self, orders: Receiver<Order>, bands: Sender<Band>) {
        let new_stitcher = |reg: &Region| -> Result<Stitcher> {
            let (grid, blend, ids) = (self.grid, self.plan.blend, self.class_ids.clone());
            let (confidence, probabilities) = (self.plan.confidence, self.plan.probabilities);
            Ok(match &self.post {
                None => Stitcher::Host(
                    ChunkStitcher::new(grid, blend, ids, *reg, TILE, confidence)
                        .with_probabilities(probabilities),
                ),
                Some(device) => Stitcher::Device(
                    DeviceStitcher::new(grid, blend, ids, *reg, TILE, confidence, device)
                        .map_err(post_error)?
                        .with_probabilities(probabilities),
                ),
            })
        };
        let p = &self.profile;
        let mut regions = self.regions.iter();
        let mut st = match regions.next().map(new_stitcher).transpose() {
            Ok(st) => st,
            Err(e) => return self.fail(e),
        };
        for msg in orders.iter() {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let cur = st.as_mut().expect("stitcher present");
            match msg {
                Order::Window(w, rx) => {
                    // a stage that failed may leave this window's reply in a
                    // channel nobody reads: wait while the run goes on
                    let waiting = Instant::now();
                    let reply = loop {
                        match rx.recv_timeout(STOP_POLL) {
                            Err(RecvTimeoutError::Timeout) if self.stopping() => return,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break Err(()),
                            Ok(slot) => break Ok(slot),
                        }
                    };
                    let t = p.stitch_wait_in.lap(waiting);
                    match reply {
                        Ok(slot) => {
                            if let Err(e) = cur.add(&w, slot) {
                                return self.fail(e);
                            }
                        }
                        Err(_) if self.cancel.load(Ordering::Relaxed) => return,
                        Err(_) => {
                            let msg = "a pipeline stage stopped early";
                            return self.fail(Error::Pipeline(msg.into()));
                        }
                    }
                    p.stitch_blend.lap(t);
                    self.progress.window_done(self.grid.clip(&w).area() as u64);
                }
                Order::EndRow(r) => {
                    let done = match p.stitch_argmax.time(|| cur.end_row(r)) {
                        Ok(b) => b,
                        Err(e) => return self.fail(e),
                    };
                    for b in done {
                        if p.stitch_wait_out.time(|| bands.send(b)).is_err() {
                            return;
                        }
                    }
                }
                Order::EndChunk => {
                    let done = st.take().expect("stitcher present");
                    let done = match p.stitch_argmax.time(|| done.finish()) {
                        Ok(b) => b,
                        Err(e) => return self.fail(e),
                    };
                    for b in done {
                        if p.stitch_wait_out.time(|| bands.send(b)).is_err() {
                            return;
                        }
                    }
                    st = match regions.next().map(new_stitcher).transpose() {
                        Ok(st) => st,
                        Err(e) => return self.fail(e),
                    };
                    if st.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// The writer: writes each band as it comes; on an error, records it
    /// and stops taking bands.
    fn write(&self, writer: &mut MapWriter, bands: Receiver<Band>) {
        let p = &self.profile;
        while let Ok(band) = p.write_wait_in.time(|| bands.recv()) {
            let (t0, ov0) = (Instant::now(), writer.overview_time());
            let done = writer.write(&band);
            let ov = writer.overview_time().saturating_sub(ov0);
            p.write_overviews.add(ov);
            p.write_encode.add(t0.elapsed().saturating_sub(ov));
            if let Err(e) = done {
                self.fail(e);
                return;
            }
        }
    }
}

/// The rectangle of the raster that the windows of grid `rows` and `cols`
/// (those touching a region) read, their source rectangles' union: what
/// the region's cells are clipped to.
fn source_bounds(grid: &WindowGrid, rows: Range<usize>, cols: Range<usize>) -> Rect {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for c in cols.clone() {
        let r = grid.source_rect(&grid.window(c, rows.start));
        (x0, x1) = (x0.min(r.x), x1.max(r.x + r.width));
    }
    for row in rows {
        let r = grid.source_rect(&grid.window(cols.start, row));
        (y0, y1) = (y0.min(r.y), y1.max(r.y + r.height));
    }
    Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    }
}

/// Spawns a named scoped thread (names show in `top -H` and `perf`).
fn spawn<'scope, 'env, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .expect("spawn a pipeline thread")
}

/// Joins a scoped thread, re-raising its panic.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
