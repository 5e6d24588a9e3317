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
    /// An I/O error outside the context of a particular file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
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
