//! One error type for the library.
//!
//! Every variant that concerns a file carries its path, because the binary
//! prints the error once, on one line, and a user must be able to tell which
//! of the many files of a mosaic run was at fault without a backtrace.
//!
//! GDAL's errors stay typed: [`Error::GdalFile`] ([`GdalFileError`]) and
//! [`Error::Gdal`] hold the [`gdal::errors::GdalError`] itself as their source (class, number and
//! message of a `CplError`, the method of a `NullPointer`), and show GDAL's
//! own reason ([`gdal_reason`]) rather than the crate's debug-like text.
//! [`one_line`] flattens any error chain to the one line the binary prints.

use gdal::errors::GdalError;
use std::path::PathBuf;

/// Errors raised by the rstile library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or parsed.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// GDAL failed on a file: what rstile was doing, and GDAL's own reason
    /// (boxed, to keep `Result`s small).
    #[error(transparent)]
    GdalFile(Box<GdalFileError>),
    /// The configuration (flags, config file, model metadata) is invalid.
    #[error("{0}")]
    Config(String),
    /// An error from GDAL outside the context of a particular file.
    #[error("GDAL: {}", gdal_reason(.0))]
    Gdal(#[from] GdalError),
    /// An error from candle.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model failed at run time; `context` says what it was doing, the
    /// source is the model's own error (candle's, typically).
    #[error("{context}")]
    Model {
        context: String,
        #[source]
        source: Box<Error>,
    },
    /// A pipeline stage stopped without an error of its own to report: it
    /// found another stage gone. The error of the stage that failed first
    /// is reported instead wherever there is one.
    #[error("{0}")]
    Pipeline(String),
    /// An external command (`sbatch`, `scancel`) could not be run or failed.
    #[error("{0}")]
    Command(String),
    /// An I/O error outside the context of a particular file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A model holds or produced values that are not finite numbers.
    #[error("{0}")]
    NonFinite(String),
    /// The run was interrupted by SIGINT or SIGTERM.
    #[error("interrupted by signal")]
    Interrupted,
}

impl Error {
    /// An error about `path`.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// GDAL failed on `path` while doing `what` (may be empty); `source`
    /// is GDAL's error, kept whole.
    pub fn gdal_file(path: impl Into<PathBuf>, what: impl Into<String>, source: GdalError) -> Self {
        Error::GdalFile(Box::new(GdalFileError {
            path: path.into(),
            what: what.into(),
            source,
        }))
    }

    /// Shorthand for `map_err`: GDAL failed on `path` (no extra context).
    pub fn on(path: impl Into<PathBuf>) -> impl Fn(GdalError) -> Error {
        let path = path.into();
        move |e| Error::gdal_file(path.clone(), "", e)
    }
}

/// GDAL failed on a file: shown as `PATH: WHAT: GDAL's reason`, with
/// GDAL's typed error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{}", gdal_file_msg(.path, .what, .source))]
pub struct GdalFileError {
    pub path: PathBuf,
    /// What rstile was doing; may be empty.
    pub what: String,
    pub source: GdalError,
}

fn gdal_file_msg(path: &std::path::Path, what: &str, source: &GdalError) -> String {
    let reason = gdal_reason(source);
    match (what.is_empty(), reason.is_empty()) {
        (true, _) => format!("{}: {reason}", path.display()),
        (false, true) => format!("{}: {what}", path.display()),
        (false, false) => format!("{}: {what}: {reason}", path.display()),
    }
}

/// GDAL's own reason for an error, on one line: the message of a
/// `CplError` or `NullPointer` (or, when GDAL gave none, which call failed
/// and GDAL's error number), the crate's text for the other variants.
pub fn gdal_reason(e: &GdalError) -> String {
    let text = match e {
        GdalError::CplError { class, number, msg } if msg.trim().is_empty() => {
            format!("GDAL gave no reason (error class {class}, number {number})")
        }
        GdalError::CplError { msg, .. } => msg.clone(),
        GdalError::NullPointer { method_name, msg } if msg.trim().is_empty() => {
            format!("{method_name} failed and GDAL gave no reason")
        }
        GdalError::NullPointer { msg, .. } => msg.clone(),
        GdalError::FfiNulError(_) => "the path or a string contains a NUL byte".into(),
        GdalError::BadArgument(msg) => msg.clone(),
        GdalError::OgrError { err, method_name } => {
            let what = match *err {
                1 => "not enough data",
                2 => "not enough memory",
                3 => "unsupported geometry type",
                4 => "unsupported operation",
                5 => "corrupt data",
                7 => "unsupported spatial reference",
                8 => "invalid handle",
                9 => "no such feature",
                _ => "failure",
            };
            format!("{method_name} failed ({what}) and GDAL gave no reason")
        }
        other => other.to_string(),
    };
    collapse(&text)
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error with its causes on one line, as the binary prints it: the
/// messages of the chain joined by `": "`, each said once (a cause whose
/// text an outer message already holds is left out), GDAL errors as
/// [`gdal_reason`], whitespace and newlines collapsed. Works on any
/// `std::error::Error`, an `anyhow::Error` too (`one_line(e.as_ref())`).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = match err.downcast_ref::<GdalError>() {
            Some(g) => gdal_reason(g),
            None => collapse(&err.to_string()),
        };
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cpl(msg: &str) -> GdalError {
        GdalError::CplError {
            class: gdal_sys::CPLErr::CE_Failure,
            number: 4,
            msg: msg.into(),
        }
    }

    #[test]
    fn gdal_file_errors_show_gdal_reason_once() {
        let e = Error::gdal_file(
            "/d/a.tif",
            "not a raster GDAL can open",
            cpl("`/d/a.tif' not recognized\n as a supported file format."),
        );
        let want = "/d/a.tif: not a raster GDAL can open: `/d/a.tif' not recognized as a supported file format.";
        assert_eq!(e.to_string(), want);
        assert_eq!(one_line(&e), want);
        // the source is GDAL's typed error
        let src = std::error::Error::source(&e).unwrap();
        assert!(matches!(
            src.downcast_ref::<GdalError>(),
            Some(GdalError::CplError { number: 4, .. })
        ));
    }

    #[test]
    fn empty_gdal_messages_still_say_something() {
        let e = Error::gdal_file("x.tif", "cannot read", cpl("  "));
        assert_eq!(
            e.to_string(),
            "x.tif: cannot read: GDAL gave no reason (error class 3, number 4)"
        );
        let n = GdalError::NullPointer {
            method_name: "GDALOpenEx",
            msg: String::new(),
        };
        assert_eq!(
            Error::from(n).to_string(),
            "GDAL: GDALOpenEx failed and GDAL gave no reason"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("scene 2 failed")]
    struct Outer(#[source] Error);

    #[test]
    fn one_line_joins_a_chain_and_collapses_whitespace() {
        let e = Outer(Error::file("a b.tif", "line one\n  line two"));
        assert_eq!(one_line(&e), "scene 2 failed: a b.tif: line one line two");
        let a = anyhow::Error::new(Error::gdal_file("m.tif", "", cpl("disk full")))
            .context("writing the map");
        assert_eq!(one_line(a.as_ref()), "writing the map: m.tif: disk full");
    }
}
