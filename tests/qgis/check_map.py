#!/usr/bin/python3
"""Check an rstile land-cover map the way a QGIS user will see it, headless.

Usage:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis/check_map.py \\
        MAP.tif EXPECTED.json OUT.png

EXPECTED.json is ``{"epsg": 32632 or null, "classes": [{"id": 0, "name":
"...", "color": "#rrggbb"}, ...]}`` (the model's class table, in order).

Opens MAP.tif as a QGIS raster layer exactly like QGIS does when a user
drags the file in, so the style sidecar MAP.qml (same stem, next to the
map) is applied by QGIS itself, then checks, printing one ``ok: ...`` line
per check, or ``FAIL: ...`` and exit status 1 at the first failure:

* the layer is valid and its CRS is EPSG:<epsg> (when epsg is not null);
* the sidecar MAP.qml exists and QGIS applied it on load;
* the renderer is ``paletted`` and its classes and legend are exactly the
  expected classes: same count, values, names and colours, in order;
* a rendering of the whole layer (written to OUT.png, read back with QImage)
  shows every class colour present in the raster (per GDAL) in about the
  right amount, shows nodata (255) as the background, and contains no other
  colour in a noticeable amount.

Exit status: 0 all checks passed, 1 a check failed, 2 bad usage or input.

Setup on Debian 12 (QGIS 3.22.16; about 1.5 minutes, 167 MB download):

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3-qgis qgis-providers

Use Debian's /usr/bin/python3 (the QGIS bindings are not on PyPI) and a
headless Qt platform; the script sets QT_QPA_PLATFORM=offscreen itself when
it is unset. A sample map to try it on: tests/qgis/make_sample.py.

How the style is picked up: QgsRasterLayer's constructor calls
loadDefaultStyle() (LayerOptions.loadDefaultStyle defaults to true), which
loads <dir>/<stem>.qml when it exists; this was verified on QGIS 3.22.16, so
the script relies on it and does NOT call loadNamedStyle() itself: calling
it would hide a map whose style QGIS does not pick up. To tell whether QGIS
applied the style, the layer is also opened with loadDefaultStyle=False and
the two renderers are compared.

The background of the rendering is white unless white is a class colour
(ISPRS "impervious surfaces" is), then the first of a few unusual colours
that is not, so that nodata and every class stay distinguishable.
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

import numpy as np  # noqa: E402
from osgeo import gdal  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

NODATA = 255
# Maps up to MAX_RENDER px render 1:1.


def load_expected(path):
    _, epsg, classes = read_expected(path)
    return epsg, classes


def palette(renderer):
    """[(value, label, '#rrggbb', alpha)] of a paletted renderer, or None."""
    if renderer is None or renderer.type() != "paletted":
        return None
    return [(int(c.value), c.label, c.color.name().lower(), c.color.alpha()) for c in renderer.classes()]


def describe(renderer):
    if renderer is None:
        return "no renderer"
    p = palette(renderer)
    if p is None:
        return f"renderer '{renderer.type()}'"
    labels = [label for _, label, _, _ in p]
    if len(labels) > 4:
        labels = labels[:3] + ["...", labels[-1]]
    return f"renderer 'paletted' with {len(p)} classes ({', '.join(labels)})"


def check_style(map_path, layer):
    qml = os.path.splitext(map_path)[0] + ".qml"
    opts = QgsRasterLayer.LayerOptions()
    opts.loadDefaultStyle = False
    bare = QgsRasterLayer(map_path, "without style", "gdal", opts)
    without = describe(bare.renderer())
    if not os.path.isfile(qml):
        fail(f"no QGIS style sidecar {qml}; QGIS falls back to its default: {without}")
    same = palette(layer.renderer()) == palette(bare.renderer()) and layer.renderer().type() == bare.renderer().type()
    if same:
        # Find out why: load it by hand on the bare layer for the message.
        msg, loaded = bare.loadNamedStyle(qml)
        fail(f"QGIS did not apply {qml} on load (loadNamedStyle says: {loaded}, {msg!r}); it shows {without}")
    ok(f"style: QGIS applied the sidecar {os.path.basename(qml)} by itself on load: {describe(layer.renderer())} (without it: {without})")


def check_legend(renderer, classes):
    if renderer is None or renderer.type() != "paletted":
        fail(f"renderer is {describe(renderer)}, expected 'paletted'")
    ok(f"renderer is paletted, band {renderer.band()}")
    got = palette(renderer)
    if len(got) != len(classes):
        fail(f"the paletted renderer has {len(got)} classes, expected {len(classes)}: {summary(got)}")
    for k, ((value, label, color, alpha), (cid, name, ccolor)) in enumerate(zip(got, classes)):
        if (value, label, color) != (cid, name, ccolor):
            fail(f"class {k}: got value {value} {label!r} {color}, expected {cid} {name!r} {ccolor}")
        if alpha != 255:
            fail(f"class {k} ({name!r}) has alpha {alpha}, expected 255")
    ok(f"renderer classes are exactly the {len(classes)} expected classes, in order")
    items = [(label, color.name().lower()) for label, color in renderer.legendSymbologyItems()]
    want = [(name, color) for _, name, color in classes]
    if items != want:
        fail(f"legend shows {len(items)} entries {summary(items)}, expected {want}")
    ok(f"legend shows exactly: {', '.join(f'{n} {c}' for n, c in items)}")


def summary(items, n=8):
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}]"


def raster_counts(map_path):
    ds = gdal.Open(map_path)
    if ds is None:
        raise ValueError(f"GDAL cannot open {map_path}")
    arr = ds.GetRasterBand(1).ReadAsArray()
    values, counts = np.unique(arr, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist())), arr.size


def render(layer, out_png, background):
    ext = layer.extent()
    w, h = layer.width(), layer.height()
    scale = min(1.0, MAX_RENDER / max(w, h))
    size = QSize(max(1, round(w * scale)), max(1, round(h * scale)))
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(ext)
    settings.setOutputSize(size)
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(background))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    errors = [f"{e.layerID}: {e.message}" for e in job.errors()]
    if errors:
        fail(f"rendering reported errors: {errors}")
    if not job.renderedImage().save(out_png, "PNG"):
        fail(f"cannot write {out_png}")
    return size


def check_rendering(layer, map_path, out_png, classes):
    class_colors = {c for _, _, c in classes}
    background = background_for(classes)
    size = render(layer, out_png, background)
    ok(f"rendered {size.width()}x{size.height()} px to {out_png}, background {background}")
    got, npix = read_png(out_png)

    values, nraster = raster_counts(map_path)
    ids = {cid for cid, _, _ in classes}
    strays = sorted(v for v in values if v not in ids and v != NODATA)
    if strays:
        fail(f"the raster holds values that are no class: {strays} ({sum(values[v] for v in strays)} px)")
    # Expected pixels per colour (two classes may share one).
    want = {}
    for cid, name, color in classes:
        if values.get(cid):
            n, names = want.get(color, (0, []))
            want[color] = (n + values[cid], names + [name])
    if values.get(NODATA):
        n, names = want.get(background, (0, []))
        want[background] = (n + values[NODATA], names + ["nodata (transparent)"])
    for color, (n, names) in want.items():
        expect = n * npix / nraster
        have = got.get(color, 0)
        label = " + ".join(names)
        if expect >= 10 and have < 0.5 * expect:
            fail(f"{label} ({color}): {have} px rendered, about {expect:.0f} expected")
        if expect < 10 and have == 0:
            print(f"note: {label} ({color}) is too small to show at this size ({expect:.1f} px expected)")
            continue
        ok(f"{label} ({color}): {have} px rendered, about {expect:.0f} expected")
    absent = [f"{name} ({cid})" for cid, name, _ in classes if not values.get(cid)]
    if absent:
        print(f"note: classes not present in the raster: {', '.join(absent)}")
    allowed = class_colors | {background}
    foreign = {c: n for c, n in got.items() if c not in allowed}
    nforeign = sum(foreign.values())
    top = sorted(foreign.items(), key=lambda kv: -kv[1])[:5]
    if nforeign > MAX_FOREIGN * npix:
        fail(f"{nforeign} px ({100 * nforeign / npix:.2f} %) of colours that are neither a class nor the background: {top}")
    ok(f"no other colour in a noticeable amount ({nforeign} px{': ' + str(top) if top else ''})")


def run(map_path, epsg, classes, out_png):
    layer = QgsRasterLayer(map_path, os.path.basename(map_path), "gdal")
    if not layer.isValid():
        fail(f"QGIS cannot open {map_path} as a raster layer: {layer.error().summary()}")
    ok(f"layer is valid: {layer.width()}x{layer.height()}, {layer.bandCount()} band(s)")
    if epsg is not None:
        if layer.crs().authid() != f"EPSG:{epsg}":
            fail(f"CRS is {layer.crs().authid() or layer.crs().description() or 'unknown'}, expected EPSG:{epsg}")
        ok(f"CRS is EPSG:{epsg}")
    check_style(map_path, layer)
    check_legend(layer.renderer(), classes)
    check_rendering(layer, map_path, out_png, classes)


if __name__ == "__main__":
    gdal.UseExceptions()
    sys.exit(main(__doc__, load_expected, run, "map", f", GDAL {gdal.__version__}"))
