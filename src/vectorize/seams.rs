//! Dissolving the polygons of consecutive blocks of rows across their seams.
//!
//! Each block of rows is polygonized on its own, in pixel coordinates
//! (x = column, y = row, both exact in `f64`), so a polygon of block
//! `[y0, y1)` that reaches its top row has edges lying exactly on `y = y0`,
//! and one that reaches its bottom row has edges on `y = y1`. Two polygons
//! of the same class on either side of a seam belong to one 4-connected
//! region exactly when those edges overlap over a positive length (a
//! common pixel side); touching at a corner only is diagonal contact, which
//! 4-connectivity does not join. The [`Dissolver`] keeps the polygons that
//! reach the bottom of the current block ("pending"), unions them (OGR,
//! GEOS) with the next block's polygons they share a seam segment with, and
//! hands on every polygon that can no longer grow: one that does not reach
//! the next seam, or that found no partner below it.
//!
//! Memory: the pending polygons are those crossing the current seam, merged
//! with everything of their region above it. A region that spans the whole
//! map (a road network, a background class) stays pending until the last
//! block, so in the worst case the pending set is the size of the output.

use crate::error::{Error, Result};
use gdal::vector::Geometry;
use gdal_sys::OGRwkbGeometryType;
use std::path::PathBuf;

/// A polygon of one class, in pixel coordinates.
pub struct Piece {
    pub class: u8,
    pub geom: Geometry,
}

struct Pending {
    class: u8,
    geom: Geometry,
    /// The x intervals of its edges on the seam below it.
    bottom: Vec<(f64, f64)>,
}

/// Joins the polygons of consecutive blocks across the seams between them;
/// see the module documentation.
pub struct Dissolver {
    height: usize,
    map: PathBuf,
    pending: Vec<Pending>,
    next_y: usize,
    /// The most polygons pending at any seam.
    pub max_pending: usize,
    /// Polygons that were joined with others across a seam.
    pub joined: u64,
}

impl Dissolver {
    /// A dissolver for a map of `height` rows; `map` names the file in errors.
    pub fn new(height: usize, map: impl Into<PathBuf>) -> Dissolver {
        Dissolver {
            height,
            map: map.into(),
            pending: Vec::new(),
            next_y: 0,
            max_pending: 0,
            joined: 0,
        }
    }

