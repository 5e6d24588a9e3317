//! The training plots, drawn with `plotters` into PNG files: curves over the
//! epochs (loss, validation scores) and the confusion matrix.
//!
//! Text is set in DejaVu Sans, embedded in the binary
//! (`assets/fonts/DejaVuSans.ttf`, licence beside it), so no system font is
//! needed. plotters draws the lines, grid, markers and cells; the text is
//! laid out here with `ab_glyph` (the rasteriser plotters itself uses),
//! because plotters 0.3.7's own `ab_glyph` text drops each glyph's side
//! bearing ("vali dati on") and sets punctuation off the baseline. The font
//! is registered with plotters too, so anything plotters writes has it.
//! Each PNG is encoded by plotters' bitmap backend into a temporary file
//! beside the target and renamed over it. No GDAL, no candle here.

use crate::error::{Error, Result};
use crate::metrics::Confusion;
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// DejaVu Sans 2.37 (Debian's fonts-dejavu-core), see `assets/fonts/`.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The embedded font, parsed once (and registered with plotters).
fn face() -> Result<&'static FontRef<'static>> {
    static FACE: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FACE.get_or_init(|| {
        let ok = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok();
        FontRef::try_from_slice(FONT).ok().filter(|_| ok)
    })
    .as_ref()
    .ok_or_else(|| Error::Config("the embedded plot font cannot be read".into()))
}

/// Horizontal anchor of a text.
#[derive(Clone, Copy)]
enum H {
    Left,
    Center,
    Right,
}

/// Vertical anchor of a text.
#[derive(Clone, Copy)]
enum V {
    Top,
    Center,
    Bottom,
}

/// Text drawing: `size` is the line height in pixels (ascent + descent).
#[derive(Clone, Copy)]
struct Label {
    size: f32,
    color: RGBColor,
    h: H,
    v: V,
    /// Set bottom to top (a y axis title).
    up: bool,
}

const fn label(size: f32, color: RGBColor, h: H, v: V) -> Label {
    Label {
        size,
        color,
        h,
        v,
        up: false,
    }
}

/// The advance width of `s` in pixels.
fn text_width(s: &str, size: f32) -> f32 {
    let Ok(f) = face() else { return 0.0 };
    let f = f.as_scaled(PxScale::from(size));
    let mut w = 0.0;
    let mut prev = None;
    for c in s.chars() {
        let g = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, g);
        }
        w += f.h_advance(g);
        prev = Some(g);
    }
    w
}

/// Draws `s` anchored at `(x, y)` (area pixels), blending the glyphs'
/// coverage into the background.
fn put(area: &Area, s: &str, (x, y): (i32, i32), l: Label) -> DrawResult {
    let f = face()?.as_scaled(PxScale::from(l.size));
    let w = text_width(s, l.size);
    // offsets of the pen start and the baseline from the anchor
    let dx = match l.h {
        H::Left => 0.0,
        H::Center => -w / 2.0,
        H::Right => -w,
    };
    let base = match l.v {
        V::Top => f.ascent(),
        // centre the digits' and capitals' height (about 0.73 em)
        V::Center => 0.365 * (f.ascent() - f.descent()) / 1.164,
        V::Bottom => f.descent(),
    };
    let mut pen = dx;
    let mut prev = None;
    for c in s.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            pen += f.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(f.scale(), ab_glyph::point(pen, base));
        pen += f.h_advance(id);
        let Some(out) = f.outline_glyph(glyph) else {
            continue;
        };
        let b = out.px_bounds();
        let mut px = vec![];
        out.draw(|gx, gy, cov| {
            if cov > 0.0 {
                px.push((b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32, cov));
            }
        });
        for (u, v, cov) in px {
            let (px, py) = if l.up { (x + v, y - u) } else { (x + u, y + v) };
            area.draw_pixel((px, py), &l.color.mix(cov.min(1.0) as f64))?;
        }
    }
    Ok(())
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

const INK: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(105, 105, 105);
const FRAME: RGBColor = RGBColor(150, 150, 150);
const GRID: RGBColor = RGBColor(228, 228, 228);

