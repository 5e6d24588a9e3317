//! The procedural scene: a jittered street grid and, per street cell, a list
//! of features (buildings, trees, cars, clutter, paved and planted patches).
//!
//! A cell's features are a pure function of (seed, cell index), defined in
//! world pixel coordinates. Every feature, its shadow included, stays within
//! the cell's rectangle grown by [`MARGIN`] pixels, so a window of the scene
//! only needs the cells that come within [`MARGIN`] of it.

use super::noise::{h2, key};
use crate::rng::SplitMix64;

/// Ground sampling distance the scene is designed for (metres per pixel).
pub(crate) const GSD: f64 = 0.09;
/// Pixels per metre.
pub(crate) const PX_PER_M: f64 = 1.0 / GSD;

/// Metres to pixels.
#[inline]
pub(crate) fn m(v: f64) -> f64 {
    v * PX_PER_M
}

pub(crate) const IMPERVIOUS: u8 = 0;
pub(crate) const BUILDING: u8 = 1;
pub(crate) const LOW_VEG: u8 = 2;
pub(crate) const TREE: u8 = 3;
pub(crate) const CAR: u8 = 4;
pub(crate) const CLUTTER: u8 = 5;

/// Mean spacing of the street lines, in pixels (about 61 m).
pub(crate) const CELL: i64 = 680;
/// Each street line is moved by up to this many pixels from its regular place.
pub(crate) const JITTER: i64 = 120;
/// How far (pixels) features and shadows may reach beyond their cell.
pub(crate) const MARGIN: i64 = 320;

/// Unit vector, in pixel coordinates (x east, y south), pointing toward the sun
/// (azimuth 150°): shadows fall toward the north-north-west.
pub(crate) const SUN: (f64, f64) = (0.5, 0.866_025_403_784_438_6);
/// Shadow length in pixels per metre of height (sun elevation 60°, a summer
/// noon at 49° N).
pub(crate) const SHADOW_PX_PER_M: f64 = PX_PER_M / 1.732_050_807_568_877_2;
/// Tree crowns start at this fraction of the tree's height (the trunk casts
/// no shadow to speak of).
pub(crate) const CROWN_BASE: f32 = 0.45;

/// Tallest feature (m): bounds shadow reach.
pub(crate) const MAX_HEIGHT: f64 = 20.0;

/// One street line of the grid (vertical for the x axis, horizontal for y).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line {
    /// Position of the centre line (pixel boundary).
    pub pos: i64,
    /// Half the carriageway width (pixels).
    pub hw: f64,
    /// Sidewalk width on each side (pixels).
    pub sw: f64,
    /// Whether the road has a dashed centre marking.
    pub marking: bool,
}

/// The street grid of a seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    kx: u64,
    ky: u64,
    kv: u64,
    kh: u64,
}

fn line_pos(k: u64, i: i64) -> i64 {
    i * CELL + (h2(k, i, 0) % (2 * JITTER as u64 + 1)) as i64 - JITTER
}

fn cell_of(k: u64, x: i64) -> i64 {
    let i = x.div_euclid(CELL);
    if x < line_pos(k, i) {
        i - 1
    } else if x >= line_pos(k, i + 1) {
        i + 1
    } else {
        i
    }
}

fn line(k: u64, i: i64) -> Line {
    let mut r = SplitMix64::new(h2(k, i, 1));
    Line {
        pos: line_pos(k, i),
        hw: m(r.range(3.0, 4.6)),
        sw: m(r.range(1.2, 2.2)),
        marking: r.chance(0.6),
    }
}

impl Grid {
    pub(crate) fn new(seed: u64) -> Self {
        Grid {
            kx: key(seed, 1),
            ky: key(seed, 2),
            kv: key(seed, 3),
            kh: key(seed, 4),
        }
    }
    /// Vertical street line `i` (between cell columns i-1 and i).
    pub(crate) fn xline(&self, i: i64) -> Line {
        line(self.kx, i)
    }
    /// Horizontal street line `j`.
    pub(crate) fn yline(&self, j: i64) -> Line {
        line(self.ky, j)
    }
    /// Cell column of pixel column `x`.
    pub(crate) fn cell_x(&self, x: i64) -> i64 {
        cell_of(self.kx, x)
    }
    /// Cell row of pixel row `y`.
    pub(crate) fn cell_y(&self, y: i64) -> i64 {
        cell_of(self.ky, y)
    }
    /// Whether the road on vertical line `i` exists between horizontal lines j and j+1.
    pub(crate) fn seg_v(&self, i: i64, j: i64) -> bool {
        h2(self.kv, i, j) % 100 < 85
    }
    /// Whether the road on horizontal line `j` exists between vertical lines i and i+1.
    pub(crate) fn seg_h(&self, i: i64, j: i64) -> bool {
        h2(self.kh, i, j) % 100 < 85
    }
}

