"""The test layers (pyproject.toml markers, README "Quick start"): `-m` selects or leaves
out every test of a layer, and a new test lands in its layer by the fixture it uses."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
from conftest import FIXTURE_MARKERS, ROOT, need_root

LAYERS = {"slow", "root", "systemd", "postgres", "packaging"}

# Collects the whole suite in a fresh pytest and prints each test's markers and fixtures.
COLLECT = """
import json, sys
import pytest

class Dump:
    def pytest_collection_finish(self, session):
        self.items = [{"id": item.nodeid,
                       "markers": sorted({mark.name for mark in item.iter_markers()}),
                       "fixtures": sorted(getattr(item, "fixturenames", ()))}
                      for item in session.items]

dump = Dump()
status = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                     plugins=[dump])
print("ITEMS " + json.dumps(dump.items))
sys.exit(status)
"""


@pytest.fixture(scope="module")
def suite() -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("ITEMS ")]
    return json.loads(line.removeprefix("ITEMS "))


def test_the_five_layers_are_registered_and_unknown_markers_are_errors():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    ini = options["ini_options"]
    assert {line.split(":", 1)[0] for line in ini["markers"]} == LAYERS
    assert "--strict-markers" in ini["addopts"].split()
    assert {m for markers in FIXTURE_MARKERS.values() for m in markers} <= LAYERS


@pytest.mark.slow
def test_every_test_using_a_layers_fixture_is_in_that_layer(suite):
    for item in suite:
        for fixture in set(item["fixtures"]) & FIXTURE_MARKERS.keys():
            missing = set(FIXTURE_MARKERS[fixture]) - set(item["markers"])
            assert not missing, (item["id"], fixture, missing)


@pytest.mark.slow
def test_the_package_modules_are_packaging_and_every_layer_selects_some_tests(suite):
    by_layer = {layer: [i["id"] for i in suite if layer in i["markers"]] for layer in LAYERS}
    assert all(by_layer.values()), {k: len(v) for k, v in by_layer.items()}
    for item in suite:
        if item["id"].startswith(("tests/test_deb.py::", "tests/test_rpm.py::")):
            assert "packaging" in item["markers"], item["id"]
    assert set(by_layer["systemd"]) <= set(by_layer["root"])
    # The fast, unprivileged loop still has most of the suite.
    assert sum(not set(i["markers"]) & LAYERS for i in suite) > len(suite) // 2


def test_need_root_fails_a_test_that_is_not_marked_root():
    with pytest.raises(pytest.fail.Exception, match=r"mark it @pytest\.mark\.root"):
        need_root("this test is not marked root")
