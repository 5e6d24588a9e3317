//! Stitching on the model's device: [`DeviceStitcher`] does what
//! [`ChunkStitcher`](crate::infer::stitch::ChunkStitcher) does (blend
//! overlapping windows, argmax, confidence, probabilities), with the strip
//! of the current region held as a candle tensor on the model's device, so
//! that on a GPU only the u8 class ids (and the u8 confidence and
//! probabilities when asked for) come back to the host.
//!
//! Written once over candle's [`Device`], so it runs on the CPU in tests.
//! The pipeline uses it only where the model does not run on the CPU (or
//! where the plan asks for it, [`Post::Device`](crate::infer::plan::Post));
//! on the CPU the plain-slice `ChunkStitcher` is faster.
//!
//! The strip is one f32 tensor `[rows][K + 2][width]`: channels `0..K` hold
//! the weighted sum of the class probabilities, channel `K` the sum of the
//! weights and channel `K + 1` the number of windows whose input was valid
//! at the pixel. A window is added as one read-modify-write of the block it
//! covers: the block is read (a strided view), the window's `w * p` added
//! (one f32 multiply and one f32 add per value, as in `ChunkStitcher`), and
//! the sum written back in place ([`SetBlock`], a 2-D strided copy on
//! either device). Windows come one by one in grid order, so each pixel's
//! sum runs over its windows in the same order and with the same f32
//! operations as on the host: the maps are bit-identical (tested against
//! `ChunkStitcher`).
//!
//! Argmax ties go to the lowest channel, as on the host: the first channel
//! equal to the maximum is found by tensor ops (not candle's `argmax`,
//! whose tie rule is the kernel's).

use crate::infer::stitch::{weights_1d, Band, Blend, Region};
use crate::infer::window::{Rect, Window, WindowGrid};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Result, Tensor};

/// One window's prediction on the device: class probabilities `[K][n][n]`
/// f32 and validity `[n][n]` f32 (1 = valid, 0 = not), both on the
/// stitcher's device (views into a batch's tensors are fine).
#[derive(Debug, Clone, Copy)]
pub struct DevicePrediction<'a> {
    pub probs: &'a Tensor,
    pub valid: &'a Tensor,
}

/// The accumulator of one region on a candle device; the same contract as
/// [`ChunkStitcher`](crate::infer::stitch::ChunkStitcher).
pub struct DeviceStitcher {
    grid: WindowGrid,
    k: usize,
    ids: Vec<u8>,
    confidence: bool,
    probabilities: bool,
    x0: usize,
    width: usize,
    y1: usize,
    tile_rows: usize,
    cap: usize,
    /// Raster row of strip row 0 (= first row not yet emitted).
    top: usize,
    /// The 2-D weights `w[y] * w[x]`, `[n][n]`, on the device.
    wts: Tensor,
    /// `[cap][k + 2][width]`: weighted sums, weight sum, valid count.
    acc: Tensor,
}

impl DeviceStitcher {
    /// A stitcher for `region` on `device`; see
    /// [`ChunkStitcher::new`](crate::infer::stitch::ChunkStitcher::new).
    /// Errors only when the device cannot hold the strip.
    pub fn new(
        grid: WindowGrid,
        blend: Blend,
        class_ids: Vec<u8>,
        region: Region,
        tile_rows: usize,
        confidence: bool,
        device: &Device,
    ) -> Result<Self> {
        let Region { x0, x1, y0, y1 } = region;
        let size = grid.raster();
        assert!(x0 < x1 && x1 <= size.width && y0 < y1 && y1 <= size.height && tile_rows > 0);
        let k = class_ids.len();
        assert!((1..=255).contains(&k), "1 to 255 classes");
        let n = grid.window_size();
        let w1 = weights_1d(blend, &grid);
        // the same f32 product as ChunkStitcher's `wy * wts[i]`
        let w2: Vec<f32> = w1
            .iter()
            .flat_map(|&wy| w1.iter().map(move |&wx| wy * wx))
            .collect();
        let width = x1 - x0;
        let cap = n + tile_rows;
        Ok(DeviceStitcher {
            wts: Tensor::from_vec(w2, (n, n), device)?,
            acc: Tensor::zeros((cap, k + 2, width), DType::F32, device)?,
            grid,
            k,
            ids: class_ids,
            confidence,
            probabilities: false,
            x0,
            width,
            y1,
            tile_rows,
            cap,
            top: y0,
        })
    }