/// The outline of a feature, in world pixel coordinates (pixel (x, y) covers
/// [x, x+1) x [y, y+1); a pixel belongs to a shape when its centre does).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    Rect {
        x0: f64,
        y0: f64,
        x1: f64,
        y1: f64,
    },
    Circle {
        cx: f64,
        cy: f64,
        r: f64,
    },
    /// Union of three discs: an irregular patch.
    Blob {
        c: [[f64; 3]; 3],
    },
}

impl Shape {
    #[inline]
    pub(crate) fn contains(&self, px: f64, py: f64) -> bool {
        match *self {
            Shape::Rect { x0, y0, x1, y1 } => x0 <= px && px < x1 && y0 <= py && py < y1,
            Shape::Circle { cx, cy, r } => (px - cx) * (px - cx) + (py - cy) * (py - cy) < r * r,
            Shape::Blob { c } => c
                .iter()
                .any(|d| (px - d[0]) * (px - d[0]) + (py - d[1]) * (py - d[1]) < d[2] * d[2]),
        }
    }

    /// Pixel bounding box [x0, y0, x1, y1) (a superset of the covered pixels).
    pub(crate) fn bbox(&self) -> [i64; 4] {
        let (x0, y0, x1, y1) = match *self {
            Shape::Rect { x0, y0, x1, y1 } => (x0, y0, x1, y1),
            Shape::Circle { cx, cy, r } => (cx - r, cy - r, cx + r, cy + r),
            Shape::Blob { c } => c.iter().fold(
                (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
                |(a, b, cc, d), e| {
                    (
                        a.min(e[0] - e[2]),
                        b.min(e[1] - e[2]),
                        cc.max(e[0] + e[2]),
                        d.max(e[1] + e[2]),
                    )
                },
            ),
        };
        [
            x0.floor() as i64,
            y0.floor() as i64,
            x1.ceil() as i64 + 1,
            y1.ceil() as i64 + 1,
        ]
    }

    /// Whether the ray from (px, py) toward the sun meets the shape (as a
    /// prism standing on the ground) within `tmax` pixels of horizontal travel.
    #[inline]
    pub(crate) fn shades(&self, px: f64, py: f64, tmax: f64) -> bool {
        let (ux, uy) = SUN;
        let disc = |cx: f64, cy: f64, r: f64| {
            let t = ((cx - px) * ux + (cy - py) * uy).clamp(0.0, tmax);
            let (qx, qy) = (px + t * ux - cx, py + t * uy - cy);
            qx * qx + qy * qy < r * r
        };
        match *self {
            Shape::Rect { x0, y0, x1, y1 } => {
                let lo = ((x0 - px) / ux).max((y0 - py) / uy).max(0.0);
                let hi = ((x1 - px) / ux).min((y1 - py) / uy).min(tmax);
                lo < hi
            }
            Shape::Circle { cx, cy, r } => disc(cx, cy, r),
            Shape::Blob { c } => c.iter().any(|d| disc(d[0], d[1], d[2])),
        }
    }
}

/// Whether the ray toward the sun from (px, py) at height `zp` (m) meets
/// the tree crown over (cx, cy): an ellipsoid of radius `r` (pixels) from
/// `base` to `top` (m above the ground).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn crown_shades(
    cx: f64,
    cy: f64,
    r: f64,
    base: f64,
    top: f64,
    px: f64,
    py: f64,
    zp: f64,
) -> bool {
    // Along the ray, at horizontal distance t (pixels), the height is
    // zp + t / SHADOW_PX_PER_M; inside when the normalised distance is < 1.
    let (ux, uy) = SUN;
    let (zc, a) = ((base + top) * 0.5, (top - base) * 0.5);
    let (dx, dy, dz) = (px - cx, py - cy, (zp - zc) / a);
    let k = 1.0 / (a * SHADOW_PX_PER_M);
    let qa = 1.0 / (r * r) + k * k;
    let qb = 2.0 * ((dx * ux + dy * uy) / (r * r) + dz * k);
    let qc = (dx * dx + dy * dy) / (r * r) + dz * dz - 1.0;
    let t = (-qb / (2.0 * qa)).max(0.0);
    (qa * t + qb) * t + qc < 0.0
}

/// Roof form of a building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Roof {
    Flat,
    /// Gable roof with its ridge parallel to x.
    RidgeX,
    /// Gable roof with its ridge parallel to y.
    RidgeY,
}

/// What a feature is; decides how it is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Flat impervious surface (driveway, patio, parking, path); the tone
    /// selects asphalt, paving, gravel or concrete.
    Pave(u8),
    /// Flat low vegetation different from the lawn (beds, meadow, shrubs).
    Bed,
    Building(Roof),
    Tree,
    /// A hedge: a strip of shrubs, labelled as tree.
    Hedge,
    /// A car; `along_x` when its long axis is parallel to x.
    Car {
        along_x: bool,
    },
    Clutter,
}

