//! `rstile slurm` on a real one-host Slurm cluster (Debian's slurm-wlm and
//! munge, started by scripts/slurm-up.sh and always stopped again by
//! scripts/slurm-down.sh): a 4-part array plus the merge must give the map of
//! a single-machine run, pixel for pixel. Without slurm-wlm the cluster test
//! prints a SKIP line, unless CI is set, where it fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A running one-host cluster; dropping it stops every daemon it started.
struct Cluster {
    state: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster, or returns None with a SKIP line when slurm-wlm is
    /// not installed (and CI is not set).
    fn start() -> Option<Cluster> {
        let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo"]
            .into_iter()
            .filter(|t| !on_path(t))
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "slurm-wlm/munge not installed ({} not found)",
                missing.join(", ")
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}, and CI is set: .ci/run must install slurm-wlm and munge");
            }
            println!("SKIP slurm cluster test: {msg}; apt-get install slurm-wlm munge");
            return None;
        }
        // a short path: the daemons' Unix socket paths must fit in 108 bytes
        let state = tempfile::Builder::new()
            .prefix("rstile-slurm-")
            .tempdir_in("/tmp")
            .unwrap();
        let cluster = Cluster {
            conf: state.path().join("slurm.conf"),
            state,
        };
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/slurm-up.sh"))
            .arg(cluster.state.path())
            .output()
            .expect("run slurm-up.sh");
        // the guard exists already: a failed start is cleaned up too
        assert!(
            out.status.success(),
            "slurm-up.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "slurm cluster up in {:.2} s: {}",
            t.elapsed().as_secs_f64(),
            cluster.conf.display()
        );
        Some(cluster)
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `squeue -h` of this cluster is empty (and squeue worked).
    fn queue_empty(&self) -> bool {
        let out = self.cmd("squeue").arg("-h").output().expect("squeue");
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// Waits until `done()` holds and the queue is empty, or the queue is
    /// empty without `done()` (the jobs failed: panics with their logs);
    /// panics with the logs after `limit`.
    fn wait(&self, limit: Duration, logs: &Path, done: impl Fn() -> bool) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.queue_empty() {
                // the merge renames the map into place before its job ends
                if done() {
                    return t.elapsed();
                }
                panic!(
                    "the jobs ended without their result\n{}",
                    dump_logs(&[logs])
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let q = self
            .cmd("squeue")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
        panic!(
            "jobs not done after {limit:?}; squeue: {q:?}\n{}",
            dump_logs(&[logs, &self.state.path().join("log")])
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/slurm-down.sh"))
            .arg(self.state.path())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "slurm-down.sh failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("slurm-down.sh: {e}"),
        }
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(tool).is_file())
}

fn dump_logs(dirs: &[&Path]) -> String {
    let mut s = String::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s += &format!("---- {}\n", e.path().display());
            for l in tail.into_iter().rev() {
                s += l;
                s.push('\n');
            }
        }
    }
    s
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The job ids that `rstile slurm infer` printed.
fn job_ids(stdout: &str) -> (u64, u64) {
    let id = |what: &str| {
        stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("rstile: {what} job "))?
                    .split(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {what} job id in {stdout:?}"))
    };
    (id("array"), id("merge"))
}

/// A 1500 x 2100 scene and the tiny model of the README.
fn scene_and_model(dir: &Path) -> (PathBuf, PathBuf) {
    let scene = dir.join("scene");
    // 2100 rows: 5 rows of 512 px tiles, enough for 4 parts (parts are whole
    // tile rows, so 1300 rows would allow only 3)
    ok(&["synth", "--size", "1500x2100", "-o", s(&scene), "--quiet"]);
    let model = dir.join("m.safetensors");
    let classes = format!("{ROOT}/configs/classes/isprs.toml");
    ok(&[
        "model",
        "new",
        "--arch",
        "tiny",
        "--bands",
        "3",
        "--classes",
        &classes,
        "-o",
        s(&model),
    ]);
    (scene.join("image.tif"), model)
}

