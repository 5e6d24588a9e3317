//! What a run will do, decided before any thread starts.
//!
//! [`InferOptions`] is what the user asked for (`None` meaning "the model's
//! default" or "the library's default"); [`InferPlan::resolve`] checks it
//! against the scene and the model and resolves every default, so the
//! validated [`InferPlan`] is the only thing the pipeline sees. Everything
//! else here is derived from a plan: the [`MemoryBound`], the column
//! [`chunks`] and [`regions`] a run stitches, the [`settings`] recorded for
//! `--resume` and for merging parts, and the jobs of a many-scene run
//! ([`out_dir_jobs`]).
//!
//! The scene is processed in column chunks of `chunk` px (a multiple of the
//! 512 px output tile) so that the stitcher's strip does not grow with the
//! scene width; windows that straddle a chunk border are computed for both
//! chunks. In-flight data is bounded by the channel capacities
//! ([`InferPlan::queue_len`]). Nothing grows with the scene size, and
//! [`MemoryBound`] adds it all up.

use crate::error::{Error, Result};
use crate::infer::read::{Normalize, SceneInfo};
use crate::infer::stitch::{Blend, ChunkStitcher, Region};
use crate::infer::window::WindowGrid;
use crate::infer::write::TILE;
use crate::model::ModelMeta;
use crate::scale::aoi::Aoi;
use crate::scale::parts::Part;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default column chunk: 4096 px.
pub const DEFAULT_CHUNK: usize = 4096;

/// The default number of reader threads for `threads` compute threads:
/// two, or one on a single thread. The one rule for every caller.
pub fn default_readers(threads: usize) -> usize {
    threads.clamp(1, 2)
}

/// What the user asked for; `None` means "the model's default" (window,
/// overlap, bands) or "the library's default" (readers, chunk).
#[derive(Debug, Clone)]
pub struct InferOptions {
    pub window: Option<usize>,
    pub overlap: Option<f64>,
    pub batch: usize,
    /// Reader threads; `None`: [`default_readers`] of the compute threads
    /// (`rayon::current_num_threads()`).
    pub readers: Option<usize>,
    pub blend: Blend,
    pub bands: Option<Vec<usize>>,
    pub chunk: Option<usize>,
    pub confidence: bool,
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    /// GDAL block cache, MiB; see [`InferPlan::gdal_cache_mb`].
    pub gdal_cache_mb: usize,
    /// `Some(part)`: compute only that part of a split run.
    pub part: Option<Part>,
    pub resume: bool,
    /// A polygon file limiting the map.
    pub aoi: Option<PathBuf>,
}

impl Default for InferOptions {
    /// The command line's defaults: the model's window and overlap, batch 4,
    /// [`default_readers`], Hann blending, the first bands, a 256 MiB GDAL
    /// cache.
    fn default() -> Self {
        InferOptions {
            window: None,
            overlap: None,
            batch: 4,
            readers: None,
            blend: Blend::Hann,
            bands: None,
            chunk: None,
            confidence: false,
            creation_options: Vec::new(),
            overwrite: false,
            gdal_cache_mb: 256,
            part: None,
            resume: false,
            aoi: None,
        }
    }
}

/// A validated inference plan: the only thing the pipeline sees.
#[derive(Debug, Clone)]
pub struct InferPlan {
    pub scene: SceneInfo,
    pub output: PathBuf,
    pub window: usize,
    pub overlap: f64,
    pub batch: usize,
    /// Reader threads, each with its own GDAL handle.
    pub readers: usize,
    pub blend: Blend,
    /// 1-based band indices.
    pub bands: Vec<usize>,
    pub normalize: Normalize,
    /// Column chunk width in px, a multiple of 512.
    pub chunk: usize,
    pub confidence: bool,
    pub creation_options: Vec<(String, String)>,
    pub overwrite: bool,
    /// GDAL block cache, MiB. The library does not apply it (it changes no
    /// process-wide state): the binary sets `GDAL_CACHEMAX` from it before
    /// running the plan. [`MemoryBound`] counts it.
    pub gdal_cache_mb: usize,
    /// Output rows `[y0, y1)`: the whole scene, or one part of a split run.
    pub rows: (usize, usize),
    /// The part of a split run, if this is one.
    pub part: Option<Part>,
    /// Continue an unfinished run of the same settings.
    pub resume: bool,
    /// Digest of the model file, so a resume cannot mix models.
    pub model_digest: String,
    /// Only windows touching this area are computed; pixels outside are nodata.
    pub aoi: Option<Arc<Aoi>>,
    /// Digest of the AOI file.
    pub aoi_digest: Option<String>,
    /// The files this run reads (scene, model, AOI): no output may be one.
    pub inputs: crate::output::Inputs,
}

