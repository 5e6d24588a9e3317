//! `rstile infer --tta flips|d4`: test-time augmentation.

mod common;
use common::*;
use std::path::Path;

/// Every band of a raster, band-sequential.
fn bands(p: &Path) -> Vec<u8> {
    read_bands(p).1
}

/// A per-pixel model (`linear`: a 1x1 convolution) predicts the same at a
/// pixel whatever the window's orientation, so averaging over the flips
/// and rotations must give back the plain prediction: a transform mapped
/// back to the wrong place would move predictions between pixels.
#[test]
fn tta_of_a_per_pixel_model_changes_nothing() {
    let t = tmp();
    let m = model(t.path(), "linear", 3, 128);
    let scene = synth(t.path(), 700, 600, 2).join("image.tif");
    let plain = t.path().join("plain.tif");
    ok(&infer_argv(
        &scene,
        &plain,
        &m,
        &["--quiet", "--probabilities"],
    ));
    for tta in ["flips", "d4"] {
        let map = t.path().join(format!("{tta}.tif"));
        ok(&infer_argv(
            &scene,
            &map,
            &m,
            &["--quiet", "--probabilities", "--tta", tta],
        ));
        let (a, b) = (read_map(&plain).data, read_map(&map).data);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // the mean of 3 or 8 equal f32 values may differ from the value in
        // the last bit, which can turn an exact tie
        assert!(
            same as f64 >= 0.9999 * a.len() as f64,
            "{tta}: {same} of {}",
            a.len()
        );
        let pa = bands(&t.path().join("plain.probabilities.tif"));
        let pb = bands(&t.path().join(format!("{tta}.probabilities.tif")));
        let worst = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (*x as i32 - *y as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "{tta}: probabilities differ by {worst} steps");
    }
}

/// With a network that sees context (`tiny`), D4 averaging changes the
/// map, and the result does not depend on threads or batch.
#[test]
fn tta_d4_is_invariant_under_threads_and_batch() {
    let t = tmp();
    let m = model(t.path(), "tiny", 3, 128);
    let scene = synth(t.path(), 900, 700, 3).join("image.tif");
    let plain = t.path().join("plain.tif");
    ok(&infer_argv(&scene, &plain, &m, &["--quiet"]));
    let a = t.path().join("a.tif");
    let out = ok(&infer_argv(
        &scene,
        &a,
        &m,
        &["--tta", "d4", "--threads", "1", "--batch", "1"],
    ));
    let b = t.path().join("b.tif");
    ok(&infer_argv(
        &scene,
        &b,
        &m,
        &["--quiet", "--tta", "d4", "--threads", "2", "--batch", "6"],
    ));
    assert!(read_map(&a).data == read_map(&b).data, "d4 maps differ");
    let differ = read_map(&a)
        .data
        .iter()
        .zip(&read_map(&plain).data)
        .filter(|(x, y)| x != y)
        .count();
    assert!(differ > 0, "--tta d4 changed nothing:\n{out}");
    fails(
        &infer_argv(&scene, &t.path().join("c.tif"), &m, &["--tta", "d8"]),
        "expected none, flips or d4",
    );
}