#[test]
fn slurm_array_of_four_parts_plus_merge_equals_a_single_run() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = tmp();
    let (image, model) = scene_and_model(t.path());

    // the single-machine reference
    let single = t.path().join("single.tif");
    let t0 = Instant::now();
    ok(&[
        "infer",
        s(&image),
        "-o",
        s(&single),
        "--model",
        s(&model),
        "--quiet",
    ]);
    let single_s = t0.elapsed().as_secs_f64();

    // 4 parts in an array job, the merge after it
    let map = t.path().join("out").join("map.tif");
    let t0 = Instant::now();
    let out = cluster
        .cmd(bin())
        .args([
            "slurm",
            "infer",
            s(&image),
            "-o",
            s(&map),
            "--model",
            s(&model),
            "--parts",
            "4",
            "--time",
            "10",
        ])
        .output()
        .expect("run rstile slurm infer");
    assert!(
        out.status.success(),
        "rstile slurm infer failed:\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (array, merge) = job_ids(&stdout);
    assert!(merge > array, "{stdout}");
    let slurm_dir = t.path().join("out/map.slurm");
    assert!(slurm_dir.join("array.sbatch").is_file() && slurm_dir.join("merge.sbatch").is_file());
    let waited = cluster.wait(Duration::from_secs(180), &slurm_dir, || map.exists());
    println!(
        "slurm: 4-part array {array} + merge {merge} done {:.2} s after submission ({:.2} s with the submission); \
         single run {single_s:.2} s",
        waited.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    for i in 0..4 {
        let part = t
            .path()
            .join(format!("out/map.parts/map.part-{i}-of-4.tif"));
        assert!(
            part.is_file(),
            "{} missing\n{}",
            part.display(),
            dump_logs(&[&slurm_dir])
        );
    }
    for (log, n) in [("infer-", 4), ("merge-", 1)] {
        let logs = std::fs::read_dir(&slurm_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(log)
            })
            .count();
        assert_eq!(logs, n, "{log}*.log in {}", slurm_dir.display());
    }
    check_map_files(&map, &image);
    let (a, b) = (read_map(&single), read_map(&map));
    assert_eq!((a.width, a.height), (b.width, b.height));
    let differ = a.data.iter().zip(&b.data).filter(|(x, y)| x != y).count();
    assert_eq!(
        differ, 0,
        "the merged map differs from the single run in {differ} pixels"
    );

    // a failing array: the merge is cancelled (--kill-on-invalid-dep=yes),
    // nothing stays pending, no map appears
    let bad = t.path().join("bad").join("map.tif");
    let out = cluster
        .cmd(bin())
        .args([
            "slurm",
            "infer",
            s(&image),
            "-o",
            s(&bad),
            "--model",
            s(&model),
            "--parts",
            "2",
        ])
        .args(["--bands", "1,2,9"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (_, merge) = job_ids(&String::from_utf8_lossy(&out.stdout));
    cluster.wait(
        Duration::from_secs(60),
        &t.path().join("bad/map.slurm"),
        || true,
    );
    assert!(!bad.exists(), "a map from a failed array");
    let show = cluster
        .cmd("scontrol")
        .args(["show", "job", &merge.to_string()])
        .output()
        .unwrap();
    let show = text(&show);
    // the job record may already be purged; if not, it must say cancelled
    assert!(
        show.contains("JobState=CANCELLED") || show.contains("Invalid job id"),
        "{show}"
    );
}

#[test]
fn slurm_without_sbatch_is_a_one_line_error() {
    let t = tmp();
    let image = synth(t.path(), 200, 100, 1).join("image.tif");
    let model = model(t.path(), "tiny", 3, 64);
    let empty = t.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let map = t.path().join("map.tif");
    let out = Command::new(bin())
        .env("PATH", &empty)
        .args([
            "slurm",
            "infer",
            s(&image),
            "-o",
            s(&map),
            "--model",
            s(&model),
            "--parts",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("rstile: error: sbatch not found"),
        "{err}"
    );
    assert!(!map.exists());
}

#[test]
fn slurm_dry_run_prints_both_scripts_and_writes_nothing() {
    let t = tmp();
    let image = t.path().join("image.tif");
    std::fs::rename(synth(t.path(), 100, 1100, 1).join("image.tif"), &image).unwrap();
    let model = t.path().join("m.safetensors");
    std::fs::rename(common::model(t.path(), "tiny", 3, 64), &model).unwrap();
    let map = t.path().join("map.tif");
    // 1100 rows are 3 rows of 512 px tiles: at most 3 parts
    let out = rstile(&[
        "slurm",
        "infer",
        s(&image),
        "-o",
        s(&map),
        "--model",
        s(&model),
        "--parts",
        "4",
        "--dry-run",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--parts 4") && err.contains("at most 3 parts"),
        "{err}"
    );
    let out = ok(&[
        "slurm",
        "infer",
        s(&image),
        "-o",
        s(&map),
        "--model",
        s(&model),
        "--parts",
        "3",
        "--partition",
        "dc-gpu",
        "--time",
        "01:30:00",
        "--account",
        "training2436",
        "--gpus-per-task",
        "1",
        "--dry-run",
        "--blend",
        "crop",
    ]);
    let dir = t.path().canonicalize().unwrap();
    let d = s(&dir);
    for want in [
        format!("# ---- {d}/map.slurm/array.sbatch ----"),
        "#SBATCH --array=0-2".into(),
        "#SBATCH --partition=dc-gpu".into(),
        "#SBATCH --time=01:30:00".into(),
        "#SBATCH --account=training2436".into(),
        "#SBATCH --gpus-per-task=1".into(),
        format!("#SBATCH --output={d}/map.slurm/infer-%A_%a.log"),
        format!(
            "exec {} infer {d}/image.tif -o {d}/map.parts/map.tif --model {d}/m.safetensors --part auto --blend=crop --device cuda:0",
            Path::new(bin()).canonicalize().unwrap().display()
        ),
        format!("# ---- {d}/map.slurm/merge.sbatch"),
        format!("exec {} merge {d}/map.parts -o {d}/map.tif", Path::new(bin()).canonicalize().unwrap().display()),
    ] {
        assert!(out.lines().any(|l| l.starts_with(&want)), "missing {want:?} in:\n{out}");
    }
    assert_eq!(
        out.matches("#SBATCH --gpus-per-task").count(),
        1,
        "no GPU for the merge"
    );
    assert!(
        !t.path().join("map.slurm").exists() && !t.path().join("map.parts").exists(),
        "dry run wrote files"
    );
}

/// An ONNX model exported from PyTorch over the same array and merge, its
/// legend and normalisation given as flags that every part receives: the
/// map equals a single run's.
#[test]
fn slurm_array_with_an_onnx_model_equals_a_single_run() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = tmp();
    let scene = t.path().join("scene");
    ok(&["synth", "--size", "300x1100", "-o", s(&scene), "--quiet"]);
    let image = scene.join("image.tif");
    let model = format!("{ROOT}/tests/fixtures/onnx/smp_deeplabv3plus_resnet18_3b_ts19.onnx");
    let classes = format!("{ROOT}/configs/classes/isprs.toml");
    let flags = [
        "--model",
        model.as_str(),
        "--classes",
        classes.as_str(),
        "--mean",
        "120,-5,120",
        "--std",
        "60,60,60",
    ];
    let single = t.path().join("single.tif");
    let mut args = vec!["infer", s(&image), "-o", s(&single), "--quiet"];
    args.extend_from_slice(&flags);
    ok(&args);
    let map = t.path().join("out").join("map.tif");
    let out = cluster
        .cmd(bin())
        .args(["slurm", "infer", s(&image), "-o", s(&map), "--parts", "2"])
        .args(flags)
        .output()
        .expect("run rstile slurm infer");
    assert!(
        out.status.success(),
        "rstile slurm infer failed:\n{}",
        text(&out)
    );
    let slurm_dir = t.path().join("out/map.slurm");
    cluster.wait(Duration::from_secs(180), &slurm_dir, || map.exists());
    check_map_files(&map, &image);
    assert!(
        read_map(&map).data == read_map(&single).data,
        "the merged ONNX map differs from the single run"
    );
}
