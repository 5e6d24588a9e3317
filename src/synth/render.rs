//! Renders a window of the scene: classes, image bands and heights.
//!
//! [`render`] is the only code path: the per-pixel oracle renders a 1 x 1
//! window and the writer renders whole tiles, so both agree bit for bit. Each
//! pass is a pure function of the features and the pixel's world position;
//! features are visited in a fixed global order (cell row, cell column, index
//! within the cell), so ties resolve the same way in every window.

use super::noise::{hp, key, tri4, unit, vnoise, vnoise_window};
use super::scene::*;

const OWN_ROAD: u32 = u32::MAX;
const OWN_MARK: u32 = u32::MAX - 1;
const OWN_WALK: u32 = u32::MAX - 2;
const OWN_LAWN: u32 = u32::MAX - 3;

/// A rendered window, bands row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tile {
    pub w: usize,
    pub h: usize,
    pub ir: Vec<u8>,
    pub r: Vec<u8>,
    pub g: Vec<u8>,
    pub dsm: Vec<f32>,
    pub gt: Vec<u8>,
}

/// Column (or row) facts: the cell it lies in and its distances to the
/// street lines on either side, from the pixel centre.
struct Axis {
    idx: i64,
    lo: Line,
    hi: Line,
    d_lo: f64,
    d_hi: f64,
}

fn axes(
    start: i64,
    len: usize,
    cell: impl Fn(i64) -> i64,
    line: impl Fn(i64) -> Line,
) -> Vec<Axis> {
    let mut out: Vec<Axis> = Vec::with_capacity(len);
    for k in 0..len as i64 {
        let x = start + k;
        let idx = cell(x);
        let (lo, hi) = match out.last() {
            Some(a) if a.idx == idx => (a.lo, a.hi),
            _ => (line(idx), line(idx + 1)),
        };
        let c = x as f64 + 0.5;
        out.push(Axis {
            idx,
            lo,
            hi,
            d_lo: c - lo.pos as f64,
            d_hi: hi.pos as f64 - c,
        });
    }
    out
}

/// Window ∩ box, as local ranges.
fn clip(b: [i64; 4], x0: i64, y0: i64, w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let cx0 = b[0].max(x0);
    let cy0 = b[1].max(y0);
    let cx1 = b[2].min(x0 + w as i64);
    let cy1 = b[3].min(y0 + h as i64);
    (cx0 < cx1 && cy0 < cy1).then(|| {
        (
            (cx0 - x0) as usize,
            (cy0 - y0) as usize,
            (cx1 - x0) as usize,
            (cy1 - y0) as usize,
        )
    })
}

#[inline]
fn dash(a: i64) -> bool {
    a.rem_euclid(67) < 34
}

struct Keys {
    pix: u64,
    lo: u64,
    mid: u64,
    t1: u64,
    t2: u64,
    crown: u64,
    edge: u64,
    grain: u64,
}

impl Keys {
    fn new(seed: u64) -> Self {
        Keys {
            pix: key(seed, 10),
            lo: key(seed, 11),
            mid: key(seed, 12),
            t1: key(seed, 13),
            t2: key(seed, 14),
            crown: key(seed, 15),
            edge: key(seed, 16),
            grain: key(seed, 17),
        }
    }
}