/// Colours for the train and validation curves (Tableau blue and orange).
pub const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
pub const VAL_COLOR: [u8; 3] = [255, 127, 14];

/// A class colour made dark enough to read as a line on white (white
/// becomes grey, yellow olive); dark colours are kept.
pub fn line_color(c: [u8; 3]) -> [u8; 3] {
    let lum = 0.2126 * c[0] as f64 + 0.7152 * c[1] as f64 + 0.0722 * c[2] as f64;
    let max = 150.0;
    if lum <= max {
        c
    } else {
        c.map(|v| (v as f64 * max / lum).round() as u8)
    }
}

/// How a curve is stroked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    Solid,
    Dashed,
}

/// One curve: a value per epoch (`values[i]` is epoch `i + 1`; `None` or a
/// non-finite value leaves a gap).
pub struct Series<'a> {
    pub label: String,
    pub values: &'a [Option<f64>],
    pub color: [u8; 3],
    pub stroke: Stroke,
    /// Line width in pixels.
    pub width: u32,
}

/// A plot of curves over the epochs.
pub struct Curves<'a> {
    pub title: String,
    /// The y axis title, with its unit.
    pub y_label: String,
    /// Fixed y range, in the units shown; `None`: from 0 (or the minimum,
    /// if negative) to a round value above the maximum.
    pub y_range: Option<(f64, f64)>,
    /// Values are shown multiplied by this (100 for percent).
    pub y_scale: f64,
    pub series: Vec<Series<'a>>,
    /// The best epoch (1-based) and its legend text (lines split at `\n`),
    /// marked by a labelled vertical dashed line.
    pub best: Option<(usize, String)>,
}

/// A linear axis with the ticks given (plotters would pick fractional
/// epochs). Its labels are drawn by `put`, so it formats none.
struct Axis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, (lo, hi): (i32, i32)) -> i32 {
        let t = (v - self.range.start) / (self.range.end - self.range.start);
        lo + ((hi - lo) as f64 * t).round() as i32
    }

    fn key_points<P: KeyPointHint>(&self, _: P) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(_: &f64) -> String {
        String::new()
    }
}

/// Epoch ticks: every epoch up to 10, then multiples of a round step.
fn epoch_ticks(n: usize) -> Vec<f64> {
    let n = n.max(1);
    let step = [1usize, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]
        .into_iter()
        .find(|s| n / s <= 10)
        .unwrap_or(n.div_ceil(10));
    let mut t: Vec<usize> = (1..=n).filter(|e| e % step == 0).collect();
    if step >= 5 || t.is_empty() {
        t.insert(0, 1);
    }
    t.into_iter().map(|e| e as f64).collect()
}

