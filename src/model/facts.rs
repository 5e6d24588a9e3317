//! What a map needs that a bare network graph lacks: the legend, the
//! normalisation, the window and overlap, and the pixel size the model was
//! trained at. For a model brought from elsewhere (an ONNX export) they are
//! found, fact by fact, in this order:
//!
//! 1. the command line ([`Overrides`]: `--classes`, `--mean`, `--std`,
//!    `--window`, `--overlap`);
//! 2. Deepness metadata in the graph's `metadata_props` (values are JSON:
//!    `model_type` "Segmentor", `class_names` `{id: name}`, `tiles_size`,
//!    `tiles_overlap` in percent, `standardization_mean` and
//!    `standardization_std`, applied after dividing by 255, `resolution` in
//!    cm/px);
//! 3. sidecars beside the model ([`Sidecars`]): geoai's `MODEL.onnx.json`
//!    (`id2label`, `input_height`), or a STAC item with the Machine Learning
//!    Model extension (`mlm:input` bands and normalisation, `mlm:output`
//!    classes) as `MODEL.onnx.json`, `MODEL.stac.json` or `STEM.stac.json`;
//! 4. the graph itself (a fixed input height is the window).
//!
//! A fact found nowhere is a one-line error naming it and the flag that gives
//! it. Each resolved fact records where it came from ([`From`]), for
//! `rstile model info` and the run's header.
//!
//! Pure: JSON in, facts out; only [`Sidecars::find`] reads files.

use crate::classes::{Class, ClassTable};
use crate::error::{Error, Result};
use crate::model::ModelMeta;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where a fact came from.
#[derive(Debug, Clone, PartialEq)]
pub enum From {
    /// A command-line flag, e.g. `--mean`.
    Flag(&'static str),
    /// The graph's Deepness `metadata_props`.
    Deepness,
    /// geoai's sidecar JSON.
    Geoai(PathBuf),
    /// A STAC MLM item.
    Stac(PathBuf),
    /// The graph's input shape.
    Graph,
    /// rstile's default (the overlap only: 25 %).
    Default,
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Flag(flag) => write!(f, "{flag}"),
            From::Deepness => write!(f, "Deepness metadata"),
            From::Geoai(p) => write!(f, "geoai sidecar {}", p.display()),
            From::Stac(p) => write!(f, "STAC MLM {}", p.display()),
            From::Graph => write!(f, "the graph's input shape"),
            From::Default => write!(f, "default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact<T> {
    pub value: T,
    pub from: From,
}

fn fact<T>(value: T, from: From) -> Fact<T> {
    Fact { value, from }
}

/// What the command line says; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub classes: Option<ClassTable>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub window: Option<usize>,
    pub overlap: Option<f64>,
}

/// What the graph says about itself.
#[derive(Debug, Clone, Default)]
pub struct GraphFacts {
    /// Input channels.
    pub bands: usize,
    /// Output channels (1 for a sigmoid two-class output).
    pub channels: usize,
    /// A fixed input height and width, if the graph has one.
    pub fixed_window: Option<usize>,
    /// `metadata_props`, key and value.
    pub metadata: Vec<(String, String)>,
}

/// The sidecar JSON documents found beside a model.
#[derive(Debug, Clone, Default)]
pub struct Sidecars {
    pub geoai: Option<(PathBuf, Value)>,
    pub stac: Option<(PathBuf, Value)>,
}

impl Sidecars {
    /// Looks for `MODEL.json` (geoai, or a STAC item), `MODEL.stac.json`
    /// and `STEM.stac.json` beside `model`. A sidecar that exists but is
    /// not JSON is an error naming it.
    pub fn find(model: &Path) -> Result<Sidecars> {
        let mut out = Sidecars::default();
        let mut name = model.as_os_str().to_owned();
        name.push(".json");
        let stem_stac = model.with_extension("stac.json");
        let mut model_stac = model.as_os_str().to_owned();
        model_stac.push(".stac.json");
        for p in [PathBuf::from(name), PathBuf::from(model_stac), stem_stac] {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::file(&p, e)),
            };
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::file(&p, format!("not a JSON sidecar: {e}")))?;
            if is_stac(&v) {
                out.stac.get_or_insert((p, v));
            } else if out.geoai.is_none() && v.is_object() {
                out.geoai = Some((p, v));
            }
        }
        Ok(out)
    }
}

