//! Where a run's time goes: per pipeline stage, the time it was busy (by
//! phase) and the time it waited for input or for room downstream.
//!
//! Every stage adds to its [`Clock`]s as it goes (one `Instant::now()` per
//! phase and window, tens of nanoseconds), so the figures cost nothing
//! worth measuring and are always there; `rstile infer --profile` prints
//! them and [`ProfileReport::limiting`] names the stage that bounds the
//! run: the one busy for the largest share of its threads' time.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A sum of durations, added to from any thread.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// Adds `d`.
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Adds the time since `t0` and returns now (the next phase's start).
    pub fn lap(&self, t0: Instant) -> Instant {
        let now = Instant::now();
        self.add(now - t0);
        now
    }

    /// Runs `f`, adding its duration.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let v = f();
        self.add(t0.elapsed());
        v
    }

    /// The sum, in seconds.
    pub fn secs(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// The clocks of one run's stages.
#[derive(Debug, Default)]
pub struct Profile {
    pub dispatch_busy: Clock,
    pub dispatch_wait_out: Clock,
    /// Readers (summed over their threads): decoding cells.
    pub read_decode: Clock,
    /// Readers: cutting windows from the cells, padding, normalising and
    /// masking them.
    pub read: Clock,
    pub read_wait_in: Clock,
    pub read_wait_out: Clock,
    pub model_wait_in: Clock,
    /// The batch tensor made from the windows (and moved to the device).
    pub model_upload: Clock,
    pub model_forward: Clock,
    /// The output brought back to the host as f32.
    pub model_download: Clock,
    /// Softmax over the classes (and the finiteness check of the output)
    /// where the model stage takes it (test-time augmentation; on the CPU
    /// otherwise the stitcher does, and the model stage only checks the
    /// logits, in `model_download`).
    pub model_softmax: Clock,
    /// Test-time augmentation: transforming windows and predictions back.
    pub model_tta: Clock,
    pub stitch_wait_in: Clock,
    /// Softmax of logits (on the CPU), blend weights and the weighted
    /// accumulation of the probabilities.
    pub stitch_blend: Clock,
    /// Argmax, confidence and probabilities of finished rows.
    pub stitch_argmax: Clock,
    pub stitch_wait_out: Clock,
    pub write_wait_in: Clock,
    /// Encoding and writing map tiles (GDAL: compression, I/O).
    pub write_encode: Clock,
    /// Picking the map's overview pixels from each band and handing GDAL
    /// the finished overview tiles (their compression is in
    /// `write_encode`, at the next flush).
    pub write_overviews: Clock,
    /// Overviews, the COG rewrite, the style and the renames.
    pub finish: Clock,
}

/// One stage of a [`ProfileReport`].
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub threads: usize,
    /// Busy time by phase, seconds (summed over the stage's threads).
    pub busy: Vec<(&'static str, f64)>,
    pub wait_in_s: f64,
    pub wait_out_s: f64,
    /// Busy time over the stage's threads' share of the run's time.
    pub utilisation: f64,
}

impl StageReport {
    /// Total busy seconds.
    pub fn busy_s(&self) -> f64 {
        self.busy.iter().map(|(_, s)| s).sum()
    }
}

/// What a run's [`Profile`] says, stage by stage.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// The pipeline's wall time (from the first window to the last row
    /// written), seconds.
    pub pipeline_s: f64,
    /// The finishing steps after it (overviews, COG), seconds.
    pub finish_s: f64,
    pub stages: Vec<StageReport>,
    /// The stage with the highest utilisation.
    pub limiting: &'static str,
}

impl Profile {
    /// The report of a run whose pipeline took `wall` with `readers`
    /// reader threads.
    pub fn report(&self, wall: f64, readers: usize) -> ProfileReport {
        let stage = |stage, threads: usize, busy: Vec<(&'static str, f64)>, wi: f64, wo: f64| {
            let total: f64 = busy.iter().map(|(_, s)| s).sum();
            StageReport {
                stage,
                threads,
                busy,
                wait_in_s: wi,
                wait_out_s: wo,
                utilisation: total / (wall * threads as f64).max(1e-9),
            }
        };
        let stages = vec![
            stage(
                "dispatch",
                1,
                vec![("windows", self.dispatch_busy.secs())],
                0.0,
                self.dispatch_wait_out.secs(),
            ),
            stage(
                "read",
                readers,
                vec![
                    ("decode", self.read_decode.secs()),
                    ("cut, normalise", self.read.secs()),
                ],
                self.read_wait_in.secs(),
                self.read_wait_out.secs(),
            ),
            stage(
                "model",
                1,
                vec![
                    ("upload", self.model_upload.secs()),
                    ("forward", self.model_forward.secs()),
                    ("download", self.model_download.secs()),
                    ("softmax", self.model_softmax.secs()),
                    ("tta", self.model_tta.secs()),
                ],
                self.model_wait_in.secs(),
                0.0,
            ),
            stage(
                "stitch",
                1,
                vec![
                    (
                        "softmax, weights and accumulation",
                        self.stitch_blend.secs(),
                    ),
                    ("argmax", self.stitch_argmax.secs()),
                ],
                self.stitch_wait_in.secs(),
                self.stitch_wait_out.secs(),
            ),
            stage(
                "write",
                1,
                vec![
                    ("encode", self.write_encode.secs()),
                    ("overviews", self.write_overviews.secs()),
                ],
                self.write_wait_in.secs(),
                0.0,
            ),
        ];
        let limiting = stages
            .iter()
            .max_by(|a, b| a.utilisation.total_cmp(&b.utilisation))
            .map_or("none", |s| s.stage);
        ProfileReport {
            pipeline_s: wall,
            finish_s: self.finish.secs(),
            stages,
            limiting,
        }
    }
}

impl ProfileReport {
    /// A table for the terminal, one line per stage.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<9} {:>3} {:>7} {:>8} {:>8} {:>6}  busy by phase\n",
            "stage", "thr", "busy s", "wait-in", "wait-out", "util"
        );
        for s in &self.stages {
            let phases: Vec<String> = s
                .busy
                .iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(n, v)| format!("{n} {v:.2}"))
                .collect();
            out.push_str(&format!(
                "{:<9} {:>3} {:>7.2} {:>8.2} {:>8.2} {:>5.0}%  {}\n",
                s.stage,
                s.threads,
                s.busy_s(),
                s.wait_in_s,
                s.wait_out_s,
                s.utilisation * 100.0,
                phases.join(", ")
            ));
        }
        out.push_str(&format!(
            "pipeline {:.2} s, then finishing (overviews, COG, style) {:.2} s; limited by {}",
            self.pipeline_s, self.finish_s, self.limiting
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_stage_per_thread_limits() {
        let p = Profile::default();
        p.read.add(Duration::from_secs(3)); // 2 readers: 75 % of 2 s each
        p.model_forward.add(Duration::from_millis(1800)); // 90 %
        p.write_encode.add(Duration::from_secs(1));
        let r = p.report(2.0, 2);
        assert_eq!(r.limiting, "model");
        let read = r.stages.iter().find(|s| s.stage == "read").unwrap();
        assert!((read.utilisation - 0.75).abs() < 1e-9);
        assert!(r.table().contains("limited by model"));
    }
}
