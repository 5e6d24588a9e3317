//! torchvision's `fcn_resnet50` imported as `resnet50-fcn-os8` (`rstile
//! model import --from torchvision`) computes torchvision's output, and
//! checkpoints that do not fit get one line.

mod common;
use common::*;
use std::path::Path;

const CLASSES: &str = ISPRS_CLASSES;

fn npy(p: &Path) -> Vec<f32> {
    read_npy(p).1
}

fn import_argv<'a>(checkpoint: &'a Path, arch: &'a str, out: &'a Path) -> Vec<&'a str> {
    common::import_argv(s(checkpoint), "torchvision", arch, CLASSES, s(out))
}

#[test]
fn torchvision_fcn_resnet50_imports_and_computes_torch_s_output() {
    let Some(py) = torch_python() else {
        println!("SKIP torchvision_fcn_resnet50_imports_and_computes_torch_s_output: no Python with torch and torchvision (RSTILE_TORCH_PYTHON, or run scripts/onnx-fixtures.sh once)");
        return;
    };
    let t = tmp();
    let dir = t.path();
    run_fixture_script(&py, "torchvision-fcn-checkpoint.py", &[dir.as_os_str()]);
    // fcn.pth holds aux_classifier.* (aux_loss=True): skipped
    for file in ["fcn.pth", "fcn.ckpt"] {
        let m = dir.join(format!("{file}.safetensors"));
        let out = ok(&import_argv(&dir.join(file), "resnet50-fcn-os8", &m));
        assert!(
            out.contains("resnet50-fcn-os8, 3 bands, 6 classes"),
            "{out}"
        );
        for case in ["", "-odd"] {
            let want = npy(&dir.join(format!("output{case}.npy")));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let y = dir.join(format!("{file}{case}.npy"));
            ok(&[
                "model",
                "run",
                s(&m),
                "--input",
                s(&dir.join(format!("input{case}.npy"))),
                "-o",
                s(&y),
            ]);
            let got = npy(&y);
            assert_eq!(got.len(), want.len(), "{file}{case}");
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!(
                "{file} input{case}: max |rstile - torchvision| {err:.2e} on logits up to {scale:.1}"
            );
            assert!(err <= 1e-4 * scale.max(1.0), "{file}{case}: {err}");
        }
    }
    // one key removed: named, with the file, and nothing written
    let missing = dir.join("missing.safetensors");
    let e = fails(
        &import_argv(&dir.join("fcn-missing.pth"), "resnet50-fcn-os8", &missing),
        "tensor 'backbone.layer4.1.conv2.weight' of resnet50-fcn-os8 is missing",
    );
    assert!(e.contains("fcn-missing.pth"), "{e}");
    assert!(!missing.exists());
}

/// Needs no Python: rstile's own model files stand in for checkpoints.
#[test]
fn torchvision_import_refuses_what_does_not_fit() {
    let t = tmp();
    let d = t.path();
    // FCN-8s skips: not variables of torchvision's FCN
    let fcn8s = model(d, "resnet50-fcn8s", 3, 64);
    let e = fails(
        &import_argv(&fcn8s, "resnet50-fcn-os8", &d.join("a.safetensors")),
        "not a variable of resnet50-fcn-os8",
    );
    assert!(
        e.contains("unexpected tensor 'score16.") || e.contains("unexpected tensor 'score8."),
        "{e}"
    );
    assert!(e.contains("resnet50-fcn8s_3_64.safetensors"), "{e}");
    // another depth: the first mis-shaped or unexpected key
    let r18 = model(d, "resnet18-fcn", 3, 64);
    let e = fails(
        &import_argv(&r18, "resnet50-fcn-os8", &d.join("b.safetensors")),
        "resnet50-fcn-os8",
    );
    assert!(
        e.contains("has shape") || e.contains("unexpected tensor"),
        "{e}"
    );
    // a U-Net: no backbone.conv1.weight
    let unet = model(d, "unet-resnet18", 3, 64);
    fails(
        &import_argv(&unet, "resnet50-fcn-os8", &d.join("c.safetensors")),
        "no tensor 'backbone.conv1.weight': not a state dict of torchvision's fcn_resnet50",
    );
    // the sources import into their own architectures only
    fails(
        &import_argv(&fcn8s, "resnet50-fcn", &d.join("d.safetensors")),
        "--from torchvision imports torchvision's fcn_resnet50 into resnet50-fcn-os8",
    );
    let e_out = d.join("e.safetensors");
    let mut argv = import_argv(&fcn8s, "resnet50-fcn-os8", &e_out);
    argv[4] = "smp";
    fails(
        &argv,
        "--from smp imports smp's Unet into unet-resnet18, unet-resnet34 or unet-resnet50, not resnet50-fcn-os8",
    );
    argv[4] = "keras";
    fails(&argv, "expected smp or torchvision");
    for f in ["a", "b", "c", "d", "e"] {
        assert!(!d.join(format!("{f}.safetensors")).exists(), "{f}");
    }
}