fn is_stac(v: &Value) -> bool {
    v.get("properties")
        .and_then(|p| p.get("mlm:input"))
        .is_some()
        || v.get("mlm:input").is_some()
}

/// The facts a map needs, each with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The legend; output channel `k` is `classes.classes[k]` (a sigmoid
    /// output has two classes: below 0.5 and at or above).
    pub classes: Fact<ClassTable>,
    /// Per band, in the raster's units.
    pub mean: Fact<Vec<f32>>,
    pub std: Fact<Vec<f32>>,
    pub window: Fact<usize>,
    pub overlap: Fact<f64>,
    /// The pixel size the model was trained at, in cm.
    pub resolution_cm: Option<Fact<f64>>,
}

/// A fixed, readable palette for classes without colours (ISPRS-like first,
/// then distinct hues).
pub const PALETTE: [&str; 16] = [
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
];

/// Classes named `names[k]` for channel `k`, coloured from [`PALETTE`].
pub fn named_classes(names: &[String]) -> ClassTable {
    ClassTable {
        classes: names
            .iter()
            .enumerate()
            .map(|(k, n)| Class {
                id: k as u8,
                name: n.clone(),
                color: PALETTE[k % PALETTE.len()].to_string(),
            })
            .collect(),
    }
}

/// `{ "0": "a", "1": "b" }` (or a list) as names by channel; the ids must
/// be 0..n.
fn names_from_map(v: &Value) -> std::result::Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("class name {x} is not a string"))
            })
            .collect(),
        Value::Object(m) => {
            let mut pairs: Vec<(usize, String)> = Vec::new();
            for (k, name) in m {
                let id: usize = k
                    .trim()
                    .parse()
                    .map_err(|_| format!("class id '{k}' is not a number"))?;
                let name = name
                    .as_str()
                    .ok_or_else(|| format!("the name of class {id} is not a string"))?;
                pairs.push((id, name.to_string()));
            }
            pairs.sort();
            for (i, (id, _)) in pairs.iter().enumerate() {
                if *id != i {
                    return Err(format!("class ids must be 0..{}, found {id}", pairs.len()));
                }
            }
            Ok(pairs.into_iter().map(|(_, n)| n).collect())
        }
        _ => Err("class names are neither a map nor a list".into()),
    }
}

fn floats(v: &Value) -> Option<Vec<f32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

/// Deepness' `metadata_props`, each value parsed as JSON.
struct Deepness {
    props: serde_json::Map<String, Value>,
}

impl Deepness {
    fn of(meta: &[(String, String)], model: &Path) -> Result<Option<Deepness>> {
        const KEYS: [&str; 7] = [
            "model_type",
            "class_names",
            "tiles_size",
            "tiles_overlap",
            "standardization_mean",
            "standardization_std",
            "resolution",
        ];
        let mut props = serde_json::Map::new();
        for (k, v) in meta {
            if KEYS.contains(&k.as_str()) {
                // Deepness writes json.dumps values; a bare word is a string
                let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
                props.insert(k.clone(), value);
            }
        }
        if props.is_empty() {
            return Ok(None);
        }
        if let Some(t) = props.get("model_type").and_then(Value::as_str) {
            if !t.eq_ignore_ascii_case("segmentor") {
                return Err(Error::file(
                    model,
                    format!(
                        "the Deepness metadata says model_type '{t}'; rstile runs segmentation \
                         models (Segmentor)"
                    ),
                ));
            }
        }
        Ok(Some(Deepness { props }))
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.props.get(k)
    }
}

/// The STAC MLM item's properties.
fn stac_props(v: &Value) -> &Value {
    v.get("properties").unwrap_or(v)
}

