//! Direct convolution for layers with few output channels (at most 32),
//! stride 1, on AVX-512.
//!
//! im2col + GEMM copies every input value `k·k` times into the patch
//! matrix and then does only `c_out` multiply-adds per copied value: with
//! the 16 output channels of a U-Net's last decoder block, the copy costs
//! as much as the arithmetic, and those layers ran at 30-45 GFLOP/s a core
//! against 100 elsewhere (`benches/RESULTS.md`). Here each task takes a
//! few output rows of one sample, copies the input rows they need once
//! into a zero-padded slab that stays in cache, and computes 16 output
//! pixels of 8 or 16 channels at a time in registers: one load of 16 input
//! values feeds 16 fused multiply-adds, one per output channel, whose
//! weights are broadcast from a small table.
//!
//! Each output value is summed over `(c_in, ky, kx)` in that order, by the
//! same instructions whatever the batch and the thread count, so results
//! stay the same under both (they differ in the last bits from the GEMM
//! path's, whose blocking sums in another order).

use super::conv::{apply_epilogue, ConvShape, Epilogue};
use super::Shared;
use rayon::prelude::*;
use std::cell::RefCell;

/// Output rows per task.
const ROWS: usize = 4;
/// Output pixels per register block: one AVX-512 vector.
const PX: usize = 16;

/// Largest slab (one task's padded input rows), so that it stays in the
/// per-core cache and the transient memory stays that of im2col's buffer.
const SLAB_BYTES: usize = 2 << 20;