/// One feature of the scene.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Feature {
    pub kind: Kind,
    pub class: u8,
    pub shape: Shape,
    /// Height of the top above the ground (m); 0 for flat features.
    pub height: f32,
    /// Eave height of gable roofs (m).
    pub eave: f32,
    /// Base colour, IR-R-G.
    pub col: [f32; 3],
    /// Random bits for texture variants.
    pub var: u64,
    pub bbox: [i64; 4],
}

impl Feature {
    fn new(
        kind: Kind,
        class: u8,
        shape: Shape,
        height: f64,
        col: [f32; 3],
        rng: &mut SplitMix64,
    ) -> Self {
        Feature {
            kind,
            class,
            shape,
            height: height as f32,
            eave: height as f32,
            col,
            var: rng.next_u64(),
            bbox: shape.bbox(),
        }
    }

    /// True for features with a height, drawn through the height buffer.
    #[inline]
    pub(crate) fn is_3d(&self) -> bool {
        !matches!(self.kind, Kind::Pave(_) | Kind::Bed)
    }

    /// The pixel box the feature's shadow may darken.
    pub(crate) fn shadow_bbox(&self) -> [i64; 4] {
        let l = self.height as f64 * SHADOW_PX_PER_M;
        let b = self.bbox;
        [
            b[0] - (l * SUN.0).ceil() as i64 - 1,
            b[1] - (l * SUN.1).ceil() as i64 - 1,
            b[2],
            b[3],
        ]
    }
}

fn jitter(rng: &mut SplitMix64, c: [f32; 3], amount: f32) -> [f32; 3] {
    let b = rng.range(0.9, 1.1) as f32;
    let mut j = || rng.range(-amount as f64, amount as f64) as f32;
    [c[0] * b + j(), c[1] * b + j(), c[2] * b + j()]
}

fn pave(shape: Shape, tone: u8, rng: &mut SplitMix64) -> Feature {
    const TONES: [[f32; 3]; 4] = [
        [120.0, 123.0, 127.0],
        [160.0, 150.0, 142.0],
        [174.0, 168.0, 158.0],
        [150.0, 150.0, 150.0],
    ];
    let col = jitter(rng, TONES[tone as usize & 3], 6.0);
    Feature::new(Kind::Pave(tone), IMPERVIOUS, shape, 0.0, col, rng)
}

fn bed(shape: Shape, rng: &mut SplitMix64) -> Feature {
    let base = if rng.chance(0.5) {
        [160.0, 98.0, 86.0]
    } else {
        [182.0, 122.0, 106.0]
    };
    let col = jitter(rng, base, 8.0);
    Feature::new(Kind::Bed, LOW_VEG, shape, 0.0, col, rng)
}

fn building(
    shape: Shape,
    roof: Roof,
    eave: f64,
    height: f64,
    flat_roof: bool,
    rng: &mut SplitMix64,
) -> Feature {
    const TILED: [[f32; 3]; 5] = [
        [178.0, 150.0, 96.0],  // red tiles
        [190.0, 162.0, 128.0], // salmon
        [140.0, 138.0, 141.0], // grey
        [84.0, 82.0, 90.0],    // anthracite
        [138.0, 114.0, 92.0],  // brown
    ];
    const FLAT: [[f32; 3]; 3] = [
        [166.0, 160.0, 154.0],
        [96.0, 93.0, 97.0],
        [150.0, 146.0, 130.0],
    ];
    let base = if flat_roof {
        FLAT[rng.pick(&[5.0, 3.0, 2.0])]
    } else {
        TILED[rng.pick(&[40.0, 15.0, 20.0, 15.0, 10.0])]
    };
    let col = jitter(rng, base, 12.0);
    let mut f = Feature::new(Kind::Building(roof), BUILDING, shape, height, col, rng);
    f.eave = eave as f32;
    f
}

fn tree(cx: f64, cy: f64, r: f64, height: f64, rng: &mut SplitMix64) -> Feature {
    let base = if rng.chance(0.05) {
        [150.0, 96.0, 76.0]
    } else {
        [214.0, 84.0, 80.0]
    };
    let col = jitter(rng, base, 14.0);
    Feature::new(
        Kind::Tree,
        TREE,
        Shape::Circle { cx, cy, r },
        height,
        col,
        rng,
    )
}

fn hedge(shape: Shape, rng: &mut SplitMix64) -> Feature {
    let col = jitter(rng, [196.0, 86.0, 80.0], 12.0);
    let h = rng.range(1.5, 3.0);
    Feature::new(Kind::Hedge, TREE, shape, h, col, rng)
}