/// Per-band statistics of `mlm:input[0]`: `value_scaling` (MLM 1.3+) or
/// `norm_type: z-score` with `statistics`.
fn stac_norm(v: &Value) -> Option<(Vec<f32>, Vec<f32>)> {
    let input = stac_props(v).get("mlm:input")?.get(0)?;
    if let Some(vs) = input.get("value_scaling").and_then(Value::as_array) {
        let mut mean = Vec::new();
        let mut std = Vec::new();
        for s in vs {
            if s.get("type")?.as_str()? != "z-score" {
                return None;
            }
            mean.push(s.get("mean")?.as_f64()? as f32);
            std.push(s.get("stddev")?.as_f64()? as f32);
        }
        return Some((mean, std));
    }
    if input.get("norm_type")?.as_str()? == "z-score" {
        let stats = input.get("statistics")?.as_array()?;
        let mean = stats
            .iter()
            .map(|s| s.get("mean").and_then(Value::as_f64).map(|x| x as f32))
            .collect::<Option<Vec<_>>>()?;
        let std = stats
            .iter()
            .map(|s| s.get("stddev").and_then(Value::as_f64).map(|x| x as f32))
            .collect::<Option<Vec<_>>>()?;
        return Some((mean, std));
    }
    None
}

/// `mlm:output[0]`'s `classification:classes` (`value`, `name`,
/// `color_hint`).
fn stac_classes(v: &Value) -> Option<std::result::Result<ClassTable, String>> {
    let classes = stac_props(v)
        .get("mlm:output")?
        .get(0)?
        .get("classification:classes")?
        .as_array()?;
    let mut by_value: Vec<(usize, String, Option<String>)> = Vec::new();
    for c in classes {
        let Some(value) = c.get("value").and_then(Value::as_u64) else {
            return Some(Err("a class without an integer 'value'".into()));
        };
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("unnamed")
            .to_string();
        let color = c
            .get("color_hint")
            .and_then(Value::as_str)
            .map(|h| format!("#{}", h.trim_start_matches('#').to_lowercase()));
        by_value.push((value as usize, name, color));
    }
    by_value.sort();
    let names: Vec<String> = by_value.iter().map(|(_, n, _)| n.clone()).collect();
    let mut table = named_classes(&names);
    for (k, (value, _, color)) in by_value.into_iter().enumerate() {
        if value != k {
            return Some(Err(format!(
                "class values must be 0..{}, found {value}",
                table.len()
            )));
        }
        if let Some(c) = color {
            table.classes[k].color = c;
        }
    }
    Some(Ok(table))
}

/// The STAC item's input window (`mlm:input[0].input.shape`, last axis).
fn stac_window(v: &Value) -> Option<usize> {
    let shape = stac_props(v)
        .get("mlm:input")?
        .get(0)?
        .get("input")?
        .get("shape")?
        .as_array()?;
    let w = shape.last()?.as_i64()?;
    (w > 0).then_some(w as usize)
}

