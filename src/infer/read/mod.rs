//! Reading windows for the network: the input-source seam.
//!
//! A [`WindowSource`] is one thread's handle on a scene: it describes the
//! scene ([`WindowSource::probe`]) and reads the windows of the grid it was
//! opened with, reflect-padded at the raster's edges, normalised, with the
//! validity of every pixel ([`WindowSource::read_window`]). The pipeline's
//! reader threads, training's scene source and evaluation read through it;
//! one folder per backend holds its implementation, today
//! [`gdal`] ([`GdalReader`]: any raster GDAL opens).
//!
//! Validity follows the backend's masks. Invalid pixels enter the network
//! as the band mean (0 after normalisation) and leave the map as nodata.

pub mod gdal;

use crate::error::Result;
use crate::infer::window::Window;

pub use self::gdal::GdalReader;
pub use crate::raster::SceneInfo;

/// Per-band normalisation `(v - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// One window's data, ready for the network.
#[derive(Debug, Clone)]
pub struct WindowData {
    /// Normalised input, `[bands][size][size]`.
    pub input: Vec<f32>,
    /// Validity, `[size][size]`, 1 = valid.
    pub valid: Vec<u8>,
    /// Whether any pixel inside the raster is valid.
    pub any_valid: bool,
}

/// One thread's handle on a scene, reading windows for the model.
///
/// A source is opened (by its backend) for a window grid, a band selection,
/// a normalisation and an optional area of interest; it is `Send` so that
/// each reader thread can own one, not `Sync`.
pub trait WindowSource: Send {
    /// What the scene is: size, bands and their types, georeferencing,
    /// block size, whether it has nodata.
    fn probe(&self) -> Result<SceneInfo>;

    /// Reads window `w`: its pixels outside the raster reflected from
    /// inside, normalised, invalid pixels (nodata, NaN, outside the area of
    /// interest) set to 0 and marked in [`WindowData::valid`].
    fn read_window(&mut self, w: &Window) -> Result<WindowData>;
}
