#!/bin/sh
# Set up runner in .venv and run the demo chain (runner.cfg + tasks.d) once, in the foreground.
set -eu
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/runner -c runner.cfg -n 1 "$@"
