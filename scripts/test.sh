#!/bin/sh
# Set up runner and the test tools in .venv, then lint, type-check and run the whole
# test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k hooks).
set -eu
cd "$(dirname "$0")/.."
scripts/setup-venv.sh test
.venv/bin/ruff check .
.venv/bin/mypy  # the package, as [tool.mypy] in pyproject.toml says
exec .venv/bin/python -m pytest "$@"