    /// Takes the polygons of block `[y0, y1)` (blocks come in order, each
    /// starting where the last ended) and passes every polygon that is
    /// complete to `out`, in pixel coordinates.
    pub fn block(
        &mut self,
        y0: usize,
        y1: usize,
        pieces: Vec<Piece>,
        out: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        assert!(
            y0 == self.next_y && y1 > y0 && y1 <= self.height,
            "blocks in order"
        );
        self.next_y = y1;
        let top = y0 as f64;
        let bottom = y1 as f64;
        let pending = std::mem::take(&mut self.pending);
        let n = pending.len();
        let mut pieces: Vec<Option<Piece>> = pieces.into_iter().map(Some).collect();

        // union-find over pending (0..n) and this block's pieces (n..)
        let mut parent: Vec<usize> = (0..n + pieces.len()).collect();
        fn find(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        if n > 0 {
            for (j, piece) in pieces.iter().enumerate() {
                let piece = piece.as_ref().expect("all present");
                let env = piece.geom.envelope();
                if env.MinY != top {
                    continue;
                }
                let edges = edges_on(&piece.geom, top);
                for (i, p) in pending.iter().enumerate() {
                    if p.class == piece.class && share_segment(&p.bottom, &edges) {
                        let (a, b) = (find(&mut parent, i), find(&mut parent, n + j));
                        if a != b {
                            parent[a.max(b)] = a.min(b);
                        }
                    }
                }
            }
        }
        // groups: root -> members
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for i in 0..parent.len() {
            let r = find(&mut parent, i);
            groups.entry(r).or_default().push(i);
        }
        let mut pending: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
        for members in groups.values() {
            if members.len() == 1 {
                let i = members[0];
                if i < n {
                    // no partner below: complete
                    let p = pending[i].take().expect("once");
                    out(Piece {
                        class: p.class,
                        geom: p.geom,
                    })?;
                }
                continue;
            }
            // a group always holds a piece of this block: pending polygons
            // are only ever linked through one
            let keep = *members.iter().find(|&&i| i >= n).expect("a piece") - n;
            // links join polygons of one class only
            let class = pieces[keep].as_ref().expect("not taken yet").class;
            let mut geoms = Vec::with_capacity(members.len());
            for &i in members {
                if i < n {
                    geoms.push(pending[i].take().expect("once").geom);
                } else {
                    geoms.push(pieces[i - n].take().expect("once").geom);
                }
            }
            self.joined += members.len() as u64;
            let merged = union_all(geoms).map_err(|reason| {
                Error::file(
                    &self.map,
                    format!("cannot dissolve polygons across the seam at row {y0}: {reason}"),
                )
            })?;
            pieces[keep] = Some(Piece {
                class,
                geom: merged,
            });
        }
        // what reaches the next seam stays; the rest is complete
        for piece in pieces.into_iter().flatten() {
            if y1 < self.height && piece.geom.envelope().MaxY == bottom {
                let bottom_edges = edges_on(&piece.geom, bottom);
                self.pending.push(Pending {
                    class: piece.class,
                    geom: piece.geom,
                    bottom: bottom_edges,
                });
            } else {
                out(piece)?;
            }
        }
        self.max_pending = self.max_pending.max(self.pending.len());
        Ok(())
    }

    /// Passes on what is still pending (nothing, when the last block ended
    /// at the map's last row).
    pub fn finish(mut self, out: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
        for p in std::mem::take(&mut self.pending) {
            out(Piece {
                class: p.class,
                geom: p.geom,
            })?;
        }
        Ok(())
    }
}

/// The union of `geoms` (polygons that together form one connected region).
fn union_all(geoms: Vec<Geometry>) -> std::result::Result<Geometry, String> {
    let mut it = geoms.into_iter();
    let mut acc = it.next().ok_or("nothing to join")?;
    for g in it {
        crate::raster::reset_errors();
        acc = match acc.union(&g) {
            Some(u) => u,
            None => {
                let reason = crate::raster::last_message()
                    .unwrap_or_else(|| "OGR_G_Union failed (is GDAL built with GEOS?)".into());
                return Err(reason);
            }
        };
    }
    Ok(acc)
}

/// The polygons of `g` (a polygon, or each part of a multipolygon).
pub fn polygons(g: &Geometry) -> Vec<Geometry> {
    match gdal::vector::geometry_type_flatten(g.geometry_type()) {
        OGRwkbGeometryType::wkbPolygon => vec![g.clone()],
        OGRwkbGeometryType::wkbMultiPolygon | OGRwkbGeometryType::wkbGeometryCollection => (0..g
            .geometry_count())
            .flat_map(|i| polygons(&g.get_geometry(i)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The x intervals, sorted and merged, of the edges of `g` that lie on the
/// horizontal line `y`.
pub fn edges_on(g: &Geometry, y: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut pts = Vec::new();
    for poly in polygons(g) {
        for r in 0..poly.geometry_count() {
            pts.clear();
            poly.get_geometry(r).get_points(&mut pts);
            for w in pts.windows(2) {
                let (a, b) = (w[0], w[1]);
                if a.1 == y && b.1 == y && a.0 != b.0 {
                    out.push((a.0.min(b.0), a.0.max(b.0)));
                }
            }
        }
    }
    merge_intervals(out)
}

/// Sorts `v` and merges intervals that overlap or touch.
pub fn merge_intervals(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether two sorted, merged interval lists overlap over a positive
/// length (a shared point is no overlap).
pub fn share_segment(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if hi > lo {
            return true;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge_and_overlap_only_over_a_length() {
        assert_eq!(
            merge_intervals(vec![
                (3.0, 4.0),
                (0.0, 1.0),
                (1.0, 2.0),
                (5.0, 7.0),
                (6.0, 6.5)
            ]),
            vec![(0.0, 2.0), (3.0, 4.0), (5.0, 7.0)]
        );
        let a = [(0.0, 2.0), (5.0, 7.0)];
        assert!(!share_segment(&a, &[(2.0, 5.0)]), "corners only");
        assert!(share_segment(&a, &[(2.0, 5.5)]));
        assert!(share_segment(&a, &[(-3.0, 0.5)]));
        assert!(!share_segment(&a, &[(7.0, 9.0)]));
        assert!(!share_segment(&[], &a));
    }

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Geometry {
        Geometry::from_wkt(&format!(
            "POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"
        ))
        .unwrap()
    }

    #[test]
    fn edges_on_a_line() {
        let g = rect(1.0, 0.0, 4.0, 2.0);
        assert_eq!(edges_on(&g, 2.0), vec![(1.0, 4.0)]);
        assert_eq!(edges_on(&g, 0.0), vec![(1.0, 4.0)]);
        assert!(edges_on(&g, 1.0).is_empty());
    }

    /// Two blocks of 2 rows: a class-1 rectangle across the seam is joined;
    /// a class-2 one touching it only at a corner stays apart; a class-1
    /// rectangle below a class-2 one is not joined with it.
    #[test]
    fn joins_across_the_seam_by_shared_segment_and_class() {
        let mut d = Dissolver::new(4, "m.tif");
        let mut done: Vec<(u8, f64, [f64; 4])> = Vec::new();
        let mut out = |p: Piece| {
            let e = p.geom.envelope();
            done.push((p.class, p.geom.area(), [e.MinX, e.MinY, e.MaxX, e.MaxY]));
            Ok(())
        };
        d.block(
            0,
            2,
            vec![
                Piece {
                    class: 1,
                    geom: rect(0.0, 0.0, 2.0, 2.0),
                },
                Piece {
                    class: 2,
                    geom: rect(2.0, 1.0, 4.0, 2.0),
                },
            ],
            &mut out,
        )
        .unwrap();
        d.block(
            2,
            4,
            vec![
                Piece {
                    class: 1,
                    geom: rect(1.0, 2.0, 2.0, 4.0),
                },
                Piece {
                    class: 2,
                    geom: rect(0.0, 2.0, 1.0, 3.0),
                },
                Piece {
                    class: 1,
                    geom: rect(2.0, 2.0, 3.0, 3.0),
                },
            ],
            &mut out,
        )
        .unwrap();
        d.finish(&mut out).unwrap();
        done.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(
            done,
            vec![
                (1, 1.0, [2.0, 2.0, 3.0, 3.0]),
                (1, 6.0, [0.0, 0.0, 2.0, 4.0]),
                (2, 1.0, [0.0, 2.0, 1.0, 3.0]),
                (2, 2.0, [2.0, 1.0, 4.0, 2.0]),
            ]
        );
    }
}
