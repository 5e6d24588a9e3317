//! Every convolution of resnet50-fcn at batch 4 of 256 x 256 windows, on
//! rstile's kernels: the forward pass, the weight gradient and the input
//! gradient timed apart, best of `REPS` (default 5), with GFLOP/s against
//! each layer's forward FLOPs. The last line sums the network (each layer
//! times its count). Where a training step's convolution time goes, layer
//! by layer.
//!
//! `cargo bench --bench layers` (`RAYON_NUM_THREADS` sets the threads;
//! `ONLY=i` times layer `i` alone; `NET=unet` times unet-resnet18's
//! convolutions instead).

// the binary's process set-up (the library changes no process-wide state)
#[allow(dead_code)]
#[path = "../src/cli/process.rs"]
mod process;

use rstile::kernels::{
    conv2d_backward, conv2d_forward, conv2d_input_gradient, ConvShape, Epilogue,
};
use std::time::Instant;

/// (c_in, c_out, kernel, stride, padding, input size, count in the network)
fn layers() -> Vec<(usize, usize, usize, usize, usize, usize, usize)> {
    if std::env::var("NET").is_ok_and(|n| n == "unet") {
        return unet_layers();
    }
    let mut v = vec![(3, 64, 7, 2, 3, 256, 1)];
    // (c_in, planes, first stride, input size, blocks)
    for (c_in, planes, stride, h, blocks) in [
        (64, 64, 1, 64, 3),
        (256, 128, 2, 64, 4),
        (512, 256, 2, 32, 6),
        (1024, 512, 2, 16, 3),
    ] {
        let c_out = planes * 4;
        let h2 = (h - 1) / stride + 1;
        v.push((c_in, planes, 1, 1, 0, h, 1));
        v.push((planes, planes, 3, stride, 1, h, 1));
        v.push((planes, c_out, 1, 1, 0, h2, blocks));
        v.push((c_in, c_out, 1, stride, 0, h, 1));
        v.push((c_out, planes, 1, 1, 0, h2, blocks - 1));
        v.push((planes, planes, 3, 1, 1, h2, blocks - 1));
    }
    v.push((2048, 512, 3, 1, 1, 8, 1)); // FCN head
    v.push((512, 6, 1, 1, 0, 8, 1)); // classifier
    v
}

/// The convolutions of unet-resnet18 (smp's Unet: encoder ResNet-18,
/// decoder channels 256, 128, 64, 32, 16; 6 classes), with the same fields.
fn unet_layers() -> Vec<(usize, usize, usize, usize, usize, usize, usize)> {
    vec![
        (3, 64, 7, 2, 3, 256, 1),
        (64, 64, 3, 1, 1, 64, 4),
        (64, 128, 3, 2, 1, 64, 1),
        (64, 128, 1, 2, 0, 64, 1),
        (128, 128, 3, 1, 1, 32, 3),
        (128, 256, 3, 2, 1, 32, 1),
        (128, 256, 1, 2, 0, 32, 1),
        (256, 256, 3, 1, 1, 16, 3),
        (256, 512, 3, 2, 1, 16, 1),
        (256, 512, 1, 2, 0, 16, 1),
        (512, 512, 3, 1, 1, 8, 3),
        // decoder: (skip + upsampled) -> c, then c -> c
        (768, 256, 3, 1, 1, 16, 1),
        (256, 256, 3, 1, 1, 16, 1),
        (384, 128, 3, 1, 1, 32, 1),
        (128, 128, 3, 1, 1, 32, 1),
        (192, 64, 3, 1, 1, 64, 1),
        (64, 64, 3, 1, 1, 64, 1),
        (128, 32, 3, 1, 1, 128, 1),
        (32, 32, 3, 1, 1, 128, 1),
        (32, 16, 3, 1, 1, 256, 1),
        (16, 16, 3, 1, 1, 256, 1),
        (16, 6, 3, 1, 1, 256, 1), // segmentation head
    ]
}

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    process::reuse_freed_memory();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    println!(
        "{} convolutions, batch 4, 256 x 256, {} threads, best of {reps}",
        std::env::var("NET").unwrap_or_else(|_| "resnet50-fcn".into()),
        rayon::current_num_threads()
    );
    let (mut tf, mut tw, mut tx, mut flops) = (0.0, 0.0, 0.0, 0.0);
    for (i, &(c_in, c_out, k, stride, pad, h, count)) in layers().iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let s = ConvShape {
            batch: 4,
            c_in,
            height: h,
            width: h,
            c_out,
            kernel: k,
            stride,
            padding: pad,
            dilation: 1,
        };
        let x: Vec<f32> = (0..s.input_len()).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..s.weight_len())
            .map(|i| (i % 5) as f32 * 0.1 - 0.2)
            .collect();
        let dy: Vec<f32> = (0..s.output_len()).map(|i| (i % 3) as f32 * 0.1).collect();
        let f = best(reps, || {
            std::hint::black_box(conv2d_forward(&s, &x, &w, &Epilogue::default()));
        });
        let dw = best(reps, || {
            std::hint::black_box(conv2d_backward(&s, &x, &dy, &w, false));
        });
        let dx = best(reps, || {
            std::hint::black_box(conv2d_input_gradient(&s, &dy, &w));
        });
        let gf = s.flops() as f64 / 1e9;
        let n = count as f64;
        (tf, tw, tx, flops) = (tf + f * n, tw + dw * n, tx + dx * n, flops + gf * n);
        println!(
            "{i:2} {c_in:5}->{c_out:5} k{k} s{stride} {h:3}px x{count}: forward {:6.1} ms {:4.0} GF/s | dW {:6.1} ms {:4.0} | dX {:6.1} ms {:4.0}",
            f * 1e3,
            gf / f,
            dw * 1e3,
            gf / dw,
            dx * 1e3,
            gf / dx
        );
    }
    println!(
        "network: forward {:.3} s ({:.0} GF/s), dW {:.3} s ({:.0}), dX {:.3} s ({:.0}), {flops:.1} GFLOP each",
        tf,
        flops / tf,
        tw,
        flops / tw,
        tx,
        flops / tx
    );
}