    /// Also emit the class probabilities ([`Band::probabilities`]).
    pub fn with_probabilities(mut self, on: bool) -> Self {
        self.probabilities = on;
        self
    }

    /// Bytes of device memory the strip holds: `(window + tile_rows) *
    /// width * 4 (k + 2)` (the weights add `4 window²`).
    pub fn bytes_for(window: usize, tile_rows: usize, width: usize, k: usize) -> usize {
        (window + tile_rows) * width * 4 * (k + 2) + 4 * window * window
    }

    /// Adds a window. `pred` is `None` for a window skipped as all-nodata.
    /// Windows must come in row-major order.
    pub fn add(&mut self, w: &Window, pred: Option<DevicePrediction<'_>>) -> Result<()> {
        let Some(p) = pred else { return Ok(()) };
        let (n, k) = (w.size, self.k);
        if p.probs.dims() != [k, n, n] || p.valid.dims() != [n, n] {
            candle_core::bail!(
                "device stitcher: a window's prediction is {:?} and its mask {:?}, expected [{k}, {n}, {n}] and [{n}, {n}]",
                p.probs.dims(),
                p.valid.dims()
            );
        }
        let clip = self.grid.clip(w);
        let cx0 = clip.x.max(self.x0);
        let cx1 = (clip.x + clip.width).min(self.x0 + self.width);
        // rows above `top` are emitted (or belong to another region)
        let cy0 = clip.y.max(self.top);
        let cy1 = (clip.y + clip.height).min(self.y1);
        if cx0 >= cx1 || cy0 >= cy1 {
            return Ok(());
        }
        assert!(
            cy1 <= self.top + self.cap,
            "window beyond the strip: rows must come in order"
        );
        let (h, wd) = (cy1 - cy0, cx1 - cx0);
        let (j0, i0) = ((cy0 as i64 - w.y) as usize, (cx0 as i64 - w.x) as usize);
        // [h][1][wd] weights and validity, [h][k][wd] probabilities
        let wt = self.wts.narrow(0, j0, h)?.narrow(1, i0, wd)?.unsqueeze(1)?;
        let valid = p.valid.narrow(0, j0, h)?.narrow(1, i0, wd)?.unsqueeze(1)?;
        let probs = p
            .probs
            .narrow(1, j0, h)?
            .narrow(2, i0, wd)?
            .transpose(0, 1)?;
        let contrib = probs.broadcast_mul(&wt)?;
        let block = Tensor::cat(&[&contrib, &wt, &valid], 1)?;
        let (r0, c0) = (cy0 - self.top, cx0 - self.x0);
        let cur = self.acc.narrow(0, r0, h)?.narrow(2, c0, wd)?;
        let sum = (cur + block)?;
        self.acc.inplace_op2(&sum, &SetBlock { row: r0, col: c0 })
    }

    /// Declares window row `row` complete and returns the bands that became
    /// final. Call [`finish`](Self::finish) after the last row.
    pub fn end_row(&mut self, row: usize) -> Result<Vec<Band>> {
        let h = self.y1;
        let final_to = if row + 1 >= self.grid.rows() {
            h
        } else {
            (self.grid.row_origin(row + 1).max(0) as usize).min(h)
        };
        let mut out = Vec::new();
        while final_to >= self.top + self.tile_rows {
            out.push(self.emit(self.tile_rows)?);
        }
        if final_to == h && self.top < h {
            out.push(self.emit(h - self.top)?);
        }
        Ok(out)
    }

    /// Emits everything left (the region's last rows).
    pub fn finish(mut self) -> Result<Vec<Band>> {
        let h = self.y1;
        let mut out = Vec::new();
        while self.top < h {
            let n = (h - self.top).min(self.tile_rows);
            out.push(self.emit(n)?);
        }
        Ok(out)
    }

