//! The QGIS style sidecar (`MAP.qml`) that makes a land-cover map open with
//! the model's legend.
//!
//! The GeoTIFF already carries a colour table and category names, but that
//! is not enough for QGIS:
//!
//! * A TIFF palette always has 256 entries (one per possible `u8` value).
//!   QGIS builds its paletted renderer from the GDAL colour table, so without
//!   a style it lists 256 legend classes — the six real ones drowned among
//!   249 black, unnamed entries and the nodata value.
//! * The style names the renderer explicitly. Without it QGIS guesses the
//!   renderer from the file; a second band (say a confidence band) would
//!   make it pick a multiband colour renderer and lose the legend entirely.
//!
//! QGIS loads `MAP.qml` automatically when it sits next to `MAP.tif` with the
//! same stem, so writing this file is all it takes. The style lists only the
//! model's classes, one entry each, in table order; nodata (255) is not
//! listed, so it renders transparent (`nodataColor=""`).
//!
//! The XML follows what QGIS 3.22 itself writes for a paletted raster style
//! (Layer Properties → Style → Save As QGIS Layer Style File).

use crate::classes::{ClassTable, NODATA};
use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The QGIS version the style claims to come from. QGIS reads styles of
/// older versions without complaint.
const QGIS_VERSION: &str = "3.22.16-Białowieża";

/// Escapes `s` for use inside a double-quoted XML attribute value.
///
/// Tab, newline and carriage return become character references (a parser
/// would otherwise normalise them to spaces); other control characters are
/// not allowed in XML 1.0 at all and are dropped.
fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The QGIS 3.x layer style (`.qml`) for a paletted land-cover map with the
/// classes of `classes`: one palette entry per class, in table order, with
/// XML-escaped labels. Nodata (255) is not listed.
pub fn qml_string(classes: &ClassTable) -> String {
    let mut palette = String::new();
    for c in classes.classes.iter().filter(|c| c.id != NODATA) {
        let [r, g, b] = c.rgb();
        // Writing to a String cannot fail.
        let _ = writeln!(
            palette,
            "        <paletteEntry value=\"{}\" color=\"#{:02x}{:02x}{:02x}\" label=\"{}\" alpha=\"255\"/>",
            c.id,
            r,
            g,
            b,
            escape_attr(&c.name)
        );
    }
    format!(
        r#"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <temporal enabled="0" fetchMode="0" mode="0">
    <fixedRange>
      <start></start>
      <end></end>
    </fixedRange>
  </temporal>
  <customproperties>
    <Option type="Map">
      <Option name="WMSBackgroundLayer" type="bool" value="false"/>
      <Option name="WMSPublishDataSourceUrl" type="bool" value="false"/>
      <Option name="embeddedWidgets/count" type="int" value="0"/>
      <Option name="identify/format" type="QString" value="Value"/>
    </Option>
  </customproperties>
  <pipe-data-defined-properties>
    <Option type="Map">
      <Option name="name" type="QString" value=""/>
      <Option name="properties"/>
      <Option name="type" type="QString" value="collection"/>
    </Option>
  </pipe-data-defined-properties>
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{palette}      </colorPalette>
      <colorramp type="randomcolors" name="[source]">
        <Option/>
      </colorramp>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" invertColors="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"#
    )
}

