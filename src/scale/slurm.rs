//! Slurm: one map split over an array job plus a dependent merge job, and
//! training as one GPU job.
//!
//! `rstile slurm infer SCENE -o DIR/MAP.tif --parts N` renders two sbatch
//! scripts from the templates in `configs/slurm/` (embedded in the binary):
//! `DIR/MAP.slurm/array.sbatch`, an array of N tasks in which task I runs
//! `rstile infer SCENE -o DIR/MAP.parts/MAP.tif --part auto` (part I of N, a
//! row band with its blending halo), and `DIR/MAP.slurm/merge.sbatch`, which
//! runs `rstile merge DIR/MAP.parts -o DIR/MAP.tif`. The array is submitted
//! with `sbatch --parsable`, the merge after it with
//! `--dependency=afterok:ARRAY --kill-on-invalid-dep=yes` (without the latter a
//! merge whose array failed would stay pending forever). Job logs go to
//! `DIR/MAP.slurm/`. Every path in the scripts is absolute, so they run from
//! any working directory on any node that shares the file system.
//!
//! Templates hold `{{NAME}}` placeholders. [`render`] substitutes them; a
//! line whose placeholder has no value (an sbatch option left unset) is left
//! out, so the scripts carry only the options that were asked for.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The array job template: one part of the map per task.
pub const INFER_ARRAY_TEMPLATE: &str = include_str!("../../configs/slurm/infer_array.sbatch");
/// The merge job template: joins the parts into the map.
pub const MERGE_TEMPLATE: &str = include_str!("../../configs/slurm/merge.sbatch");
/// The training job template: `rstile train --config` as one job with GPUs.
pub const TRAIN_TEMPLATE: &str = include_str!("../../configs/slurm/train.sbatch");