fn car(shape: Shape, along_x: bool, rng: &mut SplitMix64) -> Feature {
    const PAINT: [[f32; 3]; 7] = [
        [226.0, 226.0, 229.0], // white
        [42.0, 42.0, 48.0],    // black
        [176.0, 177.0, 181.0], // silver
        [110.0, 112.0, 117.0], // grey
        [150.0, 192.0, 58.0],  // red
        [62.0, 62.0, 112.0],   // blue
        [104.0, 110.0, 48.0],  // dark red
    ];
    let base = PAINT[rng.pick(&[22.0, 20.0, 20.0, 14.0, 10.0, 9.0, 5.0])];
    let col = jitter(rng, base, 6.0);
    let h = rng.range(1.4, 1.65);
    Feature::new(Kind::Car { along_x }, CAR, shape, h, col, rng)
}

const CLUTTER_COLS: [[f32; 3]; 6] = [
    [126.0, 112.0, 90.0],  // soil
    [214.0, 214.0, 220.0], // white tarp
    [82.0, 86.0, 150.0],   // blue
    [188.0, 200.0, 82.0],  // orange material
    [150.0, 120.0, 86.0],  // wood
    [70.0, 70.0, 76.0],    // dark
];

fn clutter(shape: Shape, height: f64, rng: &mut SplitMix64) -> Feature {
    let base = CLUTTER_COLS[rng.below32(CLUTTER_COLS.len())];
    let col = jitter(rng, base, 14.0);
    Feature::new(Kind::Clutter, CLUTTER, shape, height, col, rng)
}

fn blob(cx: f64, cy: f64, r: f64, rng: &mut SplitMix64) -> Shape {
    let mut c = [[cx, cy, r]; 3];
    for d in c.iter_mut().skip(1) {
        d[0] = cx + rng.range(-0.8, 0.8) * r;
        d[1] = cy + rng.range(-0.8, 0.8) * r;
        d[2] = r * rng.range(0.4, 0.8);
    }
    Shape::Blob { c }
}

/// Which side of a lot faces its street.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    N,
    S,
    W,
    E,
}

/// A lot with local coordinates: `a` along the street, `d` depth from it.
#[derive(Clone, Copy, Debug)]
struct Frame {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
    side: Side,
}

impl Frame {
    fn depth_is_x(&self) -> bool {
        matches!(self.side, Side::W | Side::E)
    }
    fn along(&self) -> f64 {
        if self.depth_is_x() {
            self.y1 - self.y0
        } else {
            self.x1 - self.x0
        }
    }
    fn depth(&self) -> f64 {
        if self.depth_is_x() {
            self.x1 - self.x0
        } else {
            self.y1 - self.y0
        }
    }
    fn point(&self, a: f64, d: f64) -> (f64, f64) {
        match self.side {
            Side::N => (self.x0 + a, self.y0 + d),
            Side::S => (self.x0 + a, self.y1 - d),
            Side::W => (self.x0 + d, self.y0 + a),
            Side::E => (self.x1 - d, self.y0 + a),
        }
    }
    fn rect(&self, a0: f64, a1: f64, d0: f64, d1: f64) -> Shape {
        let (p, q) = (self.point(a0, d0), self.point(a1, d1));
        Shape::Rect {
            x0: p.0.min(q.0),
            y0: p.1.min(q.1),
            x1: p.0.max(q.0),
            y1: p.1.max(q.1),
        }
    }
    /// Roof form with the ridge along (`true`) or across the street.
    fn ridge(&self, along: bool) -> Roof {
        if along != self.depth_is_x() {
            Roof::RidgeX
        } else {
            Roof::RidgeY
        }
    }
}

/// A building in lot frame `f` at local [a0, a1] x [d0, d1].
#[allow(clippy::too_many_arguments)]
fn house(
    f: &Frame,
    a0: f64,
    a1: f64,
    d0: f64,
    d1: f64,
    eave: f64,
    flat: bool,
    rng: &mut SplitMix64,
    out: &mut Vec<Feature>,
) {
    let shape = f.rect(a0, a1, d0, d1);
    if flat {
        out.push(building(shape, Roof::Flat, eave, eave, true, rng));
        return;
    }
    let along = rng.chance(0.75);
    let roof = f.ridge(along);
    let half_span_m = if along {
        (d1 - d0) / 2.0
    } else {
        (a1 - a0) / 2.0
    } / PX_PER_M;
    let height = (eave + half_span_m * rng.range(0.55, 1.0)).min(15.0);
    out.push(building(shape, roof, eave, height, false, rng));
}