/// The QGIS 3.x layer style (`.qml`) for the polygons of a land-cover map
/// (`rstile vectorize`): a categorized renderer on the integer field
/// `field`, one category per class of `classes` in table order, each a solid
/// fill of the class colour without outline and labelled with the class
/// name (XML-escaped). Polygons of a value not in the table are not drawn.
///
/// The XML follows what QGIS 3.22 writes for a categorized polygon style.
pub fn vector_qml_string(classes: &ClassTable, field: &str) -> String {
    let mut categories = String::new();
    let mut symbols = String::new();
    for (k, c) in classes.classes.iter().enumerate() {
        let [r, g, b] = c.rgb();
        let _ = writeln!(
            categories,
            "      <category render=\"true\" value=\"{}\" symbol=\"{k}\" label=\"{}\"/>",
            c.id,
            escape_attr(&c.name)
        );
        let _ = write!(
            symbols,
            r#"      <symbol type="fill" name="{k}" alpha="1" clip_to_extent="1" force_rhr="0">
        <data_defined_properties>
          <Option type="Map">
            <Option name="name" type="QString" value=""/>
            <Option name="properties"/>
            <Option name="type" type="QString" value="collection"/>
          </Option>
        </data_defined_properties>
        <layer class="SimpleFill" pass="0" locked="0" enabled="1">
          <Option type="Map">
            <Option name="border_width_map_unit_scale" type="QString" value="3x:0,0,0,0,0,0"/>
            <Option name="color" type="QString" value="{r},{g},{b},255"/>
            <Option name="joinstyle" type="QString" value="bevel"/>
            <Option name="offset" type="QString" value="0,0"/>
            <Option name="offset_map_unit_scale" type="QString" value="3x:0,0,0,0,0,0"/>
            <Option name="offset_unit" type="QString" value="MM"/>
            <Option name="outline_color" type="QString" value="{r},{g},{b},255"/>
            <Option name="outline_style" type="QString" value="no"/>
            <Option name="outline_width" type="QString" value="0"/>
            <Option name="outline_width_unit" type="QString" value="MM"/>
            <Option name="style" type="QString" value="solid"/>
          </Option>
        </layer>
      </symbol>
"#
        );
    }
    let field = escape_attr(field);
    format!(
        r#"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0" minScale="100000000" maxScale="0" simplifyDrawingHints="1" simplifyDrawingTol="1" simplifyLocal="1" simplifyAlgorithm="0" simplifyMaxScale="1" readOnly="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <renderer-v2 type="categorizedSymbol" attr="{field}" symbollevels="0" enableorderby="0" forceraster="0" referencescale="-1">
    <categories>
{categories}    </categories>
    <symbols>
{symbols}    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerOpacity>1</layerOpacity>
  <previewExpression>"class_name"</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"#
    )
}

/// Writes [`vector_qml_string`] to `path`.
pub fn write_vector_qml(path: &Path, classes: &ClassTable, field: &str) -> Result<()> {
    std::fs::write(path, vector_qml_string(classes, field))
        .map_err(|e| Error::file(path, format!("cannot write QGIS style: {e}")))
}