impl InferPlan {
    /// Checks the scene against the model and resolves defaults.
    pub fn resolve(
        scene: SceneInfo,
        output: PathBuf,
        model_path: &Path,
        meta: &ModelMeta,
        o: &InferOptions,
    ) -> Result<InferPlan> {
        let path = scene.path.clone();
        let bands = match &o.bands {
            Some(b) => b.clone(),
            None => {
                if scene.band_count < meta.bands {
                    return Err(Error::file(
                        &path,
                        format!(
                            "has {} band(s) but the model needs {}; choose bands with --bands",
                            scene.band_count, meta.bands
                        ),
                    ));
                }
                (1..=meta.bands).collect()
            }
        };
        if bands.len() != meta.bands {
            return Err(Error::Config(format!(
                "--bands selects {} band(s) but the model takes {}",
                bands.len(),
                meta.bands
            )));
        }
        for &b in &bands {
            if b == 0 || b > scene.band_count {
                return Err(Error::file(
                    &path,
                    format!("has no band {b} (it has {} band(s))", scene.band_count),
                ));
            }
            let t = scene.band_types[b - 1];
            if !crate::raster::supported_type(t) {
                return Err(Error::file(
                    &path,
                    format!("band {b} has type {t:?}, which rstile cannot read"),
                ));
            }
        }
        let window = o.window.unwrap_or(meta.window);
        let overlap = o.overlap.unwrap_or(meta.overlap);
        WindowGrid::new(scene.size, window, overlap)
            .map_err(|e| Error::Config(format!("window settings: {e}")))?;
        let readers = o
            .readers
            .unwrap_or_else(|| default_readers(rayon::current_num_threads()));
        if o.batch == 0 || readers == 0 {
            return Err(Error::Config(
                "--batch and --readers must be at least 1".into(),
            ));
        }
        let chunk = o.chunk.unwrap_or(DEFAULT_CHUNK);
        if chunk == 0 || chunk % TILE != 0 {
            return Err(Error::Config(format!(
                "--chunk must be a positive multiple of {TILE}"
            )));
        }
        let rows = match o.part {
            Some(p) => p.rows(scene.size.height)?,
            None => (0, scene.size.height),
        };
        let output = match o.part {
            Some(p) => p.path(&output),
            None => output,
        };
        let aoi = o
            .aoi
            .as_deref()
            .map(|p| Aoi::load(p, &scene).map(Arc::new))
            .transpose()?;
        let aoi_digest = o.aoi.as_deref().map(file_digest).transpose()?;
        let inputs = crate::output::Inputs::of(
            [scene.path.as_path(), model_path]
                .into_iter()
                .chain(o.aoi.as_deref()),
        );
        Ok(InferPlan {
            inputs,
            aoi,
            aoi_digest,
            rows,
            part: o.part,
            resume: o.resume,
            model_digest: file_digest(model_path)?,
            scene,
            output,
            window,
            overlap,
            batch: o.batch,
            readers,
            blend: o.blend,
            bands,
            normalize: Normalize {
                mean: meta.mean.clone(),
                std: meta.std.clone(),
            },
            chunk,
            confidence: o.confidence,
            creation_options: o.creation_options.clone(),
            overwrite: o.overwrite,
            gdal_cache_mb: o.gdal_cache_mb,
        })
    }

    /// Windows allowed between the dispatcher and the stitcher: `2B + 2R`.
    pub fn queue_len(&self) -> usize {
        2 * self.batch + 2 * self.readers
    }
}

/// The peak-memory bound of a configuration, in bytes, by part.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBound {
    pub model: u64,
    pub in_flight: u64,
    pub stitcher: u64,
    pub writer: u64,
    pub gdal_cache: u64,
    pub base: u64,
}

impl MemoryBound {
    /// Sum of the parts.
    pub fn total(&self) -> u64 {
        self.model + self.in_flight + self.stitcher + self.writer + self.gdal_cache + self.base
    }

    /// The bound for a plan and a model. See the README for the formula.
    pub fn of(plan: &InferPlan, meta: &ModelMeta, params: usize) -> MemoryBound {
        let px = (plan.window * plan.window) as u64;
        let bands = plan.bands.len() as u64;
        let k = meta.classes.len() as u64;
        let q = plan.queue_len() as u64;
        // each in-flight window holds its input (or its prediction) and mask
        let per_window = px * (4 * bands.max(k) + 1);
        let in_flight = (q + plan.readers as u64) * per_window;
        let model =
            params as u64 * 4 + plan.batch as u64 * px * meta.arch.activation_bytes_per_px();
        let width = plan.chunk.min(plan.scene.size.width.next_multiple_of(TILE));
        let stitcher = ChunkStitcher::bytes_for(plan.window, TILE, width, k as usize) as u64;
        let writer = 4 * (width * TILE) as u64 * (1 + plan.confidence as u64);
        MemoryBound {
            model,
            in_flight,
            stitcher,
            writer,
            gdal_cache: plan.gdal_cache_mb as u64 * (1 << 20),
            // the process with a tiny configuration (linear, batch 1, 16 MiB
            // cache) peaks at 139 MiB: binary, GDAL and driver state, allocator
            base: 128 << 20,
        }
    }
}

/// The column chunks `[x0, x1)` of a scene.
pub fn chunks(width: usize, chunk: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut x0 = 0;
    while x0 < width {
        let x1 = (x0 + chunk).min(width);
        v.push((x0, x1));
        x0 = x1;
    }
    v
}

