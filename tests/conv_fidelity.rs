//! rstile's convolution kernels against candle's reference ops, in f32, on
//! every layer shape that ResNet-50 (and its FCN head) uses, at odd sizes:
//! the forward pass, both gradients, and the inference path with batch
//! norm, residual and ReLU folded into the epilogue. The bound is a
//! relative error (max |ours - candle| / max |candle|) below 1e-4.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, Module, ModuleT};
use rstile::model::conv::{Conv2d, ConvBn};
use rstile::model::norm::BatchNorm2d;

const TOL: f32 = 1e-4;

/// (c_in, c_out, kernel, stride, padding, input height, input width)
fn resnet50_layers() -> Vec<(usize, usize, usize, usize, usize, usize, usize)> {
    let mut v = vec![
        (3, 64, 7, 2, 3, 37, 29), // conv1, 3 bands
        (5, 64, 7, 2, 3, 33, 35), // conv1, 5 bands
    ];
    // (c_in, planes, first stride, spatial size at the layer's input)
    let layers = [
        (64, 64, 1, (13, 11)),
        (256, 128, 2, (13, 11)),
        (512, 256, 2, (9, 7)),
        (1024, 512, 2, (5, 7)),
    ];
    for (c_in, planes, stride, (h, w)) in layers {
        let c_out = planes * 4;
        let (h2, w2) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        v.push((c_in, planes, 1, 1, 0, h, w)); // block 0 conv1
        v.push((planes, planes, 3, stride, 1, h, w)); // block 0 conv2 (strided)
        v.push((planes, c_out, 1, 1, 0, h2, w2)); // conv3
        v.push((c_in, c_out, 1, stride, 0, h, w)); // downsample
        v.push((c_out, planes, 1, 1, 0, h2, w2)); // later blocks' conv1
        v.push((planes, planes, 3, 1, 1, h2, w2)); // later blocks' conv2
    }
    v.push((2048, 512, 3, 1, 1, 3, 5)); // FCN head conv
    v.push((512, 6, 1, 1, 0, 3, 5)); // classifier (with bias below)
    v
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // candle's CPU generator cannot be seeded: draw our own
    let n: usize = shape.iter().product();
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rel_err(ours: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(ours.dims(), reference.dims());
    let d = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(f32::MIN_POSITIVE)
}

#[test]
fn forward_and_gradients_match_candle_on_every_resnet50_shape() {
    for (i, &(c_in, c_out, k, stride, pad, h, w)) in resnet50_layers().iter().enumerate() {
        let seed = 10 * i as u64;
        let x = Var::from_tensor(&rand(&[2, c_in, h, w], seed)).unwrap();
        let wt = Var::from_tensor(&rand(&[c_out, c_in, k, k], seed + 1)).unwrap();
        let bias = (c_out == 6).then(|| Var::from_tensor(&rand(&[c_out], seed + 2)).unwrap());
        let conv = Conv2d::new(
            wt.as_tensor().clone(),
            bias.as_ref().map(|b| b.as_tensor().clone()),
            stride,
            pad,
        );
        let what = format!("{c_in}->{c_out} k{k} s{stride} p{pad} on {h}x{w}");
        let ours = conv.forward(x.as_tensor()).unwrap();
        let reference = conv.forward_candle(x.as_tensor()).unwrap();
        let e = rel_err(&ours, &reference);
        assert!(e < TOL, "{what}: forward relative error {e}");

        // gradients of <y, g> for a random g
        let g = rand(ours.dims(), seed + 3);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut vars = vec![("input", &x), ("weight", &wt)];
        if let Some(b) = &bias {
            vars.push(("bias", b));
        }
        for (name, v) in vars {
            let a = ga.get(v.as_tensor()).expect("our gradient");
            let b = gb.get(v.as_tensor()).expect("candle's gradient");
            let e = rel_err(a, b);
            assert!(e < TOL, "{what}: {name} gradient relative error {e}");
        }
    }
}

#[test]
fn fused_inference_matches_candle_batch_norm_residual_and_relu() {
    let dev = Device::Cpu;
    for (i, &(c_in, c_out, k, stride, pad, h, w)) in resnet50_layers().iter().enumerate() {
        let seed = 1000 + 10 * i as u64;
        let x = rand(&[3, c_in, h, w], seed);
        let conv = Conv2d::new(rand(&[c_out, c_in, k, k], seed + 1), None, stride, pad);
        let mean = rand(&[c_out], seed + 2);
        let var = (rand(&[c_out], seed + 3) + 1.0).unwrap();
        let gamma = (rand(&[c_out], seed + 4) + 1.0).unwrap();
        let beta = rand(&[c_out], seed + 5);
        let reference = BatchNorm::new(
            c_out,
            mean.copy().unwrap(),
            var.copy().unwrap(),
            gamma.clone(),
            beta.clone(),
            1e-5,
        )
        .unwrap();
        let bn = BatchNorm2d::new(mean, var, gamma, beta, 1e-5).unwrap();
        let unit = ConvBn { conv, bn };
        let y0 = unit.conv.forward_candle(&x).unwrap();
        let residual = rand(y0.dims(), seed + 6);
        let normed = reference.forward_t(&y0, false).unwrap();
        let reference = (normed + &residual).unwrap().relu().unwrap();
        let ours = unit.forward_t(&x, false, Some(&residual), true).unwrap();
        let e = rel_err(&ours, &reference);
        assert!(
            e < TOL,
            "{c_in}->{c_out} k{k} s{stride} on {h}x{w}: fused relative error {e}"
        );
        assert_eq!(ours.dtype(), DType::F32);
        assert!(ours.device().same_device(&dev));
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let x = rand(&[4, 64, 29, 31], 7);
    let conv = Conv2d::new(rand(&[64, 64, 3, 3], 8), None, 1, 1);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            conv.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// Training mode: `relu(bn(x) + r)` with batch statistics, its gradients
/// for x, r, gamma and beta, and the running statistics it leaves, against
/// candle's `BatchNorm` composed with candle's add and ReLU.
#[test]
fn fused_training_batch_norm_matches_candle() {
    for (b, c, h, w, residual, relu) in [
        (2, 64, 13, 11, true, true),
        (4, 256, 5, 7, false, true),
        (2, 512, 3, 5, false, false),
        (1, 16, 9, 9, true, true),
    ] {
        let seed = (b * c * h) as u64;
        let x = Var::from_tensor(&(rand(&[b, c, h, w], seed) * 3.0).unwrap()).unwrap();
        let r = Var::from_tensor(&rand(&[b, c, h, w], seed + 1)).unwrap();
        let gamma = Var::from_tensor(&(rand(&[c], seed + 2) + 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&rand(&[c], seed + 3)).unwrap();
        let stats = || (rand(&[c], seed + 4), (rand(&[c], seed + 5) + 1.0).unwrap());
        let (m0, v0) = stats();
        let ours = BatchNorm2d::new(
            m0,
            v0,
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            1e-5,
        )
        .unwrap();
        let (m1, v1) = stats();
        let theirs = BatchNorm::new_with_momentum(
            c,
            m1,
            v1,
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            1e-5,
            0.1,
        )
        .unwrap();
        let res = residual.then(|| r.as_tensor());
        let a = ours.forward_fused(x.as_tensor(), true, res, relu).unwrap();
        let mut bref = theirs.forward_t(x.as_tensor(), true).unwrap();
        if let Some(r) = res {
            bref = (bref + r).unwrap();
        }
        if relu {
            bref = bref.relu().unwrap();
        }
        let what = format!("{b}x{c}x{h}x{w} residual {residual} relu {relu}");
        let e = rel_err(&a, &bref);
        assert!(e < TOL, "{what}: forward relative error {e}");
        for (name, x, y) in [
            ("running mean", ours.running_mean(), theirs.running_mean()),
            ("running var", ours.running_var(), theirs.running_var()),
        ] {
            let e = rel_err(x, y);
            assert!(e < TOL, "{what}: {name} relative error {e}");
        }
        let g = rand(a.dims(), seed + 6);
        let ga = (a * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (bref * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("x", &x), ("gamma", &gamma), ("beta", &beta)];
        if residual {
            vars.push(("residual", &r));
        }
        for (name, v) in vars {
            let e = rel_err(
                ga.get(v.as_tensor()).expect("ours"),
                gb.get(v.as_tensor()).expect("candle's"),
            );
            assert!(e < TOL, "{what}: {name} gradient relative error {e}");
        }
    }
}
