use super::*;
use crate::rng::SplitMix64;
use gdal::raster::GdalType;

fn scene(dir: &Path, width: usize, height: usize, seed: u64, block: usize) -> SynthOutput {
    let cfg = SynthConfig {
        width,
        height,
        seed,
        block,
        ..SynthConfig::default()
    };
    synth(&cfg, dir, false, &|_, _| {}).unwrap()
}

fn read<T: Copy + GdalType>(path: &Path, band: usize) -> (usize, usize, Vec<T>) {
    let ds = Dataset::open(path).unwrap();
    let b = ds.rasterband(band).unwrap();
    let (w, h) = b.size();
    (w, h, b.read_band_as::<T>().unwrap().data().to_vec())
}

/// Every band of a scene: IR, R, G, DSM bits, GT.
fn bands(out: &SynthOutput) -> (usize, usize, Vec<Vec<u8>>, Vec<u32>) {
    let (w, h, ir) = read::<u8>(&out.image, 1);
    let (_, _, r) = read::<u8>(&out.image, 2);
    let (_, _, g) = read::<u8>(&out.image, 3);
    let (_, _, gt) = read::<u8>(&out.gt, 1);
    let (_, _, dsm) = read::<f32>(&out.dsm, 1);
    (
        w,
        h,
        vec![ir, r, g, gt],
        dsm.iter().map(|v| v.to_bits()).collect(),
    )
}

fn fractions(gt: &[u8]) -> [f64; 6] {
    let mut n = [0u64; 256];
    for &v in gt {
        n[v as usize] += 1;
    }
    assert_eq!(
        n[6..].iter().sum::<u64>(),
        0,
        "ids above 5 in the ground truth"
    );
    std::array::from_fn(|k| n[k] as f64 / gt.len() as f64)
}

fn print_fractions(what: &str, f: &[f64; 6]) {
    let t = ClassTable::isprs();
    let parts: Vec<String> = t
        .classes
        .iter()
        .map(|c| format!("{} {:.1}%", c.name, 100.0 * f[c.id as usize]))
        .collect();
    println!("{what}: {}", parts.join(", "));
}

#[test]
fn all_three_files_share_grid_crs_and_tiling() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::default();
    let out = synth(&cfg, dir.path(), false, &|_, _| {}).unwrap();
    assert_eq!(out.image, dir.path().join("image.tif"));
    for (path, bands, ty) in [
        (&out.image, 3, gdal::raster::GdalDataType::UInt8),
        (&out.dsm, 1, gdal::raster::GdalDataType::Float32),
        (&out.gt, 1, gdal::raster::GdalDataType::UInt8),
    ] {
        let ds = Dataset::open(path).unwrap();
        assert_eq!(ds.raster_size(), (1024, 1024), "{path:?}");
        assert_eq!(ds.raster_count(), bands, "{path:?}");
        assert_eq!(
            ds.geo_transform().unwrap(),
            [496_000.0, 0.09, 0.0, 5_420_000.0, 0.0, -0.09],
            "{path:?}"
        );
        let srs = ds.spatial_ref().unwrap();
        assert_eq!(srs.auth_code().unwrap(), 32632, "{path:?}");
        let wkt = srs.to_wkt().unwrap();
        assert!(
            wkt.contains("32632") && wkt.contains("UTM zone 32N"),
            "{path:?}: {wkt}"
        );
        let band = ds.rasterband(1).unwrap();
        assert_eq!(band.band_type(), ty, "{path:?}");
        assert_eq!(band.block_size(), (512, 512), "{path:?}");
        assert_eq!(
            ds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE")
                .as_deref(),
            Some("DEFLATE"),
            "{path:?}"
        );
    }
    let ds = Dataset::open(&out.image).unwrap();
    let names: Vec<String> = (1..=3)
        .map(|k| ds.rasterband(k).unwrap().description().unwrap())
        .collect();
    assert_eq!(names, ["IR", "R", "G"]);
}

#[test]
fn ground_truth_has_all_six_classes_in_plausible_proportions() {
    let dir = tempfile::tempdir().unwrap();
    let out = scene(dir.path(), 1024, 1024, 0, 512);
    let (_, _, gt) = read::<u8>(&out.gt, 1);
    let f = fractions(&gt);
    print_fractions("1024x1024 seed 0", &f);
    let ranges = [
        (0.12, 0.45),
        (0.12, 0.40),
        (0.08, 0.40),
        (0.08, 0.40),
        (0.003, 0.05),
        (0.002, 0.06),
    ];
    for (k, (lo, hi)) in ranges.iter().enumerate() {
        assert!(f[k] > 0.0, "class {k} is missing");
        assert!(
            (*lo..*hi).contains(&f[k]),
            "class {k}: fraction {} outside {lo}..{hi}",
            f[k]
        );
    }
}

