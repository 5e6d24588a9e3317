//! The rule every file rstile writes obeys, and one writer per output.
//!
//! A file rstile is about to write (a map, its confidence raster, sidecars,
//! a preview, parts, Slurm scripts, generated scenes, training runs):
//! - never replaces one of the run's inputs, compared by device and inode,
//!   so symlinks, hard links and `--out-dir` pointing at the scenes' own
//!   folder are caught as well as the same path;
//! - never replaces what is not a regular file (`/dev/null`, a FIFO, a
//!   folder), even with `--overwrite`;
//! - replaces an existing file only with `--overwrite`.
//!
//! [`OutputLock`] holds an exclusive `flock` on `.NAME.lock` beside the
//! output for the whole run (resume and merge included), so two runs never
//! share one partial file; the second is refused with the first one's pid.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The files a run reads, identified by device and inode.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    files: Vec<(PathBuf, u64, u64)>,
}

impl Inputs {
    /// No inputs.
    pub fn new() -> Inputs {
        Inputs::default()
    }

    /// The inputs among `paths`; paths that are not files on disk (GDAL's
    /// `/vsi...` paths, say) cannot be overwritten and are left out.
    pub fn of<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Inputs {
        let mut i = Inputs::new();
        for p in paths {
            i.add(p.as_ref());
        }
        i
    }

    /// Adds `path` if it exists on disk.
    pub fn add(&mut self, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.files.push((path.to_path_buf(), m.dev(), m.ino()));
        }
    }

    /// The input that `meta` is, if any.
    fn find(&self, meta: &std::fs::Metadata) -> Option<&Path> {
        self.files
            .iter()
            .find(|(_, dev, ino)| *dev == meta.dev() && *ino == meta.ino())
            .map(|(p, _, _)| p.as_path())
    }
}

/// Checks that `path` may be written: a file name in an existing folder,
/// not one of `inputs`, not something other than a regular file, and new
/// unless `overwrite`.
pub fn check(path: &Path, overwrite: bool, inputs: &Inputs) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::Config("an output path is empty".into()));
    }
    match std::fs::metadata(path) {
        Ok(meta) => {
            if let Some(input) = inputs.find(&meta) {
                let same = if input == path {
                    String::new()
                } else {
                    format!(" ({})", input.display())
                };
                return Err(Error::file(
                    path,
                    format!("is an input of this run{same}; choose another output"),
                ));
            }
            if meta.is_dir() {
                return Err(Error::file(path, "is a directory; give a file name"));
            }
            if !meta.is_file() {
                return Err(Error::file(
                    path,
                    "exists and is not a regular file; rstile replaces only regular files",
                ));
            }
            if !overwrite {
                return Err(Error::file(
                    path,
                    "already exists; pass --overwrite to replace it",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // a dangling symlink would be followed by the write
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(Error::file(
                    path,
                    "is a symbolic link to nothing; rstile does not write through it",
                ));
            }
        }
        Err(e) => return Err(Error::file(path, e)),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::file(
            path,
            format!("the folder {} does not exist", parent.display()),
        ));
    }
    Ok(())
}

/// Whether two paths name the same file, existing or not: the same
/// canonical folder and the same file name.
pub fn same_path(a: &Path, b: &Path) -> bool {
    let key = |p: &Path| {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
        Some((dir, p.file_name()?.to_owned()))
    };
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// An exclusive lock on an output, held until dropped.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// The lock file of `output`: `.NAME.lock` beside it.
    pub fn path_of(output: &Path) -> PathBuf {
        let mut name = std::ffi::OsString::from(".");
        name.push(output.file_name().unwrap_or_default());
        name.push(".lock");
        output.with_file_name(name)
    }

    /// Takes the lock of `output`, or fails at once naming the process that
    /// holds it.
    pub fn acquire(output: &Path) -> Result<OutputLock> {
        let path = Self::path_of(output);
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| {
                    Error::file(
                        output,
                        format!("cannot create its lock file {}: {e}", path.display()),
                    )
                })?;
            // SAFETY: flock on a file descriptor this function owns
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(Error::file(&path, format!("cannot lock: {err}")));
                }
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another rstile".to_string()
                } else {
                    format!("another rstile (pid {holder})")
                };
                return Err(Error::file(
                    output,
                    format!(
                        "is being written by {who}; wait for it to finish, or remove {} if no rstile runs",
                        path.display()
                    ),
                ));
            }
            // the holder before us may have removed the file between our
            // open and our lock: then the lock is on a file nobody sees
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| write!(file, "{}", std::process::id()))
                .and_then(|_| file.flush())
                .map_err(|e| Error::file(&path, format!("cannot write the lock file: {e}")))?;
            return Ok(OutputLock { file, path });
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // removed while still locked, so no other run can hold it in between
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: unlocking the descriptor this value owns
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_caught_through_links() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.tif");
        std::fs::write(&a, b"x").unwrap();
        let hard = t.path().join("hard.tif");
        std::fs::hard_link(&a, &hard).unwrap();
        let inputs = Inputs::of([&a]);
        for p in [&a, &hard] {
            let e = check(p, true, &inputs).unwrap_err().to_string();
            assert!(e.contains("is an input"), "{e}");
        }
        let other = t.path().join("b.tif");
        std::fs::write(&other, b"y").unwrap();
        assert!(check(&other, false, &inputs)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        check(&other, true, &inputs).unwrap();
        check(&t.path().join("new.tif"), false, &inputs).unwrap();
        // a FIFO (what /dev/null is to this rule: not a regular file)
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = check(&fifo, true, &inputs).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_second_lock_is_refused_with_the_pid_and_released_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let map = t.path().join("map.tif");
        let lock = OutputLock::acquire(&map).unwrap();
        assert!(OutputLock::path_of(&map).exists());
        let e = OutputLock::acquire(&map).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(lock);
        assert!(!OutputLock::path_of(&map).exists());
        let _again = OutputLock::acquire(&map).unwrap();
    }
}
