#!/usr/bin/python3
"""Check the polygons of `rstile vectorize` the way a QGIS user will see them, headless.

Usage:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis/check_vector.py \\
        POLYGONS.gpkg EXPECTED.json OUT.png

EXPECTED.json is ``{"epsg": 32632 or null, "features": N, "classes": [{"id":
0, "name": "...", "color": "#rrggbb"}, ...]}`` (the classes of the style, in
order).

Opens POLYGONS.gpkg as a QGIS vector layer exactly like QGIS does when a
user drags the file in (``QgsVectorLayer(path, name, "ogr")``; its
constructor calls loadDefaultStyle(), which applies <dir>/<stem>.qml when
the file has no style of its own), then checks, printing one ``ok: ...``
line per check, or ``FAIL: ...`` and exit status 1 at the first failure:

* the layer is valid, of polygons, its CRS is EPSG:<epsg> (when not null)
  and it has N features with the fields class_id, class_name, area_m2;
* the sidecar STEM.qml exists and QGIS applied it on load (the layer opened
  with loadDefaultStyle=False shows another renderer);
* the renderer is ``categorizedSymbol`` on ``class_id`` and its categories
  are exactly the expected classes: values, labels and colours, in order;
* every feature's class_name is its class's name;
* a rendering of the whole layer (antialiasing off, written to OUT.png and
  read back with QImage) shows each class colour in about the share of the
  extent its polygons cover (sum of area_m2), the background where there is
  no polygon, and no other colour in a noticeable amount.

Exit status: 0 all checks passed, 1 a check failed, 2 bad usage or input.
See check_map.py for setting up QGIS on Debian 12.
"""
import os
import sys

from qgis_common import (
    MAX_FOREIGN,
    MAX_RENDER,
    background_for,
    fail,
    main,
    ok,
    read_expected,
    read_png,
)

from qgis.core import (  # noqa: E402
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402


def load_expected(path):
    exp, epsg, classes = read_expected(path)
    return epsg, int(exp["features"]), classes


def categories(renderer):
    """[(value, label, '#rrggbb', alpha)] of a categorized renderer, or None."""
    if renderer is None or renderer.type() != "categorizedSymbol":
        return None
    out = []
    for c in renderer.categories():
        color = c.symbol().color()
        out.append((int(c.value()), c.label(), color.name().lower(), color.alpha()))
    return out


def describe(renderer):
    if renderer is None:
        return "no renderer"
    c = categories(renderer)
    if c is None:
        return f"renderer '{renderer.type()}'"
    return f"renderer 'categorizedSymbol' on {renderer.classAttribute()!r} with {len(c)} categories"


def check_style(path, layer):
    qml = os.path.splitext(path)[0] + ".qml"
    opts = QgsVectorLayer.LayerOptions()
    opts.loadDefaultStyle = False
    bare = QgsVectorLayer(path, "without style", "ogr", opts)
    without = describe(bare.renderer())
    if not os.path.isfile(qml):
        fail(f"no QGIS style sidecar {qml}; QGIS falls back to its default: {without}")
    if layer.renderer().type() == bare.renderer().type():
        msg, loaded = bare.loadNamedStyle(qml)
        fail(f"QGIS did not apply {qml} on load (loadNamedStyle says: {loaded}, {msg!r}); it shows {without}")
    ok(f"style: QGIS applied the sidecar {os.path.basename(qml)} by itself on load: {describe(layer.renderer())} (without it: {without})")


def check_renderer(renderer, classes):
    got = categories(renderer)
    if got is None:
        fail(f"renderer is {describe(renderer)}, expected 'categorizedSymbol'")
    if renderer.classAttribute() != "class_id":
        fail(f"the renderer classifies by {renderer.classAttribute()!r}, expected 'class_id'")
    ok("renderer is categorized on class_id")
    if len(got) != len(classes):
        fail(f"the renderer has {len(got)} categories, expected {len(classes)}: {got}")
    for k, ((value, label, color, alpha), (cid, name, ccolor)) in enumerate(zip(got, classes)):
        if (value, label, color) != (cid, name, ccolor):
            fail(f"category {k}: got value {value} {label!r} {color}, expected {cid} {name!r} {ccolor}")
        if alpha != 255:
            fail(f"category {k} ({name!r}) has alpha {alpha}, expected 255")
    ok(f"categories are exactly: {', '.join(f'{v} {n} {c}' for v, n, c, _ in got)}")
    items = [item.label() for item in renderer.legendSymbolItems()]
    want = [name for _, name, _ in classes]
    if items != want:
        fail(f"legend shows {items}, expected {want}")
    ok("legend shows the class names in order")


def check_features(layer, epsg, nfeatures, classes):
    if layer.geometryType() != QgsWkbTypes.PolygonGeometry:
        fail(f"geometry type is {QgsWkbTypes.geometryDisplayString(layer.geometryType())}, expected polygons")
    if epsg is not None:
        if layer.crs().authid() != f"EPSG:{epsg}":
            fail(f"CRS is {layer.crs().authid() or layer.crs().description() or 'unknown'}, expected EPSG:{epsg}")
        ok(f"CRS is EPSG:{epsg}")
    names = [f.name() for f in layer.fields()]
    for want in ["class_id", "class_name", "area_m2"]:
        if want not in names:
            fail(f"no field {want} among {names}")
    if layer.featureCount() != nfeatures:
        fail(f"{layer.featureCount()} features, expected {nfeatures}")
    ok(f"{nfeatures} polygon features with fields {names}")
    by_id = {cid: name for cid, name, _ in classes}
    areas = {}
    for f in layer.getFeatures():
        cid = f["class_id"]
        if by_id.get(cid) != f["class_name"]:
            fail(f"feature {f.id()}: class_name {f['class_name']!r} for class {cid}, expected {by_id.get(cid)!r}")
        geom_area = f.geometry().area()
        if abs(geom_area - f["area_m2"]) > 1e-6 * max(1.0, geom_area):
            fail(f"feature {f.id()}: area_m2 {f['area_m2']} but QGIS measures {geom_area}")
        areas[cid] = areas.get(cid, 0.0) + f["area_m2"]
    ok("every class_name matches its class_id; area_m2 matches QGIS's own area")
    return areas


def render(layer, out_png, background):
    ext = layer.extent()
    aspect = ext.width() / ext.height()
    w, h = (MAX_RENDER, max(1, round(MAX_RENDER / aspect))) if aspect >= 1 else (max(1, round(MAX_RENDER * aspect)), MAX_RENDER)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(ext)
    settings.setOutputSize(QSize(w, h))
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(background))
    settings.setFlag(QgsMapSettings.Antialiasing, False)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    errors = [f"{e.layerID}: {e.message}" for e in job.errors()]
    if errors:
        fail(f"rendering reported errors: {errors}")
    if not job.renderedImage().save(out_png, "PNG"):
        fail(f"cannot write {out_png}")
    # the extent QGIS actually drew (it keeps the aspect ratio)
    return settings.visibleExtent(), w * h