#[test]
fn image_and_heights_are_plausible_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let out = scene(dir.path(), 1024, 1024, 1, 512);
    let (_, _, v, _) = bands(&out);
    let (_, _, dsm) = read::<f32>(&out.dsm, 1);
    let mut sum = [[0f64; 4]; 6];
    let mut n = [0f64; 6];
    for p in 0..v[3].len() {
        let c = v[3][p] as usize;
        n[c] += 1.0;
        for k in 0..3 {
            sum[c][k] += v[k][p] as f64;
        }
        sum[c][3] += dsm[p] as f64;
    }
    let mean = |c: usize, k: usize| sum[c][k] / n[c];
    for c in 0..6 {
        println!(
            "class {c}: IR {:.0} R {:.0} G {:.0} z {:.1}",
            mean(c, 0),
            mean(c, 1),
            mean(c, 2),
            mean(c, 3)
        );
    }
    // Vegetation is bright in IR relative to red; sealed surfaces are not.
    for c in [2, 3] {
        assert!(mean(c, 0) > mean(c, 1) + 50.0, "class {c}");
    }
    assert!((mean(0, 0) - mean(0, 1)).abs() < 25.0);
    // Terrain a few hundred metres up; buildings and trees stand out of it.
    assert!(dsm.iter().all(|&z| (240.0..320.0).contains(&z)));
    assert!(mean(1, 3) > mean(0, 3) + 3.0 && mean(3, 3) > mean(2, 3) + 3.0);
}

#[test]
fn same_seed_same_bytes_other_seed_other_scene() {
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = bands(&scene(d1.path(), 512, 384, 7, 256));
    let b = bands(&scene(d2.path(), 512, 384, 7, 256));
    let c = bands(&scene(d3.path(), 512, 384, 8, 256));
    assert!(a == b, "same seed, different content");
    assert!(
        a.2[0] != c.2[0] && a.2[3] != c.2[3],
        "different seeds, same content"
    );
}

#[test]
fn a_small_scene_is_the_corner_of_a_larger_one() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sw, sh, small, small_z) = bands(&scene(d1.path(), 512, 512, 3, 512));
    // A different block size too: content must not depend on the tiling.
    let (lw, _, large, large_z) = bands(&scene(d2.path(), 1024, 1024, 3, 256));
    assert_eq!((sw, sh, lw), (512, 512, 1024));
    for r in 0..sh {
        for k in 0..4 {
            assert_eq!(
                small[k][r * sw..(r + 1) * sw],
                large[k][r * lw..r * lw + sw],
                "band {k} row {r}"
            );
        }
        assert_eq!(
            small_z[r * sw..(r + 1) * sw],
            large_z[r * lw..r * lw + sw],
            "dsm row {r}"
        );
    }
}

#[test]
fn odd_sizes_and_edge_tiles_work() {
    for block in [512, 128] {
        let dir = tempfile::tempdir().unwrap();
        let out = scene(dir.path(), 333, 517, 11, block);
        let (w, h, v, z) = bands(&out);
        assert_eq!((w, h), (333, 517));
        let t = render::render(11, 0, 0, 333, 517);
        assert!(
            v[0] == t.ir && v[1] == t.r && v[2] == t.g && v[3] == t.gt,
            "block {block}"
        );
        assert!(
            z == t.dsm.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "block {block}"
        );
    }
}

#[test]
fn the_pixel_oracle_matches_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = scene(dir.path(), 700, 600, 5, 256);
    let (w, _, v, z) = bands(&out);
    let mut s = SplitMix64::new(1);
    let mut picks: Vec<(usize, usize)> =
        (0..300).map(|_| (s.below32(700), s.below32(600))).collect();
    picks.extend([(0, 0), (699, 599), (255, 255), (256, 256), (511, 512)]);
    for (x, y) in picks {
        let p = pixel(5, x as i64, y as i64);
        let q = y * w + x;
        assert_eq!(
            (p.ir, p.r, p.g, p.class),
            (v[0][q], v[1][q], v[2][q], v[3][q]),
            "pixel ({x}, {y})"
        );
        assert_eq!(p.height.to_bits(), z[q], "height at ({x}, {y})");
    }
}

#[test]
fn windows_render_without_seams() {
    // Any split of a window renders the same pixels, also across cell and
    // tile borders and at negative coordinates.
    let (x0, y0, w, h) = (-150i64, 900i64, 300usize, 260usize);
    let whole = render::render(2, x0, y0, w, h);
    for (sx, sy) in [(1usize, 1usize), (137, 61), (150, 130)] {
        let parts = [
            (0, 0, sx, sy),
            (sx, 0, w - sx, sy),
            (0, sy, sx, h - sy),
            (sx, sy, w - sx, h - sy),
        ];
        for (px, py, pw, ph) in parts {
            let t = render::render(2, x0 + px as i64, y0 + py as i64, pw, ph);
            for r in 0..ph {
                for c in 0..pw {
                    let q = (py + r) * w + px + c;
                    let p = r * pw + c;
                    assert_eq!(
                        (t.ir[p], t.r[p], t.g[p], t.gt[p], t.dsm[p].to_bits()),
                        (
                            whole.ir[q],
                            whole.r[q],
                            whole.g[q],
                            whole.gt[q],
                            whole.dsm[q].to_bits()
                        ),
                        "split ({sx}, {sy}) at ({}, {})",
                        px + c,
                        py + r
                    );
                }
            }
        }
    }
}

