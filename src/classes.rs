//! Class tables: the ids, names and colours of a land-cover legend.
//!
//! The table travels inside every model file, so the writer, the QGIS style
//! and the metrics all read the legend from the same place and cannot drift
//! apart. Id 255 is reserved for nodata and never a class.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The output value for pixels without data. Never a class id.
pub const NODATA: u8 = 255;

/// One class of a legend. Unknown keys are refused (a `colour` or a
/// `weight` would otherwise be dropped silently).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Value written in the map.
    pub id: u8,
    /// Human-readable name, shown in the QGIS legend.
    pub name: String,
    /// Colour as `#rrggbb`.
    pub color: String,
}

impl Class {
    /// The colour as `[r, g, b]`.
    pub fn rgb(&self) -> [u8; 3] {
        parse_hex(&self.color).unwrap_or([0, 0, 0])
    }
}

/// An ordered list of classes. The model's output channel `k` is `classes[k]`.
/// Unknown keys are refused (a `[[klass]]` table would otherwise leave the
/// table empty, or drop a class).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassTable {
    #[serde(rename = "class")]
    pub classes: Vec<Class>,
}

fn parse_hex(s: &str) -> Option<[u8; 3]> {
    let h = s.strip_prefix('#')?;
    // exactly six hex digits: `from_str_radix` alone would take "+fffff"
    if h.len() != 6 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(h, 16).ok()?;
    Some([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

impl ClassTable {
    /// Reads a TOML class table (`[[class]]` entries with id, name, color).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let table: ClassTable = toml::from_str(&text)
            .map_err(|e| Error::file(path, format!("not a class table: {}", e.message())))?;
        table.validate().map_err(|e| Error::file(path, e))?;
        Ok(table)
    }

    /// Checks ids are unique and below 255, names are not blank, and
    /// colours are `#rrggbb`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.classes.is_empty() {
            return Err("the class table is empty".into());
        }
        let mut seen = [false; 256];
        for c in &self.classes {
            if c.id == NODATA {
                return Err(format!(
                    "class '{}' uses id 255, which is reserved for nodata",
                    c.name
                ));
            }
            if seen[c.id as usize] {
                return Err(format!("class id {} is used twice", c.id));
            }
            seen[c.id as usize] = true;
            if c.name.trim().is_empty() {
                return Err(format!("class id {} has an empty name", c.id));
            }
            if parse_hex(&c.color).is_none() {
                return Err(format!(
                    "class '{}': colour '{}' is not #rrggbb",
                    c.name, c.color
                ));
            }
        }
        Ok(())
    }

    /// Number of classes (model output channels).
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when the table has no class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Map value of output channel `k`.
    pub fn id_of_channel(&self, k: usize) -> u8 {
        self.classes[k].id
    }

    /// The six ISPRS 2D Semantic Labeling classes with the benchmark's colours.
    /// Ids are 0..=5 in the benchmark's order.
    pub fn isprs() -> Self {
        let c = |id, name: &str, color: &str| Class {
            id,
            name: name.into(),
            color: color.into(),
        };
        ClassTable {
            classes: vec![
                c(0, "impervious surfaces", "#ffffff"),
                c(1, "building", "#0000ff"),
                c(2, "low vegetation", "#00ffff"),
                c(3, "tree", "#00ff00"),
                c(4, "car", "#ffff00"),
                c(5, "clutter", "#ff0000"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isprs_is_valid_and_round_trips_through_toml() {
        let t = ClassTable::isprs();
        t.validate().unwrap();
        let text = toml::to_string(&t).unwrap();
        let back: ClassTable = toml::from_str(&text).unwrap();
        assert_eq!(t, back);
        assert_eq!(t.classes[1].rgb(), [0, 0, 255]);
    }

    #[test]
    fn rejects_bad_colours_and_empty_names() {
        for bad in [
            "#+fffff", "#-fffff", "#fffff", "ffffff", "#fffffff", "# fffff",
        ] {
            let mut t = ClassTable::isprs();
            t.classes[2].color = bad.into();
            let e = t.validate().unwrap_err();
            assert!(e.contains("is not #rrggbb"), "{bad}: {e}");
        }
        let mut t = ClassTable::isprs();
        t.classes[3].color = "#A0b1C2".into();
        t.validate().unwrap();
        assert_eq!(t.classes[3].rgb(), [0xa0, 0xb1, 0xc2]);
        for name in ["", "  "] {
            let mut t = ClassTable::isprs();
            t.classes[1].name = name.into();
            assert_eq!(t.validate().unwrap_err(), "class id 1 has an empty name");
        }
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[[klass]]\nid = 0\nname = \"a\"\ncolor = \"#ffffff\"\n",
                "unknown field `klass`",
            ),
            (
                "[[class]]\nid = 0\nname = \"a\"\ncolour = \"#ffffff\"\n",
                "unknown field `colour`",
            ),
            (
                "[[class]]\nid = 0\nname = \"a\"\ncolor = \"#ffffff\"\nweight = 2\n",
                "unknown field `weight`",
            ),
        ];
        for (text, want) in cases {
            let p = dir.path().join("classes.toml");
            std::fs::write(&p, text).unwrap();
            let e = ClassTable::from_toml_file(&p).unwrap_err().to_string();
            assert!(e.contains("classes.toml") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn rejects_nodata_id_and_duplicates() {
        let mut t = ClassTable::isprs();
        t.classes[0].id = 255;
        assert!(t.validate().is_err());
        let mut t = ClassTable::isprs();
        t.classes[1].id = 0;
        assert!(t.validate().is_err());
    }
}