/// Height of feature `f` at pixel (x, y) (centre px, py), if it covers it,
/// and the auxiliary texture value the colour pass uses.
#[inline]
fn sample(f: &Feature, keys: &Keys, x: i64, y: i64, px: f64, py: f64) -> Option<(f32, f32)> {
    match (f.kind, f.shape) {
        (Kind::Building(roof), Shape::Rect { x0, y0, x1, y1 }) => {
            if !f.shape.contains(px, py) {
                return None;
            }
            let d = match roof {
                Roof::Flat => return Some((f.height, 0.0)),
                Roof::RidgeX => ((py - (y0 + y1) * 0.5).abs() / ((y1 - y0) * 0.5)) as f32,
                Roof::RidgeY => ((px - (x0 + x1) * 0.5).abs() / ((x1 - x0) * 0.5)) as f32,
            };
            Some((f.height - (f.height - f.eave) * d, 0.0))
        }
        (Kind::Tree, Shape::Circle { cx, cy, r }) => {
            let d2 = (((px - cx) * (px - cx) + (py - cy) * (py - cy)) / (r * r)) as f32;
            if d2 >= 1.0 {
                return None;
            }
            // A ragged crown outline (inside 0.8 r the crown is always full).
            if d2 >= 0.64 {
                let e = 0.8 + 0.2 * vnoise(keys.edge, 3, x, y);
                if d2 >= e * e {
                    return None;
                }
            }
            let clump = vnoise(keys.crown, 2, x, y);
            let z = f.height * (0.55 + 0.45 * (1.0 - d2).sqrt()) + 1.2 * (clump - 0.5);
            Some((z, clump))
        }
        (Kind::Hedge, Shape::Rect { x0, y0, x1, y1 }) => {
            if !f.shape.contains(px, py) {
                return None;
            }
            let edge = (px - x0).min(x1 - px).min(py - y0).min(y1 - py) as f32;
            if edge < m(0.35) as f32 * vnoise(keys.edge, 3, x, y) {
                return None;
            }
            let clump = vnoise(keys.crown, 2, x, y);
            Some((f.height * (0.8 + 0.2 * clump), clump))
        }
        (Kind::Car { along_x }, Shape::Rect { x0, y0, x1, y1 }) => {
            if !f.shape.contains(px, py) {
                return None;
            }
            let rc = m(0.35);
            let ex = rc - (px - x0).min(x1 - px);
            let ey = rc - (py - y0).min(y1 - py);
            if ex > 0.0 && ey > 0.0 && ex * ex + ey * ey > rc * rc {
                return None;
            }
            let t = if along_x {
                (px - x0) / (x1 - x0)
            } else {
                (py - y0) / (y1 - y0)
            } as f32;
            let z = if !(0.2..=0.85).contains(&t) {
                f.height * 0.65
            } else {
                f.height
            };
            Some((z, t))
        }
        _ => f.shape.contains(px, py).then_some((f.height, 0.0)),
    }
}

