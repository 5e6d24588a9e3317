//! The split-run protocol, in one place: which part a run computes
//! ([`Part`]: `--part I/N` or `--part auto` inside a Slurm array job), which
//! rows it covers, what its file is called, and what it records about
//! itself ([`PartMeta`]) so that [`merge`](crate::scale::merge) can check
//! and join the parts. `infer` writes a [`PartMeta`] into each part;
//! `merge` reads it back. No GDAL here: metadata goes in and out as
//! key/value items.

use crate::classes::ClassTable;
use crate::error::{Error, Result};
use crate::infer::window::Size;
use crate::infer::write::TILE;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Part `index` of `count` of a split run (`0 <= index < count`), a band of
/// whole 512-row tile rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Part {
    index: usize,
    count: usize,
}

/// The Slurm array variables `--part auto` reads.
pub const SLURM_ARRAY_VARS: [&str; 3] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
];

impl Part {
    /// Part `index` of `count`; `count` must be at least 1 and `index`
    /// below it.
    pub fn new(index: usize, count: usize) -> Result<Part> {
        if count == 0 {
            return Err(Error::Config(format!(
                "--part {index}/{count}: the number of parts N must be at least 1"
            )));
        }
        if index >= count {
            return Err(Error::Config(format!(
                "--part {index}/{count}: the part I must be below N (parts are numbered 0 to {})",
                count - 1
            )));
        }
        Ok(Part { index, count })
    }

    /// The part of this task of a Slurm array job, from its
    /// `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT` and
    /// `SLURM_ARRAY_TASK_MIN`, which `var` looks up (e.g.
    /// `|k| std::env::var(k).ok()`). Task ids may start above 0: the part is
    /// the id less the minimum.
    pub fn from_slurm(var: impl Fn(&str) -> Option<String>) -> Result<Part> {
        let get = |k: &str| -> Result<usize> {
            let v = var(k).ok_or_else(|| {
                Error::Config(format!(
                    "--part auto: {k} is not set (not inside a Slurm array job?)"
                ))
            })?;
            v.trim()
                .parse()
                .map_err(|_| Error::Config(format!("--part auto: {k}={v} is not a number")))
        };
        let [id, count, min] = SLURM_ARRAY_VARS.map(get);
        let (id, count, min) = (id?, count?, min?);
        if id < min {
            return Err(Error::Config(format!(
                "--part auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            )));
        }
        Part::new(id - min, count)
    }

    /// The part a `--part` argument names: `I/N`, or `auto` for
    /// [`Part::from_slurm`] over this process's environment (read, never
    /// changed).
    pub fn from_arg(s: &str) -> Result<Part> {
        if s.trim() == "auto" {
            Part::from_slurm(|k| std::env::var(k).ok())
        } else {
            s.parse()
        }
    }

    /// The 0-based index of the part.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The number of parts.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The output rows `[y0, y1)` of this part of a scene `height` rows
    /// high: whole 512-row tile rows, split evenly. A scene with fewer tile
    /// rows than parts is refused.
    pub fn rows(&self, height: usize) -> Result<(usize, usize)> {
        let (i, n) = (self.index, self.count);
        let tiles = height.div_ceil(TILE);
        if n > tiles {
            return Err(Error::Config(format!(
                "--part {i}/{n}: the scene has only {tiles} row(s) of {TILE} px tiles; split it into at most {tiles} parts"
            )));
        }
        let a = i * tiles / n;
        let b = (i + 1) * tiles / n;
        Ok(((a * TILE).min(height), (b * TILE).min(height)))
    }

    /// The file of this part of the map `map`: `MAP.part-I-of-N.tif` beside
    /// it (the stem keeps its bytes, UTF-8 or not).
    pub fn path(&self, map: &Path) -> PathBuf {
        let mut name = map.file_stem().unwrap_or_default().to_os_string();
        name.push(format!(".part-{}-of-{}.tif", self.index, self.count));
        map.with_file_name(name)
    }

    /// The map's name and the part, from a part's file name
    /// `BASE.part-I-of-N.tif` ([`Part::path`]); `None` for other names.
    pub fn from_file_name(name: &str) -> Option<(&str, Part)> {
        let stem = name.strip_suffix(".tif")?;
        let (base, rest) = stem.rsplit_once(".part-")?;
        let (i, n) = rest.split_once("-of-")?;
        let part = Part::new(i.parse().ok()?, n.parse().ok()?).ok()?;
        Some((base, part))
    }
}

impl std::fmt::Display for Part {
    /// `I/N`, as `--part` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Part {
    type Err = Error;

    /// Parses `I/N` (blanks around either number allowed).
    fn from_str(s: &str) -> Result<Part> {
        let (i, n) = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)))
            .ok_or_else(|| Error::Config(format!("--part {s}: expected I/N, e.g. 0/4, or auto")))?;
        Part::new(i, n)
    }
}