/// Substitutes `{{NAME}}` placeholders in `template`.
///
/// A line holding a placeholder whose value is `None` is left out; `Some("")`
/// substitutes nothing (trailing blanks are then trimmed). A placeholder that
/// `vars` does not name is an error, so a template and its caller cannot drift
/// apart silently. Values are inserted verbatim: quote them first where the
/// shell reads them ([`shell_quote`]).
pub fn render(template: &str, vars: &[(&str, Option<&str>)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    'lines: for line in template.lines() {
        let mut rendered = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                return Err(Error::Config(format!(
                    "slurm template: unclosed '{{{{' in line: {line}"
                )));
            };
            let name = &rest[start + 2..start + 2 + len];
            let Some((_, value)) = vars.iter().find(|(k, _)| *k == name) else {
                return Err(Error::Config(format!(
                    "slurm template: unknown placeholder {{{{{name}}}}}"
                )));
            };
            let Some(value) = value else {
                continue 'lines;
            };
            rendered.push_str(&rest[..start]);
            rendered.push_str(value);
            rest = &rest[start + 2 + len + 2..];
        }
        rendered.push_str(rest);
        out.push_str(rendered.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Quotes `s` for a POSIX shell: as is when it holds only characters that the
/// shell leaves alone, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,+@%^".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quotes and joins arguments for a shell command line.
pub fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// sbatch options shared by the jobs; `None` leaves the option out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SbatchOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (Slurm's formats: `MM`, `HH:MM:SS`, `D-HH`, ...).
    pub time: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--gpus-per-task` (infer) or `--gres=gpu:N` (train).
    pub gpus: Option<usize>,
    /// `--cpus-per-task`; infer then also gets `--threads` of as many.
    pub cpus_per_task: Option<usize>,
}

impl SbatchOptions {
    fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--partition", &self.partition),
            ("--time", &self.time),
            ("--account", &self.account),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || v.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "'\"\\#".contains(c))
                {
                    return Err(Error::Config(format!(
                        "{flag} {v:?}: expected a Slurm name without blanks or quotes"
                    )));
                }
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err(Error::Config(
                "--cpus-per-task 0: expected at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Where `rstile slurm infer` puts its files, beside the map `DIR/MAP.tif`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `DIR/MAP.tif`: the merged map.
    pub output: PathBuf,
    /// `DIR/MAP.slurm/`: the scripts and the jobs' logs.
    pub slurm_dir: PathBuf,
    /// `DIR/MAP.slurm/array.sbatch`.
    pub array_script: PathBuf,
    /// `DIR/MAP.slurm/merge.sbatch`.
    pub merge_script: PathBuf,
    /// `DIR/MAP.parts/`: the parts, `MAP.part-I-of-N.tif` and their sidecars.
    pub parts_dir: PathBuf,
    /// `DIR/MAP.parts/MAP.tif`: the `-o` that each array task passes to infer.
    pub part_map: PathBuf,
}

impl Layout {
    /// The layout around the absolute map path `output`.
    pub fn of(output: &Path) -> Result<Layout> {
        let name = output.file_name().ok_or_else(|| {
            Error::Config(format!("{}: the map needs a file name", output.display()))
        })?;
        let slurm_dir = output.with_extension("slurm");
        let parts_dir = output.with_extension("parts");
        Ok(Layout {
            output: output.to_path_buf(),
            array_script: slurm_dir.join("array.sbatch"),
            merge_script: slurm_dir.join("merge.sbatch"),
            part_map: parts_dir.join(name),
            slurm_dir,
            parts_dir,
        })
    }
}

/// An absolute path for `p`: canonical when it exists, else its canonical
/// parent joined with its name, else relative to the working directory.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(c) = parent.canonicalize() {
            return Ok(c.join(name));
        }
    }
    std::path::absolute(p).map_err(|e| Error::file(p, e))
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| {
        Error::Config(format!(
            "{}: the path is not UTF-8, which sbatch scripts cannot hold",
            p.display()
        ))
    })
}

fn quoted(p: &Path) -> Result<String> {
    let s = utf8(p)?;
    if s.contains(['\n', '\r']) {
        return Err(Error::Config(format!(
            "{s:?}: a path with a line break cannot go into a script"
        )));
    }
    Ok(shell_quote(s))
}

/// A directory for `#SBATCH --output`: sbatch reads those lines itself, with
/// no shell quoting, and expands `%` and `\`.
fn sbatch_dir(p: &Path) -> Result<&str> {
    let s = utf8(p)?;
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "%\\'\"".contains(c))
    {
        return Err(Error::Config(format!(
            "{s}: sbatch log paths cannot hold blanks, quotes, '%' or '\\'; choose another output folder"
        )));
    }
    Ok(s)
}

/// A job name made of characters that need no quoting anywhere.
fn job_name(kind: &str, output: &Path) -> String {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("rstile-{kind}-{stem}")
}

/// One map split over a Slurm array job, merged by a dependent job.
#[derive(Clone, Debug)]
pub struct InferJob {
    /// The rstile binary that the jobs run (absolute).
    pub rstile: PathBuf,
    /// The scene (absolute).
    pub scene: PathBuf,
    /// The merged map (absolute).
    pub output: PathBuf,
    /// The model file (absolute).
    pub model: PathBuf,
    /// Number of parts, one array task each.
    pub parts: usize,
    /// sbatch options of both jobs (GPUs and CPUs apply to the array only).
    pub sbatch: SbatchOptions,
    /// Further `rstile infer` flags, passed to every part.
    pub extra: Vec<String>,
    /// Replace an existing map and existing parts.
    pub overwrite: bool,
    /// The merge job writes a Cloud Optimized GeoTIFF (`merge --cog`).
    pub cog: bool,
}

