//! The U-Nets: smp checkpoints imported (`rstile model import --from smp`)
//! compute smp's output, and bad checkpoints get one line.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// A Python with torch and segmentation-models-pytorch, or `None`.
fn smp_python() -> Option<String> {
    let py = common::torch_python()?;
    Command::new(&py)
        .args(["-c", "import segmentation_models_pytorch"])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(py)
}

const CLASSES: &str = ISPRS_CLASSES;

fn npy(p: &Path) -> Vec<f32> {
    read_npy(p).1
}

#[test]
fn smp_unet_checkpoints_import_and_compute_smp_s_output() {
    let Some(py) = smp_python() else {
        println!("SKIP smp_unet_checkpoints_import_and_compute_smp_s_output: no Python with torch and segmentation-models-pytorch (RSTILE_TORCH_PYTHON, or run scripts/onnx-fixtures.sh once)");
        return;
    };
    let t = tmp();
    for encoder in ["resnet18", "resnet34"] {
        let dir = t.path().join(encoder);
        run_fixture_script(
            &py,
            "smp-unet-checkpoint.py",
            &[dir.as_os_str(), encoder.as_ref()],
        );
        let want = npy(&dir.join("output.npy"));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for file in ["unet.pth", "unet.ckpt"] {
            let m = dir.join(format!("{file}.safetensors"));
            let out = ok(&import_argv(
                s(&dir.join(file)),
                "smp",
                &format!("unet-{encoder}"),
                CLASSES,
                s(&m),
            ));
            assert!(out.contains(&format!("unet-{encoder}")), "{out}");
            let y = dir.join(format!("{file}.npy"));
            ok(&[
                "model",
                "run",
                s(&m),
                "--input",
                s(&dir.join("input.npy")),
                "-o",
                s(&y),
            ]);
            let got = npy(&y);
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("{encoder} {file}: max |rstile - smp| {err:.2e} on logits up to {scale:.1}");
            assert!(err <= 1e-4 * scale.max(1.0), "{encoder} {file}: {err}");
        }
        // the hyper_parameters name the architecture, and may carry the
        // normalisation
        let other = if encoder == "resnet18" {
            "unet-resnet34"
        } else {
            "unet-resnet18"
        };
        fails(
            &import_argv(s(&dir.join("unet.ckpt")), "smp", other, CLASSES, s(&dir.join("wrong.safetensors"))),
            &format!("hyper_parameters say model 'unet' on backbone '{encoder}', not --arch {other} (use --arch unet-{encoder})"),
        );
        assert!(!dir.join("wrong.safetensors").exists());
        let m = dir.join("norm.safetensors");
        ok(&import_argv(
            s(&dir.join("unet-norm.ckpt")),
            "smp",
            &format!("unet-{encoder}"),
            CLASSES,
            s(&m),
        ));
        let meta = rstile::model::read_meta(&m).unwrap();
        assert_eq!(
            (meta.mean, meta.std),
            (vec![10.0, 20.0, 30.0], vec![2.0, 3.0, 4.0])
        );
    }
}

#[test]
fn bad_checkpoints_get_one_line() {
    let t = tmp();
    let d = t.path();
    // another architecture's weights: an FCN has `backbone.*`, no `encoder.*`
    let fcn = model(d, "resnet18-fcn", 3, 64);
    let e = fails(
        &import_argv(
            s(&fcn),
            "smp",
            "unet-resnet18",
            CLASSES,
            s(&d.join("a.safetensors")),
        ),
        "encoder.conv1.weight",
    );
    assert!(e.contains("resnet18-fcn_3_64.safetensors"), "{e}");
    // a U-Net of another depth: the first mis-shaped or unexpected key
    let u34 = model(d, "unet-resnet34", 3, 64);
    fails(
        &import_argv(
            s(&u34),
            "smp",
            "unet-resnet18",
            CLASSES,
            s(&d.join("b.safetensors")),
        ),
        "not a variable of unet-resnet18",
    );
    // a class table of another count
    let four = d.join("four.toml");
    std::fs::write(
        &four,
        (0..4)
            .map(|i| format!("[[class]]\nid = {i}\nname = \"c{i}\"\ncolor = \"#00000{i}\"\n\n"))
            .collect::<String>(),
    )
    .unwrap();
    let u18 = model(d, "unet-resnet18", 3, 64);
    fails(
        &import_argv(
            s(&u18),
            "smp",
            "unet-resnet18",
            s(&four),
            s(&d.join("c.safetensors")),
        ),
        "head has 6 classes, --classes lists 4",
    );
    // not a checkpoint at all
    let junk = d.join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 this is not a zip pickle").unwrap();
    fails(
        &import_argv(
            s(&junk),
            "smp",
            "unet-resnet18",
            CLASSES,
            s(&d.join("d.safetensors")),
        ),
        "junk.pth",
    );
    // unknown architecture, and torchvision's FCN (resnet50-fcn-os8 only)
    fails(
        &import_argv(
            s(&u18),
            "smp",
            "unet-vgg",
            CLASSES,
            s(&d.join("e.safetensors")),
        ),
        "unet-resnet18",
    );
    fails(
        &import_argv(
            s(&u18),
            "torchvision",
            "resnet50-fcn",
            CLASSES,
            s(&d.join("f.safetensors")),
        ),
        "into resnet50-fcn-os8 (layer3 and layer4 dilated, output stride 8), not resnet50-fcn",
    );
    for f in ["a", "b", "c", "d", "e", "f"] {
        assert!(!d.join(format!("{f}.safetensors")).exists(), "{f}");
    }
    // a good import round-trips, and refuses to replace its output
    let g = d.join("g.safetensors");
    ok(&import_argv(
        s(&u18),
        "smp",
        "unet-resnet18",
        CLASSES,
        s(&g),
    ));
    fails(
        &import_argv(s(&u18), "smp", "unet-resnet18", CLASSES, s(&g)),
        "g.safetensors",
    );
}
