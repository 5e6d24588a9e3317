//! Never a silently wrong map (issue 13, items 7, 13, 14, 17, 18, 19): limits
//! instead of aborts, non-finite models, class tables and configs that are
//! refused with one line naming the file and the key. Each test runs the
//! real binary and checks the exit code, the error line and what is left on
//! disk.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh, empty output folder under `t`.
fn out_dir(t: &Path, name: &str) -> PathBuf {
    let d = t.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies a model file, rewriting each tensor's values with `f(name, values)`.
fn patch_model(src: &Path, dst: &Path, f: impl Fn(&str, &mut [f32])) {
    let mut bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let base = 8 + n;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F32", "{name}");
        let off = info["data_offsets"].as_array().unwrap();
        let a = base + off[0].as_u64().unwrap() as usize;
        let b = base + off[1].as_u64().unwrap() as usize;
        let mut vals: Vec<f32> = bytes[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        f(name, &mut vals);
        for (i, v) in vals.iter().enumerate() {
            bytes[a + 4 * i..a + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(dst, bytes).unwrap();
}

fn exit_code(args: &[&str]) -> Option<i32> {
    rstile(args).status.code()
}

// ---------------------------------------------------------------- item 13

/// `--window 100000` and a model whose window is 10^9 px are refused with
/// exit 1 and one line stating the bound, the limit and the part that
/// dominates, before anything is written (they aborted with exit 134).
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_writing() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 200, 1).join("image.tif");
    let out = out_dir(t.path(), "out");
    let map = out.join("map.tif");

    let args = infer_argv(&scene, &map, &m, &["--window", "100000"]);
    let err = fails(&args, "--window 100000 needs");
    assert!(
        err.contains("more than the") && err.contains("of memory available"),
        "{err}"
    );
    assert!(err.contains("TiB for the model"), "{err}");
    assert!(err.contains("raise --max-memory"), "{err}");
    assert_eq!(exit_code(&args), Some(1));
    assert_eq!(names(&out), Vec::<String>::new(), "nothing is written");

    // an explicit limit, and the part that dominates it named
    let err = fails(
        &infer_argv(
            &scene,
            &map,
            &m,
            &["--max-memory", "100", "--gdal-cache", "4096"],
        ),
        "more than --max-memory 100 MiB",
    );
    assert!(
        err.contains("--gdal-cache 4096 MiB is the largest part"),
        "{err}"
    );
    assert!(err.contains("lower --gdal-cache"), "{err}");
    assert_eq!(names(&out), Vec::<String>::new());

    // the model's own window
    let huge = t.path().join("huge.safetensors");
    ok(&[
        "model",
        "new",
        "--arch",
        "tiny",
        "--bands",
        "3",
        "--classes",
        common::ISPRS_CLASSES,
        "-o",
        s(&huge),
        "--window",
        "1000000000",
    ]);
    let args = infer_argv(&scene, &map, &huge, &[]);
    fails(&args, "the model's window 1000000000 px");
    assert_eq!(exit_code(&args), Some(1));
    // with no limit the bound still cannot overflow silently
    let args = infer_argv(&scene, &map, &huge, &["--max-memory", "0"]);
    fails(&args, "does not fit in 64 bits");
    assert_eq!(names(&out), Vec::<String>::new());

    // a run that fits goes through with the limit in place
    ok(&infer_argv(
        &scene,
        &map,
        &m,
        &["--quiet", "--max-memory", "4096"],
    ));
    check_map_files(&map, &scene);
}

// ---------------------------------------------------------------- item 7

/// A model that cannot map (it mapped everything to class 0 at 17 %
/// confidence, exit 0): NaN weights and negative batch-norm variances are
/// refused before the run, naming the model file and the tensor; weights so
/// large that the forward pass overflows fail the run at the first window,
/// naming its pixel rectangle. Nothing that looks finished is left.
#[test]
fn a_model_that_is_not_finite_fails_naming_the_tensor_or_the_window() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 64);
    let scene = synth(t.path(), 300, 200, 2).join("image.tif");
    type Patch = fn(&str, &mut [f32]);
    let cases: [(&str, Patch, &str); 3] = [
        // finite weights, so the check of the weights passes them: the
        // overflow shows only in the output
        (
            "huge",
            |n, v| {
                if n == "cls.weight" {
                    v.fill(3.0e38)
                }
            },
            "not finite in the window x ",
        ),
        (
            "nan",
            |n, v| {
                if n == "enc.0.conv.weight" {
                    v[0] = f32::NAN;
                }
            },
            "'enc.0.conv.weight' holds 1 NaN or infinite value(s) of 432",
        ),
        // a negative variance gives NaN in the fused batch norm, which the
        // ReLU after it turns into 0: the output alone looks fine
        (
            "negvar",
            |n, v| {
                if n.ends_with(".running_var") {
                    v.fill(-1.0);
                }
            },
            "'enc.0.bn.running_var' holds 16 negative variance(s) of 16",
        ),
    ];
    for (name, f, needle) in cases {
        let bad = t.path().join(format!("{name}.safetensors"));
        patch_model(&m, &bad, f);
        let out = out_dir(t.path(), name);
        let map = out.join("map.tif");
        let args = infer_argv(&scene, &map, &bad, &["--confidence"]);
        let err = fails(&args, needle);
        if name == "huge" {
            // the window's pixel rectangle, clipped to the scene
            assert!(
                err.contains(", y ") && err.contains(" px (grid column "),
                "{err}"
            );
        } else {
            // the model file, checked before the run starts
            assert!(err.contains(&format!("{name}.safetensors")), "{err}");
        }
        assert_eq!(exit_code(&args), Some(1), "{name}");
        assert_eq!(names(&out), Vec::<String>::new(), "{name}: nothing left");
    }
}

