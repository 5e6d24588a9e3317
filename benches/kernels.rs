//! Criterion benches of the compute kernels: the raw GEMM, rstile's
//! convolution against candle's on ResNet-50 layer shapes (forward and
//! backward), and a whole resnet50-fcn forward pass. Throughput is in FLOP/s
//! (criterion prints it as "elem/s").
//!
//! `cargo bench --bench kernels`

// the binary's process set-up (the library changes no process-wide state)
#[allow(dead_code)]
#[path = "../src/cli/process.rs"]
mod process;

use candle_core::{Device, Tensor, Var};
use candle_nn::Module;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rstile::kernels::ConvShape;
use rstile::model::conv::Conv2d;

fn gemm(c: &mut Criterion) {
    // as the command line does (this group runs first)
    process::single_candle_pool();
    process::reuse_freed_memory();
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    // (m, n, k): a layer4 3x3 conv of one 256x256 sample, a layer1 3x3 tile
    for (m, n, k) in [(512, 64, 4608), (64, 224, 576), (256, 1024, 1024)] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut d = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("sgemm_{m}x{n}x{k}_1thread"), |bench| {
            bench.iter(|| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    d.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            })
        });
    }
    g.finish();
}

/// (name, c_in, c_out, kernel, stride, padding, input size) at batch 4 of
/// 256 x 256 windows.
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 5] = [
    ("conv1_7x7s2", 3, 64, 7, 2, 3, 256),
    ("layer1_3x3", 64, 64, 3, 1, 1, 64),
    ("layer2_1x1", 512, 128, 1, 1, 0, 32),
    ("layer3_3x3s2", 256, 256, 3, 2, 1, 32),
    ("layer4_3x3", 512, 512, 3, 1, 1, 8),
];

fn conv(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("conv");
    g.sample_size(10);
    for (name, c_in, c_out, k, stride, pad, size) in LAYERS {
        let x = Tensor::randn(0f32, 1f32, (4, c_in, size, size), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1f32, (c_out, c_in, k, k), &dev).unwrap();
        let conv = Conv2d::new(w, None, stride, pad);
        let shape = ConvShape {
            batch: 4,
            c_in,
            height: size,
            width: size,
            c_out,
            kernel: k,
            stride,
            padding: pad,
            dilation: 1,
        };
        g.throughput(Throughput::Elements(shape.flops()));
        g.bench_function(format!("{name}_forward_rstile"), |b| {
            b.iter(|| conv.forward(&x).unwrap())
        });
        g.bench_function(format!("{name}_forward_candle"), |b| {
            b.iter(|| conv.forward_candle(&x).unwrap())
        });
        // backward: both gradients, twice the forward FLOPs
        g.throughput(Throughput::Elements(2 * shape.flops()));
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(conv.weight()).unwrap();
        let cv = Conv2d::new(wv.as_tensor().clone(), None, stride, pad);
        let y = cv.forward(xv.as_tensor()).unwrap();
        let gy = Tensor::randn(0f32, 1f32, y.dims(), &dev).unwrap();
        g.bench_function(format!("{name}_backward_rstile"), |b| {
            b.iter(|| {
                let y = cv.forward(xv.as_tensor()).unwrap();
                (y * &gy).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
        if size <= 32 {
            // candle's input gradient is a direct transposed convolution:
            // minutes per iteration on the large layers
            g.bench_function(format!("{name}_backward_candle"), |b| {
                b.iter(|| {
                    let y = cv.forward_candle(xv.as_tensor()).unwrap();
                    (y * &gy).unwrap().sum_all().unwrap().backward().unwrap()
                })
            });
        }
    }
    g.finish();
}

fn forward(c: &mut Criterion) {
    use rstile::classes::ClassTable;
    use rstile::model::{Model, ModelMeta};
    let meta = ModelMeta {
        format: 1,
        arch: rstile::model::Net::Arch(rstile::model::Arch::Resnet50Fcn),
        bands: 3,
        band_names: Vec::new(),
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
        classes: ClassTable::isprs(),
        window: 256,
        overlap: 0.25,
        pixel_size: None,
    };
    let model = Model::new_random(meta, 0, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1f32, (4, 3, 256, 256), &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.throughput(Throughput::Elements(
        model.forward_flops(4, 256, 256).unwrap(),
    ));
    g.bench_function("resnet50_fcn_forward_b4_256", |b| {
        b.iter(|| model.forward_t(&x, false).unwrap())
    });
    g.finish();
}

criterion_group!(benches, gemm, conv, forward);
criterion_main!(benches);
