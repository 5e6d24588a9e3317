#!/usr/bin/python3
"""Make a small land-cover map to develop and test check_map.py with.

    /usr/bin/python3 tests/qgis/make_sample.py OUTDIR

writes OUTDIR/map.tif and OUTDIR/expected.json: a 600x400 single-band Byte
GeoTIFF in EPSG:32632 with the ISPRS classes 0..5 in patches, a nodata (255)
corner, nodata=255, a 256-entry colour table and category names, laid out
the way rstile writes its maps. The QGIS style is *not* written here; take
the exact bytes rstile writes from the Rust unit test:

    RSTILE_WRITE_SAMPLE_QML=$PWD/OUTDIR/map.qml \\
        cargo test --lib qml::tests::write_sample_qml_when_asked
"""
import json
import os
import sys

import numpy as np
from osgeo import gdal, osr

# ClassTable::isprs() in src/classes.rs.
ISPRS = [
    (0, "impervious surfaces", "#ffffff"),
    (1, "building", "#0000ff"),
    (2, "low vegetation", "#00ffff"),
    (3, "tree", "#00ff00"),
    (4, "car", "#ffff00"),
    (5, "clutter", "#ff0000"),
]
NODATA = 255
W, H = 600, 400


def rgb(hexcolor):
    return tuple(int(hexcolor[i:i + 2], 16) for i in (1, 3, 5))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    gdal.UseExceptions()

    # Six vertical stripes of classes 0..5, a few blocks of other classes on
    # top, and a nodata corner (top left).
    data = np.zeros((H, W), dtype=np.uint8)
    for k in range(6):
        data[:, k * 100:(k + 1) * 100] = k
    data[250:350, 20:180] = 4
    data[50:120, 420:560] = 1
    data[300:380, 300:420] = 3
    data[0:80, 0:120] = NODATA

    path = os.path.join(out, "map.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, W, H, 1, gdal.GDT_Byte, ["COMPRESS=DEFLATE", "TILED=YES"])
    ds.SetGeoTransform((500000.0, 0.5, 0.0, 5300000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(NODATA)
    ct = gdal.ColorTable()
    for v in range(256):
        ct.SetColorEntry(v, (0, 0, 0, 0) if v == NODATA else (0, 0, 0, 255))
    names = [""] * (max(i for i, _, _ in ISPRS) + 1)
    for i, name, color in ISPRS:
        ct.SetColorEntry(i, rgb(color) + (255,))
        names[i] = name
    band.SetRasterColorTable(ct)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetCategoryNames(names)
    band.WriteArray(data)
    ds = None

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"epsg": 32632, "classes": [{"id": i, "name": n, "color": c} for i, n, c in ISPRS]}, f, indent=2)
    print(f"wrote {path} and expected.json")


if __name__ == "__main__":
    main()
