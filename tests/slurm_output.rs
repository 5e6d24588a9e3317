//! The job scripts of `rstile slurm infer` and `rstile slurm train` obey
//! the output rule (src/output.rs): an existing script is replaced only
//! with `--overwrite`, never one of the run's inputs, never what is not a
//! regular file; a script is written to a temporary file and renamed (an
//! old script is replaced, not rewritten in place), and a script that was
//! not submitted is removed again. No Slurm cluster is needed: every case
//! ends before or at `sbatch` (tests/slurm.rs runs a real cluster).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Case {
    t: tempfile::TempDir,
    image: PathBuf,
    model: PathBuf,
    map: PathBuf,
    slurm_dir: PathBuf,
}

fn setup() -> Case {
    let t = tmp();
    let image = synth(t.path(), 200, 100, 1).join("image.tif");
    let model = model(t.path(), "tiny", 3, 64);
    let map = t.path().join("map.tif");
    let slurm_dir = t.path().join("map.slurm");
    Case {
        t,
        image,
        model,
        map,
        slurm_dir,
    }
}

/// `rstile ARGS` with a PATH that holds no sbatch: a run that gets as far
/// as submitting fails there, after writing its scripts.
fn without_sbatch(dir: &Path, cwd: &Path, args: &[&str]) -> Output {
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    Command::new(bin())
        .env("PATH", &empty)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

/// The one error line of a failed run.
fn one_error(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("rstile: error: "), "{err}");
    lines[0].to_string()
}