/// Training with `lr = 1e30` stops with an error that says what happened and
/// to lower train.lr, and never saves the non-finite model as best (it
/// exited 0 with a best.safetensors of NaN weights).
#[test]
fn training_that_diverges_stops_and_saves_no_non_finite_model() {
    let t = tmp();
    let a = synth(t.path(), 128, 128, 1);
    let v = synth(t.path(), 64, 64, 2);
    // one step per epoch: the diverged weights are seen by no training
    // loss, only by validation (or by the check of the weights themselves)
    for (name, samples, epochs, needle) in [
        (
            "one",
            2,
            1,
            // the weights (1e30) are finite, the validation loss is not
            "the validation loss became NaN at epoch 1 step 1",
        ),
        (
            "two",
            4,
            2,
            "the training loss became NaN at epoch 1 step 1",
        ),
    ] {
        let run = t.path().join(format!("run_{name}"));
        let cfg = t.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            train_config(&a, &v, &run, &format!("lr = 1e30\nepochs = {epochs}\n")).replace(
                "samples_per_epoch = 4",
                &format!("samples_per_epoch = {samples}"),
            ),
        )
        .unwrap();
        let err = fails(&["train", "--config", s(&cfg), "--quiet"], needle);
        assert!(
            err.contains(&format!("lower train.lr (1e30) in {}", cfg.display())),
            "{err}"
        );
        let best = run.join("best.safetensors");
        if best.exists() {
            let m = rstile::model::Model::load(&best, &candle_core::Device::Cpu).unwrap();
            let bad = rstile::infer::batch::model_non_finite(&m).unwrap();
            assert!(bad.is_empty(), "{name}: best.safetensors holds {bad:?}");
        }
        assert!(!run.join("last.safetensors").exists(), "{name}");
    }
}

// ---------------------------------------------------------------- item 17

/// Unknown keys in a class table are refused, naming the file and the key;
/// so are a malformed colour and an empty name (a misspelt table dropped a
/// class silently).
#[test]
fn class_tables_refuse_unknown_keys_bad_colours_and_empty_names() {
    let t = tmp();
    let good = "[[class]]\nid = 0\nname = \"a\"\ncolor = \"#ffffff\"\n\n";
    let cases = [
        (
            "klass",
            "[[klass]]\nid = 1\nname = \"b\"\ncolor = \"#000000\"\n",
            "unknown field `klass`",
        ),
        (
            "colour",
            "[[class]]\nid = 1\nname = \"b\"\ncolour = \"#000000\"\n",
            "unknown field `colour`",
        ),
        (
            "weight",
            "[[class]]\nid = 1\nname = \"b\"\ncolor = \"#000000\"\nweight = 3\n",
            "unknown field `weight`",
        ),
        (
            "plus",
            "[[class]]\nid = 1\nname = \"b\"\ncolor = \"#+fffff\"\n",
            "colour '#+fffff' is not #rrggbb",
        ),
        (
            "empty",
            "[[class]]\nid = 1\nname = \"\"\ncolor = \"#000000\"\n",
            "class id 1 has an empty name",
        ),
    ];
    for (name, extra, needle) in cases {
        let p = t.path().join(format!("{name}.toml"));
        std::fs::write(&p, format!("{good}{extra}")).unwrap();
        let out = t.path().join(format!("{name}.safetensors"));
        let err = fails(
            &[
                "model",
                "new",
                "--arch",
                "tiny",
                "--bands",
                "3",
                "--classes",
                s(&p),
                "-o",
                s(&out),
            ],
            needle,
        );
        assert!(err.contains(&format!("{name}.toml")), "{err}");
        assert!(!out.exists(), "{name}");
    }
}

