#!/bin/sh
# Set up runner and the test tools in .venv, then lint and run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k hooks).
set -eu
cd "$(dirname "$0")/.."
scripts/setup-venv.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