#[test]
fn the_ground_truth_carries_colours_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = scene(dir.path(), 200, 100, 0, 128);
    let ds = Dataset::open(&out.gt).unwrap();
    let band = ds.rasterband(1).unwrap();
    let ct = band.color_table().expect("a colour table on gt.tif");
    let table = ClassTable::isprs();
    for c in &table.classes {
        let e = ct.entry_as_rgb(c.id as usize).unwrap();
        let [r, g, b] = c.rgb();
        assert_eq!(
            (e.r, e.g, e.b, e.a),
            (r as i16, g as i16, b as i16, 255),
            "{}",
            c.name
        );
    }
    let names = category_names(&band);
    let want: Vec<String> = table.classes.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, want);
}

#[test]
fn progress_counts_every_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        width: 300,
        height: 200,
        block: 128,
        ..SynthConfig::default()
    };
    let seen = std::cell::RefCell::new(Vec::new());
    synth(&cfg, dir.path(), false, &|d, t| {
        seen.borrow_mut().push((d, t))
    })
    .unwrap();
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 3 * 2);
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0));
    assert_eq!(*seen.last().unwrap(), (60_000, 60_000));
}

#[test]
fn errors_name_the_path_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cfg = SynthConfig {
        width: 64,
        height: 64,
        ..SynthConfig::default()
    };
    let err = synth(&cfg, &file.join("out"), false, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not-a-dir"), "{err}");

    // An existing directory where a file should go.
    let out = dir.path().join("scene");
    std::fs::create_dir_all(out.join("dsm.tif")).unwrap();
    let err = synth(&cfg, &out, false, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("dsm.tif"), "{err}");
    assert!(!out.join("image.tif").exists());

    for bad in [
        SynthConfig {
            width: 0,
            ..cfg.clone()
        },
        SynthConfig {
            block: 100,
            ..cfg.clone()
        },
        SynthConfig {
            pixel_size: 0.0,
            ..cfg.clone()
        },
    ] {
        assert!(matches!(
            synth(&bad, dir.path(), false, &|_, _| {}),
            Err(Error::Config(_))
        ));
    }
}

/// Class fractions over a large area and the generation and writing rate.
/// `cargo test --release --lib synth::tests::stats -- --ignored --nocapture`
#[test]
#[ignore]
fn stats_and_throughput() {
    let side: usize = std::env::var("SYNTH_SIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8192);
    let side = side.div_ceil(512) * 512;
    let t = std::time::Instant::now();
    let tiles: Vec<render::Tile> = (0..(side / 512) * (side / 512))
        .into_par_iter()
        .map(|k| {
            render::render(
                0,
                (k % (side / 512) * 512) as i64,
                (k / (side / 512) * 512) as i64,
                512,
                512,
            )
        })
        .collect();
    let dt = t.elapsed().as_secs_f64();
    let gt: Vec<u8> = tiles.iter().flat_map(|t| t.gt.iter().copied()).collect();
    drop(tiles);
    print_fractions(&format!("{side}x{side} seed 0"), &fractions(&gt));
    println!(
        "render only: {:.1} Mpx/s on {} threads",
        (side * side) as f64 / dt / 1e6,
        rayon::current_num_threads()
    );
    let mut all = [0f64; 6];
    for seed in 1..5 {
        let tiles: Vec<u8> = (0..64)
            .into_par_iter()
            .flat_map_iter(|k| {
                render::render(seed, (k % 8 * 512) as i64, (k / 8 * 512) as i64, 512, 512).gt
            })
            .collect();
        let f = fractions(&tiles);
        print_fractions(&format!("4096x4096 seed {seed}"), &f);
        for k in 0..6 {
            all[k] += f[k] / 4.0;
        }
    }
    print_fractions("mean of seeds 1-4", &all);
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        width: side,
        height: side,
        ..SynthConfig::default()
    };
    let t = std::time::Instant::now();
    let out = synth(&cfg, dir.path(), false, &|_, _| {}).unwrap();
    let dt = t.elapsed().as_secs_f64();
    let size: u64 = [&out.image, &out.dsm, &out.gt]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "synth {side}x{side}: {dt:.1} s, {:.1} Mpx/s, {:.0} MB on disk",
        (side * side) as f64 / dt / 1e6,
        size as f64 / 1e6
    );
}

/// Writes a scene for eyeballing: `SYNTH_PREVIEW=/some/dir cargo test --lib synth::tests::preview -- --ignored`.
#[test]
#[ignore]
fn preview() {
    let Some(dir) = std::env::var_os("SYNTH_PREVIEW") else {
        return;
    };
    let side: usize = std::env::var("SYNTH_SIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let seed: u64 = std::env::var("SYNTH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    scene(Path::new(&dir), side, side, seed, 512);
}