/// Whether `s` takes this kernel on this CPU.
pub(super) fn eligible(s: &ConvShape) -> bool {
    let slab = s.c_in * (ROWS + s.dilation * (s.kernel - 1)) * (s.width + 2 * s.padding + PX);
    s.stride == 1
        && s.kernel > 1
        && s.c_out <= 32
        && s.out_width() >= PX
        && slab * 4 <= SLAB_BYTES
        && avx512()
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// Each worker's padded input slab, reused across calls.
    static SLAB: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = conv(x, w)` and the epilogue, as [`super::conv2d_forward`]; the
/// caller checked [`eligible`].
pub(super) fn forward(s: &ConvShape, x: &[f32], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    let (oh, ow, k, d) = (s.out_height(), s.out_width(), s.kernel, s.dilation);
    let (h, wd, p) = (s.height, s.width, s.padding);
    let cb = if s.c_out <= 8 { 8 } else { 16 };
    // weights per block of `cb` channels as [c_in][ky][kx][cb], zero-padded
    let blocks: Vec<(usize, Vec<f32>)> = (0..s.c_out)
        .step_by(cb)
        .map(|c0| {
            let mut t = vec![0f32; s.c_in * k * k * cb];
            for co in c0..(c0 + cb).min(s.c_out) {
                for tap in 0..s.c_in * k * k {
                    t[tap * cb + co - c0] = w[co * s.c_in * k * k + tap];
                }
            }
            (c0, t)
        })
        .collect();
    // slab: the padded input rows of ROWS output rows, PX columns of slack
    let wp = wd + 2 * p + PX;
    let slab_rows = ROWS + d * (k - 1);
    let units: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|b| (0..oh).step_by(ROWS).map(move |r0| (b, r0)))
        .collect();
    let plane_out = oh * ow;
    let fill = |dst: Shared| {
        units.par_iter().for_each(|&(b, r0)| {
            let r1 = (r0 + ROWS).min(oh);
            SLAB.with(|slab| {
                let mut slab = slab.borrow_mut();
                let len = s.c_in * slab_rows * wp;
                slab.clear();
                slab.resize(len, 0.0);
                // padded row r0 + i is input row r0 + i - p
                for ci in 0..s.c_in {
                    let plane = &x[(b * s.c_in + ci) * h * wd..][..h * wd];
                    for i in 0..slab_rows {
                        let iy = (r0 + i) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let at = (ci * slab_rows + i) * wp + p;
                        slab[at..at + wd].copy_from_slice(&plane[iy as usize * wd..][..wd]);
                    }
                }
                for (c0, wt) in &blocks {
                    let n_co = cb.min(s.c_out - c0);
                    let taps = Taps {
                        slab: &slab,
                        plane: slab_rows * wp,
                        wp,
                        c_in: s.c_in,
                        k,
                        d,
                        wt,
                    };
                    for oy in r0..r1 {
                        for ox0 in (0..ow).step_by(PX) {
                            let acc = taps.block(cb, oy - r0, ox0);
                            let n = PX.min(ow - ox0);
                            for (co, a) in acc.iter().take(n_co).enumerate() {
                                let at = (b * s.c_out + c0 + co) * plane_out + oy * ow + ox0;
                                // SAFETY: unit (b, r0) alone writes rows
                                // r0..r1 of sample b
                                let out = unsafe { std::slice::from_raw_parts_mut(dst.at(at), n) };
                                out.copy_from_slice(&a[..n]);
                            }
                        }
                        for co in 0..n_co {
                            let at = (b * s.c_out + c0 + co) * plane_out + oy * ow;
                            // SAFETY: as above, a row this unit wrote
                            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(at), ow) };
                            apply_epilogue(row, ep, c0 + co, at);
                        }
                    }
                }
            });
        });
    };
    // SAFETY: the units cover every output row of every sample and
    // channel block, each written before the epilogue reads it
    unsafe { super::filled(s.output_len(), |out| fill(Shared(out))) }
}

/// One task's padded input slab (`c_in` planes of `plane` values, rows
/// `wp` apart) and one channel block's weights (`[c_in][ky][kx][cb]`), for
/// a `k x k` kernel of dilation `d`.
#[derive(Clone, Copy)]
struct Taps<'a> {
    slab: &'a [f32],
    plane: usize,
    wp: usize,
    c_in: usize,
    k: usize,
    d: usize,
    wt: &'a [f32],
}

impl Taps<'_> {
    /// 16 output pixels from `ox0` of slab row `row` (the output row's
    /// first tap), for `cb` (8 or 16) channels; rows past `cb` are zero.
    fn block(&self, cb: usize, row: usize, ox0: usize) -> [[f32; PX]; 16] {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `eligible` checked that the CPU has AVX-512F
        unsafe {
            if cb == 8 {
                let mut out = [[0f32; PX]; 16];
                out[..8].copy_from_slice(&self.block_avx512::<8>(row, ox0));
                return out;
            }
            self.block_avx512::<16>(row, ox0)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct kernel runs on x86_64 only ({cb}, {row}, {ox0})")
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512<const CB: usize>(&self, row: usize, ox0: usize) -> [[f32; PX]; CB] {
        let Taps {
            slab,
            plane,
            wp,
            c_in,
            k,
            d,
            wt,
        } = *self;
        use std::arch::x86_64::*;
        // the furthest reads, checked once for the whole block
        let reach = d * (k - 1);
        assert!((c_in - 1) * plane + (row + reach) * wp + ox0 + reach + PX <= slab.len());
        assert!(c_in * k * k * CB <= wt.len());
        let (xs, ws) = (slab.as_ptr(), wt.as_ptr());
        let mut acc = [_mm512_setzero_ps(); CB];
        for ci in 0..c_in {
            for ky in 0..k {
                let base = ci * plane + (row + ky * d) * wp + ox0;
                for kx in 0..k {
                    // SAFETY: inside the bounds asserted above
                    let xv = _mm512_loadu_ps(xs.add(base + kx * d));
                    let w = ws.add(((ci * k + ky) * k + kx) * CB);
                    for (co, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(co)), xv, *a);
                    }
                }
            }
        }
        let mut out = [[0f32; PX]; CB];
        for (o, a) in out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition_with_its_epilogue() {
        if !avx512() {
            println!("SKIP: this CPU has no AVX-512; the direct kernel is not used here");
            return;
        }
        // (c_in, c_out, kernel, padding, dilation, height, width)
        for (c_in, c_out, kernel, padding, dilation, height, width) in [
            (16, 16, 3, 1, 1, 9, 37),
            (32, 16, 3, 1, 1, 6, 16),
            (3, 6, 3, 0, 1, 5, 20),
            (8, 32, 3, 2, 2, 7, 33),
            (5, 1, 5, 2, 1, 4, 18),
            (4, 20, 7, 3, 1, 3, 17),
        ] {
            let s = ConvShape {
                batch: 2,
                c_in,
                height,
                width,
                c_out,
                kernel,
                stride: 1,
                padding,
                dilation,
            };
            assert!(eligible(&s), "{s:?}");
            let x: Vec<f32> = (0..s.input_len())
                .map(|i| ((i * 7919) % 29) as f32 / 9.0 - 1.5)
                .collect();
            let w: Vec<f32> = (0..s.weight_len())
                .map(|i| ((i * 104_729) % 17) as f32 / 11.0 - 0.7)
                .collect();
            let shift: Vec<f32> = (0..c_out).map(|c| c as f32 * 0.1 - 1.0).collect();
            let res: Vec<f32> = (0..s.output_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let ep = Epilogue {
                scale: None,
                shift: Some(&shift),
                residual: Some(&res),
                relu: true,
            };
            let y = forward(&s, &x, &w, &ep);
            let want = crate::kernels::reference_conv(&s, 1, &x, &w);
            let plane = s.out_height() * s.out_width();
            for (i, (y, r)) in y.iter().zip(&want).enumerate() {
                let r = (r + shift[(i / plane) % c_out] as f64 + res[i] as f64).max(0.0);
                assert!(
                    (*y as f64 - r).abs() < 1e-4 * (1.0 + r.abs()),
                    "{s:?} at {i}: {y} vs {r}"
                );
            }
        }
    }
}