impl InferJob {
    /// Checks the job and makes its paths absolute.
    pub fn resolve(self) -> Result<InferJob> {
        if self.parts == 0 {
            return Err(Error::Config("--parts 0: expected at least 1 part".into()));
        }
        self.sbatch.validate()?;
        for flag in ["--part", "-o", "--output", "--model", "-m"] {
            if self
                .extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
            {
                return Err(Error::Config(format!(
                    "{flag} after --: rstile slurm infer sets it for every part itself"
                )));
            }
        }
        for (what, p) in [("scene", &self.scene), ("model", &self.model)] {
            if crate::raster::is_missing_file(p) {
                return Err(Error::file(p, format!("no such {what} file")));
            }
        }
        // refuse a split that every task would refuse, before submitting
        let height = crate::infer::read::SceneInfo::probe(&self.scene)?
            .size
            .height;
        crate::scale::parts::Part::new(0, self.parts)
            .and_then(|p| p.rows(height))
            .map_err(|e| {
                Error::Config(format!(
                    "--parts {} for {}: {e}",
                    self.parts,
                    self.scene.display()
                ))
            })?;
        let output = absolute(&self.output)?;
        if output.exists() && !self.overwrite {
            return Err(Error::file(
                &output,
                "already exists; pass --overwrite to replace it",
            ));
        }
        Ok(InferJob {
            rstile: absolute(&self.rstile)?,
            scene: absolute(&self.scene)?,
            model: absolute(&self.model)?,
            output,
            ..self
        })
    }

    /// The files beside the map.
    pub fn layout(&self) -> Result<Layout> {
        Layout::of(&self.output)
    }

    /// The array job's script.
    pub fn array_script(&self) -> Result<String> {
        let l = self.layout()?;
        let mut extra = self.extra.clone();
        let has = |f: &str| {
            self.extra
                .iter()
                .any(|a| a == f || a.starts_with(&format!("{f}=")))
        };
        if let Some(c) = self.sbatch.cpus_per_task {
            if !has("--threads") {
                extra.extend(["--threads".to_string(), c.to_string()]);
            }
        }
        if self.sbatch.gpus.is_some_and(|g| g > 0) && !has("--device") {
            // Slurm sets CUDA_VISIBLE_DEVICES to the task's GPUs
            extra.extend(["--device".to_string(), "cuda:0".to_string()]);
        }
        if self.overwrite && !has("--overwrite") {
            extra.push("--overwrite".into());
        }
        let (last, cpus, gpus) = (
            (self.parts - 1).to_string(),
            self.sbatch.cpus_per_task.map(|c| c.to_string()),
            self.sbatch.gpus.filter(|&g| g > 0).map(|g| g.to_string()),
        );
        let (rstile, scene, model, parts, part_map) = (
            quoted(&self.rstile)?,
            quoted(&self.scene)?,
            quoted(&self.model)?,
            quoted(&l.parts_dir)?,
            quoted(&l.part_map)?,
        );
        let extra = shell_join(&extra);
        render(
            INFER_ARRAY_TEMPLATE,
            &[
                ("JOB_NAME", Some(&job_name("infer", &self.output))),
                ("LAST_PART", Some(&last)),
                ("CPUS", cpus.as_deref()),
                ("GPUS", gpus.as_deref()),
                ("PARTITION", self.sbatch.partition.as_deref()),
                ("TIME", self.sbatch.time.as_deref()),
                ("ACCOUNT", self.sbatch.account.as_deref()),
                ("LOGS", Some(sbatch_dir(&l.slurm_dir)?)),
                ("RSTILE", Some(&rstile)),
                ("SCENE", Some(&scene)),
                ("MODEL", Some(&model)),
                ("PARTS", Some(&parts)),
                ("PART_MAP", Some(&part_map)),
                ("EXTRA", Some(&extra)),
            ],
        )
    }

