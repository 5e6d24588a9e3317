//! A new `rstile train` run obeys the output rule (src/output.rs) in its
//! out_dir: it never writes over a file that exists there (another run's
//! `best.safetensors`, the user's `config.toml`), never over one of its
//! inputs (a config named `config.toml` inside its own out_dir), never over
//! what is not a regular file; all is checked before anything is written.
//! (A directory holding a finished run's `state.json` was refused already:
//! `--resume`.)

mod common;
use common::*;
use std::path::{Path, PathBuf};

struct Case {
    t: tempfile::TempDir,
    image: PathBuf,
    label: PathBuf,
}

fn setup() -> Case {
    let t = tmp();
    let d = synth(t.path(), 96, 96, 3);
    Case {
        image: d.join("image.tif"),
        label: d.join("gt.tif"),
        t,
    }
}

impl Case {
    /// A one-epoch tiny config with `out_dir`.
    fn config(&self, path: &Path, out_dir: &Path) {
        let classes = common::ISPRS_CLASSES;
        let scene = |split: &str| {
            format!(
                "[[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"{split}\"\n",
                self.image.display(),
                self.label.display()
            )
        };
        std::fs::write(
            path,
            format!(
                "[model]\narch = \"tiny\"\nclasses = \"{classes}\"\nbands = [1, 2, 3]\nwindow = 64\n\n\
                 [data]\nsamples_per_epoch = 4\nval_window = 64\n{}{}\n\
                 [train]\nepochs = 1\nbatch = 2\ncrop = 32\nlr = 0.01\nout_dir = \"{}\"\n",
                scene("train"),
                scene("val"),
                out_dir.display()
            ),
        )
        .unwrap();
    }
}

#[test]
fn a_new_run_never_writes_over_a_file_in_its_out_dir() {
    let c = setup();
    let run = c.t.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // another run's best model (no state.json: it never finished an epoch,
    // or was copied here)
    let best = run.join("best.safetensors");
    std::fs::write(&best, b"someone's model").unwrap();
    let cfg = c.t.path().join("a.toml");
    c.config(&cfg, &run);
    let err = fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "run/best.safetensors: already exists",
    );
    assert!(err.contains("choose another out_dir"), "{err}");
    assert_eq!(std::fs::read(&best).unwrap(), b"someone's model");
    assert_eq!(names(&run), ["best.safetensors"], "nothing written");
    // an empty out_dir that exists is fine
    std::fs::remove_file(&best).unwrap();
    ok(&["train", "--config", s(&cfg), "--quiet"]);
    assert!(run.join("best.safetensors").is_file() && run.join("state.json").is_file());
}

#[test]
fn a_new_run_never_writes_over_its_inputs_or_non_regular_files() {
    let c = setup();
    let run = c.t.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // the config itself is RUN/config.toml, the name the run gives its copy
    let cfg = run.join("config.toml");
    c.config(&cfg, &run);
    let before = std::fs::read(&cfg).unwrap();
    let err = fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "run/config.toml: is an input of this run",
    );
    assert!(!err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&cfg).unwrap(), before, "the config changed");
    assert_eq!(names(&run), ["config.toml"]);
    // a hard link to the label raster under a run file's name
    let cfg = c.t.path().join("b.toml");
    c.config(&cfg, &run);
    std::fs::remove_file(run.join("config.toml")).unwrap();
    let label_before = std::fs::read(&c.label).unwrap();
    std::fs::hard_link(&c.label, run.join("last.safetensors")).unwrap();
    fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "run/last.safetensors: is an input of this run",
    );
    assert_eq!(std::fs::read(&c.label).unwrap(), label_before);
    std::fs::remove_file(run.join("last.safetensors")).unwrap();
    // a folder and a FIFO where files go
    std::fs::create_dir(run.join("metrics.csv")).unwrap();
    fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "run/metrics.csv: is a directory",
    );
    std::fs::remove_dir(run.join("metrics.csv")).unwrap();
    let fifo = run.join("loss.png");
    let cs = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node
    assert_eq!(unsafe { libc::mkfifo(cs.as_ptr(), 0o600) }, 0);
    fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "run/loss.png: exists and is not a regular file",
    );
    assert_eq!(names(&run), ["loss.png"], "nothing written");
    // out_dir naming a file
    let file = c.t.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    c.config(&cfg, &file);
    fails(
        &["train", "--config", s(&cfg), "--quiet"],
        "afile: the out_dir exists and is not a folder",
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}