/// The metadata keys a part carries (GDAL domain "").
pub mod keys {
    /// `I/N`.
    pub const PART: &str = "RSTILE_PART";
    /// `Y0,Y1`: the scene rows the part holds.
    pub const ROWS: &str = "RSTILE_ROWS";
    /// JSON object: the settings that determine the pixels, less the rows.
    pub const SETTINGS: &str = "RSTILE_SETTINGS";
    /// JSON: the class table.
    pub const CLASSES: &str = "RSTILE_CLASSES";
    /// JSON: `width`, `height` and `geo_transform` of the whole scene.
    pub const SCENE: &str = "RSTILE_SCENE";
}

/// The whole scene a part belongs to.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct PartScene {
    pub width: usize,
    pub height: usize,
    /// `None` when the scene has no geotransform.
    pub geo_transform: Option<[f64; 6]>,
}

impl PartScene {
    /// The scene's size.
    pub fn size(&self) -> Size {
        Size {
            width: self.width,
            height: self.height,
        }
    }
}

/// What a part records about itself, so that parts of different runs are
/// refused rather than silently joined. Written by `infer` with
/// [`PartMeta::items`], read by `merge` with [`PartMeta::from_items`].
#[derive(Debug, Clone, PartialEq)]
pub struct PartMeta {
    pub part: Part,
    /// The scene rows `[y0, y1)` the part holds.
    pub rows: (usize, usize),
    /// The settings that determine the pixels, without `rows` (which
    /// differ from part to part).
    pub settings: BTreeMap<String, String>,
    pub classes: ClassTable,
    pub scene: PartScene,
}

impl PartMeta {
    /// The record of `part` (rows `rows`) of a run with `settings`; a
    /// `rows` entry in `settings` is left out.
    pub fn new(
        part: Part,
        rows: (usize, usize),
        mut settings: BTreeMap<String, String>,
        classes: ClassTable,
        scene: PartScene,
    ) -> PartMeta {
        settings.remove("rows");
        PartMeta {
            part,
            rows,
            settings,
            classes,
            scene,
        }
    }

    /// Whether `other` comes from the same run: same settings, classes and
    /// scene (the part and its rows may differ).
    pub fn same_run(&self, other: &PartMeta) -> bool {
        self.settings == other.settings
            && self.classes == other.classes
            && self.scene == other.scene
    }

    /// The metadata items to write into the part, keys from [`keys`].
    pub fn items(&self) -> Vec<(String, String)> {
        vec![
            (keys::PART.to_string(), self.part.to_string()),
            (
                keys::ROWS.to_string(),
                format!("{},{}", self.rows.0, self.rows.1),
            ),
            (keys::SETTINGS.to_string(), json(&self.settings)),
            (keys::CLASSES.to_string(), json(&self.classes)),
            (
                keys::SCENE.to_string(),
                serde_json::json!({
                    "width": self.scene.width,
                    "height": self.scene.height,
                    "geo_transform": self.scene.geo_transform,
                })
                .to_string(),
            ),
        ]
    }

    /// Reads the record of the part file `path`, whose metadata item `key`
    /// is `item(key)`. Errors name the file and the missing or bad key.
    pub fn from_items(path: &Path, item: impl Fn(&str) -> Option<String>) -> Result<PartMeta> {
        let get = |key: &str| {
            item(key).ok_or_else(|| {
                Error::file(path, format!("is not an rstile part (no {key} metadata)"))
            })
        };
        let bad = |key: &str, e: &dyn std::fmt::Display| {
            Error::file(path, format!("bad {key} metadata: {e}"))
        };
        let part: Part = get(keys::PART)?.parse().map_err(|e| bad(keys::PART, &e))?;
        let rows = get(keys::ROWS)?;
        let rows = rows
            .split_once(',')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .ok_or_else(|| bad(keys::ROWS, &format!("{rows:?} is not Y0,Y1")))?;
        let settings =
            serde_json::from_str(&get(keys::SETTINGS)?).map_err(|e| bad(keys::SETTINGS, &e))?;
        let classes =
            serde_json::from_str(&get(keys::CLASSES)?).map_err(|e| bad(keys::CLASSES, &e))?;
        let scene = serde_json::from_str(&get(keys::SCENE)?).map_err(|e| bad(keys::SCENE, &e))?;
        Ok(PartMeta {
            part,
            rows,
            settings,
            classes,
            scene,
        })
    }
}