    /// The merge job's script.
    pub fn merge_script(&self) -> Result<String> {
        let l = self.layout()?;
        let (rstile, parts, out) = (
            quoted(&self.rstile)?,
            quoted(&l.parts_dir)?,
            quoted(&self.output)?,
        );
        let extra = [("--overwrite", self.overwrite), ("--cog", self.cog)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
            .join(" ");
        let extra = extra.as_str();
        render(
            MERGE_TEMPLATE,
            &[
                ("JOB_NAME", Some(&job_name("merge", &self.output))),
                ("PARTITION", self.sbatch.partition.as_deref()),
                ("TIME", self.sbatch.time.as_deref()),
                ("ACCOUNT", self.sbatch.account.as_deref()),
                ("LOGS", Some(sbatch_dir(&l.slurm_dir)?)),
                ("RSTILE", Some(&rstile)),
                ("PARTS", Some(&parts)),
                ("OUT", Some(&out)),
                ("EXTRA", Some(extra)),
            ],
        )
    }

    /// The files the jobs read: no script may replace one of them.
    fn inputs(&self) -> crate::output::Inputs {
        crate::output::Inputs::of([&self.scene, &self.model, &self.rstile])
    }

    /// Writes both scripts (under the output rule: an existing script only
    /// with `--overwrite`, never an input or what is not a regular file),
    /// submits the array and then the merge after it. When nothing stays
    /// submitted, the scripts written are removed again.
    pub fn submit(&self) -> Result<Submitted> {
        let l = self.layout()?;
        let (array, merge) = (self.array_script()?, self.merge_script()?);
        for d in [&l.slurm_dir, &l.parts_dir] {
            create_dir(d)?;
        }
        let inputs = self.inputs();
        for p in [&l.array_script, &l.merge_script] {
            crate::output::check(p, self.overwrite, &inputs)?;
        }
        let scripts = [l.array_script.clone(), l.merge_script.clone()];
        let remove = || {
            for p in &scripts {
                let _ = std::fs::remove_file(p);
            }
        };
        write_script(&l.array_script, &array)?;
        if let Err(e) = write_script(&l.merge_script, &merge) {
            remove();
            return Err(e);
        }
        let array_id = sbatch(&l.array_script, None).inspect_err(|_| remove())?;
        let merge_id = match sbatch(&l.merge_script, Some(&array_id)) {
            Ok(id) => id,
            Err(e) => {
                // do not leave an array whose merge never comes
                let cancelled = Command::new("scancel")
                    .arg(&array_id)
                    .status()
                    .is_ok_and(|s| s.success());
                let what = if cancelled {
                    remove();
                    "cancelled"
                } else {
                    "could not cancel; run scancel"
                };
                return Err(Error::Command(format!(
                    "{e} (array job {array_id}: {what})"
                )));
            }
        };
        Ok(Submitted {
            array: array_id,
            merge: merge_id,
            layout: l,
        })
    }
}

/// The job ids of a submitted [`InferJob`].
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The array job.
    pub array: String,
    /// The merge job, pending until every task of the array succeeded.
    pub merge: String,
    /// Where the scripts, logs, parts and map are.
    pub layout: Layout,
}

/// Training as one Slurm job: `rstile train --config CONFIG` with GPUs.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// The rstile binary (absolute).
    pub rstile: PathBuf,
    /// The training configuration (absolute).
    pub config: PathBuf,
    /// The working directory of the job (absolute): relative paths in the
    /// configuration resolve against it.
    pub workdir: PathBuf,
    /// sbatch options; `gpus` defaults to 1.
    pub sbatch: SbatchOptions,
    /// Further `rstile train` flags.
    pub extra: Vec<String>,
    /// Replace an existing script.
    pub overwrite: bool,
}

impl TrainJob {
    /// `WORKDIR/CONFIG_STEM.slurm/`: the script and the job's log.
    pub fn slurm_dir(&self) -> PathBuf {
        let stem = self
            .config
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        self.workdir.join(format!("{stem}.slurm"))
    }