fn place_trees(
    f: &Frame,
    n: usize,
    avoid: Option<[f64; 4]>,
    big: bool,
    rng: &mut SplitMix64,
    out: &mut Vec<Feature>,
) {
    let (along, depth) = (f.along(), f.depth());
    for _ in 0..n {
        let r_m = if big || rng.chance(0.4) {
            rng.range(4.0, 6.0)
        } else {
            rng.range(2.0, 4.0)
        };
        let r = m(r_m);
        for _attempt in 0..4 {
            let a = rng.range(r * 0.3, (along - r * 0.3).max(r * 0.3));
            let d = rng.range(r * 0.3, (depth - r * 0.3).max(r * 0.3));
            if let Some(b) = avoid {
                if a > b[0] - m(1.0) && a < b[1] + m(1.0) && d > b[2] - m(1.0) && d < b[3] + m(1.0)
                {
                    continue;
                }
            }
            let (cx, cy) = f.point(a.min(along), d.min(depth));
            let h = (r_m * 2.0 + rng.range(0.0, 5.0)).clamp(5.0, MAX_HEIGHT);
            out.push(tree(cx, cy, r, h, rng));
            break;
        }
    }
}

/// A residential lot: a house, its driveway, terrace, garden, trees, bins.
fn lot(f: &Frame, rng: &mut SplitMix64, out: &mut Vec<Feature>) {
    let (along, depth) = (f.along(), f.depth());
    if along < m(6.0) || depth < m(6.0) {
        return;
    }
    if rng.chance(0.05) {
        // Construction site: bare ground with material heaps.
        let (a0, a1) = (m(1.0), along - m(1.0));
        let (d0, d1) = (m(1.0), depth * rng.range(0.5, 0.9));
        let shape = f.rect(a0, a1, d0, d1);
        out.push(clutter(shape, rng.range(0.3, 0.8), rng));
        for _ in 0..rng.below32(4) {
            let (cx, cy) = f.point(rng.range(a0, a1), rng.range(d0, d1));
            let s = blob(cx, cy, m(rng.range(0.8, 2.0)), rng);
            out.push(clutter(s, rng.range(1.0, 2.5), rng));
        }
        return;
    }
    let mut bld = None;
    if rng.chance(0.92) && along > m(9.0) && depth > m(11.0) {
        let bw = (along * rng.range(0.65, 0.9)).min(m(25.0));
        let bd = (depth * rng.range(0.55, 0.78))
            .clamp(m(8.0), m(18.0))
            .min(depth - m(3.0));
        let setback = rng
            .range(m(2.0), m(6.0))
            .min(depth - bd - m(1.0))
            .max(m(0.5));
        let a0 = rng.range(m(1.0), (along - bw - m(1.0)).max(m(1.0)));
        let (a1, d0, d1) = (a0 + bw, setback, setback + bd);
        let eave = if rng.chance(0.12) {
            rng.range(8.0, 11.0)
        } else {
            rng.range(3.5, 7.5)
        };
        house(f, a0, a1, d0, d1, eave, rng.chance(0.18), rng, out);
        bld = Some([a0, a1, d0, d1]);
        // An annex at the back.
        if rng.chance(0.35) && depth - d1 > m(4.0) {
            let aw = bw * rng.range(0.3, 0.55);
            let ax = if rng.chance(0.5) { a0 } else { a1 - aw };
            let ad = (d1 + m(rng.range(3.0, 6.0))).min(depth - m(1.0));
            house(
                f,
                ax,
                ax + aw,
                d1,
                ad,
                rng.range(2.8, 4.0),
                rng.chance(0.6),
                rng,
                out,
            );
        }
        // Driveway beside the house, from the street to the middle of the house.
        if rng.chance(0.75) {
            let width = m(rng.range(2.8, 3.5));
            let left = a0 - m(0.3) >= width;
            let right = along - a1 - m(0.3) >= width;
            let (da0, da1) = if left && (!right || rng.chance(0.5)) {
                (a0 - m(0.3) - width, a0 - m(0.3))
            } else if right {
                (a1 + m(0.3), a1 + m(0.3) + width)
            } else {
                (a0 + bw * 0.3, a0 + bw * 0.3 + width)
            };
            let dend = if left || right {
                setback + bd * 0.6
            } else {
                setback
            };
            out.push(pave(f.rect(da0, da1, 0.0, dend), rng.below32(4) as u8, rng));
            // A garage at the end of the driveway.
            if (left || right) && rng.chance(0.4) && dend + m(6.5) < depth {
                let gd = dend + m(rng.range(5.5, 6.5));
                house(
                    f,
                    da0 - m(0.2),
                    da1 + m(0.2),
                    dend,
                    gd,
                    rng.range(2.6, 3.2),
                    true,
                    rng,
                    out,
                );
            }
            if dend > m(5.5) && rng.chance(0.4) {
                let cw = m(rng.range(1.75, 1.95));
                let cl = m(rng.range(4.2, 4.8));
                let ca0 = (da0 + da1) / 2.0 - cw / 2.0;
                let cd0 = rng.range(m(0.3), dend - cl);
                out.push(car(
                    f.rect(ca0, ca0 + cw, cd0, cd0 + cl),
                    f.depth_is_x(),
                    rng,
                ));
            }
            if rng.chance(0.45) {
                // Bins at the street end of the driveway.
                for k in 0..1 + rng.below32(3) {
                    let s = m(rng.range(0.55, 0.8));
                    let ba = if da0 > s + m(0.2) {
                        da0 - s - m(0.1)
                    } else {
                        da1 + m(0.1)
                    };
                    let bd0 = m(0.3) + k as f64 * m(0.9);
                    out.push(clutter(
                        f.rect(ba, ba + s, bd0, bd0 + s),
                        rng.range(1.0, 1.2),
                        rng,
                    ));
                }
            }
        }
        // Terrace behind the house.
        if rng.chance(0.55) && depth - d1 > m(3.5) {
            let tw = bw * rng.range(0.3, 0.7);
            let ta0 = a0 + rng.range(0.0, bw - tw);
            let td1 = d1 + m(rng.range(2.5, 4.5)).min(depth - d1 - m(0.5));
            out.push(pave(
                f.rect(ta0, ta0 + tw, d1, td1),
                1 + rng.below32(3) as u8,
                rng,
            ));
        }
    }
    if rng.chance(0.35) {
        let w = along * rng.range(0.2, 0.5);
        let d = depth * rng.range(0.1, 0.25);
        let a = rng.range(0.0, along - w);
        let dd = rng.range(depth * 0.5, depth - d);
        out.push(bed(f.rect(a, a + w, dd, dd + d), rng));
    }
    // Hedges along the sides and the back of the lot.
    for border in 0..3 {
        if rng.chance(0.5) {
            let t = m(rng.range(0.8, 1.6));
            let shape = match border {
                0 => f.rect(0.0, t, m(1.0), depth),
                1 => f.rect(along - t, along, m(1.0), depth),
                _ => f.rect(0.0, along, depth - t, depth),
            };
            out.push(hedge(shape, rng));
        }
    }
    let n_trees = [2, 3, 3, 4, 4, 5, 5, 6, 8][rng.below32(9)];
    place_trees(f, n_trees, bld, false, rng, out);
    for _ in 0..[0, 0, 1, 1, 2][rng.below32(5)] {
        let (cx, cy) = f.point(
            rng.range(m(1.0), along - m(1.0)),
            rng.range(m(1.0), depth - m(1.0)),
        );
        let s = blob(cx, cy, m(rng.range(0.6, 1.8)), rng);
        out.push(clutter(s, rng.range(0.4, 2.0), rng));
    }
}

