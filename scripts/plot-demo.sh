#!/bin/sh
# Regenerate docs/plot-demo.png, the picture of `runner plot` in the README: run the demo
# chain (runner.cfg + tasks.d, with -H so the halt task shows) once in a throwaway
# state_dir, draw its timeline with `runner plot`, and render the SVG with headless
# Chromium (Debian package chromium) at the SVG's own size.
#   scripts/plot-demo.sh [OUT.png]      (default docs/plot-demo.png)
set -eu
cd "$(dirname "$0")/.."
out=${1:-docs/plot-demo.png}
[ -x .venv/bin/runner ] || scripts/setup-venv.sh >/dev/null
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "plot-demo.sh: needs chromium (apt-get install chromium)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runner() {
    .venv/bin/runner -c runner.cfg -D "runner.state_dir=$work/state" \
        -D "runner.runtime_dir=$work/run" "$@"
}
runner -n 1 -H --no-progress 2>"$work/run.log" || { cat "$work/run.log" >&2; exit 1; }
runner plot -o "$work/plot.svg"
size=$(.venv/bin/python -c 'import sys, xml.etree.ElementTree as E
root = E.parse(sys.argv[1]).getroot()
print(round(float(root.get("width"))), round(float(root.get("height"))), sep=",")' \
    "$work/plot.svg")
HOME=$work "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$work/plot.png" --window-size="$size" "file://$work/plot.svg" \
    >"$work/chromium.log" 2>&1 || { cat "$work/chromium.log" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cp "$work/plot.png" "$out"
echo "$out: ${size%,*}x${size#*,} pixels"