/// JSON text of a value that serialises infallibly (string maps, class
/// tables).
fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_i_of_n_and_refuses_bad_ones() {
        let p: Part = "1/3".parse().unwrap();
        assert_eq!((p.index(), p.count()), (1, 3));
        assert_eq!(" 2 / 3 ".parse::<Part>().unwrap().to_string(), "2/3");
        let err = |s: &str| s.parse::<Part>().unwrap_err().to_string();
        assert!(err("x").contains("--part x: expected I/N"), "{}", err("x"));
        assert!(err("0/0").contains("at least 1"), "{}", err("0/0"));
        assert!(!err("0/0").contains("0..0"), "{}", err("0/0"));
        assert!(err("3/3").starts_with("--part 3/3:"), "{}", err("3/3"));
        assert!(err("3/3").contains("0 to 2"), "{}", err("3/3"));
    }

    #[test]
    fn reads_slurm_array_variables() {
        let v = vars(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
        ]);
        assert_eq!(Part::from_slurm(v).unwrap(), Part::new(2, 4).unwrap());
        let e = Part::from_slurm(vars(&[])).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID is not set"), "{e}");
        let e = Part::from_slurm(vars(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "x"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SLURM_ARRAY_TASK_COUNT=x is not a number"),
            "{e}"
        );
        let e = Part::from_slurm(vars(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("is below SLURM_ARRAY_TASK_MIN 2"), "{e}");
    }

    #[test]
    fn rows_split_whole_tile_rows_evenly() {
        let rows = |i, n, h| Part::new(i, n).unwrap().rows(h);
        assert_eq!(rows(0, 1, 1000).unwrap(), (0, 1000));
        assert_eq!(rows(0, 2, 1000).unwrap(), (0, 512));
        assert_eq!(rows(1, 2, 1000).unwrap(), (512, 1000));
        assert_eq!(rows(2, 3, 5 * 512).unwrap(), (3 * 512, 5 * 512));
        let e = rows(0, 5, 600).unwrap_err().to_string();
        assert!(e.contains("at most 2 parts"), "{e}");
        // the parts tile the scene
        for n in 1..=7 {
            let h = 7 * 512 - 100;
            let mut y = 0;
            for i in 0..n {
                let (a, b) = rows(i, n, h).unwrap();
                assert_eq!(a, y);
                y = b;
            }
            assert_eq!(y, h);
        }
    }

    #[test]
    fn paths_and_file_names_round_trip() {
        let p = Part::new(1, 3).unwrap();
        let path = p.path(Path::new("out/map.tif"));
        assert_eq!(path, Path::new("out/map.part-1-of-3.tif"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(Part::from_file_name(name), Some(("map", p)));
        assert_eq!(Part::from_file_name("map.tif"), None);
        assert_eq!(Part::from_file_name("map.part-3-of-3.tif"), None);
    }

    #[test]
    fn metadata_round_trips() {
        let mut settings = BTreeMap::new();
        settings.insert("window".to_string(), "64".to_string());
        settings.insert("rows".to_string(), "0..512".to_string());
        let meta = PartMeta::new(
            Part::new(0, 2).unwrap(),
            (0, 512),
            settings,
            ClassTable::isprs(),
            PartScene {
                width: 300,
                height: 600,
                geo_transform: Some([1.0, 0.5, 0.0, 2.0, 0.0, -0.5]),
            },
        );
        assert!(!meta.settings.contains_key("rows"));
        let items: BTreeMap<_, _> = meta.items().into_iter().collect();
        assert_eq!(items[keys::PART], "0/2");
        assert_eq!(items[keys::ROWS], "0,512");
        assert_eq!(items[keys::SETTINGS], r#"{"window":"64"}"#);
        assert_eq!(
            items[keys::SCENE],
            r#"{"geo_transform":[1.0,0.5,0.0,2.0,0.0,-0.5],"height":600,"width":300}"#
        );
        let back = PartMeta::from_items(Path::new("p.tif"), |k| items.get(k).cloned()).unwrap();
        assert_eq!(back, meta);
        assert!(back.same_run(&meta));

        let e = PartMeta::from_items(Path::new("p.tif"), |k| {
            (k != keys::ROWS).then(|| items[k].clone())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "p.tif: is not an rstile part (no RSTILE_ROWS metadata)");
    }
}