// ---------------------------------------------------------------- items 18, 19

/// A training config for scenes `a` (train) and `v` (val); `train` is added
/// to the [train] section.
fn train_config(a: &Path, v: &Path, run: &Path, train: &str) -> String {
    format!(
        "[model]\narch = \"tiny\"\nclasses = \"{}\"\nbands = [1, 2, 3]\n\n\
         [data]\nsamples_per_epoch = 4\nval_window = 64\nworkers = 1\n\
         [[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"train\"\n\
         [[data.scene]]\nimage = \"{}\"\nlabel = \"{}\"\nsplit = \"val\"\n\n\
         [train]\nbatch = 2\ncrop = 32\nout_dir = \"{}\"\n{train}",
        common::ISPRS_CLASSES,
        a.join("image.tif").display(),
        a.join("gt.tif").display(),
        v.join("image.tif").display(),
        v.join("gt.tif").display(),
        run.display()
    )
}

/// Values no optimiser, schedule or loss can use are refused with one line
/// naming the config file and the key, before the run directory exists
/// (`beta1 = 1` said "lower train.lr", NaN class weights "has 6 values for
/// 6 classes", and a data error left a run directory holding config.toml).
#[test]
fn training_configs_refuse_unusable_values_naming_file_and_key() {
    let t = tmp();
    let a = synth(t.path(), 128, 128, 1);
    let v = synth(t.path(), 64, 64, 2);
    let other = synth(t.path(), 96, 96, 3);
    let run = t.path().join("run");
    let base = "epochs = 1\nlr = 0.01\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "beta1",
            format!("{base}beta1 = 1\n"),
            "train.beta1 1 must be in [0, 1)",
        ),
        (
            "beta2",
            format!("{base}beta2 = 2\n"),
            "train.beta2 2 must be in [0, 1)",
        ),
        (
            "eps",
            format!("{base}eps = -1\n"),
            "train.eps -1 must be positive",
        ),
        (
            "momentum",
            format!("{base}optimizer = \"sgd\"\nmomentum = -5\n"),
            "train.momentum -5 must be in [0, 1)",
        ),
        (
            "wd",
            format!("{base}weight_decay = -10\n"),
            "train.weight_decay -10 must be >= 0",
        ),
        (
            "power",
            format!("{base}poly_power = -3\n"),
            "train.poly_power -3 must be positive",
        ),
        (
            "minlr",
            format!("{base}min_lr = 0.1\n"),
            "train.min_lr 0.1 must be between 0 and train.lr 0.01",
        ),
        (
            "zero",
            format!("{base}class_weights = [0, 0, 0, 0, 0, 0]\n"),
            "train.class_weights are all zero",
        ),
        (
            "nanw",
            format!("{base}class_weights = [1, nan, 1, 1, 1, 1]\n"),
            "train.class_weights holds NaN",
        ),
        (
            "count",
            format!("{base}class_weights = [1, 1]\n"),
            "train.class_weights has 2 values but the class table has 6 classes",
        ),
        (
            "f1",
            format!("{base}f1_classes = [7]\n"),
            "train.f1_classes: class 7 of 6",
        ),
    ];
    for (name, train, needle) in &cases {
        let p = t.path().join(format!("{name}.toml"));
        std::fs::write(&p, train_config(&a, &v, &run, train)).unwrap();
        let err = fails(&["train", "--config", s(&p)], needle);
        assert!(
            err.contains(&format!("{name}.toml")),
            "names the config: {err}"
        );
        assert!(!run.exists(), "{name}: the run directory was created");
    }
    // the window geometry of the model a config trains
    let p = t.path().join("overlap.toml");
    std::fs::write(
        &p,
        train_config(&a, &v, &run, base)
            .replace("bands = [1, 2, 3]\n", "bands = [1, 2, 3]\noverlap = 0.93\n"),
    )
    .unwrap();
    let err = fails(
        &["train", "--config", s(&p)],
        "model.overlap: overlap 0.93 is outside [0, 0.9]",
    );
    assert!(err.contains("overlap.toml"), "{err}");
    // a data error (a label raster on another grid) leaves no run directory
    let p = t.path().join("grid.toml");
    let (a_gt, other_gt) = (a.join("gt.tif"), other.join("gt.tif"));
    let text = train_config(&a, &v, &run, base).replacen(s(&a_gt), s(&other_gt), 1);
    std::fs::write(&p, text).unwrap();
    fails(&["train", "--config", s(&p)], "label raster is 96x96 px");
    assert!(!run.exists(), "a data error created the run directory");
    // a DSM (floats) given as labels (it trained with loss 0.0000, exit 0)
    let p = t.path().join("dsm.toml");
    let (a_gt, a_dsm) = (a.join("gt.tif"), a.join("dsm.tif"));
    let text = train_config(&a, &v, &run, base).replacen(s(&a_gt), s(&a_dsm), 1);
    std::fs::write(&p, text).unwrap();
    fails(
        &["train", "--config", s(&p)],
        "label band 1 is of type Float32; labels must be integer class ids",
    );
    assert!(!run.exists(), "a data error created the run directory");
}

