#!/usr/bin/env bash
# test_svg_render: the sweep's SVG as a browser shows it.
#
#   tests/test_svg_render.sh PATH/test_svg      (run from the source root)
#
# Renders the plot of `test_svg --write` and every committed docs/sweep-*.svg
# in headless Chromium (Debian's `chromium`), decodes the PNG screenshot
# (a small PNG reader in Python: zlib and the five row filters) and checks
# that it is not blank: the size asked for, a plausible share of non-white
# pixels, and each line's colour drawn inside the plot frame the SVG
# declares. The SVG itself is parsed by a real XML parser (expat) and must
# hold its axis labels as text. Without chromium the test is skipped (exit
# 77) with the reason printed.
set -u
TEST_SVG=${1:?usage: test_svg_render.sh PATH/test_svg}
if ! command -v chromium >/dev/null 2>&1; then
    echo "SKIP: chromium is not installed (apt-get install chromium; tools/setup.sh test installs it)"
    exit 77
fi
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/svdllm-render.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT

failures=0
svgs=("$TMP/sample.svg")
"$TEST_SVG" --write "$TMP/sample.svg" || { echo "FAIL: test_svg --write"; exit 1; }
for f in docs/sweep-*.svg; do [ -f "$f" ] && svgs+=("$PWD/$f"); done

for svg in "${svgs[@]}"; do
    png=$TMP/$(basename "$svg" .svg).png
    # Chromium refuses to run as root inside its sandbox.
    sandbox=(); [ "$(id -u)" = 0 ] && sandbox=(--no-sandbox)
    size=$("$PY" -c 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.get("width") + "," + r.get("height"))' "$svg") \
        || { echo "FAIL: $svg: not parsed by expat"; failures=$((failures + 1)); continue; }
    rm -f "$png"
    timeout 120 chromium --headless "${sandbox[@]}" --disable-gpu --hide-scrollbars --no-first-run \
        --user-data-dir="$TMP/profile" --window-size="$size" --screenshot="$png" "file://$svg" \
        >"$TMP/chromium.log" 2>&1
    if [ ! -s "$png" ]; then
        echo "FAIL: $svg: chromium wrote no screenshot"; tail -5 "$TMP/chromium.log"
        failures=$((failures + 1)); continue
    fi
    if "$PY" - "$svg" "$png" <<'EOF'
import struct, sys, zlib
import xml.etree.ElementTree as ET

svg_path, png_path = sys.argv[1], sys.argv[2]
NS = "{http://www.w3.org/2000/svg}"
root = ET.parse(svg_path).getroot()
texts = {t.get("class"): "".join(t.itertext()) for t in root.iter(NS + "text")}
errors = []
for cls in ("x-label", "y-label"):
    if not texts.get(cls, "").strip():
        errors.append("no %s text" % cls)
if "parameters kept" not in texts.get("x-label", "") or "perplexity" not in texts.get("y-label", ""):
    errors.append("axis labels: %r, %r" % (texts.get("x-label"), texts.get("y-label")))
W, H = int(root.get("width")), int(root.get("height"))
frame = next(r for r in root.iter(NS + "rect") if r.get("class") == "frame")
fx, fy = float(frame.get("x")), float(frame.get("y"))
fw, fh = float(frame.get("width")), float(frame.get("height"))
colours = [g.get("stroke") for g in root.iter(NS + "g") if g.get("class") == "series"]

# A PNG reader: IHDR, IDAT, zlib, the five filters; 8-bit RGB or RGBA only.
data = open(png_path, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat = 8, b""
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
assert depth == 8 and ctype in (2, 6), "PNG depth %d colour type %d" % (depth, ctype)
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat)
stride = w * bpp
rows, prev, i = [], bytearray(stride), 0
for y in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
    i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line)
    prev = line

if (w, h) != (W, H):
    errors.append("screenshot %dx%d, asked for %dx%d" % (w, h, W, H))
ink = sum(1 for r in rows for x in range(0, stride, bpp) if min(r[x:x + 3]) < 200)
share = ink / float(w * h)
if not 0.01 < share < 0.6:
    errors.append("non-white share %.4f: blank or garbage" % share)
for col in colours:
    want = tuple(int(col[k:k + 2], 16) for k in (1, 3, 5))
    xs, ys = [], []
    for y, r in enumerate(rows):
        for x in range(0, stride, bpp):
            if all(abs(r[x + k] - want[k]) <= 24 for k in range(3)):
                xs.append(x // bpp)
                ys.append(y)
    # the legend also carries each colour: count only what is inside the frame
    inside = sum(1 for x, y in zip(xs, ys) if fx <= x <= fx + fw and fy <= y <= fy + fh)
    if inside < 40:
        errors.append("colour %s: %d pixels inside the plot frame" % (col, inside))
if errors:
    print("FAIL: %s: %s" % (svg_path, "; ".join(errors)))
    sys.exit(1)
print("ok: %s: %dx%d, %.1f%% ink, %d lines drawn, labels %r / %r" % (
    svg_path, w, h, 100 * share, len(colours), texts["x-label"], texts["y-label"]))
EOF
    then :; else failures=$((failures + 1)); fi
done
echo "test_svg_render: ${#svgs[@]} pictures, $failures failed"
[ "$failures" = 0 ]