/// A block of flats or a commercial building with a parking lot.
fn apartments(f: &Frame, rng: &mut SplitMix64, out: &mut Vec<Feature>) {
    let (along, depth) = (f.along(), f.depth());
    let parts = if along > m(50.0) { 2 } else { 1 };
    let part = along / parts as f64;
    let setback = m(rng.range(3.0, 6.0));
    let bd = (depth * rng.range(0.45, 0.65))
        .clamp(m(10.0), m(20.0))
        .min(depth - setback - m(1.0));
    let flat = rng.chance(0.7);
    let eave = rng.range(9.0, 14.0);
    for k in 0..parts {
        let bw = part * rng.range(0.6, 0.85);
        let a0 = k as f64 * part + rng.range(m(1.0), (part - bw - m(1.0)).max(m(1.0)));
        house(f, a0, a0 + bw, setback, setback + bd, eave, flat, rng, out);
    }
    // Parking lot behind.
    let p0 = setback + bd + m(2.0);
    let p1 = depth - m(1.0);
    if p1 - p0 > m(6.0) {
        let (a0, a1) = (m(2.0), along - m(2.0));
        out.push(pave(f.rect(a0, a1, p0, p1), 0, rng));
        let rows: &[(f64, f64)] = if p1 - p0 > m(16.0) {
            &[(0.0, 5.0), (-5.0, 0.0)]
        } else {
            &[(0.0, 5.0)]
        };
        let fill = rng.range(0.25, 0.7);
        for &(r0, r1) in rows {
            let (d0, d1) = if r0 >= 0.0 {
                (p0 + m(r0), p0 + m(r1))
            } else {
                (p1 + m(r0), p1 + m(r1))
            };
            let mut a = a0 + m(0.5);
            while a + m(2.5) <= a1 {
                if rng.chance(fill) {
                    let cw = m(rng.range(1.75, 1.95));
                    let cl = m(rng.range(4.2, 4.8));
                    let ca = a + (m(2.5) - cw) / 2.0;
                    let cd = d0 + (d1 - d0 - cl) / 2.0;
                    out.push(car(f.rect(ca, ca + cw, cd, cd + cl), f.depth_is_x(), rng));
                }
                a += m(2.5);
            }
        }
        // Containers at the end of the lot.
        for _ in 0..rng.below32(3) {
            let (w, l) = (m(rng.range(1.4, 2.2)), m(rng.range(2.0, 4.0)));
            let a = rng.range(a0, (a1 - l).max(a0));
            out.push(clutter(
                f.rect(a, a + l, p1 - w, p1),
                rng.range(1.2, 2.2),
                rng,
            ));
        }
    }
    let n = 2 + rng.below32(6);
    place_trees(
        f,
        n,
        Some([0.0, along, setback - m(1.0), p1]),
        false,
        rng,
        out,
    );
    for _ in 0..rng.below32(4) {
        let (cx, cy) = f.point(
            rng.range(m(2.0), along - m(2.0)),
            rng.range(m(1.0), setback.max(m(1.5))),
        );
        let s = blob(cx, cy, m(rng.range(0.6, 1.5)), rng);
        out.push(clutter(s, rng.range(0.5, 1.5), rng));
    }
}