    /// The job's script.
    pub fn script(&self) -> Result<String> {
        self.sbatch.validate()?;
        let dir = self.slurm_dir();
        let gpus = self.sbatch.gpus.unwrap_or(1);
        let has = |f: &str| {
            self.extra
                .iter()
                .any(|a| a == f || a.starts_with(&format!("{f}=")))
        };
        let mut extra = self.extra.clone();
        if let Some(c) = self.sbatch.cpus_per_task {
            if !has("--threads") {
                extra.extend(["--threads".to_string(), c.to_string()]);
            }
        }
        if gpus > 0 && !has("--device") {
            extra.extend(["--device".to_string(), "cuda:0".to_string()]);
        }
        let gpus = (gpus > 0).then(|| gpus.to_string());
        let cpus = self.sbatch.cpus_per_task.map(|c| c.to_string());
        let (rstile, config, workdir) = (
            quoted(&self.rstile)?,
            quoted(&self.config)?,
            quoted(&self.workdir)?,
        );
        render(
            TRAIN_TEMPLATE,
            &[
                ("JOB_NAME", Some(&job_name("train", &self.config))),
                ("CPUS", cpus.as_deref()),
                ("GPUS", gpus.as_deref()),
                ("PARTITION", self.sbatch.partition.as_deref()),
                ("TIME", self.sbatch.time.as_deref()),
                ("ACCOUNT", self.sbatch.account.as_deref()),
                ("LOGS", Some(sbatch_dir(&dir)?)),
                ("WORKDIR", Some(&workdir)),
                ("RSTILE", Some(&rstile)),
                ("CONFIG", Some(&config)),
                ("EXTRA", Some(&shell_join(&extra))),
            ],
        )
    }

    /// Writes the script (under the output rule, as [`InferJob::submit`])
    /// and submits it; returns the job id. A script that was not submitted
    /// is removed again.
    pub fn submit(&self) -> Result<(String, PathBuf)> {
        let script = self.script()?;
        let dir = self.slurm_dir();
        create_dir(&dir)?;
        let path = dir.join("train.sbatch");
        let inputs = crate::output::Inputs::of([&self.config, &self.rstile]);
        crate::output::check(&path, self.overwrite, &inputs)?;
        write_script(&path, &script)?;
        let id = sbatch(&path, None).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        Ok((id, path))
    }
}

fn create_dir(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(|e| Error::file(d, format!("cannot create the folder: {e}")))
}

/// Writes an executable script atomically: a hidden temporary file beside
/// it, synced, then renamed over `path`, so that a failed write never
/// leaves half a script and an old script is replaced, not rewritten in
/// place (a hard link to it keeps the old text).
fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let tmp = crate::raster::sibling(path, ".", ".tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write the script: {e}"))
    })
}

/// Submits `script` with `sbatch --parsable`, after the job `after` succeeded
/// when given (`--dependency=afterok:ID --kill-on-invalid-dep=yes`); returns
/// the job id.
pub fn sbatch(script: &Path, after: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(id) = after {
        cmd.arg(format!("--dependency=afterok:{id}"))
            .arg("--kill-on-invalid-dep=yes");
    }
    cmd.arg(script);
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Command(
                "sbatch not found: Slurm's client commands are not on PATH (install slurm-client, or run on a login node)"
                    .into(),
            ))
        }
        Err(e) => return Err(Error::Command(format!("sbatch: {e}"))),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let msg = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(Error::Command(format!(
            "sbatch {} failed ({}): {msg}",
            script.display(),
            out.status
        )));
    }
    parse_job_id(&stdout).ok_or_else(|| {
        Error::Command(format!(
            "sbatch {}: no job id in its output {:?}",
            script.display(),
            stdout.trim()
        ))
    })
}