/// Colour (IR, R, G) and noise level of feature `f` at a pixel.
#[inline]
#[allow(clippy::too_many_arguments)]
fn colour(
    f: &Feature,
    keys: &Keys,
    x: i64,
    y: i64,
    px: f64,
    py: f64,
    aux: f32,
    mid: f32,
) -> ([f32; 3], f32) {
    let c = f.col;
    let scale = |s: f32| [c[0] * s, c[1] * s, c[2] * s];
    match (f.kind, f.shape) {
        (Kind::Pave(tone), _) => (
            scale(0.92 + 0.16 * mid),
            [6.0, 7.0, 14.0, 6.0][tone as usize & 3],
        ),
        (Kind::Bed, _) => (scale(0.82 + 0.36 * mid), 10.0),
        (Kind::Building(roof), Shape::Rect { x0, y0, x1, y1 }) => {
            let (cx, cy) = ((x0 + x1) * 0.5, (y0 + y1) * 0.5);
            // (offset from the ridge, half span, sun-side brightness, shade-side brightness)
            let (d, half, lit, dark, along, len) = match roof {
                Roof::RidgeX => (py - cy, (y1 - y0) * 0.5, 1.1, 0.8, px - x0, x1 - x0),
                Roof::RidgeY => (px - cx, (x1 - x0) * 0.5, 1.04, 0.88, py - y0, y1 - y0),
                Roof::Flat => {
                    let edge = (px - x0).min(x1 - px).min(py - y0).min(y1 - py);
                    let s = if edge < 2.0 {
                        1.12
                    } else {
                        0.96 + 0.08 * unit(hp(keys.grain, x, y))
                    };
                    return (scale(s * (0.92 + 0.16 * mid)), 9.0);
                }
            };
            let fa = along / len;
            let fd = d / half;
            if f.var & 7 == 0 && (0.15..0.85).contains(&fa) && (0.2..0.85).contains(&fd) {
                // Solar panels on the sun-facing slope.
                let grid = (along as i64 % 11 == 0) || ((d as i64) % 9 == 0);
                let p = if grid {
                    [95.0, 98.0, 110.0]
                } else {
                    [46.0, 50.0, 72.0]
                };
                return (p, 5.0);
            }
            let mut s = if d >= 0.0 { lit } else { dark };
            let dd = d.abs();
            if dd < 1.0 {
                s *= 0.85;
            } else if (dd as i64) % 4 == 3 {
                s *= 0.9;
            }
            (scale(s * (0.92 + 0.16 * mid)), 7.0)
        }
        (Kind::Tree, Shape::Circle { cx, cy, r }) => {
            let (dx, dy) = (((px - cx) / r) as f32, ((py - cy) / r) as f32);
            let sun = dx * SUN.0 as f32 + dy * SUN.1 as f32;
            let s = (0.88 + 0.18 * sun) * (1.0 - 0.22 * (dx * dx + dy * dy)) * (0.74 + 0.45 * aux);
            (scale(s), 9.0)
        }
        (Kind::Hedge, _) => (scale(0.7 + 0.45 * aux), 9.0),
        (Kind::Car { .. }, Shape::Rect { x0, y0, x1, y1 }) => {
            let edge = (px - x0).min(x1 - px).min(py - y0).min(y1 - py);
            if (0.2..0.36).contains(&aux) || (0.72..0.83).contains(&aux) {
                ([46.0, 50.0, 60.0], 5.0)
            } else if edge < 1.0 {
                (scale(0.75), 5.0)
            } else {
                (c, 5.0)
            }
        }
        _ => (scale(0.8 + 0.4 * mid), 16.0),
    }
}

