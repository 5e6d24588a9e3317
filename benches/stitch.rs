//! Criterion bench of the pure stitcher: how many window predictions per
//! second it blends, independent of GDAL and the model.
//!
//! `cargo bench --bench stitch`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rstile::infer::stitch::{Blend, ChunkStitcher, Prediction, Region};
use rstile::infer::window::{Size, WindowGrid};

fn bench(c: &mut Criterion) {
    let size = Size {
        width: 2048,
        height: 1024,
    };
    let win = 256;
    let k = 6;
    let grid = WindowGrid::new(size, win, 0.25).unwrap();
    let probs = vec![1.0f32 / k as f32; k * win * win];
    let valid = vec![1u8; win * win];
    let region = Region {
        x0: 0,
        x1: size.width,
        y0: 0,
        y1: size.height,
    };
    let mut g = c.benchmark_group("stitch");
    g.throughput(Throughput::Elements((size.width * size.height) as u64));
    g.sample_size(10);
    for blend in [Blend::Hann, Blend::Crop] {
        g.bench_function(format!("{blend}_2048x1024_k6"), |b| {
            b.iter(|| {
                let mut st =
                    ChunkStitcher::new(grid, blend, (0..k as u8).collect(), region, 512, false);
                let mut n = 0;
                for r in 0..grid.rows() {
                    for col in 0..grid.cols() {
                        st.add(
                            &grid.window(col, r),
                            Some(Prediction {
                                probs: &probs,
                                logits: false,
                                valid: &valid,
                            }),
                        );
                    }
                    n += st.end_row(r).len();
                }
                n + st.finish().len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