/// Resolves every fact for the model at `model` (named in errors).
pub fn resolve(
    model: &Path,
    graph: &GraphFacts,
    flags: &Overrides,
    sidecars: &Sidecars,
) -> Result<Facts> {
    let bad = |why: String| Error::file(model, why);
    let deepness = Deepness::of(&graph.metadata, model)?;
    let geoai = sidecars.geoai.as_ref();
    let stac = sidecars.stac.as_ref();
    // a sigmoid output of one channel maps two classes
    let want_classes = graph.channels.max(2);

    // classes
    let classes = if let Some(c) = &flags.classes {
        fact(c.clone(), From::Flag("--classes"))
    } else if let Some(v) = deepness.as_ref().and_then(|d| d.get("class_names")) {
        let names =
            names_from_map(v).map_err(|e| bad(format!("Deepness metadata class_names: {e}")))?;
        let mut table = named_classes(&names);
        // Deepness has no colours: a STAC sidecar naming the same classes
        // in the same order gives them (as `rstile model export` writes it)
        if let Some(Ok(st)) = stac.and_then(|(_, v)| stac_classes(v)) {
            let same = st.classes.len() == table.classes.len()
                && st
                    .classes
                    .iter()
                    .zip(&table.classes)
                    .all(|(a, b)| a.name == b.name);
            if same {
                for (t, s) in table.classes.iter_mut().zip(&st.classes) {
                    t.color = s.color.clone();
                }
            }
        }
        fact(table, From::Deepness)
    } else if let Some((p, v)) = stac.and_then(|(p, v)| stac_classes(v).map(|c| (p, c))) {
        let t = v.map_err(|e| Error::file(p, format!("STAC mlm:output: {e}")))?;
        fact(t, From::Stac(p.clone()))
    } else if let Some((p, v)) = geoai.and_then(|(p, v)| v.get("id2label").map(|l| (p, l))) {
        let names = names_from_map(v).map_err(|e| Error::file(p, format!("id2label: {e}")))?;
        fact(named_classes(&names), From::Geoai(p.clone()))
    } else {
        return Err(bad(format!(
            "the model names no classes (no Deepness class_names, no sidecar); give them with \
             --classes FILE.toml ({want_classes} classes, the format of configs/classes/)"
        )));
    };
    if classes.value.len() != want_classes {
        return Err(bad(format!(
            "{} names {} classes, but the graph outputs {} channel(s){}",
            classes.from,
            classes.value.len(),
            graph.channels,
            if graph.channels == 1 {
                " (one sigmoid channel maps 2 classes)"
            } else {
                ""
            }
        )));
    }
    classes
        .value
        .validate()
        .map_err(|e| bad(format!("classes from {}: {e}", classes.from)))?;

    // normalisation, in the raster's units
    let n = graph.bands;
    let (mean, std) = match (&flags.mean, &flags.std) {
        (Some(m), Some(s)) => (
            fact(m.clone(), From::Flag("--mean")),
            fact(s.clone(), From::Flag("--std")),
        ),
        (Some(_), None) | (None, Some(_)) => {
            return Err(bad("--mean and --std go together".into()));
        }
        (None, None) => {
            if let Some(d) = &deepness {
                // Deepness divides by 255, then standardises if asked
                let m = d.get("standardization_mean").and_then(floats);
                let s = d.get("standardization_std").and_then(floats);
                let (m, s) = match (m, s) {
                    (Some(m), Some(s)) => (m, s),
                    (None, None) => (vec![0.0; n], vec![1.0; n]),
                    _ => {
                        return Err(bad(
                            "the Deepness metadata has only one of standardization_mean and \
                             standardization_std"
                                .into(),
                        ))
                    }
                };
                (
                    fact(m.iter().map(|x| x * 255.0).collect(), From::Deepness),
                    fact(s.iter().map(|x| x * 255.0).collect(), From::Deepness),
                )
            } else if let Some((p, (m, s))) = stac.and_then(|(p, v)| stac_norm(v).map(|n| (p, n))) {
                (
                    fact(m, From::Stac(p.clone())),
                    fact(s, From::Stac(p.clone())),
                )
            } else {
                return Err(bad(format!(
                    "the model does not say how to normalise its input (no Deepness metadata, \
                     no STAC mlm:input statistics); give --mean and --std, {n} values each, in \
                     the raster's units"
                )));
            }
        }
    };
    for (what, f) in [("mean", &mean), ("std", &std)] {
        if f.value.len() != n {
            return Err(bad(format!(
                "{} gives {} {what} value(s), the graph takes {n} band(s)",
                f.from,
                f.value.len()
            )));
        }
    }
    if let Some(i) = std.value.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(bad(format!(
            "{} gives std {} for band {}; it must be positive",
            std.from,
            std.value[i],
            i + 1
        )));
    }

    // window
    let from_deepness = deepness
        .as_ref()
        .and_then(|d| d.get("tiles_size"))
        .and_then(Value::as_u64)
        .map(|w| w as usize);
    let from_geoai = geoai.and_then(|(p, v)| {
        v.get("input_height")
            .and_then(Value::as_u64)
            .map(|w| (p, w as usize))
    });
    let window = if let Some(w) = flags.window {
        fact(w, From::Flag("--window"))
    } else if let Some(w) = graph.fixed_window {
        fact(w, From::Graph)
    } else if let Some(w) = from_deepness {
        fact(w, From::Deepness)
    } else if let Some((p, w)) = stac.and_then(|(p, v)| stac_window(v).map(|w| (p, w))) {
        fact(w, From::Stac(p.clone()))
    } else if let Some((p, w)) = from_geoai {
        fact(w, From::Geoai(p.clone()))
    } else {
        return Err(bad(
            "the graph's input size is dynamic and no metadata gives a tile size; give \
             --window PX"
                .into(),
        ));
    };
    if let (Some(fixed), From::Flag(_)) = (graph.fixed_window, &window.from) {
        if fixed != window.value {
            return Err(bad(format!(
                "the graph takes {fixed} x {fixed} px windows only; --window {} cannot run it",
                window.value
            )));
        }
    }

    // overlap
    let overlap = if let Some(o) = flags.overlap {
        fact(o, From::Flag("--overlap"))
    } else if let Some(p) = deepness
        .as_ref()
        .and_then(|d| d.get("tiles_overlap"))
        .and_then(Value::as_f64)
    {
        if !(0.0..100.0).contains(&p) {
            return Err(bad(format!(
                "the Deepness metadata's tiles_overlap is {p} %; it must be in 0..100"
            )));
        }
        fact(p / 100.0, From::Deepness)
    } else {
        fact(0.25, From::Default)
    };

    let resolution_cm = deepness
        .as_ref()
        .and_then(|d| d.get("resolution"))
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0)
        .map(|r| fact(r, From::Deepness));

    Ok(Facts {
        classes,
        mean,
        std,
        window,
        overlap,
        resolution_cm,
    })
}