/// The job id in `sbatch --parsable` output: `ID` or `ID;CLUSTER`.
pub fn parse_job_id(stdout: &str) -> Option<String> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let id = line.split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(sbatch: SbatchOptions, extra: &[&str], overwrite: bool) -> InferJob {
        InferJob {
            rstile: "/opt/rstile/bin/rstile".into(),
            scene: "/data/scenes/de 32UNA.vrt".into(),
            output: "/data/maps/de.tif".into(),
            model: "/data/models/r50.safetensors".into(),
            parts: 4,
            sbatch,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            overwrite,
            cog: false,
        }
    }

    fn sbatch_lines(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter(|l| l.starts_with("#SBATCH"))
            .collect()
    }

    #[test]
    fn render_substitutes_and_drops_lines_of_unset_options() {
        let t = "a {{X}} b\n#SBATCH --p={{P}}\nc {{X}}{{Y}}\nd {{E}}\n";
        let r = render(
            t,
            &[
                ("X", Some("1")),
                ("P", None),
                ("Y", Some("2")),
                ("E", Some("")),
            ],
        )
        .unwrap();
        assert_eq!(r, "a 1 b\nc 12\nd\n");
    }

    #[test]
    fn render_refuses_unknown_and_unclosed_placeholders() {
        let e = render("x {{NOPE}}\n", &[("X", Some("1"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("{{NOPE}}"), "{e}");
        let e = render("x {{X\n", &[("X", Some("1"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unclosed"), "{e}");
        // substituted values are not rescanned
        assert_eq!(
            render("{{X}}\n", &[("X", Some("{{Y}}"))]).unwrap(),
            "{{Y}}\n"
        );
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b-c_d.tif"), "/a/b-c_d.tif");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(
            shell_join(&["--blend", "crop", "x;y"]),
            "--blend crop 'x;y'"
        );
    }

    #[test]
    fn layout_puts_scripts_parts_and_logs_beside_the_map() {
        let l = Layout::of(Path::new("/d/map.tif")).unwrap();
        assert_eq!(l.slurm_dir, Path::new("/d/map.slurm"));
        assert_eq!(l.array_script, Path::new("/d/map.slurm/array.sbatch"));
        assert_eq!(l.merge_script, Path::new("/d/map.slurm/merge.sbatch"));
        assert_eq!(l.parts_dir, Path::new("/d/map.parts"));
        assert_eq!(l.part_map, Path::new("/d/map.parts/map.tif"));
    }

    #[test]
    fn array_script_without_options_has_only_the_array_lines() {
        let s = job(SbatchOptions::default(), &[], false)
            .array_script()
            .unwrap();
        assert!(s.starts_with("#!/bin/bash\n"), "{s}");
        assert_eq!(
            sbatch_lines(&s),
            [
                "#SBATCH --job-name=rstile-infer-de",
                "#SBATCH --array=0-3",
                "#SBATCH --ntasks=1",
                "#SBATCH --output=/data/maps/de.slurm/infer-%A_%a.log",
            ]
        );
        assert!(
            s.contains(
                "\nexec /opt/rstile/bin/rstile infer '/data/scenes/de 32UNA.vrt' -o /data/maps/de.parts/de.tif \
                 --model /data/models/r50.safetensors --part auto\n"
            ),
            "{s}"
        );
        assert!(s.contains("\nmkdir -p /data/maps/de.parts\n"), "{s}");
        assert!(!s.contains("{{"), "{s}");
    }

    #[test]
    fn array_script_carries_every_option_asked_for() {
        let o = SbatchOptions {
            partition: Some("dc-gpu".into()),
            time: Some("02:00:00".into()),
            account: Some("training2436".into()),
            gpus: Some(1),
            cpus_per_task: Some(8),
        };
        let s = job(o, &["--blend", "crop", "--co", "COMPRESS=ZSTD"], true)
            .array_script()
            .unwrap();
        let lines = sbatch_lines(&s);
        for want in [
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --partition=dc-gpu",
            "#SBATCH --time=02:00:00",
            "#SBATCH --account=training2436",
        ] {
            assert!(lines.contains(&want), "{want} missing:\n{s}");
        }
        assert!(
            s.contains("--part auto --blend crop --co COMPRESS=ZSTD --threads 8 --device cuda:0 --overwrite\n"),
            "{s}"
        );
        // flags the user gave win over the derived ones
        let o = SbatchOptions {
            gpus: Some(2),
            cpus_per_task: Some(4),
            ..Default::default()
        };
        let s = job(o, &["--device", "cuda:1", "--threads=2"], false)
            .array_script()
            .unwrap();
        assert!(
            s.contains("--part auto --device cuda:1 --threads=2\n"),
            "{s}"
        );
    }

    #[test]
    fn merge_script_joins_the_parts_into_the_map() {
        let o = SbatchOptions {
            partition: Some("batch".into()),
            gpus: Some(4),
            cpus_per_task: Some(8),
            ..Default::default()
        };
        let s = job(o.clone(), &["--blend", "crop"], false)
            .merge_script()
            .unwrap();
        assert_eq!(
            sbatch_lines(&s),
            [
                "#SBATCH --job-name=rstile-merge-de",
                "#SBATCH --ntasks=1",
                "#SBATCH --partition=batch",
                "#SBATCH --output=/data/maps/de.slurm/merge-%j.log",
            ],
            "no GPUs and no array for the merge"
        );
        assert!(
            s.contains(
                "\nexec /opt/rstile/bin/rstile merge /data/maps/de.parts -o /data/maps/de.tif\n"
            ),
            "{s}"
        );
        let s = job(o.clone(), &[], true).merge_script().unwrap();
        assert!(s.contains(" -o /data/maps/de.tif --overwrite\n"), "{s}");
        let j = InferJob {
            cog: true,
            ..job(o, &[], true)
        };
        let s = j.merge_script().unwrap();
        assert!(
            s.contains(" -o /data/maps/de.tif --overwrite --cog\n"),
            "{s}"
        );
    }

    #[test]
    fn train_script_is_one_job_with_a_gpu() {
        let t = TrainJob {
            rstile: "/opt/rstile".into(),
            config: "/home/u/cfg/vaihingen.toml".into(),
            workdir: "/home/u".into(),
            sbatch: SbatchOptions {
                account: Some("training2436".into()),
                time: Some("1:00:00".into()),
                ..Default::default()
            },
            extra: vec![],
            overwrite: false,
        };
        let s = t.script().unwrap();
        assert_eq!(
            sbatch_lines(&s),
            [
                "#SBATCH --job-name=rstile-train-vaihingen",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks=1",
                "#SBATCH --gres=gpu:1",
                "#SBATCH --time=1:00:00",
                "#SBATCH --account=training2436",
                "#SBATCH --output=/home/u/vaihingen.slurm/train-%j.log",
            ]
        );
        assert!(
            s.contains(
                "\ncd /home/u\nexec /opt/rstile train --config /home/u/cfg/vaihingen.toml --device cuda:0\n"
            ),
            "{s}"
        );
        assert_eq!(t.slurm_dir(), Path::new("/home/u/vaihingen.slurm"));
    }

    #[test]
    fn bad_options_and_paths_are_refused() {
        let o = SbatchOptions {
            partition: Some("a b".into()),
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--partition"));
        let mut j = job(SbatchOptions::default(), &[], false);
        j.output = "/data/my maps/de.tif".into();
        let e = j.array_script().unwrap_err().to_string();
        assert!(e.contains("/data/my maps/de.slurm"), "{e}");
        j.output = "/data/100%/de.tif".into();
        assert!(j.merge_script().is_err());
    }

    #[test]
    fn job_ids_from_parsable_output() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("77;jureca\n").as_deref(), Some("77"));
        assert_eq!(parse_job_id("warning\n88\n").as_deref(), Some("88"));
        assert_eq!(parse_job_id(""), None);
        assert_eq!(parse_job_id("Submitted batch job 5\n"), None);
    }

    #[test]
    fn templates_name_only_known_placeholders() {
        // every placeholder of the shipped templates is rendered (no leftovers)
        let j = job(SbatchOptions::default(), &[], false);
        for s in [j.array_script().unwrap(), j.merge_script().unwrap()] {
            assert!(!s.contains("{{"), "{s}");
        }
    }
}