/// A model whose default overlap infer cannot use: infer names the model
/// file and the flag that overrides it (it named neither).
#[test]
fn a_model_with_an_unusable_overlap_is_named_by_infer() {
    let t = tmp();
    let scene = synth(t.path(), 200, 200, 4).join("image.tif");
    let m = t.path().join("steep.safetensors");
    let classes = common::ISPRS_CLASSES;
    let argv = [
        "model",
        "new",
        "--arch",
        "tiny",
        "--bands",
        "3",
        "--classes",
        classes,
        "-o",
        s(&m),
        "--window",
        "64",
        "--overlap",
        "0.93",
    ];
    if !rstile(&argv).status.success() {
        // `model new` already refuses it (ModelMeta::validate with the
        // window rule): nothing more to check here
        return;
    }
    let out = out_dir(t.path(), "out");
    let map = out.join("map.tif");
    let err = fails(
        &infer_argv(&scene, &map, &m, &[]),
        "steep.safetensors: the model's default overlap 0.93",
    );
    assert!(err.contains("choose an overlap with --overlap"), "{err}");
    assert_eq!(names(&out), Vec::<String>::new());
    // the override works
    ok(&infer_argv(
        &scene,
        &map,
        &m,
        &["--quiet", "--overlap", "0.5"],
    ));
    // a flag out of range names the flag
    fails(
        &infer_argv(&scene, &map, &m, &["--overwrite", "--overlap", "0.95"]),
        "--overlap: overlap 0.95",
    );
}

/// `model new --overlap 0.93` is refused, by the same rule as infer's.
#[test]
fn model_new_refuses_an_overlap_infer_cannot_use() {
    let t = tmp();
    let m = t.path().join("steep.safetensors");
    let classes = common::ISPRS_CLASSES;
    fails(
        &[
            "model",
            "new",
            "--arch",
            "tiny",
            "--bands",
            "3",
            "--classes",
            classes,
            "-o",
            s(&m),
            "--overlap",
            "0.93",
        ],
        "overlap 0.93 is outside [0, 0.9]",
    );
    assert!(!m.exists());
}

// ---------------------------------------------------------------- item 14

/// `--threads 5000` is capped at 4 per core with a warning, and the run
/// still stops promptly on SIGTERM (it spun for minutes and ignored it).
#[test]
fn absurd_thread_counts_are_capped_and_sigterm_is_obeyed() {
    let t = tmp();
    let scene = synth(t.path(), 300, 200, 5).join("image.tif");
    let m = model(t.path(), "tiny", 3, 64);
    let out = out_dir(t.path(), "out");
    let map = out.join("map.tif");
    let o = rstile(&infer_argv(
        &scene,
        &map,
        &m,
        &["--quiet", "--threads", "5000"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("rstile: warning: --threads 5000 is more than 4 per core"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let big = synth(t.path(), 2000, 2000, 6).join("image.tif");
    let slow = model(t.path(), "resnet18-fcn", 3, 256);
    let map = out.join("big.tif");
    let mut child = Command::new(bin())
        .args(infer_argv(&big, &map, &slow, &["--threads", "5000"]))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // wait for the run to start (its first line), then stop it
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("memory bound") {
        use std::io::Read;
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    let waited = t0.elapsed();
    use std::io::Read;
    stderr.read_to_end(&mut seen).unwrap();
    let err = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        waited < Duration::from_secs(30),
        "took {waited:?} to stop: {err}"
    );
    assert!(!map.exists());
}
