#!/bin/sh
# Create .venv (once) and install runner into it, editable, with the given extras.
# Usage: scripts/setup-venv.sh [EXTRAS]   e.g. scripts/setup-venv.sh test
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv; then
        echo "setup: '$PYTHON -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi
extras=${1:+[$1]}
# compat: a plain path in a .pth file. The default editable mode installs an import
# finder that every Python start in the venv imports (pathlib, importlib.util, ...):
# about 20 ms, more than the interpreter's own start (README, Performance).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras" \
    --config-settings editable_mode=compat