    /// The first `rows` rows of the strip as a band: argmax, confidence and
    /// probabilities computed on the device, only u8 planes downloaded.
    fn emit(&mut self, rows: usize) -> Result<Band> {
        let (k, width) = (self.k, self.width);
        let dev = self.acc.device().clone();
        let npx = rows * width;
        let slab = self.acc.narrow(0, 0, rows)?;
        let probs = slab.narrow(1, 0, k)?; // [rows][k][width]
        let wsum = slab.narrow(1, k, 1)?; // [rows][1][width]
        let count = slab.narrow(1, k + 1, 1)?;
        let max = probs.max_keepdim(1)?;
        // the first channel holding the maximum: the largest of (k - c)
        // over the channels equal to it
        let desc: Vec<f32> = (0..k).map(|c| (k - c) as f32).collect();
        let desc = Tensor::from_vec(desc, (1, k, 1), &dev)?;
        let first = probs
            .broadcast_eq(&max)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&desc)?
            .max_keepdim(1)?; // k - best
        let best = first.affine(-1.0, k as f64)?; // [rows][1][width], exact
        let ok = count.gt(0f64)?.mul(&wsum.gt(0f64)?)?; // [rows][1][width] u8
        let nodata = |shape: &[usize]| -> Result<Tensor> {
            Tensor::full(crate::classes::NODATA as f32, shape, &dev)
        };
        let one_plane = [rows, 1, width];
        let chans = ok
            .where_cond(&best, &nodata(&one_plane)?)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        let classes = chans
            .into_iter()
            .map(|c| match self.ids.get(c as usize) {
                Some(&id) => id,
                None => crate::classes::NODATA,
            })
            .collect();
        // (v / wsum).clamp(0, 1) * scale, rounded, as on the host
        let quantise = |v: &Tensor, scale: f64| -> Result<Tensor> {
            v.broadcast_div(&wsum)?
                .clamp(0f32, 1f32)?
                .affine(scale, 0.0)?
                .round()
        };
        let confidence = if self.confidence {
            let c = quantise(&max, 100.0)?;
            Some(
                ok.where_cond(&c, &nodata(&one_plane)?)?
                    .to_dtype(DType::U8)?
                    .flatten_all()?
                    .to_vec1::<u8>()?,
            )
        } else {
            None
        };
        let probabilities = if self.probabilities {
            // crate::infer::stitch::quantise_probs on the device: a channel
            // before the map's class that rounds as high as it is lowered
            // one step, so the first largest stays the map's class
            let q = quantise(&probs, 254.0)?; // [rows][k][width]
            let qbest = quantise(&max, 254.0)?; // [rows][1][width]
            let chan: Vec<f32> = (0..k).map(|c| c as f32).collect();
            let chan = Tensor::from_vec(chan, (1, k, 1), &dev)?;
            let lower = chan.broadcast_lt(&best)?.mul(&q.broadcast_ge(&qbest)?)?;
            let lowered = (qbest - 1.0)?.clamp(0f32, 255f32)?;
            let full = [rows, k, width];
            let q = lower.where_cond(&lowered.broadcast_as(&full[..])?, &q)?;
            let q = ok
                .broadcast_as(&full[..])?
                .where_cond(&q, &nodata(&full)?)?;
            Some(
                q.transpose(0, 1)? // [k][rows][width]: one plane per channel
                    .to_dtype(DType::U8)?
                    .flatten_all()?
                    .to_vec1::<u8>()?,
            )
        } else {
            None
        };
        debug_assert!(confidence.as_ref().is_none_or(|c: &Vec<u8>| c.len() == npx));
        let band = Band {
            rect: Rect {
                x: self.x0,
                y: self.top,
                width,
                height: rows,
            },
            classes,
            confidence,
            probabilities,
        };
        // shift the strip up by `rows`
        let rest = self.acc.narrow(0, rows, self.cap - rows)?;
        let fresh = Tensor::zeros((rows, k + 2, width), DType::F32, &dev)?;
        self.acc = Tensor::cat(&[&rest, &fresh], 0)?;
        self.top += rows;
        Ok(band)
    }
}

/// Writes a contiguous `[h][c][wd]` block into a contiguous `[rows][c][width]`
/// tensor at row `row`, column `col`, in place: `h * c` lines of `wd`
/// values, one 2-D strided copy (candle's `copy2d`, on any device).
struct SetBlock {
    row: usize,
    col: usize,
}

impl SetBlock {
    fn run<S: BackendStorage>(&self, dst: &mut S, dl: &Layout, src: &S, sl: &Layout) -> Result<()> {
        let (Some((d_off, _)), Some((s_off, _))) =
            (dl.contiguous_offsets(), sl.contiguous_offsets())
        else {
            candle_core::bail!("set-block: both tensors must be contiguous")
        };
        let (dd, sd) = (dl.dims(), sl.dims());
        if dd.len() != 3
            || sd.len() != 3
            || dd[1] != sd[1]
            || self.row + sd[0] > dd[0]
            || self.col + sd[2] > dd[2]
        {
            candle_core::bail!(
                "set-block: a {sd:?} block does not fit a {dd:?} tensor at {}, {}",
                self.row,
                self.col
            )
        }
        let (c, width, wd) = (dd[1], dd[2], sd[2]);
        src.copy2d(
            dst,
            sd[0] * c,
            wd,
            wd,
            width,
            s_off,
            d_off + self.row * c * width + self.col,
        )
    }
}

