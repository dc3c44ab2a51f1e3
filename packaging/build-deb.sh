#!/bin/sh
# Build the .deb from the files git tracks (a clean tree, whatever is lying around)
# and copy it to OUTDIR (default dist/). Prints the path of the .deb.
# Debian's own tools come first on PATH: pybuild must use /usr/bin/python3, not a
# pyenv or venv python (see shared notes: debian-build-pitfalls).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$top/dist}" && cd "${1:-$top/dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/runner"
git -C "$top" ls-files -z | (cd "$top" && tar --null -T - -cf -) | tar -C "$work/runner" -xf -
(cd "$work/runner" && PATH=/usr/bin:/bin:/usr/sbin:/sbin dpkg-buildpackage -us -uc -b) \
    > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
cp "$work"/runner_*_all.deb "$out/"
ls "$out"/runner_*_all.deb | tail -1
