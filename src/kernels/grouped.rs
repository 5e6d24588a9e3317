//! Grouped 2-D convolution (ONNX's Conv with `group > 1`, PyTorch's
//! `groups`), forward only, NCHW, with the same [`Epilogue`] as
//! [`super::conv2d_forward`].
//!
//! Depthwise layers (one input channel per group, as in MobileNet) are a
//! direct loop per output plane: each output row is a sum of `k x k`
//! shifted input rows scaled by one weight, which the compiler vectorises.
//! Other groupings run [`super::conv2d_forward`] once per group on that
//! group's channels. Either way each output value depends only on its own
//! sample, so results are the same under any batch and thread count.
//!
//! ```
//! use rstile::kernels::{grouped::conv2d_grouped, ConvShape, Epilogue};
//! // two channels, two groups, a 1x1 kernel: each channel scaled alone
//! let s = ConvShape { batch: 1, c_in: 2, height: 1, width: 2, c_out: 2,
//!                     kernel: 1, stride: 1, padding: 0, dilation: 1 };
//! let y = conv2d_grouped(&s, 2, &[1.0, 2.0, 3.0, 4.0], &[10.0, -1.0], &Epilogue::default());
//! assert_eq!(y, vec![10.0, 20.0, -3.0, -4.0]);
//! ```

use super::conv::{apply_epilogue, conv2d_forward, ConvShape, Epilogue};
use rayon::prelude::*;

/// `s` describes the whole layer (`c_in` and `c_out` over all groups);
/// `w` is `c_out x (c_in / groups) x k x k`. Returns `batch x c_out x H' x
/// W'`.
pub fn conv2d_grouped(
    s: &ConvShape,
    groups: usize,
    x: &[f32],
    w: &[f32],
    ep: &Epilogue,
) -> Vec<f32> {
    assert!(s.is_valid(), "invalid convolution {s:?}");
    assert!(
        groups > 0 && s.c_in.is_multiple_of(groups) && s.c_out.is_multiple_of(groups),
        "{groups} groups do not divide {} input and {} output channels",
        s.c_in,
        s.c_out
    );
    let ci_g = s.c_in / groups;
    assert_eq!(x.len(), s.input_len(), "input length");
    assert_eq!(
        w.len(),
        s.c_out * ci_g * s.kernel * s.kernel,
        "weight length"
    );
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), s.output_len(), "residual length");
    }
    if groups == 1 {
        return conv2d_forward(s, x, w, ep);
    }
    if ci_g == 1 {
        return depthwise(s, x, w, ep);
    }
    per_group(s, groups, x, w, ep)
}

/// One input channel per group: output channel `c` reads input channel
/// `c / (c_out / c_in)`.
fn depthwise(s: &ConvShape, x: &[f32], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    let (oh, ow) = (s.out_height(), s.out_width());
    let (h, wd, k) = (s.height, s.width, s.kernel);
    let mult = s.c_out / s.c_in;
    let (st, d, p) = (s.stride, s.dilation, s.padding as isize);
    let mut y = vec![0f32; s.output_len()];
    y.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, yp)| {
            let (b, co) = (plane / s.c_out, plane % s.c_out);
            let ci = co / mult;
            let xp = &x[(b * s.c_in + ci) * h * wd..][..h * wd];
            let wk = &w[co * k * k..][..k * k];
            for (oy, row) in yp.chunks_exact_mut(ow).enumerate() {
                for ky in 0..k {
                    let iy = (oy * st + ky * d) as isize - p;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let xrow = &xp[iy as usize * wd..][..wd];
                    for kx in 0..k {
                        let wv = wk[ky * k + kx];
                        // outputs whose input column ox·st + kx·d − p is inside
                        let off = (kx * d) as isize - p;
                        let lo = if off >= 0 {
                            0
                        } else {
                            ((-off) as usize).div_ceil(st)
                        };
                        let last = wd as isize - 1 - off; // ox·st ≤ last
                        if last < 0 {
                            continue;
                        }
                        let hi = (last as usize / st + 1).min(ow);
                        if lo >= hi {
                            continue;
                        }
                        let first = (lo * st) as isize + off;
                        if st == 1 {
                            let src = &xrow[first as usize..][..hi - lo];
                            for (o, &v) in row[lo..hi].iter_mut().zip(src) {
                                *o += wv * v;
                            }
                        } else {
                            let src = xrow[first as usize..].iter().step_by(st);
                            for (o, &v) in row[lo..hi].iter_mut().zip(src) {
                                *o += wv * v;
                            }
                        }
                    }
                }
            }
            apply_epilogue(yp, ep, co, plane * oh * ow);
        });
    y
}

