//! rstile: stream georeferenced rasters through a fully-convolutional network
//! into land-cover GeoTIFFs, in memory bounded by the configuration.
//!
//! The modules follow the data path: `read` → [`window`] → batch →
//! `model` → [`stitch`] → `write`, wired together by `pipeline`.
//! [`window`] and [`stitch`] are pure: they know neither GDAL nor candle.

pub mod aoi;
pub mod augment;
pub mod classes;
pub mod demo;
pub mod error;
pub mod kernels;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod qml;
pub mod read;
pub mod slurm;
pub mod speed;
pub mod stitch;
pub mod synth;
pub mod train;
pub mod vaihingen;
pub mod window;
pub mod write;

pub use error::{Error, Result};