impl Case {
    fn infer_args<'a>(&'a self, scene: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "slurm",
            "infer",
            s(scene),
            "-o",
            s(&self.map),
            "--model",
            s(&self.model),
            "--parts",
            "1",
        ];
        v.extend_from_slice(extra);
        v
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(s(p)).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn an_existing_infer_script_needs_overwrite() {
    let c = setup();
    std::fs::create_dir(&c.slurm_dir).unwrap();
    let mine = c.slurm_dir.join("array.sbatch");
    std::fs::write(&mine, "#!/bin/sh\n# my own script\n").unwrap();
    // refused before anything is written or submitted (sbatch is on PATH
    // here if Slurm is installed; it is never reached)
    let out = common::rstile(&c.infer_args(&c.image, &[]));
    let err = one_error(&out);
    assert!(
        err.contains("map.slurm/array.sbatch: already exists; pass --overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "#!/bin/sh\n# my own script\n"
    );
    assert_eq!(
        names(&c.slurm_dir),
        ["array.sbatch"],
        "nothing else written"
    );
    assert!(!c.map.exists());
    // the merge script too
    std::fs::remove_file(&mine).unwrap();
    std::fs::write(c.slurm_dir.join("merge.sbatch"), "mine\n").unwrap();
    let err = one_error(&common::rstile(&c.infer_args(&c.image, &[])));
    assert!(
        err.contains("map.slurm/merge.sbatch: already exists; pass --overwrite"),
        "{err}"
    );
    assert_eq!(names(&c.slurm_dir), ["merge.sbatch"]);
    assert_eq!(
        std::fs::read_to_string(c.slurm_dir.join("merge.sbatch")).unwrap(),
        "mine\n"
    );
}

#[test]
fn a_script_is_never_an_input_nor_a_non_regular_file() {
    let c = setup();
    std::fs::create_dir(&c.slurm_dir).unwrap();
    // the scene itself lies where the array script would go (GDAL reads it
    // whatever its name): refused even with --overwrite
    let scene = c.slurm_dir.join("array.sbatch");
    std::fs::copy(&c.image, &scene).unwrap();
    let before = std::fs::read(&scene).unwrap();
    let model_before = std::fs::read(&c.model).unwrap();
    let err = one_error(&common::rstile(&c.infer_args(&scene, &["--overwrite"])));
    assert!(
        err.contains("array.sbatch: is an input of this run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&scene).unwrap(), before, "the scene changed");
    std::fs::remove_file(&scene).unwrap();
    // a hard link to the model where the merge script would go
    let link = c.slurm_dir.join("merge.sbatch");
    std::fs::hard_link(&c.model, &link).unwrap();
    let err = one_error(&common::rstile(&c.infer_args(&c.image, &["--overwrite"])));
    assert!(
        err.contains("merge.sbatch: is an input of this run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&c.model).unwrap(), model_before);
    std::fs::remove_file(&link).unwrap();
    // a FIFO and a folder are never replaced
    mkfifo(&c.slurm_dir.join("array.sbatch"));
    let err = one_error(&common::rstile(&c.infer_args(&c.image, &["--overwrite"])));
    assert!(
        err.contains("array.sbatch: exists and is not a regular file"),
        "{err}"
    );
    std::fs::remove_file(c.slurm_dir.join("array.sbatch")).unwrap();
    std::fs::create_dir(c.slurm_dir.join("merge.sbatch")).unwrap();
    let err = one_error(&common::rstile(&c.infer_args(&c.image, &["--overwrite"])));
    assert!(err.contains("merge.sbatch: is a directory"), "{err}");
    assert_eq!(names(&c.slurm_dir), ["merge.sbatch"], "nothing written");
    assert!(!c.map.exists());
}

#[test]
fn overwrite_replaces_a_script_by_rename_and_an_unsubmitted_one_goes() {
    let c = setup();
    std::fs::create_dir(&c.slurm_dir).unwrap();
    let old = c.slurm_dir.join("array.sbatch");
    std::fs::write(&old, "old\n").unwrap();
    // a second name for the old script: written in place, it would change
    let keep = c.t.path().join("old-array.sbatch");
    std::fs::hard_link(&old, &keep).unwrap();
    let out = without_sbatch(
        c.t.path(),
        c.t.path(),
        &c.infer_args(&c.image, &["--overwrite"]),
    );
    let err = one_error(&out);
    assert!(err.contains("sbatch not found"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&keep).unwrap(),
        "old\n",
        "the old script was rewritten in place, not replaced"
    );
    // nothing was submitted: no script, no temporary file stays
    assert!(names(&c.slurm_dir).is_empty(), "{:?}", names(&c.slurm_dir));
    // and the same command without --overwrite now passes the rule (it
    // fails only at sbatch again)
    let err = one_error(&without_sbatch(
        c.t.path(),
        c.t.path(),
        &c.infer_args(&c.image, &[]),
    ));
    assert!(err.contains("sbatch not found"), "{err}");
    assert!(names(&c.slurm_dir).is_empty());
}

#[test]
fn the_train_script_obeys_the_same_rule() {
    let c = setup();
    let work = c.t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let config = work.join("cfg.toml");
    std::fs::write(&config, "# a training config\n").unwrap();
    let dir = work.join("cfg.slurm");
    std::fs::create_dir(&dir).unwrap();
    let script = dir.join("train.sbatch");
    std::fs::write(&script, "mine\n").unwrap();
    let args = ["slurm", "train", "--config", "cfg.toml", "--gpus", "0"];
    let err = one_error(&without_sbatch(c.t.path(), &work, &args));
    assert!(
        err.contains("cfg.slurm/train.sbatch: already exists; pass --overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&script).unwrap(), "mine\n");
    // with --overwrite it is replaced (by rename), then removed because
    // sbatch is missing
    let keep = work.join("keep.sbatch");
    std::fs::hard_link(&script, &keep).unwrap();
    let mut with = args.to_vec();
    with.push("--overwrite");
    let err = one_error(&without_sbatch(c.t.path(), &work, &with));
    assert!(err.contains("sbatch not found"), "{err}");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "mine\n");
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    // the config where the script would go: WORK/train.slurm/train.sbatch
    let tdir = work.join("train.slurm");
    std::fs::create_dir(&tdir).unwrap();
    let cfg2 = tdir.join("train.sbatch");
    std::fs::write(&cfg2, "# the config\n").unwrap();
    let err = one_error(&without_sbatch(
        c.t.path(),
        &work,
        &[
            "slurm",
            "train",
            "--config",
            "train.slurm/train.sbatch",
            "--gpus",
            "0",
            "--overwrite",
        ],
    ));
    assert!(
        err.contains("train.sbatch: is an input of this run"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&cfg2).unwrap(), "# the config\n");
    // a FIFO in its place
    std::fs::remove_file(&cfg2).unwrap();
    mkfifo(&dir.join("train.sbatch"));
    let err = one_error(&without_sbatch(c.t.path(), &work, &with));
    assert!(err.contains("exists and is not a regular file"), "{err}");
}