/// The regions a run stitches: one per column chunk, from the first row
/// not yet written to the end of the run's rows. Finished chunks are left out.
pub fn regions(
    grid: &WindowGrid,
    chunk: usize,
    rows: (usize, usize),
    done: &dyn Fn(usize) -> usize,
) -> Vec<Region> {
    chunks(grid.raster().width, chunk)
        .into_iter()
        .map(|(x0, x1)| Region {
            x0,
            x1,
            y0: done(x0).max(rows.0),
            y1: rows.1,
        })
        .filter(|r| r.y0 < r.y1)
        .collect()
}

/// Number of windows the run computes or skips (chunk borders count twice).
pub fn window_count(grid: &WindowGrid, regions: &[Region]) -> u64 {
    regions
        .iter()
        .map(|r| {
            (grid.cols_touching(r.x0, r.x1).len() * grid.rows_touching(r.y0, r.y1).len()) as u64
        })
        .sum()
}

/// The settings that determine a map's pixels, recorded for `--resume`
/// and for merging parts.
pub fn settings(plan: &InferPlan, meta: &ModelMeta) -> BTreeMap<String, String> {
    let canon = std::fs::canonicalize(&plan.scene.path).unwrap_or_else(|_| plan.scene.path.clone());
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("scene", canon.display().to_string());
    put(
        "scene_size",
        format!("{}x{}", plan.scene.size.width, plan.scene.size.height),
    );
    put("model", plan.model_digest.clone());
    put("arch", meta.arch.to_string());
    put("window", plan.window.to_string());
    put("overlap", plan.overlap.to_string());
    put("bands", format!("{:?}", plan.bands));
    put("blend", plan.blend.to_string());
    put("chunk", plan.chunk.to_string());
    put("confidence", plan.confidence.to_string());
    put("rows", format!("{}..{}", plan.rows.0, plan.rows.1));
    put(
        "aoi",
        plan.aoi_digest.clone().unwrap_or_else(|| "none".into()),
    );
    m
}

/// FNV-1a digest of a file, to recognise the same model file.
pub fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut h = crate::hash::Fnv1a::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::file(path, e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok(format!("{len}:{:016x}", h.finish()))
}

/// The jobs of a many-scene run: each scene maps to `DIR/STEM.tif`.
/// Returns `(scene, map)` pairs in the order given. `dir` must be an
/// existing folder, and no two scenes may share a file stem (they would
/// write the same map). Names are handled as `OsStr`, so a stem that is not
/// UTF-8 keeps its bytes.
pub fn out_dir_jobs(scenes: &[PathBuf], dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "--out-dir is not an existing folder"));
    }
    let mut seen: HashMap<OsString, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(scenes.len());
    for scene in scenes {
        let stem = scene
            .file_stem()
            .ok_or_else(|| Error::file(scene, "has no file name to name its map after"))?;
        if let Some(prev) = seen.insert(stem.to_os_string(), scene) {
            return Err(Error::Config(format!(
                "{} and {} would both map to {}.tif",
                prev.display(),
                scene.display(),
                stem.to_string_lossy()
            )));
        }
        let mut name = stem.to_os_string();
        name.push(".tif");
        jobs.push((scene.clone(), dir.join(name)));
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_readers_is_two_or_one() {
        assert_eq!(default_readers(0), 1);
        assert_eq!(default_readers(1), 1);
        assert_eq!(default_readers(2), 2);
        assert_eq!(default_readers(64), 2);
    }

    #[test]
    fn chunks_cover_the_width() {
        assert_eq!(chunks(0, 512), vec![]);
        assert_eq!(chunks(1000, 512), vec![(0, 512), (512, 1000)]);
        assert_eq!(chunks(1024, 512), vec![(0, 512), (512, 1024)]);
    }

    #[test]
    fn out_dir_jobs_map_stems_and_refuse_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let scenes = vec![PathBuf::from("a/x.tif"), PathBuf::from("b/y.vrt")];
        let jobs = out_dir_jobs(&scenes, dir.path()).unwrap();
        assert_eq!(jobs[0], (scenes[0].clone(), dir.path().join("x.tif")));
        assert_eq!(jobs[1], (scenes[1].clone(), dir.path().join("y.tif")));

        let dup = vec![PathBuf::from("a/x.tif"), PathBuf::from("b/x.vrt")];
        let e = out_dir_jobs(&dup, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a/x.tif and b/x.vrt would both map to x.tif"),
            "{e}"
        );

        let e = out_dir_jobs(&scenes, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out-dir is not an existing folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn out_dir_jobs_keep_non_utf8_stems() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let scene = PathBuf::from(std::ffi::OsStr::from_bytes(b"s\xffcene.tif"));
        let jobs = out_dir_jobs(std::slice::from_ref(&scene), dir.path()).unwrap();
        assert_eq!(
            jobs[0].1.file_name().unwrap().as_bytes(),
            b"s\xffcene.tif".as_slice()
        );
    }
}