/// Applies the command line's legend and normalisation to the description
/// of one of rstile's own models. The legend must have as many classes as
/// the model outputs, the normalisation a value per band; anything else is
/// an error naming the flag and the model.
pub fn override_meta(meta: &mut ModelMeta, flags: &Overrides, model: &Path) -> Result<()> {
    let bad = |why: String| Error::file(model, why);
    if let Some(c) = &flags.classes {
        if c.len() != meta.num_classes() {
            return Err(bad(format!(
                "--classes gives {} classes, the model outputs {}",
                c.len(),
                meta.num_classes()
            )));
        }
        meta.classes = c.clone();
    }
    match (&flags.mean, &flags.std) {
        (Some(m), Some(s)) => {
            meta.mean = m.clone();
            meta.std = s.clone();
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(bad("--mean and --std go together".into()));
        }
        (None, None) => {}
    }
    if flags.mean.is_some() {
        meta.validate().map_err(|e| {
            let msg = e.to_string();
            let why = msg.trim_start_matches("model metadata: ");
            bad(format!("--mean/--std: {why}"))
        })?;
    }
    Ok(())
}

/// A warning when the scene's pixel size (metres) differs from the model's
/// (cm/px) by more than 25 %.
pub fn resolution_warning(model_cm: f64, scene_m: f64) -> Option<String> {
    let scene_cm = scene_m * 100.0;
    let ratio = scene_cm / model_cm;
    (!(0.75..=1.25).contains(&ratio)).then(|| {
        format!(
            "the scene's pixels are {scene_cm:.1} cm, the model was made for {model_cm:.1} cm \
             ({:.0} % off); resample the scene for good results",
            (ratio - 1.0).abs() * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deepness() -> Vec<(String, String)> {
        [
            ("model_type", json!("Segmentor")),
            ("class_names", json!({"0": "road", "1": "field"})),
            ("tiles_size", json!(256)),
            ("tiles_overlap", json!(40)),
            ("standardization_mean", json!([0.5, 0.25, 0.0])),
            ("standardization_std", json!([0.5, 0.5, 1.0])),
            ("resolution", json!(20)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn graph(meta: Vec<(String, String)>) -> GraphFacts {
        GraphFacts {
            bands: 3,
            channels: 2,
            fixed_window: None,
            metadata: meta,
        }
    }

    #[test]
    fn deepness_metadata_gives_every_fact_in_raster_units() {
        let f = resolve(
            Path::new("m.onnx"),
            &graph(deepness()),
            &Overrides::default(),
            &Sidecars::default(),
        )
        .unwrap();
        let names: Vec<&str> = f
            .classes
            .value
            .classes
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["road", "field"]);
        assert_eq!(f.classes.from, From::Deepness);
        assert_eq!(f.mean.value, vec![127.5, 63.75, 0.0]);
        assert_eq!(f.std.value, vec![127.5, 127.5, 255.0]);
        assert_eq!((f.window.value, f.overlap.value), (256, 0.4));
        assert_eq!(f.resolution_cm.unwrap().value, 20.0);
    }

    #[test]
    fn flags_win_and_a_fixed_graph_size_beats_metadata() {
        let flags = Overrides {
            mean: Some(vec![1.0; 3]),
            std: Some(vec![2.0; 3]),
            overlap: Some(0.5),
            ..Default::default()
        };
        let mut g = graph(deepness());
        g.fixed_window = Some(128);
        let f = resolve(Path::new("m.onnx"), &g, &flags, &Sidecars::default()).unwrap();
        assert_eq!(f.mean.from, From::Flag("--mean"));
        assert_eq!((f.window.value, f.window.from.clone()), (128, From::Graph));
        assert_eq!(f.overlap.value, 0.5);
        let wrong = Overrides {
            window: Some(256),
            ..flags
        };
        let e = resolve(Path::new("m.onnx"), &g, &wrong, &Sidecars::default()).unwrap_err();
        assert!(e.to_string().contains("128 x 128 px windows only"), "{e}");
    }

    #[test]
    fn missing_facts_name_the_flag() {
        let g = graph(Vec::new());
        let e = resolve(
            Path::new("m.onnx"),
            &g,
            &Overrides::default(),
            &Sidecars::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m.onnx") && e.contains("--classes FILE.toml"),
            "{e}"
        );
        let flags = Overrides {
            classes: Some(named_classes(&["a".into(), "b".into()])),
            ..Default::default()
        };
        let e = resolve(Path::new("m.onnx"), &g, &flags, &Sidecars::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mean and --std"), "{e}");
        let flags = Overrides {
            mean: Some(vec![0.0; 3]),
            std: Some(vec![1.0; 3]),
            ..flags
        };
        let e = resolve(Path::new("m.onnx"), &g, &flags, &Sidecars::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--window PX"), "{e}");
    }

    #[test]
    fn class_count_must_match_the_output() {
        let mut g = graph(deepness());
        g.channels = 6;
        let e = resolve(
            Path::new("m.onnx"),
            &g,
            &Overrides::default(),
            &Sidecars::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("names 2 classes, but the graph outputs 6"),
            "{e}"
        );
        // a sigmoid channel maps two classes
        g.channels = 1;
        assert!(resolve(
            Path::new("m.onnx"),
            &g,
            &Overrides::default(),
            &Sidecars::default()
        )
        .is_ok());
    }

    #[test]
    fn stac_and_geoai_sidecars() {
        let stac = json!({"type": "Feature", "properties": {
            "mlm:input": [{"name": "rgb", "bands": ["r", "g", "b"],
                "input": {"shape": [-1, 3, 224, 224], "dim_order": ["batch", "bands", "height", "width"]},
                "value_scaling": [
                    {"type": "z-score", "mean": 10.0, "stddev": 2.0},
                    {"type": "z-score", "mean": 20.0, "stddev": 3.0},
                    {"type": "z-score", "mean": 30.0, "stddev": 4.0}]}],
            "mlm:output": [{"name": "classes", "tasks": ["semantic-segmentation"],
                "classification:classes": [
                    {"value": 1, "name": "water", "color_hint": "0000FF"},
                    {"value": 0, "name": "land"}]}]}});
        let side = Sidecars {
            stac: Some((PathBuf::from("m.stac.json"), stac)),
            geoai: None,
        };
        let f = resolve(
            Path::new("m.onnx"),
            &graph(Vec::new()),
            &Overrides::default(),
            &side,
        )
        .unwrap();
        assert_eq!(f.classes.value.classes[1].name, "water");
        assert_eq!(f.classes.value.classes[1].color, "#0000ff");
        assert_eq!(f.mean.value, vec![10.0, 20.0, 30.0]);
        assert_eq!(f.std.value, vec![2.0, 3.0, 4.0]);
        assert_eq!(f.window.value, 224);
        assert!(matches!(f.window.from, From::Stac(_)));

        let geo = json!({"task": "semantic-segmentation", "input_height": 512,
            "id2label": {"0": "background", "1": "building"}});
        let side = Sidecars {
            geoai: Some((PathBuf::from("m.onnx.json"), geo)),
            stac: None,
        };
        let flags = Overrides {
            mean: Some(vec![0.0; 3]),
            std: Some(vec![255.0; 3]),
            ..Default::default()
        };
        let f = resolve(Path::new("m.onnx"), &graph(Vec::new()), &flags, &side).unwrap();
        assert_eq!(f.classes.value.classes[1].name, "building");
        assert_eq!(f.window.value, 512);
        assert!(matches!(f.classes.from, From::Geoai(_)));
    }

    #[test]
    fn resolution_warning_at_25_percent() {
        assert!(resolution_warning(10.0, 0.1).is_none());
        assert!(resolution_warning(10.0, 0.12).is_none());
        let w = resolution_warning(10.0, 0.2).unwrap();
        assert!(w.contains("20.0 cm") && w.contains("100 %"), "{w}");
    }
}
