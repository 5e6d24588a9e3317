"""What check_map.py and check_vector.py share: the expected-classes file,
the ok/FAIL reporting, the background colour of a rendering, reading the
rendering back, and the QGIS session around the checks."""
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from qgis.core import Qgis, QgsApplication  # noqa: E402
from qgis.PyQt.QtGui import QImage  # noqa: E402

# Longest side of a rendering.
MAX_RENDER = 1024
BACKGROUNDS = ["#ffffff", "#ff00ff", "#7f7f7f", "#123456", "#fedcba"]
# Share of the image that may be of a colour that is neither a class colour
# nor the background (edges, if anything ever smooths them).
MAX_FOREIGN = 0.005


class Failed(Exception):
    pass


def ok(msg):
    print(f"ok: {msg}", flush=True)


def fail(msg):
    raise Failed(msg)


def hex_rgb(s):
    s = s.strip().lower()
    if len(s) != 7 or s[0] != "#":
        raise ValueError(f"colour {s!r} is not #rrggbb")
    int(s[1:], 16)
    return s


def read_expected(path):
    """The EXPECTED.json object, its EPSG code (or None) and its classes as
    [(id, name, '#rrggbb')], in order."""
    with open(path, encoding="utf-8") as f:
        exp = json.load(f)
    classes = [(int(c["id"]), str(c["name"]), hex_rgb(c["color"])) for c in exp["classes"]]
    if not classes:
        raise ValueError("no classes")
    epsg = exp.get("epsg")
    return exp, (int(epsg) if epsg is not None else None), classes


def background_for(classes):
    """The first candidate background colour that is no class colour."""
    class_colors = {c for _, _, c in classes}
    background = next((c for c in BACKGROUNDS if c not in class_colors), None)
    if background is None:
        fail("every candidate background colour is a class colour")
    return background


def read_png(path):
    """Pixels per '#rrggbb' colour of the PNG at `path`, and its pixel count."""
    img = QImage(path)
    if img.isNull():
        fail(f"Qt cannot read back {path}")
    img = img.convertToFormat(QImage.Format_RGB32)
    w, h = img.width(), img.height()
    ptr = img.constBits()
    ptr.setsize(img.bytesPerLine() * h)
    a = np.frombuffer(ptr, np.uint8).reshape(h, img.bytesPerLine())[:, : w * 4].reshape(h, w, 4)
    # Format_RGB32 is 0xffRRGGBB per pixel, in native byte order.
    if sys.byteorder == "little":
        b, g, r = a[..., 0], a[..., 1], a[..., 2]
    else:
        r, g, b = a[..., 1], a[..., 2], a[..., 3]
    packed = (r.astype(np.uint32) << 16) | (g.astype(np.uint32) << 8) | b.astype(np.uint32)
    colors, counts = np.unique(packed, return_counts=True)
    return {f"#{c:06x}": int(n) for c, n in zip(colors.tolist(), counts.tolist())}, w * h


def one_line(e):
    return " ".join(str(e).split())


def main(doc, load_expected, run, what, banner=""):
    """The command line `SCRIPT FILE EXPECTED.json OUT.png`: exit 2 on bad
    usage or input, else `run(FILE, *load_expected(EXPECTED.json), OUT.png)`
    in a headless QGIS session, 0 when every check passed, 1 at the first
    failure. `what` names FILE in messages; `banner` follows QGIS's version."""
    if len(sys.argv) != 4:
        print(doc, file=sys.stderr)
        return 2
    path, expected_path, out_png = sys.argv[1:]
    try:
        expected = load_expected(expected_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"FAIL: cannot read {expected_path}: {e}", flush=True)
        return 2
    if not os.path.isfile(path):
        print(f"FAIL: no such {what}: {path}", flush=True)
        return 2

    qgs = QgsApplication([], False)
    qgs.setPrefixPath("/usr", True)
    qgs.initQgis()
    print(f"QGIS {Qgis.QGIS_VERSION}{banner}", flush=True)
    code = 0
    try:
        run(path, *expected, out_png)
        print("all checks passed", flush=True)
    except Failed as e:
        print(f"FAIL: {one_line(e)}", flush=True)
        code = 1
    except (RuntimeError, ValueError, KeyError) as e:
        print(f"FAIL: {type(e).__name__}: {one_line(e)}", flush=True)
        code = 1
    qgs.exitQgis()
    return code
