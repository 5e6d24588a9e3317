//! One error type for the library.
//!
//! Every variant that concerns a file carries its path, because the binary
//! prints the error once, on one line, and a user must be able to tell which
//! of the many files of a mosaic run was at fault without a backtrace.

use std::path::PathBuf;

/// Errors raised by the rstile library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or parsed.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// The configuration (flags, config file, model metadata) is invalid.
    #[error("{0}")]
    Config(String),
    /// An error from GDAL outside the context of a particular file.
    #[error("GDAL: {0}")]
    Gdal(#[from] gdal::errors::GdalError),
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
    #[error("interrupted by signal; no output was left behind")]
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
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