/// A park: meadow, paths, groups of large trees, sometimes a playground.
fn park(f: &Frame, rng: &mut SplitMix64, out: &mut Vec<Feature>) {
    let (along, depth) = (f.along(), f.depth());
    if rng.chance(0.6) {
        let w = along * rng.range(0.3, 0.6);
        let d = depth * rng.range(0.3, 0.6);
        let (a, dd) = (rng.range(0.0, along - w), rng.range(0.0, depth - d));
        out.push(bed(f.rect(a, a + w, dd, dd + d), rng));
    }
    let pw = m(rng.range(2.0, 3.5));
    let pa = rng.range(along * 0.2, along * 0.8);
    out.push(pave(
        f.rect(pa, pa + pw, 0.0, depth),
        2 + rng.below32(2) as u8,
        rng,
    ));
    if rng.chance(0.6) {
        let pd = rng.range(depth * 0.2, depth * 0.8);
        out.push(pave(
            f.rect(0.0, along, pd, pd + pw),
            2 + rng.below32(2) as u8,
            rng,
        ));
    }
    if rng.chance(0.4) {
        let (w, d) = (m(rng.range(6.0, 12.0)), m(rng.range(5.0, 9.0)));
        let (a, dd) = (
            rng.range(0.0, (along - w).max(0.0)),
            rng.range(0.0, (depth - d).max(0.0)),
        );
        out.push(clutter(
            f.rect(a, a + w, dd, dd + d),
            rng.range(0.3, 2.0),
            rng,
        ));
    }
    let n = ((along * depth) / (m(9.0) * m(9.0))).round() as usize;
    place_trees(f, n.clamp(3, 60), None, true, rng, out);
}

/// Cars and trees along the cell's half of one street side.
///
/// `line_pos` is the street's centre line, `dir` +1 when the cell lies on its
/// positive side, `vertical` for streets parallel to y; `a0..a1` is the stretch.
#[allow(clippy::too_many_arguments)]
fn street_side(
    line: &Line,
    dir: f64,
    vertical: bool,
    a0: f64,
    a1: f64,
    rng: &mut SplitMix64,
    out: &mut Vec<Feature>,
) {
    let pos = line.pos as f64;
    let rect = |off0: f64, off1: f64, b0: f64, b1: f64| {
        let (c0, c1) = (pos + dir * off0, pos + dir * off1);
        let (lo, hi) = (c0.min(c1), c0.max(c1));
        if vertical {
            Shape::Rect {
                x0: lo,
                y0: b0,
                x1: hi,
                y1: b1,
            }
        } else {
            Shape::Rect {
                x0: b0,
                y0: lo,
                x1: b1,
                y1: hi,
            }
        }
    };
    let pitch = m(6.2);
    let (p_park, p_drive) = (rng.range(0.05, 0.3), 0.04);
    let mut a = a0;
    while a + pitch <= a1 {
        let r = rng.uniform();
        if r < p_park + p_drive {
            let cw = m(rng.range(1.75, 1.95));
            let cl = m(rng.range(4.2, 4.8));
            let off = if r < p_park {
                line.hw - m(1.15)
            } else {
                line.hw * 0.5
            };
            let c = a + pitch / 2.0 + rng.range(-m(0.4), m(0.4));
            out.push(car(
                rect(off - cw / 2.0, off + cw / 2.0, c - cl / 2.0, c + cl / 2.0),
                !vertical,
                rng,
            ));
        }
        a += pitch;
    }
    if rng.chance(0.65) {
        let step = m(rng.range(9.0, 13.0));
        let r_m = rng.range(2.5, 4.5);
        let off = line.hw + m(0.4);
        let mut a = a0 + step * 0.5;
        while a < a1 {
            let c = pos + dir * off;
            let (cx, cy) = if vertical { (c, a) } else { (a, c) };
            let h = (r_m * 2.2 + rng.range(2.0, 5.0)).min(MAX_HEIGHT);
            out.push(tree(cx, cy, m(r_m * rng.range(0.9, 1.1)), h, rng));
            a += step;
        }
    }
}

