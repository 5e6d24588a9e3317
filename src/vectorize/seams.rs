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
//! reach the bottom of the current block ("pending"), links them with the
//! next block's polygons they share a seam segment with (union-find over
//! the seam's edge intervals; no geometry is computed for that), and hands
//! on every region that can no longer grow (none of its pieces reaches the
//! next seam) as the union of its pieces: one cascaded union (OGR, GEOS)
//! per region, so a region crossing many seams is unioned once, not once
//! per seam.
//!
//! Memory: the pending regions are those crossing the current seam, with
//! all of their pieces above it. A region that spans the whole map (a road
//! network, a background class) stays pending until the last block, so in
//! the worst case the pending set is the size of the output.

use crate::error::{Error, Result};
use gdal::vector::Geometry;
use gdal_sys::OGRwkbGeometryType;
use std::path::PathBuf;

/// A polygon of one class, in pixel coordinates.
pub struct Piece {
    pub class: u8,
    pub geom: Geometry,
}

/// A region that reaches the seam below the current block: the pieces it
/// is made of so far (joined only when the region is complete, so each
/// region is unioned once, not once per seam).
struct Pending {
    class: u8,
    pieces: Vec<Geometry>,
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
    /// The most regions pending at any seam.
    pub max_pending: usize,
    /// The most pieces held pending at any seam.
    pub max_pending_pieces: usize,
    /// Regions that were joined from pieces of several blocks.
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
            max_pending_pieces: 0,
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