/// A round tick step (1, 2, 2.5 or 5 times a power of ten) giving at most
/// `max` intervals over `span`.
fn nice_step(span: f64, max: usize) -> f64 {
    let raw = (span / max as f64).max(1e-12);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// The ticks of `lo..=hi` at multiples of `step`.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick value with as many decimals as `step` needs.
fn tick_text(v: f64, step: f64) -> String {
    let mut d = 0;
    while d < 6 && ((step * 10f64.powi(d)).round() - step * 10f64.powi(d)).abs() > 1e-6 {
        d += 1;
    }
    format!("{:.*}", d as usize, v)
}

/// Segments of consecutive finite values, as (epoch, value) points.
fn segments(values: &[Option<f64>], scale: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![];
    let mut cur: Vec<(f64, f64)> = vec![];
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) if v.is_finite() => cur.push(((i + 1) as f64, v * scale)),
            _ => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Draws with plotters' bitmap backend into a temporary PNG beside `path`
/// and renames it over `path`.
fn write_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<()> {
    face()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // plotters picks the encoder from the extension, so keep `.png`
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    let drawn = (|| -> DrawResult {
        let root = BitMapBackend::new(&tmp, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write the plot: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Writes `plot` as a `width` x `height` PNG at `path`.
pub fn write_curves(path: &Path, plot: &Curves, width: u32, height: u32) -> Result<()> {
    write_png(path, (width, height), |root| draw_curves(root, plot))
}

fn draw_curves(root: &Area, plot: &Curves) -> DrawResult {
    let (w, _) = root.dim_in_pixel();
    let longest = plot
        .series
        .iter()
        .map(|s| text_width(&s.label, 15.0))
        .fold(0.0, f32::max);
    let legend_w = ((longest + 70.0) as u32).max(170).min(w / 3);
    let (area, legend) = root.split_horizontally(w - legend_w);

    let n = plot
        .series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let all = || {
        plot.series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .filter(|v| v.is_finite())
            .map(|v| v * plot.y_scale)
    };
    let (y0, y1, step) = match plot.y_range {
        Some((lo, hi)) => (lo, hi, nice_step(hi - lo, 5)),
        None => {
            let lo = all().fold(0.0, f64::min);
            let hi = all().fold(f64::NEG_INFINITY, f64::max);
            let hi = if hi > lo { hi } else { lo + 1.0 };
            let step = nice_step((hi - lo) * 1.04, 6);
            let top = ((hi + 0.04 * (hi - lo)) / step).ceil() * step;
            (lo, top, step)
        }
    };
    let x_ticks = epoch_ticks(n);
    let y_ticks = ticks(y0, y1, step);
    let mut chart = ChartBuilder::on(&area)
        .margin_top(58)
        .margin_left(14)
        .margin_right(18)
        .margin_bottom(8)
        .x_label_area_size(58)
        .y_label_area_size(84)
        .build_cartesian_2d(
            Axis {
                range: 0.5..n as f64 + 0.5,
                ticks: x_ticks.clone(),
            },
            Axis {
                range: y0..y1,
                ticks: y_ticks.clone(),
            },
        )?;
    chart
        .configure_mesh()
        .max_light_lines(0)
        .bold_line_style(GRID)
        .axis_style(FRAME)
        .set_all_tick_mark_size(5)
        .draw()?;

    // the plot's pixel box, in the area's coordinates
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let (ox, oy) = (area.get_base_pixel().0, area.get_base_pixel().1);
    let (left, right, top, bottom) = (xr.start - ox, xr.end - ox, yr.start - oy, yr.end - oy);
    let at = |x: f64, y: f64| {
        let (px, py) = chart.backend_coord(&(x, y));
        (px - ox, py - oy)
    };
    let tick = label(15.0, INK, H::Center, V::Top);
    for &t in &x_ticks {
        put(&area, &tick_text(t, 1.0), (at(t, y0).0, bottom + 9), tick)?;
    }
    for &t in &y_ticks {
        let l = Label {
            h: H::Right,
            v: V::Center,
            ..tick
        };
        put(&area, &tick_text(t, step), (left - 9, at(0.5, t).1), l)?;
    }
    let axis = label(17.0, INK, H::Center, V::Top);
    put(&area, "epoch", ((left + right) / 2, bottom + 34), axis)?;
    let ylab = Label {
        v: V::Top,
        up: true,
        ..axis
    };
    put(&area, &plot.y_label, (14, (top + bottom) / 2), ylab)?;
    put(
        &area,
        &plot.title,
        ((left + right) / 2, 14),
        label(23.0, INK, H::Center, V::Top),
    )?;

    if let Some((best, _)) = &plot.best {
        let b = *best as f64;
        put(
            &area,
            &format!("best: {best}"),
            (at(b, y1).0, top - 5),
            label(14.0, MUTED, H::Center, V::Bottom),
        )?;
        chart.draw_series(DashedLineSeries::new(
            [(b, y0), (b, y1)],
            6,
            4,
            ShapeStyle::from(MUTED).stroke_width(2),
        ))?;
    }
    let marks = n <= 40;
    for s in &plot.series {
        let style = ShapeStyle::from(rgb(s.color)).stroke_width(s.width);
        for seg in segments(s.values, plot.y_scale) {
            match s.stroke {
                Stroke::Solid => {
                    chart.draw_series(LineSeries::new(seg.iter().copied(), style))?;
                }
                Stroke::Dashed => {
                    chart.draw_series(DashedLineSeries::new(seg.iter().copied(), 9, 5, style))?;
                }
            }
            if marks || seg.len() == 1 {
                let r = s.width + 1;
                chart.draw_series(seg.iter().map(|&p| Circle::new(p, r, style.filled())))?;
            }
        }
    }

    // the legend, beside the plot so that it never hides a curve
    let best_lines = plot.best.as_ref().map_or(0, |b| b.1.lines().count() as i32);
    let rows = plot.series.len() as i32 + best_lines;
    // 26 px a row, tighter (and smaller) when many classes must fit
    let row = ((bottom - top + 60) / rows.max(1)).clamp(14, 26);
    let (big, small) = if row >= 22 {
        (15.0, 14.0)
    } else {
        (13.0, 12.0)
    };
    let (_, lh) = legend.dim_in_pixel();
    let mut y = ((top + bottom) / 2 - rows * row / 2).clamp(top, (lh as i32 - rows * row).max(top));
    let text = label(big, INK, H::Left, V::Center);
    for s in &plot.series {
        let style = ShapeStyle::from(rgb(s.color)).stroke_width(s.width.max(2));
        match s.stroke {
            Stroke::Solid => legend.draw(&PathElement::new([(4, y), (38, y)], style))?,
            Stroke::Dashed => {
                legend.draw(&PathElement::new([(4, y), (14, y)], style))?;
                legend.draw(&PathElement::new([(28, y), (38, y)], style))?;
            }
        }
        if marks {
            legend.draw(&Circle::new((21, y), s.width + 1, style.filled()))?;
        }
        put(&legend, &s.label, (48, y), text)?;
        y += row;
    }
    if let Some((_, text_best)) = &plot.best {
        let style = ShapeStyle::from(MUTED).stroke_width(2);
        let d = row * 2 / 5;
        legend.draw(&PathElement::new([(21, y - d), (21, y - 3)], style))?;
        legend.draw(&PathElement::new([(21, y + 3), (21, y + d)], style))?;
        for (i, l) in text_best.lines().enumerate() {
            let (size, color) = if i == 0 { (big, INK) } else { (small, MUTED) };
            put(&legend, l, (48, y), label(size, color, H::Left, V::Center))?;
            y += row * 4 / 5;
        }
    }
    Ok(())
}

/// Sequential white-to-blue colour map (matplotlib's "Blues") at `t` in
/// 0..=1.
pub fn blues(t: f64) -> [u8; 3] {
    const STOPS: [[u8; 3]; 9] = [
        [247, 251, 255],
        [222, 235, 247],
        [198, 219, 239],
        [158, 202, 225],
        [107, 174, 214],
        [66, 146, 198],
        [33, 113, 181],
        [8, 81, 156],
        [8, 48, 107],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let f = t * (STOPS.len() - 1) as f64;
    let i = (f.floor() as usize).min(STOPS.len() - 2);
    let u = f - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    [0, 1, 2].map(|c| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * u).round() as u8)
}

/// `n` with thin spaces between thousands: 1 234 567.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(ch);
    }
    out
}

/// The share of each row's reference pixels predicted as each class
/// (`None` for a row without reference pixels).
pub fn row_shares(conf: &Confusion) -> Vec<Vec<Option<f64>>> {
    let k = conf.k;
    (0..k)
        .map(|t| {
            let row: u64 = (0..k).map(|p| conf.get(t, p)).sum();
            (0..k)
                .map(|p| (row > 0).then(|| conf.get(t, p) as f64 / row as f64))
                .collect()
        })
        .collect()
}

/// Splits `s` at spaces into lines no wider than `max` px (a word wider
/// than that stays whole).
fn wrap(s: &str, size: f32, max: f32) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    for word in s.split_whitespace() {
        if let Some(last) = lines.last_mut() {
            let joined = format!("{last} {word}");
            if text_width(&joined, size) <= max {
                *last = joined;
                continue;
            }
        }
        lines.push(word.to_string());
    }
    lines
}

/// Layout of the confusion matrix, in pixels.
struct Grid {
    left: i32,
    top: i32,
    cell: i32,
    name_size: f32,
    /// Column names, wrapped to the cell width, or whole when `rotate`.
    columns: Vec<Vec<String>>,
    /// The column names are set bottom to top (they do not fit across).
    rotate: bool,
    /// Height of the column names.
    names_h: i32,
}

const SUBTITLE: &str = "each row: the reference pixels of a class; cells: % of the row";

/// Writes the confusion matrix `conf` (rows: reference, columns:
/// prediction) as a PNG: each cell shows the share of its row in percent
/// and the pixel count (when the cells are large enough: up to 10
/// classes), shaded by the share; class names and colours along both axes
/// (column names set bottom to top when they do not fit across). `names`
/// and `colors` are per class (missing ones are made up).
pub fn write_confusion(
    path: &Path,
    conf: &Confusion,
    names: &[String],
    colors: &[[u8; 3]],
    title: &str,
) -> Result<()> {
    face()?;
    let k = conf.k;
    let cell = (660 / k.max(1)).clamp(48, 112) as i32;
    let name_size = 16.0;
    let names: Vec<String> = (0..k)
        .map(|c| {
            names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"))
        })
        .collect();
    let widest = names
        .iter()
        .map(|n| text_width(n, name_size))
        .fold(0.0, f32::max);
    let mut columns: Vec<Vec<String>> = names
        .iter()
        .map(|n| wrap(n, name_size, (cell - 6) as f32))
        .collect();
    let rotate = columns.iter().any(|c| {
        c.len() > 3
            || c.iter()
                .any(|l| text_width(l, name_size) > (cell - 4) as f32)
    });
    let names_h = if rotate {
        columns = names.iter().map(|n| vec![n.clone()]).collect();
        widest.ceil() as i32
    } else {
        columns.iter().map(Vec::len).max().unwrap_or(1) as i32 * 20
    };
    // axis title, gap, names, gap, swatch, gap
    let left = 30 + 12 + widest.ceil() as i32 + 10 + 14 + 8;
    let top = 96;
    // gap, swatch, gap, names, gap, axis title, note
    let bottom = 8 + 14 + 8 + names_h + 14 + 24 + 30;
    let right = 110;
    let side = cell * k as i32;
    let grid = Grid {
        left,
        top,
        cell,
        name_size,
        columns,
        rotate,
        names_h,
    };
    let subtitle_w =
        text_width(SUBTITLE, 14.0) as i32 + text_width(" and pixel count", 14.0) as i32;
    let size = (
        ((left + side + right).max(subtitle_w + 40) as u32).max(460),
        ((top + side + bottom) as u32).max(300),
    );
    write_png(path, size, |root| {
        draw_confusion(root, conf, &names, colors, title, &grid)
    })
}

fn draw_confusion(
    root: &Area,
    conf: &Confusion,
    names: &[String],
    colors: &[[u8; 3]],
    title: &str,
    g: &Grid,
) -> DrawResult {
    let k = conf.k as i32;
    let (left, top, cell) = (g.left, g.top, g.cell);
    let (w, _) = root.dim_in_pixel();
    let side = cell * k;
    let mid = if k > 0 { left + side / 2 } else { w as i32 / 2 };
    let centre = w as i32 / 2;
    put(
        root,
        title,
        (centre, 14),
        label(23.0, INK, H::Center, V::Top),
    )?;
    let show_counts = cell >= 64;
    let subtitle = if show_counts {
        format!("{SUBTITLE} and pixel count")
    } else {
        SUBTITLE.to_string()
    };
    put(
        root,
        &subtitle,
        (centre, 48),
        label(14.0, MUTED, H::Center, V::Top),
    )?;
    if k == 0 {
        return put(
            root,
            "no classes",
            (mid, top + 40),
            label(17.0, INK, H::Center, V::Top),
        );
    }
    let shares = row_shares(conf);
    let pct_size = (cell as f32 * 0.21).clamp(12.0, 21.0);
    let count_size = (pct_size * 0.76).max(11.0);
    for t in 0..k {
        for p in 0..k {
            let (x0, y0) = (left + p * cell, top + t * cell);
            let share = shares[t as usize][p as usize];
            let bg = share.map_or([240, 240, 240], blues);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                rgb(bg).filled(),
            ))?;
            let fg = if share.unwrap_or(0.0) > 0.5 {
                WHITE
            } else {
                INK
            };
            let pct = match share {
                Some(0.0) => "0 %".to_string(),
                Some(s) if s < 0.001 => "<0.1 %".to_string(),
                Some(s) => format!("{:.1} %", s * 100.0),
                None => "n/a".to_string(),
            };
            let (cx, cy) = (x0 + cell / 2, y0 + cell / 2);
            let count = thousands(conf.get(t as usize, p as usize));
            if show_counts {
                put(
                    root,
                    &pct,
                    (cx, cy - 2),
                    label(pct_size, fg, H::Center, V::Bottom),
                )?;
                put(
                    root,
                    &count,
                    (cx, cy + 4),
                    label(count_size, fg, H::Center, V::Top),
                )?;
            } else {
                put(
                    root,
                    &pct,
                    (cx, cy),
                    label(pct_size, fg, H::Center, V::Center),
                )?;
            }
        }
    }
    // cell borders and the frame
    let line = ShapeStyle::from(WHITE).stroke_width(1);
    for i in 1..k {
        root.draw(&PathElement::new(
            [(left, top + i * cell), (left + side, top + i * cell)],
            line,
        ))?;
        root.draw(&PathElement::new(
            [(left + i * cell, top), (left + i * cell, top + side)],
            line,
        ))?;
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + side, top + side)],
        ShapeStyle::from(FRAME).stroke_width(1),
    ))?;

    let swatch = |c: i32, (x, y): (i32, i32)| -> DrawResult {
        let col = rgb(colors.get(c as usize).copied().unwrap_or([128, 128, 128]));
        root.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], col.filled()))?;
        root.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], FRAME))?;
        Ok(())
    };
    let name = label(g.name_size, INK, H::Right, V::Center);
    // rows: the name, right-aligned, and the class colour left of the row
    for t in 0..k {
        let cy = top + t * cell + cell / 2;
        swatch(t, (left - 22, cy - 7))?;
        put(root, &names[t as usize], (left - 32, cy), name)?;
    }
    // columns: the class colour and the name (wrapped) below the column
    let below = top + side + 8;
    for p in 0..k {
        let cx = left + p * cell + cell / 2;
        swatch(p, (cx - 7, below))?;
        for (i, l) in g.columns[p as usize].iter().enumerate() {
            let (h, v) = if g.rotate {
                (H::Right, V::Center)
            } else {
                (H::Center, V::Top)
            };
            let at = (cx, below + 22 + i as i32 * 20);
            put(
                root,
                l,
                at,
                Label {
                    h,
                    v,
                    up: g.rotate,
                    ..name
                },
            )?;
        }
    }
    let axis = label(18.0, INK, H::Center, V::Top);
    let under = below + 22 + g.names_h + 12;
    put(root, "predicted", (mid, under), axis)?;
    let up = Label { up: true, ..axis };
    put(root, "reference", (8, top + side / 2), up)?;

    // colour bar: the share of the row
    let (bx, bw) = (left + side + 26, 16);
    for i in 0..side {
        let t = 1.0 - (i as f64 + 0.5) / side as f64;
        root.draw(&Rectangle::new(
            [(bx, top + i), (bx + bw, top + i + 1)],
            rgb(blues(t)).filled(),
        ))?;
    }
    root.draw(&Rectangle::new([(bx, top), (bx + bw, top + side)], FRAME))?;
    for v in [0, 25, 50, 75, 100] {
        let y = top + side - side * v / 100;
        root.draw(&PathElement::new([(bx + bw, y), (bx + bw + 4, y)], FRAME))?;
        put(
            root,
            &format!("{v} %"),
            (bx + bw + 8, y),
            label(13.0, INK, H::Left, V::Center),
        )?;
    }
    put(
        root,
        "share of row",
        (bx + bw / 2, top - 8),
        label(13.0, MUTED, H::Center, V::Bottom),
    )?;
    let missed: u64 = conf.missed.iter().sum();
    if missed > 0 {
        put(
            root,
            &format!(
                "not shown: {} pixels predicted as a class outside the table",
                thousands(missed)
            ),
            (mid, under + 28),
            label(13.0, MUTED, H::Center, V::Top),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG: (width, height, RGB(A) bytes, channels).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>, usize) {
        let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf, info.color_type.samples())
    }

    /// Pixels that are neither white nor near-white.
    fn inked(buf: &[u8], ch: usize) -> usize {
        buf.chunks(ch)
            .filter(|p| p[..3].iter().any(|&v| v < 200))
            .count()
    }

    #[test]
    fn curves_png_is_written_with_its_size_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train = [Some(1.2), Some(0.8), Some(0.6), Some(0.5)];
        let val = [Some(1.0), None, Some(0.7), Some(0.65)];
        let plot = Curves {
            title: "Loss".into(),
            y_label: "loss".into(),
            y_range: None,
            y_scale: 1.0,
            series: vec![
                Series {
                    label: "train".into(),
                    values: &train,
                    color: TRAIN_COLOR,
                    stroke: Stroke::Solid,
                    width: 2,
                },
                Series {
                    label: "validation".into(),
                    values: &val,
                    color: VAL_COLOR,
                    stroke: Stroke::Solid,
                    width: 2,
                },
            ],
            best: Some((3, "best epoch 3".into())),
        };
        write_curves(&path, &plot, 640, 400).unwrap();
        let (w, h, buf, ch) = decode(&path);
        assert_eq!((w, h), (640, 400));
        // text, axes and curves: well above a few stray pixels
        assert!(inked(&buf, ch) > 2000, "{} inked pixels", inked(&buf, ch));
        // both curve colours are drawn
        let has = |c: [u8; 3]| buf.chunks(ch).any(|p| p[..3] == c);
        assert!(has(TRAIN_COLOR) && has(VAL_COLOR));
        // no temporary file is left
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn curves_without_values_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let none = [None, Some(f64::NAN)];
        let plot = Curves {
            title: "Empty".into(),
            y_label: "score (%)".into(),
            y_range: None,
            y_scale: 100.0,
            series: vec![Series {
                label: "mean F1".into(),
                values: &none,
                color: [0, 0, 0],
                stroke: Stroke::Dashed,
                width: 2,
            }],
            best: None,
        };
        write_curves(&path, &plot, 500, 300).unwrap();
        assert_eq!(decode(&path).0, 500);
    }

    #[test]
    fn confusion_with_an_empty_row_is_drawn() {
        let mut conf = Confusion::new(3);
        for _ in 0..90 {
            conf.add(0, 0);
        }
        for _ in 0..10 {
            conf.add(0, 2);
        }
        conf.add(2, 2);
        // class 1 has no reference pixels
        let shares = row_shares(&conf);
        assert_eq!(shares[1], vec![None, None, None]);
        assert_eq!(shares[0][0], Some(0.9));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let names: Vec<String> = ["impervious surfaces", "building", "low vegetation"]
            .map(String::from)
            .to_vec();
        write_confusion(
            &path,
            &conf,
            &names,
            &[[255, 255, 255], [0, 0, 255], [0, 255, 255]],
            "Confusion",
        )
        .unwrap();
        let (w, h, buf, ch) = decode(&path);
        assert!(w >= 420 && h >= 300);
        // the 90 % cell is dark blue
        let dark = blues(0.9);
        assert!(buf.chunks(ch).filter(|p| p[..3] == dark).count() > 1000);
        // zero classes: a message, no panic
        write_confusion(&path, &Confusion::new(0), &[], &[], "none").unwrap();
    }

    #[test]
    fn helpers() {
        assert_eq!(epoch_ticks(1), vec![1.0]);
        assert_eq!(epoch_ticks(4), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(epoch_ticks(50)[..3], [1.0, 5.0, 10.0]);
        assert_eq!(thousands(1234567), "1\u{2009}234\u{2009}567");
        assert_eq!(thousands(12), "12");
        assert_eq!(line_color([0, 0, 255]), [0, 0, 255]);
        let g = line_color([255, 255, 255]);
        assert!(g[0] < 200 && g[0] == g[1]);
        assert_eq!(blues(0.0), [247, 251, 255]);
        assert_eq!(blues(1.0), [8, 48, 107]);
        assert_eq!(segments(&[Some(1.0), None, Some(2.0)], 1.0).len(), 2);
    }
}
