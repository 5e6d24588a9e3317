//! rstile: stream georeferenced rasters through a fully-convolutional network
//! into land-cover GeoTIFFs, in memory bounded by the configuration.
//!
//! The folders follow the data path of `rstile infer`:
//!
//! ```text
//! infer::read ──► infer::window ──► infer::batch ──► model ──► infer::stitch ──► infer::write
//!  (a WindowSource)   (pure geometry)   (tensors)     (Network)   (pure blending)    (GeoTIFF)
//! ```
//!
//! wired together by [`infer::stages`], one named function per thread.
//! Beside the path: [`scale`] (AOI, split runs, merge, Slurm), [`train`],
//! [`vaihingen`] (the ISPRS benchmark), [`synth`] (generated scenes),
//! [`vectorize`] (a map's classes as polygons, joined across block seams),
//! [`kernels`] (the CPU compute; `simd` compiles hot loops for AVX2 and
//! AVX-512 where the CPU has them), [`metrics`], [`classes`] and [`raster`]
//! (opening, probing and PNG writing through GDAL), and the one seeded
//! generator ([`rng`]) and hash ([`hash`]) that every part uses.
//! [`infer::window`], [`infer::stitch`] and [`metrics`] are pure: they know
//! neither GDAL nor candle. The library changes no process-wide state; the
//! binary does all of that.

pub mod classes;
pub mod error;
pub mod hash;
pub mod infer;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod output;
pub mod qml;
pub mod raster;
pub mod rng;
pub mod scale;
mod simd;
pub mod synth;
pub mod train;
pub mod vaihingen;
pub mod vectorize;

pub use error::{Error, Result};