impl InplaceOp2 for SetBlock {
    fn name(&self) -> &'static str {
        "set-block"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        self.run(dst, dl, src, sl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        src: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        self.run(dst, dl, src, sl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::stitch::{ChunkStitcher, Prediction};
    use crate::infer::window::Size;
    use proptest::prelude::*;

    /// A prediction that depends on the window, so overlapping windows
    /// disagree; `ties` makes every other pixel a tie between channels.
    fn fake(w: &Window, k: usize, ties: bool) -> (Vec<f32>, Vec<u8>) {
        let n = w.size;
        let mut p = vec![0.0f32; k * n * n];
        let mut v = vec![1u8; n * n];
        for j in 0..n {
            for i in 0..n {
                let (gx, gy) = (w.x + i as i64, w.y + j as i64);
                let mut tot = 0.0;
                for c in 0..k {
                    let h = if ties && (gx + gy) % 2 == 0 {
                        1.0 + (c % 2) as f32
                    } else {
                        ((gx * 31 + gy * 17 + c as i64 * 7 + w.col as i64 * 13 + w.row as i64 * 5)
                            .rem_euclid(97)) as f32
                            + 1.0
                    };
                    p[c * n * n + j * n + i] = h;
                    tot += h;
                }
                for c in 0..k {
                    p[c * n * n + j * n + i] /= tot;
                }
                // a few invalid pixels, some of them only in some windows
                if (gx * 7 + gy * 3 + w.col as i64).rem_euclid(23) == 0 {
                    v[j * n + i] = 0;
                }
            }
        }
        (p, v)
    }

    struct Case {
        size: Size,
        win: usize,
        ov: f64,
        blend: Blend,
        chunk: usize,
        tile: usize,
        k: usize,
        ties: bool,
        /// Rows `[y0, y1)` stitched as two regions cut here.
        cut: Option<usize>,
        confidence: bool,
        probabilities: bool,
    }

    /// Stitches the case with both stitchers; the bands of each.
    fn both(c: &Case) -> (Vec<Band>, Vec<Band>) {
        let g = WindowGrid::new(c.size, c.win, c.ov).unwrap();
        let ids: Vec<u8> = (0..c.k as u8).map(|i| 10 + 3 * i).collect();
        let rows = match c.cut {
            Some(y) => vec![(0, y), (y, c.size.height)],
            None => vec![(0, c.size.height)],
        };
        let (mut host, mut dev) = (Vec::new(), Vec::new());
        for (y0, y1) in rows {
            let mut x0 = 0;
            while x0 < c.size.width {
                let x1 = (x0 + c.chunk).min(c.size.width);
                let region = Region { x0, x1, y0, y1 };
                let mut a =
                    ChunkStitcher::new(g, c.blend, ids.clone(), region, c.tile, c.confidence)
                        .with_probabilities(c.probabilities);
                let mut b = DeviceStitcher::new(
                    g,
                    c.blend,
                    ids.clone(),
                    region,
                    c.tile,
                    c.confidence,
                    &Device::Cpu,
                )
                .unwrap()
                .with_probabilities(c.probabilities);
                for r in g.rows_touching(y0, y1) {
                    for col in g.cols_touching(x0, x1) {
                        let w = g.window(col, r);
                        // every seventh window skipped as all-nodata
                        if (r * 3 + col) % 7 == 6 {
                            a.add(&w, None);
                            b.add(&w, None).unwrap();
                            continue;
                        }
                        let (p, v) = fake(&w, c.k, c.ties);
                        a.add(
                            &w,
                            Some(Prediction {
                                probs: &p,
                                logits: false,
                                valid: &v,
                            }),
                        );
                        let n = w.size;
                        let pt = Tensor::from_vec(p, (c.k, n, n), &Device::Cpu).unwrap();
                        let vt = Tensor::from_vec(v, (n, n), &Device::Cpu)
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap();
                        b.add(
                            &w,
                            Some(DevicePrediction {
                                probs: &pt,
                                valid: &vt,
                            }),
                        )
                        .unwrap();
                    }
                    host.extend(a.end_row(r));
                    dev.extend(b.end_row(r).unwrap());
                }
                host.extend(a.finish());
                dev.extend(b.finish().unwrap());
                x0 = x1;
            }
        }
        (host, dev)
    }

    #[test]
    fn same_bands_as_the_host_stitcher() {
        let mut n = 0;
        for blend in Blend::ALL {
            for (w, h, win, ov, chunk, tile, cut) in [
                (50, 30, 16, 0.5, 1000, 30, None),
                (37, 41, 16, 0.25, 20, 7, Some(13)),
                (20, 20, 16, 0.25, 512, 64, None),
                (9, 70, 24, 0.8, 4, 5, Some(40)),
                (64, 64, 32, 0.0, 32, 16, None),
            ] {
                for (confidence, probabilities, ties) in [
                    (false, false, false),
                    (true, true, false),
                    (true, true, true),
                ] {
                    let c = Case {
                        size: Size {
                            width: w,
                            height: h,
                        },
                        win,
                        ov,
                        blend,
                        chunk,
                        tile,
                        k: 4,
                        ties,
                        cut,
                        confidence,
                        probabilities,
                    };
                    let (a, b) = both(&c);
                    assert!(!a.is_empty());
                    assert_eq!(
                        a, b,
                        "{blend} {w}x{h} window {win} overlap {ov} chunk {chunk}"
                    );
                    n += a.len();
                }
            }
        }
        assert!(n > 50);
    }

    /// A 16 px grid over a 20 x 20 raster and a two-class stitcher of it
    /// (class ids 7 and 9) on the CPU device.
    fn small(confidence: bool) -> (WindowGrid, DeviceStitcher) {
        let size = Size {
            width: 20,
            height: 20,
        };
        let g = WindowGrid::new(size, 16, 0.25).unwrap();
        let region = Region {
            x0: 0,
            x1: 20,
            y0: 0,
            y1: 20,
        };
        let st = DeviceStitcher::new(
            g,
            Blend::Hann,
            vec![7, 9],
            region,
            64,
            confidence,
            &Device::Cpu,
        )
        .unwrap();
        (g, st)
    }

    #[test]
    fn ties_go_to_the_lowest_channel_and_nodata_stays() {
        let (g, mut st) = small(true);
        let mut bands = Vec::new();
        for r in 0..g.rows() {
            for c in 0..g.cols() {
                let w = g.window(c, r);
                if c == 1 && r == 1 {
                    st.add(&w, None).unwrap();
                    continue;
                }
                let p = Tensor::full(0.5f32, (2, 16, 16), &Device::Cpu).unwrap();
                let mut v = vec![1f32; 256];
                let (i, j) = (3 - w.x, 3 - w.y);
                if (0..16).contains(&i) && (0..16).contains(&j) {
                    v[(j * 16 + i) as usize] = 0.0;
                }
                let v = Tensor::from_vec(v, (16, 16), &Device::Cpu).unwrap();
                st.add(
                    &w,
                    Some(DevicePrediction {
                        probs: &p,
                        valid: &v,
                    }),
                )
                .unwrap();
            }
            bands.extend(st.end_row(r).unwrap());
        }
        bands.extend(st.finish().unwrap());
        assert_eq!(bands.len(), 1);
        let b = &bands[0];
        assert_eq!(b.classes[3 * 20 + 3], 255);
        assert_eq!(b.classes[0], 7, "ties go to the first channel");
        assert_eq!(b.confidence.as_ref().unwrap()[0], 50);
        assert_eq!(b.classes[19 * 20 + 19], 255);
    }

    #[test]
    fn a_wrong_shape_is_an_error() {
        let (g, mut st) = small(false);
        let p = Tensor::zeros((3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::zeros((16, 16), DType::F32, &Device::Cpu).unwrap();
        let e = st.add(
            &g.window(0, 0),
            Some(DevicePrediction {
                probs: &p,
                valid: &v,
            }),
        );
        assert!(e.unwrap_err().to_string().contains("expected [2, 16, 16]"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any grid, region cut, chunk and band height: the same bands.
        #[test]
        fn bit_identical_to_chunk_stitcher(w in 1usize..60, h in 2usize..60, win in 8usize..32,
                                           ov in 0.0f64..0.8, chunk in 1usize..70, tile in 1usize..30,
                                           cut in 1usize..59, k in 1usize..6, blend_i in 0usize..3,
                                           ties: bool, side: bool) {
            let c = Case {
                size: Size { width: w, height: h },
                win,
                ov,
                blend: Blend::ALL[blend_i],
                chunk,
                tile,
                k,
                ties,
                cut: Some(cut.min(h - 1)),
                confidence: side,
                probabilities: side,
            };
            let (a, b) = both(&c);
            prop_assert_eq!(a, b);
        }
    }
}