def check_rendering(layer, out_png, classes, areas):
    class_colors = {c for _, _, c in classes}
    background = background_for(classes)
    drawn, npix = render(layer, out_png, background)
    ok(f"rendered to {out_png}, background {background}")
    got, _ = read_png(out_png)
    total = drawn.width() * drawn.height()
    want = {}
    for cid, name, color in classes:
        if areas.get(cid):
            n, names = want.get(color, (0.0, []))
            want[color] = (n + areas[cid], names + [name])
    covered = sum(areas.values())
    n, names = want.get(background, (0.0, []))
    want[background] = (n + total - covered, names + ["no polygon"])
    for color, (area, names) in want.items():
        expect = area / total * npix
        have = got.get(color, 0)
        label = " + ".join(names)
        # the drawn extent is rounded to whole pixels: allow the background
        # (where no polygon is) a sliver of the image more or less
        slack = 20 + (0.001 * npix if color == background else 0)
        if abs(have - expect) > 0.5 * expect + slack:
            fail(f"{label} ({color}): {have} px rendered, about {expect:.0f} expected")
        if expect < 20 and color != background:
            print(f"note: {label} ({color}) is too small to judge at this size ({expect:.1f} px expected, {have} rendered)")
            continue
        ok(f"{label} ({color}): {have} px rendered, about {expect:.0f} expected")
    allowed = class_colors | {background}
    foreign = {c: n for c, n in got.items() if c not in allowed}
    nforeign = sum(foreign.values())
    top = sorted(foreign.items(), key=lambda kv: -kv[1])[:5]
    if nforeign > MAX_FOREIGN * npix:
        fail(f"{nforeign} px ({100 * nforeign / npix:.2f} %) of colours that are neither a class nor the background: {top}")
    ok(f"no other colour in a noticeable amount ({nforeign} px{': ' + str(top) if top else ''})")


def run(path, epsg, nfeatures, classes, out_png):
    layer = QgsVectorLayer(path, os.path.basename(path), "ogr")
    if not layer.isValid():
        fail(f"QGIS cannot open {path} as a vector layer: {layer.error().summary()}")
    ok(f"layer is valid: {layer.name()}, provider {layer.providerType()}")
    areas = check_features(layer, epsg, nfeatures, classes)
    check_style(path, layer)
    check_renderer(layer.renderer(), classes)
    check_rendering(layer, out_png, classes, areas)


if __name__ == "__main__":
    sys.exit(main(__doc__, load_expected, run, "file"))