        // union-find over pending regions (0..n) and this block's pieces (n..)
        let mut parent: Vec<usize> = (0..n + pieces.len()).collect();
        fn find(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        if n > 0 {
            // the pending regions' edges on the seam, sorted: they never
            // overlap (a pixel side above the seam belongs to one region),
            // so sorted by start they are sorted by end too
            let mut seam: Vec<(f64, f64, usize)> = pending
                .iter()
                .enumerate()
                .flat_map(|(i, p)| p.bottom.iter().map(move |&(a, b)| (a, b, i)))
                .collect();
            seam.sort_by(|x, y| x.0.total_cmp(&y.0));
            for (j, piece) in pieces.iter().enumerate() {
                if piece.geom.envelope().MinY != top {
                    continue;
                }
                for (a, b) in edges_on(&piece.geom, top) {
                    let first = seam.partition_point(|s| s.1 <= a);
                    for &(lo, hi, i) in seam[first..].iter().take_while(|s| s.0 < b) {
                        // a positive-length overlap, of the same class
                        if hi.min(b) > lo.max(a) && pending[i].class == piece.class {
                            let (r, q) = (find(&mut parent, i), find(&mut parent, n + j));
                            if r != q {
                                parent[r.max(q)] = r.min(q);
                            }
                        }
                    }
                }
            }
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for i in 0..parent.len() {
            let r = find(&mut parent, i);
            groups.entry(r).or_default().push(i);
        }
        let mut pending: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
        let mut pieces: Vec<Option<Piece>> = pieces.into_iter().map(Some).collect();
        for members in groups.values() {
            // links join regions of one class only
            let mut region = Pending {
                class: 0,
                pieces: Vec::new(),
                bottom: Vec::new(),
            };
            let mut reaches_bottom = false;
            for &i in members {
                if i < n {
                    let p = pending[i].take().expect("once");
                    region.class = p.class;
                    region.pieces.extend(p.pieces);
                } else {
                    let p = pieces[i - n].take().expect("once");
                    region.class = p.class;
                    if y1 < self.height && p.geom.envelope().MaxY == bottom {
                        reaches_bottom = true;
                        region.bottom.extend(edges_on(&p.geom, bottom));
                    }
                    region.pieces.push(p.geom);
                }
            }
            if reaches_bottom {
                region.bottom = merge_intervals(region.bottom);
                self.pending.push(region);
            } else {
                let class = region.class;
                let geom = self.join(region.pieces, y0)?;
                out(Piece { class, geom })?;
            }
        }
        self.max_pending = self.max_pending.max(self.pending.len());
        let held: usize = self.pending.iter().map(|p| p.pieces.len()).sum();
        self.max_pending_pieces = self.max_pending_pieces.max(held);
        Ok(())
    }

    fn join(&mut self, pieces: Vec<Geometry>, y0: usize) -> Result<Geometry> {
        if pieces.len() > 1 {
            self.joined += 1;
        }
        union_all(pieces).map_err(|reason| {
            Error::file(
                &self.map,
                format!("cannot dissolve polygons across the seams above row {y0}: {reason}"),
            )
        })
    }

    /// Passes on what is still pending (nothing, when the last block ended
    /// at the map's last row); returns how many regions were joined from
    /// pieces of several blocks in all.
    pub fn finish(mut self, out: &mut dyn FnMut(Piece) -> Result<()>) -> Result<u64> {
        let y = self.next_y;
        for p in std::mem::take(&mut self.pending) {
            let geom = self.join(p.pieces, y)?;
            out(Piece {
                class: p.class,
                geom,
            })?;
        }
        Ok(self.joined)
    }
}

/// The union of `geoms`, polygons that share edges and together form one
/// connected region.
///
/// Only the outer rings are unioned: a piece's hole lies inside its own
/// block, enclosed by that piece, so no other piece of the region overlaps
/// it, and the region is the union of the outer rings with every piece's
/// holes added back. This keeps the (GEOS) union small when a region, say
/// a background class, carries thousands of holes.
fn union_all(geoms: Vec<Geometry>) -> std::result::Result<Geometry, String> {
    if geoms.len() == 1 {
        return Ok(geoms.into_iter().next().expect("one"));
    }
    let mut shells = multi_polygon()?;
    let mut holes = Vec::new();
    for g in &geoms {
        for poly in polygons(g) {
            let mut shell =
                Geometry::empty(OGRwkbGeometryType::wkbPolygon).map_err(|e| e.to_string())?;
            for r in 0..poly.geometry_count() {
                let ring = poly.get_geometry(r).clone();
                if r == 0 {
                    shell.add_geometry(ring).map_err(|e| e.to_string())?;
                } else {
                    holes.push(ring);
                }
            }
            shells.add_geometry(shell).map_err(|e| e.to_string())?;
        }
    }
    let union = cascaded_union(&shells)?;
    if gdal::vector::geometry_type_flatten(union.geometry_type()) == OGRwkbGeometryType::wkbPolygon
    {
        // the union leaves vertices where the seams crossed straight edges
        let mut union = without_collinear(&union).map_err(|e| e.to_string())?;
        for h in holes {
            union.add_geometry(h).map_err(|e| e.to_string())?;
        }
        return Ok(union);
    }
    // not one polygon (never expected): the plain union of everything
    let mut all = multi_polygon()?;
    for g in geoms {
        all.add_geometry(g).map_err(|e| e.to_string())?;
    }
    cascaded_union(&all)
}

/// `poly` without the vertices in the middle of a straight horizontal or
/// vertical run (exact: pixel coordinates), as GDAL's polygonizer writes
/// its rings.
fn without_collinear(poly: &Geometry) -> gdal::errors::Result<Geometry> {
    let mut out = Geometry::empty(OGRwkbGeometryType::wkbPolygon)?;
    let mut pts = Vec::new();
    for r in 0..poly.geometry_count() {
        pts.clear();
        poly.get_geometry(r).get_points(&mut pts);
        let mut ring: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        if ring.len() > 1 && ring.first() == ring.last() {
            ring.pop();
        }
        let straight = |a: (f64, f64), b: (f64, f64), c: (f64, f64)| {
            (a.0 == b.0 && b.0 == c.0) || (a.1 == b.1 && b.1 == c.1)
        };
        // repeat until no vertex of the (cyclic) ring is in a straight run
        loop {
            let n = ring.len();
            if n < 4 {
                break;
            }
            let keep: Vec<(f64, f64)> = (0..n)
                .filter(|&i| !straight(ring[(i + n - 1) % n], ring[i], ring[(i + 1) % n]))
                .map(|i| ring[i])
                .collect();
            if keep.len() == n || keep.len() < 3 {
                break;
            }
            ring = keep;
        }
        let mut g = Geometry::empty(OGRwkbGeometryType::wkbLinearRing)?;
        for &p in &ring {
            g.add_point_2d(p);
        }
        g.add_point_2d(ring[0]);
        out.add_geometry(g)?;
    }
    Ok(out)
}

fn multi_polygon() -> std::result::Result<Geometry, String> {
    Geometry::empty(OGRwkbGeometryType::wkbMultiPolygon).map_err(|e| e.to_string())
}

/// `OGR_G_UnionCascaded` (GEOS) of a multipolygon.
fn cascaded_union(multi: &Geometry) -> std::result::Result<Geometry, String> {
    crate::raster::reset_errors();
    // SAFETY: a valid geometry; GDAL returns a new one or null
    let h = unsafe { gdal_sys::OGR_G_UnionCascaded(multi.c_geometry()) };
    if h.is_null() {
        return Err(crate::raster::last_message()
            .unwrap_or_else(|| "OGR_G_UnionCascaded failed (is GDAL built with GEOS?)".into()));
    }
    // SAFETY: `h` is a new geometry we own: wrapped unowned, cloned into an
    // owned one, then destroyed (the crate has no public owned wrapper)
    unsafe {
        let view = Geometry::lazy_feature_geometry();
        view.set_c_geometry(h);
        let owned = view.clone();
        drop(view);
        gdal_sys::OGR_G_DestroyGeometry(h);
        Ok(owned)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge() {
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
