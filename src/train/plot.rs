//! Small PNG plots drawn into an RGB buffer: training curves and the
//! confusion matrix. Written through GDAL's PNG driver (a MEM dataset and
//! `create_copy`), like `rstile::infer::write::write_preview`.

use crate::error::{Error, Result};
use crate::metrics::Confusion;
use gdal::cpl::CslStringList;
use gdal::DriverManager;
use std::path::Path;

/// An RGB image.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[u8; 3]>,
}

/// 3x5 glyphs of `0-9`, `.`, `%` and `-`, one row per u8 (3 low bits).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '%' => [5, 1, 2, 4, 5],
        _ => return None,
    })
}

impl Canvas {
    pub fn new(width: usize, height: usize, bg: [u8; 3]) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![bg; width * height],
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.rgb[y as usize * self.width + x as usize] = c;
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line, 2 px wide.
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.rect(x as i64, y as i64, x as i64 + 2, y as i64 + 2, c);
        }
    }

    /// Text in the 3x5 font, scaled by `s`.
    pub fn text(&mut self, x: i64, y: i64, s: i64, text: &str, c: [u8; 3]) {
        let mut cx = x;
        for ch in text.chars() {
            if let Some(g) = glyph(ch) {
                for (r, bits) in g.iter().enumerate() {
                    for col in 0..3 {
                        if bits & (4 >> col) != 0 {
                            let (px, py) = (cx + col * s, y + r as i64 * s);
                            self.rect(px, py, px + s, py + s, c);
                        }
                    }
                }
            }
            cx += 4 * s;
        }
    }

    /// Writes the canvas as a PNG (through a temporary file and a rename).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let mem = DriverManager::get_driver_by_name("MEM")?;
        let ds = mem.create_with_band_type::<u8, _>("", self.width, self.height, 3)?;
        for ch in 0..3 {
            let data: Vec<u8> = self.rgb.iter().map(|p| p[ch]).collect();
            let mut buf = gdal::raster::Buffer::new((self.width, self.height), data);
            ds.rasterband(ch + 1)?
                .write((0, 0), (self.width, self.height), &mut buf)?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp.png"));
        let png = DriverManager::get_driver_by_name("PNG")?;
        let out = ds
            .create_copy(&png, &tmp, &CslStringList::new())
            .map_err(|e| Error::file(path, format!("cannot write the plot: {e}")))?;
        out.close().map_err(|e| Error::file(path, e))?;
        let mut aux = tmp.as_os_str().to_owned();
        aux.push(".aux.xml");
        let _ = std::fs::remove_file(aux);
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))?;
        Ok(())
    }
}

/// Distinct colours for curves.
pub const COLORS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// Line plot of several series over epochs 1..=n (`None` = no value).
/// The y range runs from 0 (or the minimum, if negative) to the maximum,
/// written at the top-left corner; the epoch count at the bottom right.
pub fn curves(series: &[(&[Option<f64>], [u8; 3])], width: usize, height: usize) -> Canvas {
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    let (l, r, t, b) = (40.0, 10.0, 20.0, 20.0);
    let n = series.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let vals = || series.iter().flat_map(|s| s.0.iter().flatten().copied());
    let ymax = vals().fold(f64::MIN, f64::max);
    let ymin = vals().fold(0.0, f64::min);
    let ymax = if ymax > ymin { ymax } else { ymin + 1.0 };
    let (pw, ph) = (width as f64 - l - r, height as f64 - t - b);
    let grey = [200, 200, 200];
    for i in 0..=4 {
        let y = t + ph * i as f64 / 4.0;
        c.line((l, y), (l + pw, y), grey);
    }
    c.line((l, t), (l, t + ph), [0, 0, 0]);
    c.line((l, t + ph), (l + pw, t + ph), [0, 0, 0]);
    c.text(2, t as i64 - 2, 2, &format!("{ymax:.3}"), [0, 0, 0]);
    c.text(2, (t + ph) as i64 - 8, 2, &format!("{ymin:.1}"), [0, 0, 0]);
    c.text(
        (l + pw) as i64 - 30,
        (t + ph) as i64 + 6,
        2,
        &n.to_string(),
        [0, 0, 0],
    );
    let px = |i: usize| {
        if n <= 1 {
            l + pw / 2.0
        } else {
            l + pw * i as f64 / (n - 1) as f64
        }
    };
    let py = |v: f64| t + ph * (1.0 - (v - ymin) / (ymax - ymin));
    for (s, col) in series {
        let mut prev: Option<(f64, f64)> = None;
        for (i, v) in s.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() => {
                    let p = (px(i), py(*v));
                    if let Some(q) = prev {
                        c.line(q, p, *col);
                    }
                    c.rect(
                        p.0 as i64 - 2,
                        p.1 as i64 - 2,
                        p.0 as i64 + 3,
                        p.1 as i64 + 3,
                        *col,
                    );
                    prev = Some(p);
                }
                _ => prev = None,
            }
        }
    }
    c
}

/// The row-normalised confusion matrix (rows: truth, columns: prediction),
/// cells shaded by the fraction of the row and labelled in percent, with the
/// class colours along the left and top edges.
pub fn confusion(conf: &Confusion, colors: &[[u8; 3]]) -> Canvas {
    let k = conf.k;
    let cell = 48usize;
    let m = 12usize;
    let size = m + k * cell + 2;
    let mut c = Canvas::new(size, size, [255, 255, 255]);
    for i in 0..k {
        let col = colors.get(i).copied().unwrap_or([0, 0, 0]);
        c.rect(
            0,
            (m + i * cell) as i64,
            m as i64 - 2,
            (m + (i + 1) * cell) as i64,
            col,
        );
        c.rect(
            (m + i * cell) as i64,
            0,
            (m + (i + 1) * cell) as i64,
            m as i64 - 2,
            col,
        );
    }
    for t in 0..k {
        let row: u64 = (0..k).map(|p| conf.get(t, p)).sum();
        for p in 0..k {
            let f = if row > 0 {
                conf.get(t, p) as f64 / row as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - f)) as u8;
            let bg = if t == p {
                [shade, shade, 255]
            } else {
                [255, shade, shade]
            };
            let (x0, y0) = ((m + p * cell) as i64, (m + t * cell) as i64);
            c.rect(x0 + 1, y0 + 1, x0 + cell as i64, y0 + cell as i64, bg);
            let fg = if f > 0.5 { [255, 255, 255] } else { [0, 0, 0] };
            let txt = if row > 0 {
                format!("{:.0}", f * 100.0)
            } else {
                "-".into()
            };
            let tw = txt.len() as i64 * 8;
            c.text(
                x0 + (cell as i64 - tw) / 2,
                y0 + cell as i64 / 2 - 5,
                2,
                &txt,
                fg,
            );
        }
    }
    c
}
