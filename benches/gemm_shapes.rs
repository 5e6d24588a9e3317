//! The `gemm` crate, one thread, on one `m x n x k` product in each of its
//! eight memory layouts (result, left and right operand each row- or
//! column-major): the measurements behind the layouts and chunk sizes that
//! `src/kernels/conv.rs` picks. The crate's speed depends on the layout by
//! up to 3x on the same product.
//!
//! `cargo bench --bench gemm_shapes -- M N K` (default 64 576 128).

use gemm::{gemm, Parallelism};
use std::time::Instant;

fn main() {
    let dims: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (m, n, k) = match dims[..] {
        [m, n, k] => (m, n, k),
        _ => (64, 576, 128),
    };
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(3.0, 200.0) as usize;
    let name = |col: bool| if col { "col" } else { "row" };
    for dst_col in [true, false] {
        for lhs_col in [true, false] {
            for rhs_col in [true, false] {
                // (column stride, row stride) of each matrix
                let (dcs, drs) = if dst_col { (m, 1) } else { (1, n) };
                let (lcs, lrs) = if lhs_col { (m, 1) } else { (1, k) };
                let (rcs, rrs) = if rhs_col { (k, 1) } else { (1, n) };
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = Instant::now();
                    // SAFETY: each matrix's strides stay inside its buffer
                    unsafe {
                        gemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            dcs as isize,
                            drs as isize,
                            false,
                            a.as_ptr(),
                            lcs as isize,
                            lrs as isize,
                            b.as_ptr(),
                            rcs as isize,
                            rrs as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "m {m} n {n} k {k}: result {}, lhs {}, rhs {}: {:6.1} GFLOP/s",
                    name(dst_col),
                    name(lhs_col),
                    name(rhs_col),
                    2.0 * (m * n * k) as f64 / best / 1e9
                );
            }
        }
    }
}