/// Renders the `w` x `h` window whose top-left pixel is (x0, y0).
pub(crate) fn render(seed: u64, x0: i64, y0: i64, w: usize, h: usize) -> Tile {
    let grid = Grid::new(seed);
    let keys = Keys::new(seed);
    let n = w * h;
    if n == 0 {
        return Tile {
            w,
            h,
            ir: vec![],
            r: vec![],
            g: vec![],
            dsm: vec![],
            gt: vec![],
        };
    }
    let (wx1, wy1) = (x0 + w as i64, y0 + h as i64);

    // Features of every cell that comes within MARGIN of the window, in a fixed order.
    let mut feats = Vec::new();
    for j in grid.cell_y(y0 - MARGIN)..=grid.cell_y(wy1 - 1 + MARGIN) {
        for i in grid.cell_x(x0 - MARGIN)..=grid.cell_x(wx1 - 1 + MARGIN) {
            cell_features(seed, &grid, i, j, &mut feats);
        }
    }

    // Pass 1: streets, sidewalks and lawn from the grid.
    let cols = axes(x0, w, |x| grid.cell_x(x), |i| grid.xline(i));
    let rows = axes(y0, h, |y| grid.cell_y(y), |j| grid.yline(j));
    let (i0, j0) = (cols[0].idx, rows[0].idx);
    let (ni, nj) = (
        (cols[w - 1].idx - i0 + 2) as usize,
        (rows[h - 1].idx - j0 + 2) as usize,
    );
    let mut seg_v = vec![false; ni * nj];
    let mut seg_h = vec![false; ni * nj];
    for b in 0..nj {
        for a in 0..ni {
            seg_v[b * ni + a] = grid.seg_v(i0 + a as i64, j0 + b as i64);
            seg_h[b * ni + a] = grid.seg_h(i0 + a as i64, j0 + b as i64);
        }
    }
    let mut owner = vec![OWN_LAWN; n];
    for (r, ra) in rows.iter().enumerate() {
        let b = (ra.idx - j0) as usize;
        let y = y0 + r as i64;
        for (c, ca) in cols.iter().enumerate() {
            let a = (ca.idx - i0) as usize;
            let (pl, pr) = (seg_v[b * ni + a], seg_v[b * ni + a + 1]);
            let (pt, pb) = (seg_h[b * ni + a], seg_h[(b + 1) * ni + a]);
            let in_l = pl && ca.d_lo < ca.lo.hw;
            let in_r = pr && ca.d_hi < ca.hi.hw;
            let in_t = pt && ra.d_lo < ra.lo.hw;
            let in_b = pb && ra.d_hi < ra.hi.hw;
            let hits = in_l as u8 + in_r as u8 + in_t as u8 + in_b as u8;
            owner[r * w + c] = if hits > 0 {
                let x = x0 + c as i64;
                let mark = hits == 1
                    && if in_l {
                        ca.lo.marking && ca.d_lo < 1.0 && dash(y)
                    } else if in_r {
                        ca.hi.marking && ca.d_hi < 1.0 && dash(y)
                    } else if in_t {
                        ra.lo.marking && ra.d_lo < 1.0 && dash(x)
                    } else {
                        ra.hi.marking && ra.d_hi < 1.0 && dash(x)
                    };
                if mark {
                    OWN_MARK
                } else {
                    OWN_ROAD
                }
            } else if (pl && ca.d_lo < ca.lo.hw + ca.lo.sw)
                || (pr && ca.d_hi < ca.hi.hw + ca.hi.sw)
                || (pt && ra.d_lo < ra.lo.hw + ra.lo.sw)
                || (pb && ra.d_hi < ra.hi.hw + ra.hi.sw)
            {
                OWN_WALK
            } else {
                OWN_LAWN
            };
        }
    }

    // Pass 2: flat features over the ground, later ones on top.
    for (k, f) in feats.iter().enumerate() {
        if f.is_3d() {
            continue;
        }
        let Some((c0, r0, c1, r1)) = clip(f.bbox, x0, y0, w, h) else {
            continue;
        };
        for r in r0..r1 {
            let py = (y0 + r as i64) as f64 + 0.5;
            for c in c0..c1 {
                if f.shape.contains((x0 + c as i64) as f64 + 0.5, py) {
                    owner[r * w + c] = k as u32;
                }
            }
        }
    }

    // Pass 3: features with a height; the highest surface wins.
    let mut z = vec![0f32; n];
    let mut aux = vec![0f32; n];
    for (k, f) in feats.iter().enumerate() {
        if !f.is_3d() {
            continue;
        }
        let Some((c0, r0, c1, r1)) = clip(f.bbox, x0, y0, w, h) else {
            continue;
        };
        for r in r0..r1 {
            let y = y0 + r as i64;
            let py = y as f64 + 0.5;
            for c in c0..c1 {
                let x = x0 + c as i64;
                let p = r * w + c;
                if let Some((zz, a)) = sample(f, &keys, x, y, x as f64 + 0.5, py) {
                    if zz > z[p] {
                        z[p] = zz;
                        aux[p] = a;
                        owner[p] = k as u32;
                    }
                }
            }
        }
    }

    // Pass 4: shadows, where the way to the sun is blocked by another feature.
    let mut shadow = vec![false; n];
    for (k, f) in feats.iter().enumerate() {
        if !f.is_3d() || f.height < 0.3 {
            continue;
        }
        let Some((c0, r0, c1, r1)) = clip(f.shadow_bbox(), x0, y0, w, h) else {
            continue;
        };
        let crown = match (f.kind, f.shape) {
            (Kind::Tree, Shape::Circle { cx, cy, r }) => Some((cx, cy, r)),
            _ => None,
        };
        let (base, top) = ((f.height * CROWN_BASE) as f64, f.height as f64);
        for r in r0..r1 {
            let py = (y0 + r as i64) as f64 + 0.5;
            for c in c0..c1 {
                let p = r * w + c;
                if shadow[p] || owner[p] == k as u32 || z[p] >= f.height {
                    continue;
                }
                let px = (x0 + c as i64) as f64 + 0.5;
                shadow[p] = match crown {
                    Some((cx, cy, rad)) => {
                        crown_shades(cx, cy, rad, base, top, px, py, z[p] as f64)
                    }
                    None => f
                        .shape
                        .shades(px, py, (f.height - z[p]) as f64 * SHADOW_PX_PER_M),
                };
            }
        }
    }

    // Pass 5: colours, classes and heights.
    let lo = vnoise_window(keys.lo, 6, x0, y0, w, h);
    let mid = vnoise_window(keys.mid, 4, x0, y0, w, h);
    let t1 = vnoise_window(keys.t1, 12, x0, y0, w, h);
    let t2 = vnoise_window(keys.t2, 10, x0, y0, w, h);
    let mut tile = Tile {
        w,
        h,
        ir: vec![0; n],
        r: vec![0; n],
        g: vec![0; n],
        dsm: vec![0.0; n],
        gt: vec![0; n],
    };
    for r in 0..h {
        let y = y0 + r as i64;
        let py = y as f64 + 0.5;
        for c in 0..w {
            let x = x0 + c as i64;
            let p = r * w + c;
            let nz = tri4(hp(keys.pix, x, y));
            let (mut col, sigma, class, dz) = match owner[p] {
                OWN_ROAD => {
                    let s = 0.9 + 0.2 * lo[p] + 0.06 * (mid[p] - 0.5);
                    ([118.0 * s, 121.0 * s, 125.0 * s], 6.0, IMPERVIOUS, 0.0)
                }
                OWN_MARK => ([222.0, 224.0, 226.0], 6.0, IMPERVIOUS, 0.0),
                OWN_WALK => {
                    let s = 0.93 + 0.14 * mid[p];
                    ([152.0 * s, 146.0 * s, 139.0 * s], 7.0, IMPERVIOUS, 0.1)
                }
                OWN_LAWN => {
                    let dry = lo[p] * lo[p];
                    let v = mid[p] - 0.5;
                    let col = [
                        198.0 - 40.0 * dry + 14.0 * v,
                        102.0 + 22.0 * dry + 5.0 * v,
                        96.0 + 12.0 * dry + 4.0 * v,
                    ];
                    (col, 8.0, LOW_VEG, 0.08 * (1.0 + nz[0]))
                }
                k => {
                    let f = &feats[k as usize];
                    let (col, sigma) = colour(f, &keys, x, y, x as f64 + 0.5, py, aux[p], mid[p]);
                    let dz = match f.kind {
                        Kind::Bed => 0.3 * mid[p],
                        _ => z[p],
                    };
                    (col, sigma, f.class, dz)
                }
            };
            if shadow[p] {
                col = [col[0] * 0.5 + 8.0, col[1] * 0.48 + 8.0, col[2] * 0.5 + 10.0];
            }
            let q = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
            let common = 0.5 * sigma * nz[3];
            tile.ir[p] = q(col[0] + sigma * nz[0] + common);
            tile.r[p] = q(col[1] + sigma * nz[1] + common);
            tile.g[p] = q(col[2] + sigma * nz[2] + common);
            tile.gt[p] = class;
            // Heights are quantised to 1/64 m (1.6 cm, the precision of a
            // photogrammetric DSM): exact in f32 and much easier to compress.
            let height = 262.0 + 9.0 * t1[p] + 1.6 * t2[p] + dz;
            tile.dsm[p] = (height * 64.0).round() * (1.0 / 64.0);
        }
    }
    tile
}