/// Appends the features of cell (i, j) to `out`.
pub(crate) fn cell_features(seed: u64, grid: &Grid, i: i64, j: i64, out: &mut Vec<Feature>) {
    let (l, r, t, b) = (
        grid.xline(i),
        grid.xline(i + 1),
        grid.yline(j),
        grid.yline(j + 1),
    );
    let (pl, pr, pt, pb) = (
        grid.seg_v(i, j),
        grid.seg_v(i + 1, j),
        grid.seg_h(i, j),
        grid.seg_h(i, j + 1),
    );
    let mut rng = SplitMix64::new(h2(key(seed, 5), i, j));
    let (x0, x1, y0, y1) = (l.pos as f64, r.pos as f64, t.pos as f64, b.pos as f64);
    // Streets: cars and street trees between the crossings.
    let (sx0, sx1) = (x0 + l.hw + l.sw + m(1.0), x1 - r.hw - r.sw - m(1.0));
    let (sy0, sy1) = (y0 + t.hw + t.sw + m(1.0), y1 - b.hw - b.sw - m(1.0));
    if pl {
        street_side(&l, 1.0, true, sy0, sy1, &mut rng, out);
    }
    if pr {
        street_side(&r, -1.0, true, sy0, sy1, &mut rng, out);
    }
    if pt {
        street_side(&t, 1.0, false, sx0, sx1, &mut rng, out);
    }
    if pb {
        street_side(&b, -1.0, false, sx0, sx1, &mut rng, out);
    }
    // Interior: inside the sidewalks, or a garden strip where a road is missing.
    let margin = |ln: &Line, present: bool| {
        if present {
            ln.hw + ln.sw
        } else {
            ln.hw * 0.5 + m(1.0)
        }
    };
    let (ix0, ix1) = (x0 + margin(&l, pl), x1 - margin(&r, pr));
    let (iy0, iy1) = (y0 + margin(&t, pt), y1 - margin(&b, pb));
    let (w, h) = (ix1 - ix0, iy1 - iy0);
    if w < m(8.0) || h < m(8.0) {
        return;
    }
    let kind = rng.pick(&[72.0, 20.0, 8.0]);
    let horiz = w >= h;
    let (long, short) = if horiz { (w, h) } else { (h, w) };
    let facing = |first: bool| match (horiz, first) {
        (true, true) => Side::N,
        (true, false) => Side::S,
        (false, true) => Side::W,
        (false, false) => Side::E,
    };
    let frame = |a0: f64, a1: f64, d0: f64, d1: f64, side: Side| {
        if horiz {
            Frame {
                x0: ix0 + a0,
                y0: iy0 + d0,
                x1: ix0 + a1,
                y1: iy0 + d1,
                side,
            }
        } else {
            Frame {
                x0: ix0 + d0,
                y0: iy0 + a0,
                x1: ix0 + d1,
                y1: iy0 + a1,
                side,
            }
        }
    };
    let first_present = if horiz { pt } else { pl };
    match kind {
        0 => {
            let rows = if short > m(34.0) { 2 } else { 1 };
            let n = ((long / m(rng.range(15.0, 24.0))).round() as usize).max(1);
            let step = long / n as f64;
            for row in 0..rows {
                for k in 0..n {
                    let (a0, a1) = (k as f64 * step, (k + 1) as f64 * step);
                    let (d0, d1, first) = match (rows, row) {
                        (1, _) => (0.0, short, first_present),
                        (_, 0) => (0.0, short / 2.0, true),
                        _ => (short / 2.0, short, false),
                    };
                    lot(&frame(a0, a1, d0, d1, facing(first)), &mut rng, out);
                }
            }
        }
        1 => apartments(
            &frame(0.0, long, 0.0, short, facing(first_present)),
            &mut rng,
            out,
        ),
        _ => park(&frame(0.0, long, 0.0, short, facing(true)), &mut rng, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_partition_the_axis() {
        let g = Grid::new(3);
        for x in -3000..3000 {
            let i = g.cell_x(x);
            assert!(
                g.xline(i).pos <= x && x < g.xline(i + 1).pos,
                "x {x} cell {i}"
            );
        }
    }

    #[test]
    fn features_stay_within_the_margin() {
        for seed in 0..4 {
            let g = Grid::new(seed);
            for j in -2..3 {
                for i in -2..3 {
                    let mut f = Vec::new();
                    cell_features(seed, &g, i, j, &mut f);
                    let (x0, x1) = (g.xline(i).pos, g.xline(i + 1).pos);
                    let (y0, y1) = (g.yline(j).pos, g.yline(j + 1).pos);
                    for ft in &f {
                        let s = ft.shadow_bbox();
                        assert!(
                            s[0] >= x0 - MARGIN
                                && s[1] >= y0 - MARGIN
                                && s[2] <= x1 + MARGIN
                                && s[3] <= y1 + MARGIN,
                            "{ft:?} leaves cell ({i},{j})"
                        );
                        assert!(ft.height as f64 <= MAX_HEIGHT);
                    }
                }
            }
        }
    }
}