/// Each group's channels through [`conv2d_forward`], then the epilogue.
fn per_group(s: &ConvShape, groups: usize, x: &[f32], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    let (ci_g, co_g) = (s.c_in / groups, s.c_out / groups);
    let plane_in = s.height * s.width;
    let plane_out = s.out_height() * s.out_width();
    let g_shape = ConvShape {
        c_in: ci_g,
        c_out: co_g,
        ..*s
    };
    let w_len = co_g * ci_g * s.kernel * s.kernel;
    let mut y = vec![0f32; s.output_len()];
    for g in 0..groups {
        let mut xg = Vec::with_capacity(s.batch * ci_g * plane_in);
        for b in 0..s.batch {
            let at = (b * s.c_in + g * ci_g) * plane_in;
            xg.extend_from_slice(&x[at..at + ci_g * plane_in]);
        }
        let yg = conv2d_forward(
            &g_shape,
            &xg,
            &w[g * w_len..][..w_len],
            &Epilogue::default(),
        );
        for b in 0..s.batch {
            let at = (b * s.c_out + g * co_g) * plane_out;
            y[at..at + co_g * plane_out]
                .copy_from_slice(&yg[b * co_g * plane_out..][..co_g * plane_out]);
        }
    }
    y.par_chunks_mut(plane_out)
        .enumerate()
        .for_each(|(plane, yp)| apply_epilogue(yp, ep, plane % s.c_out, plane * plane_out));
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_and_depthwise_match_the_definition() {
        // (c_in, c_out, groups, kernel, stride, padding, dilation)
        let cases = [
            (4, 4, 4, 3, 1, 1, 1),
            (4, 8, 4, 3, 2, 1, 1),
            (3, 3, 3, 5, 2, 2, 1),
            (4, 4, 4, 3, 1, 2, 2),
            (6, 4, 2, 3, 1, 1, 1),
            (4, 6, 2, 1, 2, 0, 1),
        ];
        for (c_in, c_out, groups, kernel, stride, padding, dilation) in cases {
            let s = ConvShape {
                batch: 2,
                c_in,
                height: 9,
                width: 7,
                c_out,
                kernel,
                stride,
                padding,
                dilation,
            };
            let x: Vec<f32> = (0..s.input_len())
                .map(|i| ((i * 7919) % 23) as f32 / 7.0 - 1.5)
                .collect();
            let w: Vec<f32> = (0..c_out * c_in / groups * kernel * kernel)
                .map(|i| ((i * 104_729) % 13) as f32 / 5.0 - 1.2)
                .collect();
            let y = conv2d_grouped(&s, groups, &x, &w, &Epilogue::default());
            let want = crate::kernels::reference_conv(&s, groups, &x, &w);
            assert_eq!(y.len(), want.len());
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "{s:?} in {groups} groups: {a} vs {b}"
                );
            }
            // the epilogue: shift, residual, ReLU
            let shift: Vec<f32> = (0..c_out).map(|c| c as f32 - 2.0).collect();
            let res: Vec<f32> = (0..y.len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let ep = Epilogue {
                scale: None,
                shift: Some(&shift),
                residual: Some(&res),
                relu: true,
            };
            let z = conv2d_grouped(&s, groups, &x, &w, &ep);
            let plane = s.out_height() * s.out_width();
            for (i, (z, y)) in z.iter().zip(&y).enumerate() {
                let want = (y + shift[(i / plane) % c_out] + res[i]).max(0.0);
                assert!((z - want).abs() < 1e-5);
            }
        }
    }
}