/// Writes [`qml_string`] to `path` (conventionally the map's path with the
/// extension `.qml`, which QGIS picks up automatically).
pub fn write_qml(path: &Path, classes: &ClassTable) -> Result<()> {
    std::fs::write(path, qml_string(classes))
        .map_err(|e| Error::file(path, format!("cannot write QGIS style: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::Class;

    /// A minimal well-formedness check: tags balance and nest, attribute
    /// values hold no raw `<`, and every `&` starts a known entity or a
    /// character reference. Returns the element names in document order.
    fn check_well_formed(xml: &str) -> std::result::Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = xml;
        let mut roots = 0;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            check_entities(text)?;
            if text.contains('>') {
                return Err(format!("stray '>' in text {text:?}"));
            }
            let after = &rest[start + 1..];
            // A '>' inside a quoted attribute value would be legal XML, but
            // we escape it, so the first '>' ends the tag.
            let end = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if tag.starts_with('!') || tag.starts_with('?') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("close </{name}> without open"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            if stack.is_empty() {
                roots += 1;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            check_attributes(&body[name.len()..])?;
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed elements {stack:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(names)
    }

    fn check_attributes(attrs: &str) -> std::result::Result<(), String> {
        let mut quotes = 0;
        for part in attrs.split('"').enumerate() {
            quotes += 1;
            if part.0 % 2 == 1 {
                if part.1.contains('<') {
                    return Err(format!("raw '<' in attribute value {:?}", part.1));
                }
                check_entities(part.1)?;
            }
        }
        if quotes % 2 == 0 {
            return Err(format!("unbalanced quotes in {attrs:?}"));
        }
        Ok(())
    }

    fn check_entities(s: &str) -> std::result::Result<(), String> {
        for (i, _) in s.match_indices('&') {
            let tail = &s[i..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#"]
                .iter()
                .any(|e| tail.starts_with(e));
            if !ok {
                return Err(format!("raw '&' in {s:?}"));
            }
        }
        Ok(())
    }

    fn palette_entries(xml: &str) -> Vec<&str> {
        xml.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<paletteEntry "))
            .collect()
    }

    #[test]
    fn isprs_style_is_well_formed_and_paletted() {
        let xml = qml_string(&ClassTable::isprs());
        let names = check_well_formed(&xml).unwrap();
        assert_eq!(names.first().map(String::as_str), Some("qgis"));
        assert!(xml.contains(r#"<rasterrenderer type="paletted" band="1""#));
        assert!(xml.contains(r#"styleCategories="AllStyleCategories""#));
        assert_eq!(names.iter().filter(|n| *n == "rasterrenderer").count(), 1);
        assert_eq!(names.iter().filter(|n| *n == "colorPalette").count(), 1);
    }

    #[test]
    fn one_entry_per_class_in_table_order_and_no_nodata() {
        let t = ClassTable::isprs();
        let xml = qml_string(&t);
        let entries = palette_entries(&xml);
        assert_eq!(entries.len(), t.len());
        for (e, c) in entries.iter().zip(&t.classes) {
            let want = format!(
                r#"value="{}" color="{}" label="{}" alpha="255""#,
                c.id, c.color, c.name
            );
            assert!(e.contains(&want), "{e} lacks {want}");
        }
        assert!(!xml.contains(r#"value="255""#));

        // Table order, not id order.
        let mut t = ClassTable::isprs();
        t.classes.reverse();
        let xml = qml_string(&t);
        let entries = palette_entries(&xml);
        assert!(entries[0].contains(r#"value="5""#));
        assert!(entries[5].contains(r#"value="0""#));
    }

    #[test]
    fn labels_are_escaped() {
        let t = ClassTable {
            classes: vec![
                Class {
                    id: 7,
                    name: r#"roads & "paths" <paved> 'x'"#.into(),
                    color: "#AbCdEf".into(),
                },
                Class {
                    id: 9,
                    name: "line\nbreak\u{1}".into(),
                    color: "#000000".into(),
                },
            ],
        };
        let xml = qml_string(&t);
        check_well_formed(&xml).unwrap();
        let entries = palette_entries(&xml);
        assert_eq!(entries.len(), 2);
        assert!(entries[0]
            .contains(r#"label="roads &amp; &quot;paths&quot; &lt;paved&gt; &apos;x&apos;""#));
        // Colours are normalised to lower case.
        assert!(entries[0].contains(r##"color="#abcdef""##));
        assert!(entries[1].contains(r#"label="line&#10;break""#));
    }

    #[test]
    fn vector_style_is_well_formed_with_one_category_per_class() {
        let mut t = ClassTable::isprs();
        t.classes[2].name = "a & <b>".into();
        let xml = vector_qml_string(&t, "class_id");
        let names = check_well_formed(&xml).unwrap();
        assert_eq!(names.iter().filter(|n| *n == "category").count(), 6);
        assert_eq!(names.iter().filter(|n| *n == "symbol").count(), 6);
        assert!(xml.contains(r#"type="categorizedSymbol" attr="class_id""#));
        assert!(xml.contains(r#"value="2" symbol="2" label="a &amp; &lt;b&gt;""#));
        assert!(xml.contains(r#"name="color" type="QString" value="0,0,255,255""#));
    }

    #[test]
    fn checker_catches_broken_xml() {
        assert!(check_well_formed("<a><b></a></b>").is_err());
        assert!(check_well_formed(r#"<a x="1 & 2"/>"#).is_err());
        assert!(check_well_formed(r#"<a x="<"/>"#).is_err());
        assert!(check_well_formed("<a/><b/>").is_err());
        assert!(check_well_formed("<a>").is_err());
        assert!(check_well_formed(r#"<a x="&amp;"><b/></a>"#).is_ok());
    }

    #[test]
    fn write_qml_writes_the_string_and_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.qml");
        write_qml(&path, &ClassTable::isprs()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            qml_string(&ClassTable::isprs())
        );

        let bad = dir.path().join("no/such/dir/map.qml");
        let err = write_qml(&bad, &ClassTable::isprs())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such/dir/map.qml"), "{err}");
    }

    /// Writes the ISPRS style to `$RSTILE_WRITE_SAMPLE_QML` when that is set;
    /// used by `tests/qgis/make_sample.py` to get the exact bytes rstile
    /// writes. Does nothing otherwise.
    #[test]
    fn write_sample_qml_when_asked() {
        if let Some(path) = std::env::var_os("RSTILE_WRITE_SAMPLE_QML") {
            write_qml(Path::new(&path), &ClassTable::isprs()).unwrap();
        }
    }
}
